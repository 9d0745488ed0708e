"""Stream proxies that settle a metered call exactly once.

A streamed call ends in one of many ways: the caller exhausts the stream, ``break``\\ s out
of the loop, calls ``close()``, leaves a ``with`` block, the upstream fails mid-way, or the
stream is simply dropped and garbage-collected. Every one of those paths funnels into
:meth:`Tally.settle`, which finishes the engine call once (later paths are no-ops).

What a stream consumed is measured from the items the caller actually pulled through the
proxy: the provider's usage report when one arrives (OpenAI's ``include_usage`` chunk,
Responses' ``response.completed``, Anthropic's ``message_delta``), otherwise an estimate
counted from the delivered text (``source="estimated"``; ``partial`` when the stream did
not run to its end).

Garbage collection: every proxy sharing a :class:`Tally` also holds one :class:`_Owner`;
when the last of them is collected a :func:`weakref.finalize` callback settles the call.
The callback holds the tally, never a proxy, so no reference cycle keeps a stream alive.
It runs synchronously wherever the collector runs, so an *async* stream abandoned without
``close()`` is settled through the ledger's synchronous API (instant for
:class:`~metered.ledger.MemoryLedger`, one blocking round trip for Redis) and its HTTP
response is left to the SDK's own clean-up: nothing can be awaited from a finaliser.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from metered import tokens
from metered.engine.meter import Call
from metered.usage import (
    AnthropicStreamUsage,
    Usage,
    from_anthropic,
    from_openai_chat,
    from_openai_responses,
)

if TYPE_CHECKING:

    class BaseObjectProxy:
        """Typing stand-in for :class:`wrapt.BaseObjectProxy` (wrapt ships no stubs)."""

        __wrapped__: Any

        def __init__(self, wrapped: Any) -> None: ...

        def __getattr__(self, name: str) -> Any: ...

else:
    from wrapt import BaseObjectProxy

__all__ = [
    "AnthropicObserver",
    "AnthropicSnapshotObserver",
    "AsyncMeteredStream",
    "AsyncRawResponse",
    "BaseObjectProxy",
    "ChatObserver",
    "CollectingStreamManager",
    "MeteredStream",
    "RawResponse",
    "ResponsesObserver",
    "StreamObserver",
    "Summary",
    "Tally",
    "anthropic_summary",
    "chat_summary",
    "error_status",
    "responses_summary",
]

logger = logging.getLogger("metered")

#: (response model, response id, finish reasons) of a whole response.
Summary = tuple["str | None", "str | None", tuple[str, ...]]

# Streams opened while a stream manager is being entered (see CollectingStreamManager).
_opened: ContextVar[list[Any] | None] = ContextVar("metered.opened_streams", default=None)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def error_status(exc: BaseException) -> int | None:
    """The HTTP status an SDK exception carries (``APIStatusError.status_code``), if any."""
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


# -- whole responses -----------------------------------------------------------------------


def chat_summary(response: Any) -> Summary:
    """Model, id and finish reasons of an OpenAI chat completion."""
    reasons = tuple(
        [  # a list, not a generator: this runs on every call and a list is built faster
            reason
            for choice in getattr(response, "choices", None) or ()
            if isinstance(reason := getattr(choice, "finish_reason", None), str)
        ]
    )
    model = getattr(response, "model", None)
    rid = getattr(response, "id", None)
    # inline, not _str(): this runs on every non-streamed call
    return (
        model if isinstance(model, str) else None,
        rid if isinstance(rid, str) else None,
        reasons,
    )


def responses_summary(response: Any) -> Summary:
    """Model, id and finish reason of an OpenAI Responses API response."""
    status = getattr(response, "status", None)
    if status == "completed":
        reasons: tuple[str, ...] = ("stop",)
    elif status == "incomplete":
        reason = getattr(getattr(response, "incomplete_details", None), "reason", None)
        reasons = (reason,) if isinstance(reason, str) else ("incomplete",)
    else:
        reasons = (status,) if isinstance(status, str) else ()
    return _str(getattr(response, "model", None)), _str(getattr(response, "id", None)), reasons


def anthropic_summary(message: Any) -> Summary:
    """Model, id and stop reason of an Anthropic message."""
    reason = getattr(message, "stop_reason", None)
    return (
        _str(getattr(message, "model", None)),
        _str(getattr(message, "id", None)),
        (reason,) if isinstance(reason, str) else (),
    )


# -- observers -----------------------------------------------------------------------------


class StreamObserver:
    """Watches one stream's items: the text delivered and the usage the provider reported.

    Attributes:
        text: the delivered text pieces (content, tool arguments, refusals, reasoning).
        usage: the provider's final usage report, once it arrived.
        input_usage: the input side reported before the end (Anthropic ``message_start``).
        opaque: the body was consumed raw (``iter_lines()`` ...): nothing could be seen.
    """

    __slots__ = (
        "_hide_usage",
        "finish_reasons",
        "input_usage",
        "opaque",
        "response_id",
        "response_model",
        "seen",
        "text",
        "usage",
    )

    def __init__(self, *, hide_usage: bool = False) -> None:
        self._hide_usage = hide_usage
        self.text: list[str] = []
        self.usage: Usage | None = None
        self.input_usage: Usage | None = None
        self.response_model: str | None = None
        self.response_id: str | None = None
        self.finish_reasons: list[str] = []
        self.seen = False
        self.opaque = False

    @staticmethod
    def read_usage(response: Any, /) -> Usage | None:
        """Usage of a whole (non-streamed) response of this API."""
        raise NotImplementedError

    @staticmethod
    def summarize(response: Any, /) -> Summary:
        """Model, id and finish reasons of a whole response of this API."""
        raise NotImplementedError

    @classmethod
    def outcome(cls, response: Any, *, status: int | None = 200) -> dict[str, Any]:
        """``Call.finish`` keyword arguments for a whole response of this API."""
        model, rid, reasons = cls.summarize(response)
        return {
            "usage": cls.read_usage(response),
            "response": response,
            "status": status,
            "response_model": model,
            "response_id": rid,
            "finish_reasons": reasons,
        }

    def feed(self, item: Any) -> bool:
        """Take one stream item; return ``False`` to hide it from the caller."""
        raise NotImplementedError

    def conclude(self) -> None:
        """Called once before settling; observers that read a snapshot do it here."""


class ChatObserver(StreamObserver):
    """OpenAI Chat Completions chunks.

    Args:
        hide_usage: hide the usage-only chunk (``choices == []``), because metered asked
            for it with ``stream_options.include_usage`` and the caller did not.
    """

    __slots__ = ()

    read_usage = staticmethod(from_openai_chat)
    summarize = staticmethod(chat_summary)

    def feed(self, item: Any) -> bool:
        if self.response_id is None:
            self.response_id = _str(getattr(item, "id", None))
            self.response_model = _str(getattr(item, "model", None))
        choices = item.choices
        text = self.text
        for choice in choices:
            delta = choice.delta
            if delta is not None:
                content = delta.content
                if content:
                    text.append(content)
                refusal = getattr(delta, "refusal", None)
                if refusal:
                    text.append(refusal)
                for tool_call in getattr(delta, "tool_calls", None) or ():
                    function = tool_call.function
                    if function is not None:
                        text.extend(p for p in (function.name, function.arguments) if p)
            reason = choice.finish_reason
            if reason:
                self.finish_reasons.append(reason)
        if getattr(item, "usage", None) is not None:
            self.usage = from_openai_chat(item)
            return not (self._hide_usage and not choices)
        return True


_RESPONSES_TEXT = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta",
    }
)
_RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class ResponsesObserver(StreamObserver):
    """OpenAI Responses API stream events."""

    __slots__ = ()

    read_usage = staticmethod(from_openai_responses)
    summarize = staticmethod(responses_summary)

    def feed(self, item: Any) -> bool:
        kind = item.type
        if kind in _RESPONSES_TEXT:
            delta = item.delta
            if isinstance(delta, str):
                self.text.append(delta)
        elif kind in _RESPONSES_FINAL:
            response = item.response
            self.usage = from_openai_responses(response)
            model, rid, reasons = responses_summary(response)
            self.response_model, self.response_id = model, rid
            self.finish_reasons[:] = reasons
        elif kind == "response.created" and self.response_id is None:
            response = item.response
            self.response_model = _str(getattr(response, "model", None))
            self.response_id = _str(getattr(response, "id", None))
        return True


class AnthropicObserver(StreamObserver):
    """Anthropic Messages stream events."""

    __slots__ = ("_usage",)

    read_usage = staticmethod(from_anthropic)
    summarize = staticmethod(anthropic_summary)

    def __init__(self, *, hide_usage: bool = False) -> None:
        super().__init__(hide_usage=hide_usage)
        self._usage = AnthropicStreamUsage()

    def feed(self, item: Any) -> bool:
        kind = item.type
        if kind == "content_block_delta":
            delta = item.delta
            piece = (
                getattr(delta, "text", None)
                or getattr(delta, "partial_json", None)
                or getattr(delta, "thinking", None)
            )
            if isinstance(piece, str):
                self.text.append(piece)
        elif kind == "message_start":
            self._usage.feed(item)
            message = item.message
            self.response_model = _str(getattr(message, "model", None))
            self.response_id = _str(getattr(message, "id", None))
            self.input_usage = self._usage.usage()
        elif kind == "message_delta":
            self._usage.feed(item)
            # message_delta carries the final, cumulative output count
            self.usage = self._usage.usage()
            reason = getattr(item.delta, "stop_reason", None)
            if isinstance(reason, str):
                self.finish_reasons[:] = (reason,)
        return True


class AnthropicSnapshotObserver(AnthropicObserver):
    """``messages.stream()`` streams: the SDK's message snapshot is the source of truth.

    The caller may consume the stream through paths that bypass the proxy
    (``get_final_message()``, ``until_done()``), so on settling the snapshot the SDK
    accumulated from every event it read is used.
    """

    __slots__ = ("_stream",)

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self._stream = stream

    def conclude(self) -> None:
        if self.usage is not None:
            return
        try:
            snapshot = self._stream.current_message_snapshot
        except Exception:  # no event was read at all
            return
        usage = from_anthropic(snapshot)
        model, rid, reasons = anthropic_summary(snapshot)
        self.response_model, self.response_id = model, rid
        if reasons:  # message_delta was read: the output count is final
            self.usage = usage
            self.finish_reasons[:] = reasons
            return
        self.input_usage = usage
        self.text[:] = [
            piece
            for block in getattr(snapshot, "content", None) or ()
            if isinstance(
                piece := getattr(block, "text", None) or getattr(block, "thinking", None), str
            )
        ]


# -- settling ------------------------------------------------------------------------------


class Tally:
    """Settles one metered call exactly once, whichever way its response ends.

    Args:
        call: the engine call.
        observer: what watches the streamed items.
        close: closes the upstream response when the stream is abandoned (sync streams
            only; ``None`` for async ones).
    """

    __slots__ = ("_close", "_done", "call", "observer")

    def __init__(
        self, call: Call, observer: StreamObserver, *, close: Callable[[], object] | None = None
    ) -> None:
        self.call = call
        self.observer = observer
        self._close = close
        self._done = False

    @property
    def done(self) -> bool:
        """Whether the call was settled."""
        return self._done

    def feed(self, item: Any) -> bool:
        """Observe one item; return whether the caller should see it."""
        observer = self.observer
        if not observer.seen:
            observer.seen = True
            self.call.first_chunk()
        try:
            return observer.feed(item)
        except Exception:
            # an unexpected item shape must not break the caller's loop
            logger.exception("metered: could not read a stream item; usage will be estimated")
            return True

    def claim(self) -> bool:
        """Take the right to settle; ``False`` if the call was already settled."""
        if self._done:
            return False
        self._done = True
        return True

    def settle(self, *, complete: bool, error: BaseException | None = None) -> None:
        """Finish the call from what was observed (no-op after the first time)."""
        if self.claim():
            self.call.finish(**self._outcome(complete, error))

    async def asettle(self, *, complete: bool, error: BaseException | None = None) -> None:
        """Async :meth:`settle`."""
        if self.claim():
            await self.call.afinish(**self._outcome(complete, error))

    def settle_response(self, response: Any, *, status: int | None = 200) -> None:
        """Finish the call from a whole (non-streamed) response."""
        if self.claim():
            self.call.finish(**self.observer.outcome(response, status=status))

    async def asettle_response(self, response: Any, *, status: int | None = 200) -> None:
        """Async :meth:`settle_response`."""
        if self.claim():
            await self.call.afinish(**self.observer.outcome(response, status=status))

    def abandon(self) -> None:
        """The last proxy was garbage-collected: close the response, settle what was seen."""
        if self._done:
            return
        if self._close is not None:
            try:
                self._close()
            except Exception:
                logger.debug("metered: closing an abandoned stream failed", exc_info=True)
        try:
            self.settle(complete=False)
        except Exception:  # never raise out of a finaliser
            logger.exception("metered: settling an abandoned stream failed")

    def _outcome(self, complete: bool, error: BaseException | None) -> dict[str, Any]:
        observer = self.observer
        try:
            observer.conclude()
        except Exception:
            logger.exception("metered: could not read the stream's final state")
        usage = observer.usage
        partial = False
        if usage is None and not observer.opaque:
            partial = not complete
            usage = self._estimate()
        return {
            "usage": usage,
            "error": error,
            "status": error_status(error) if error is not None else 200,
            "response_model": observer.response_model,
            "response_id": observer.response_id,
            "finish_reasons": tuple(observer.finish_reasons),
            "partial": partial,
        }

    def _estimate(self) -> Usage | None:
        """What was delivered, counted locally (``None`` if it cannot be counted)."""
        call = self.call
        observer = self.observer
        try:
            text = "".join(observer.text)
            output = tokens.count_text(text, model=call.model or "") if text else 0
            base = observer.input_usage
            if base is None:
                return Usage(
                    input_tokens=call.prompt_tokens, output_tokens=output, source="estimated"
                )
            return Usage(
                input_tokens=base.input_tokens,
                cache_read_tokens=base.cache_read_tokens,
                cache_write_tokens=base.cache_write_tokens,
                output_tokens=output,
                source="estimated",
            )
        except Exception:
            logger.exception("metered: could not count the delivered text; settling the estimate")
            return None


class _Owner:
    """Kept by every proxy of one call; its collection means the call was abandoned."""

    __slots__ = ("__weakref__",)


def _owner(tally: Tally) -> _Owner:
    owner = _Owner()
    finalizer = weakref.finalize(owner, tally.abandon)
    finalizer.atexit = False  # at interpreter exit the ledger and exporters may be gone
    return owner


# -- stream proxies ------------------------------------------------------------------------


class MeteredStream(BaseObjectProxy):
    """A sync SDK stream (``openai.Stream``, ``anthropic.Stream``) that settles its call.

    Iterating, ``close()``, ``with`` and attribute access (``.response`` ...) behave as
    on the SDK's stream; items the observer hides (the injected usage chunk) are skipped.
    """

    def __init__(self, wrapped: Any, tally: Tally, *, owner: _Owner | None = None) -> None:
        super().__init__(wrapped)
        self._self_tally = tally
        self._self_owner = owner if owner is not None else _owner(tally)
        opened = _opened.get()
        if opened is not None:
            opened.append(self)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        tally: Tally = self._self_tally
        advance = self.__wrapped__.__next__
        try:
            while True:
                item = advance()
                if tally.feed(item):
                    return item
        except StopIteration:
            tally.settle(complete=True)
            raise
        except BaseException as exc:
            tally.settle(complete=False, error=exc)
            raise

    def close(self) -> None:
        """Close the response; a stream closed before its end settles what was delivered."""
        try:
            self.__wrapped__.close()
        finally:
            self._self_tally.settle(complete=False)

    def __enter__(self) -> MeteredStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncMeteredStream(BaseObjectProxy):
    """An async SDK stream (``openai.AsyncStream``, ``anthropic.AsyncStream``) that settles."""

    def __init__(self, wrapped: Any, tally: Tally, *, owner: _Owner | None = None) -> None:
        super().__init__(wrapped)
        self._self_tally = tally
        self._self_owner = owner if owner is not None else _owner(tally)
        opened = _opened.get()
        if opened is not None:
            opened.append(self)

    def __aiter__(self) -> AsyncMeteredStream:
        return self

    async def __anext__(self) -> Any:
        tally: Tally = self._self_tally
        advance = self.__wrapped__.__anext__
        try:
            while True:
                item = await advance()
                if tally.feed(item):
                    return item
        except StopAsyncIteration:
            await tally.asettle(complete=True)
            raise
        except BaseException as exc:
            await tally.asettle(complete=False, error=exc)
            raise

    async def close(self) -> None:
        """Close the response; a stream closed before its end settles what was delivered."""
        try:
            await self.__wrapped__.close()
        finally:
            await self._self_tally.asettle(complete=False)

    async def __aenter__(self) -> AsyncMeteredStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class CollectingStreamManager(BaseObjectProxy):
    """An SDK stream manager (``chat.completions.stream()``, ``responses.stream()``).

    The SDK helper is built on the metered proxy, so its request goes through the metered
    ``create``; the helper's own stream closes the HTTP response directly on exit, so the
    metered streams opened while entering are closed (and settled) here too.
    """

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self._self_opened: list[Any] = []

    def __enter__(self) -> Any:
        token = _opened.set(self._self_opened)
        try:
            return self.__wrapped__.__enter__()
        finally:
            _opened.reset(token)

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return self.__wrapped__.__exit__(*exc_info)
        finally:
            for stream in self._self_opened:
                stream.close()

    async def __aenter__(self) -> Any:
        token = _opened.set(self._self_opened)
        try:
            return await self.__wrapped__.__aenter__()
        finally:
            _opened.reset(token)

    async def __aexit__(self, *exc_info: Any) -> Any:
        try:
            return await self.__wrapped__.__aexit__(*exc_info)
        finally:
            for stream in self._self_opened:
                await stream.close()


# -- raw responses -------------------------------------------------------------------------


def body_read(raw: Any) -> bool:
    """Whether the raw response's body was read already (``content`` is available)."""
    try:
        raw.http_response.content  # noqa: B018 - raises ResponseNotRead otherwise
    except Exception:
        return False
    return True


def _is_stream(value: Any) -> bool:
    kind = type(value)
    return hasattr(kind, "__next__") or hasattr(kind, "__anext__")


class _RawBase(BaseObjectProxy):
    def __init__(self, wrapped: Any, tally: Tally, *, stream: bool) -> None:
        super().__init__(wrapped)
        self._self_tally = tally
        self._self_owner = _owner(tally)
        self._self_stream = stream
        self._self_parsed: Any = None

    def _self_stream_of(self, parsed: Any) -> Any:
        if not _is_stream(parsed):
            return parsed
        current = self._self_parsed
        if current is not None and current.__wrapped__ is parsed:
            return current
        cls = AsyncMeteredStream if hasattr(type(parsed), "__anext__") else MeteredStream
        self._self_parsed = cls(parsed, self._self_tally, owner=self._self_owner)
        return self._self_parsed

    def _self_raw(self) -> None:
        if self._self_stream:
            # the SSE body is read as bytes, past the proxy: the usage cannot be seen
            self._self_tally.observer.opaque = True

    def _self_pending(self) -> bool:
        """A non-streamed call whose body is still to be settled."""
        return not self._self_stream and not self._self_tally.done

    # plain methods on both response kinds: they return (async) iterators
    def iter_bytes(self, *args: Any, **kwargs: Any) -> Any:
        """The SDK's ``iter_bytes()``; a streamed body read this way settles the estimate."""
        self._self_raw()
        return self.__wrapped__.iter_bytes(*args, **kwargs)

    def iter_text(self, *args: Any, **kwargs: Any) -> Any:
        """The SDK's ``iter_text()``; a streamed body read this way settles the estimate."""
        self._self_raw()
        return self.__wrapped__.iter_text(*args, **kwargs)

    def iter_lines(self, *args: Any, **kwargs: Any) -> Any:
        """The SDK's ``iter_lines()``; a streamed body read this way settles the estimate."""
        self._self_raw()
        return self.__wrapped__.iter_lines(*args, **kwargs)


class RawResponse(_RawBase):
    """A raw SDK response (``with_raw_response`` / ``with_streaming_response``).

    ``parse()`` returns the metered stream for streamed calls and settles non-streamed
    ones; reading the body settles from it; ``close()`` settles whatever is left. A
    streamed body read raw (``iter_lines()`` ...) settles the pre-call estimate.
    """

    def parse(self, **kwargs: Any) -> Any:
        """The SDK's ``parse()``, metered."""
        parsed = self.__wrapped__.parse(**kwargs)
        if self._self_stream:
            return self._self_stream_of(parsed)
        self._self_settle(parsed if not kwargs else None)
        return parsed

    def _self_settle(self, parsed: Any = None) -> None:
        if self._self_pending():
            raw = self.__wrapped__
            if parsed is None:
                parsed = raw.parse()  # cached by the SDK: the caller's own parse() is free
            self._self_tally.settle_response(parsed, status=raw.status_code)

    def read(self) -> Any:
        """The SDK's ``read()``, metered."""
        self._self_raw()
        data = self.__wrapped__.read()
        self._self_settle()
        return data

    def text(self) -> Any:
        """The SDK's ``text()``, metered."""
        self._self_raw()
        data = self.__wrapped__.text()
        self._self_settle()
        return data

    def json(self, **kwargs: Any) -> Any:
        """The SDK's ``json()``, metered."""
        self._self_raw()
        data = self.__wrapped__.json(**kwargs)
        self._self_settle()
        return data

    def close(self) -> None:
        """Close the response and settle the call if nothing else did."""
        try:
            self.__wrapped__.close()
        finally:
            if self._self_pending() and body_read(self.__wrapped__):
                self._self_settle()
            else:
                self._self_tally.settle(complete=False)


class AsyncRawResponse(_RawBase):
    """Async :class:`RawResponse` (``AsyncAPIResponse``: ``parse()`` and reads are awaited)."""

    async def parse(self, **kwargs: Any) -> Any:
        """The SDK's ``parse()``, metered."""
        parsed = await self.__wrapped__.parse(**kwargs)
        if self._self_stream:
            return self._self_stream_of(parsed)
        await self._self_settle(parsed if not kwargs else None)
        return parsed

    async def _self_settle(self, parsed: Any = None) -> None:
        if self._self_pending():
            raw = self.__wrapped__
            if parsed is None:
                parsed = await raw.parse()
            await self._self_tally.asettle_response(parsed, status=raw.status_code)

    async def read(self) -> Any:
        """The SDK's ``read()``, metered."""
        self._self_raw()
        data = await self.__wrapped__.read()
        await self._self_settle()
        return data

    async def text(self) -> Any:
        """The SDK's ``text()``, metered."""
        self._self_raw()
        data = await self.__wrapped__.text()
        await self._self_settle()
        return data

    async def json(self, **kwargs: Any) -> Any:
        """The SDK's ``json()``, metered."""
        self._self_raw()
        data = await self.__wrapped__.json(**kwargs)
        await self._self_settle()
        return data

    async def close(self) -> None:
        """Close the response and settle the call if nothing else did."""
        try:
            await self.__wrapped__.close()
        finally:
            if self._self_pending() and body_read(self.__wrapped__):
                await self._self_settle()
            else:
                await self._self_tally.asettle(complete=False)
