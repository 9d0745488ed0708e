"""Test helpers: an in-process fake of the OpenAI and Anthropic HTTP APIs.

:class:`FakeUpstream` answers ``POST /v1/chat/completions``, ``POST /v1/responses``,
``POST /v1/messages`` and ``GET /v1/models`` in the providers' real wire formats (JSON
and server-sent events), so the unmodified ``openai`` and ``anthropic`` SDK clients run
against it. Token counts come from :mod:`metered.tokens`, so the usage it reports is
what metered would estimate for the same request.

One upstream, several ways in; all share one request handler:

- as an ``httpx2`` or ``httpx`` transport, in-process and without sockets::

      upstream = FakeUpstream(reply="Hi there!")
      client = OpenAI(
          api_key="x",
          base_url="http://fake/v1",
          http_client=httpx2.Client(transport=upstream.httpx2_transport()),
      )
      # or simply: client = upstream.openai_client()

- as an ASGI application (``FakeUpstream`` instances are ASGI callables);
- over a real loopback socket, served by uvicorn in a background thread::

      with upstream.serve() as url:
          client = OpenAI(api_key="x", base_url=f"{url}/v1")

Faults are queued and consumed one per request, in order: :meth:`FakeUpstream.fail_next`
(an HTTP error in the provider's error shape, or an error event mid-stream),
:meth:`FakeUpstream.disconnect_next` and :meth:`FakeUpstream.timeout_next`. Every
request received is recorded (:attr:`FakeUpstream.requests`) with credentials redacted.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import importlib
import json
import logging
import math
import re
import socket
import threading
import time
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    MutableMapping,
)
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, overload

from metered import context as _context_vars
from metered.errors import InvalidRequest
from metered.records import UsageRecord
from metered.tokens import count_anthropic, count_chat, count_request, encoding_for_model

if TYPE_CHECKING:
    import anthropic
    import httpx
    import httpx2
    import openai
    import tiktoken

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_REPLY",
    "FakeUpstream",
    "RecordedRequest",
    "SpendCapture",
    "capture_spend",
    "serve_asgi",
]

DEFAULT_REPLY = "This is a reply from the metered fake upstream."
"""What :class:`FakeUpstream` answers unless told otherwise."""

DEFAULT_MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "o4-mini",
    "gpt-5",
    "claude-sonnet-4-6",
    "claude-haiku-4-5",
)
"""The model ids ``GET /v1/models`` lists unless told otherwise."""

_FAKE_HOST = "http://fake-upstream.test"
_REDACTED = "[redacted]"
# Headers that carry credentials: never kept in the request record.
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"}
)
# Models that spend hidden reasoning tokens: OpenAI o-series and the gpt-5 family.
_REASONING_MODEL = re.compile(r"(?:^|/)(?:o\d|gpt-5)")

_Provider = Literal["openai", "anthropic"]
_FaultKind = Literal["status", "disconnect", "timeout"]
_Frames = Generator[bytes, None, None]

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake upstream received it.

    Attributes:
        method: HTTP method, upper case.
        path: URL path, e.g. ``/v1/chat/completions``.
        query: raw query string, without the ``?``.
        headers: header names lower-cased; credential headers (``authorization``,
            ``x-api-key``, ``api-key``, ``cookie``) have their value replaced by
            ``"[redacted]"``.
        body: the JSON body parsed, or ``None`` when the body is empty or not JSON.
        content: the raw body bytes.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    content: bytes = field(repr=False)


@dataclass(slots=True)
class _Fault:
    kind: _FaultKind
    times: int
    after_chunks: int
    status: int = 0
    message: str | None = None
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()


class _Interrupted(Exception):
    """The injected disconnect or timeout is due: the adapter turns it into its own kind."""

    def __init__(self, kind: _FaultKind) -> None:
        super().__init__(kind)
        self.kind = kind


class _InjectedDisconnect(ConnectionAbortedError):
    """Raised by the ASGI app to drop a connection: ASGI has no other way to do it."""


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


@dataclass(slots=True)
class _Reply:
    """A response, independent of the adapter that delivers it.

    ``events`` lazily produces the SSE frames of a stream (``body`` is then unused);
    ``cut`` is the injected fault to apply while delivering it, and ``error_event``
    renders an in-stream error for the frame index it falls on.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    events: _Frames | None = None
    error_event: Callable[[_Fault, int], bytes] | None = None
    cut: _Fault | None = None
    latency: float = 0.0
    chunk_latency: float = 0.0

    @property
    def cut_before_response(self) -> _Fault | None:
        """The disconnect/timeout due before any body byte, if there is one."""
        cut = self.cut
        if cut is not None and cut.kind != "status" and cut.after_chunks == 0:
            return cut
        return None

    def frames(self) -> Generator[tuple[float, bytes], None, None]:
        """Yield ``(delay, frame)`` pairs; raise :class:`_Interrupted` where the cut falls."""
        if self.events is None:
            yield 0.0, self.body
            return
        cut = self.cut
        try:
            for index, frame in enumerate(self.events):
                delay = self.chunk_latency if index else 0.0
                if cut is not None and index == cut.after_chunks:
                    if cut.kind != "status":
                        raise _Interrupted(cut.kind)
                    if self.error_event is not None:
                        yield delay, self.error_event(cut, index)
                    return
                yield delay, frame
        finally:
            self.events.close()


@dataclass(frozen=True, slots=True)
class _Generation:
    """The reply a request gets, with the token counts a provider would report."""

    pieces: tuple[str, ...]
    prompt_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    truncated: bool

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class FakeUpstream:
    """An in-process fake of the OpenAI and Anthropic HTTP APIs.

    Instances are ASGI applications and hand out ``httpx2``/``httpx`` transports; all
    of them share one request handler, one request record and one fault queue (safe to
    use from several threads).

    Args:
        reply: the assistant text, or a callable building it from the request.
        chunk_tokens: tokens per streamed delta.
        latency: seconds before the response starts (time to first byte).
        chunk_latency: seconds between two streamed events.
        cached_tokens: prompt tokens reported as read from the provider's cache: an
            ``int`` is a count (capped at the prompt size), a ``float`` in ``[0, 1]`` a
            fraction of the prompt.
        cache_write_tokens: prompt tokens reported as written to the cache, same forms,
            out of the prompt not read from the cache (OpenAI ``cache_write_tokens``,
            Anthropic ``cache_creation_input_tokens``).
        reasoning_tokens: hidden reasoning tokens added to the output of OpenAI
            reasoning models (o-series, gpt-5 family) and of Anthropic requests with
            ``thinking`` enabled; they count against the output limit first, as they do
            upstream.
        models: the model ids ``GET /v1/models`` lists.
        keep_requests: how many of the latest requests :attr:`requests` keeps; ``None``
            keeps all (long benchmarks should bound it).

    Raises:
        ValueError: an option is out of range.
    """

    def __init__(
        self,
        *,
        reply: str | Callable[[RecordedRequest], str] = DEFAULT_REPLY,
        chunk_tokens: int = 1,
        latency: float = 0.0,
        chunk_latency: float = 0.0,
        cached_tokens: int | float = 0,
        cache_write_tokens: int | float = 0,
        reasoning_tokens: int = 0,
        models: Iterable[str] = DEFAULT_MODELS,
        keep_requests: int | None = None,
    ) -> None:
        if type(chunk_tokens) is not int or chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be a positive int, got {chunk_tokens!r}")
        for name, seconds in (("latency", latency), ("chunk_latency", chunk_latency)):
            if not 0 <= seconds < float("inf"):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {seconds!r}")
        _check_portion("cached_tokens", cached_tokens)
        _check_portion("cache_write_tokens", cache_write_tokens)
        if type(reasoning_tokens) is not int or reasoning_tokens < 0:
            raise ValueError(f"reasoning_tokens must be an int >= 0, got {reasoning_tokens!r}")
        if keep_requests is not None and (type(keep_requests) is not int or keep_requests < 0):
            raise ValueError(f"keep_requests must be an int >= 0 or None, got {keep_requests!r}")
        self._reply = reply
        self._chunk_tokens = chunk_tokens
        self._latency = float(latency)
        self._chunk_latency = float(chunk_latency)
        self._cached_tokens = cached_tokens
        self._cache_write_tokens = cache_write_tokens
        self._reasoning_tokens = reasoning_tokens
        self._models = tuple(models)
        self._lock = threading.Lock()
        self._faults: deque[_Fault] = deque()
        self._requests: deque[RecordedRequest] = deque(maxlen=keep_requests)
        self._serial = 0

    def __repr__(self) -> str:
        return f"FakeUpstream(requests={len(self._requests)}, faults={len(self._faults)})"

    # -- recording and faults -------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def last_request(self) -> RecordedRequest:
        """The most recent request.

        Raises:
            LookupError: no request was received yet.
        """
        with self._lock:
            if not self._requests:
                raise LookupError("the fake upstream has not received any request")
            return self._requests[-1]

    def reset(self) -> None:
        """Forget the recorded requests and drop every queued fault."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()

    def fail_next(
        self,
        status: int = 429,
        *,
        times: int = 1,
        message: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        retry_after: float | None = None,
        after_chunks: int = 0,
    ) -> None:
        """Answer the next request(s) with an HTTP error in the provider's error shape.

        The SDKs raise their typed errors for it (``RateLimitError`` for 429,
        ``InternalServerError`` for 5xx, ``anthropic.OverloadedError`` for 529 …).

        Args:
            status: HTTP status code (400-599).
            times: how many consecutive requests fail.
            message: error message; a typical one for the status by default.
            body: the whole JSON error body, replacing the provider-shaped default.
            headers: extra response headers.
            retry_after: seconds sent as ``retry-after-ms``: the SDKs wait that long
                before retrying instead of their exponential backoff.
            after_chunks: for streamed responses, deliver this many events, then the
                error as an in-stream error event (the status stays 200); ``0`` fails
                the request itself.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status!r}")
        extra = dict(headers or {})
        if retry_after is not None:
            # the SDKs prefer the millisecond header; other clients read the standard one
            extra["retry-after-ms"] = f"{retry_after * 1000:g}"
            extra["retry-after"] = str(math.ceil(retry_after))
        self._queue(
            _Fault(
                "status",
                times,
                after_chunks,
                status=status,
                message=message,
                body=body,
                headers=tuple(extra.items()),
            )
        )

    def disconnect_next(self, *, after_chunks: int = 0, times: int = 1) -> None:
        """Drop the connection of the next request(s).

        Clients see a broken connection: ``RemoteProtocolError`` from httpx/httpx2, which
        the SDKs raise as ``APIConnectionError`` (mid-stream, older SDK lines on httpx
        let the httpx error through, as they do against the real APIs).

        Args:
            after_chunks: events delivered before the drop (a JSON body is one chunk);
                ``0`` drops before the response. Over ASGI the response headers are
                always sent first: ASGI servers cannot drop a connection silently.
            times: how many consecutive requests are dropped.
        """
        self._queue(_Fault("disconnect", times, after_chunks))

    def timeout_next(self, *, after_chunks: int = 0, times: int = 1) -> None:
        """Stop answering the next request(s), as a hung upstream does.

        Through the transports the client's read timeout fires at once
        (``httpx2.ReadTimeout``, ``APITimeoutError`` in the SDKs), without waiting.
        Over ASGI/:meth:`serve` the fake really goes silent until the client gives up,
        so give the client a timeout.

        Args:
            after_chunks: events delivered before going silent; ``0`` stalls before
                the response.
            times: how many consecutive requests stall.
        """
        self._queue(_Fault("timeout", times, after_chunks))

    def _queue(self, fault: _Fault) -> None:
        if type(fault.times) is not int or fault.times < 1:
            raise ValueError(f"times must be a positive int, got {fault.times!r}")
        if type(fault.after_chunks) is not int or fault.after_chunks < 0:
            raise ValueError(f"after_chunks must be an int >= 0, got {fault.after_chunks!r}")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self) -> _Fault | None:
        # caller holds the lock
        if not self._faults:
            return None
        fault = self._faults[0]
        fault.times -= 1
        if fault.times == 0:
            self._faults.popleft()
        return fault

    # -- the one request handler ----------------------------------------------------

    def _exchange(
        self,
        method: str,
        path: str,
        query: str,
        headers: Iterable[tuple[str, str]],
        content: bytes,
    ) -> _Reply:
        """Build the reply to one request; every adapter delivers what this returns."""
        kept = {}
        for name, value in headers:
            name = name.lower()
            kept[name] = _REDACTED if name in _SECRET_HEADERS else value
        try:
            body = json.loads(content) if content else None
        except ValueError:
            body = None
        record = RecordedRequest(method.upper(), path, query, kept, body, content)
        route = path[3:] if path.startswith("/v1/") else path
        provider: _Provider = (
            "anthropic" if route == "/messages" or "anthropic-version" in kept else "openai"
        )
        with self._lock:
            self._requests.append(record)
            fault = self._take_fault()
            self._serial += 1
            serial = self._serial
        request_id = f"req_fake{serial:08d}"
        in_stream = fault is not None and fault.after_chunks > 0 and _streaming(body)
        if fault is not None and fault.kind == "status" and not in_stream:
            reply = _error_reply(provider, fault.status, fault.message, body=fault.body)
            reply.headers.extend(fault.headers)
        else:
            try:
                reply = self._route(record, route, provider, serial)
            except _BadRequest as exc:
                reply = _error_reply(provider, exc.status, exc.message, param=exc.param)
            except InvalidRequest as exc:  # metered.tokens could not count the body
                reply = _error_reply(provider, 400, exc.message, param=exc.param)
            reply.cut = fault
        reply.headers.append(
            ("request-id" if provider == "anthropic" else "x-request-id", request_id)
        )
        reply.latency = self._latency
        reply.chunk_latency = self._chunk_latency
        return reply

    def _route(
        self, record: RecordedRequest, route: str, provider: _Provider, serial: int
    ) -> _Reply:
        method = record.method
        if method == "POST" and route == "/chat/completions":
            return self._chat(record, serial)
        if method == "POST" and route == "/responses":
            return self._responses(record, serial)
        if method == "POST" and route == "/messages":
            return self._messages(record, serial)
        if method == "GET" and route == "/models":
            return _json_reply(200, _model_list(provider, self._models))
        if method == "GET" and route.startswith("/models/"):
            model = route.removeprefix("/models/")
            if model not in self._models:
                raise _BadRequest(404, f"The model '{model}' does not exist", param="model")
            return _json_reply(200, _model_entry(provider, model))
        raise _BadRequest(404, f"Invalid URL ({method} {record.path})")

    def _generate(
        self,
        record: RecordedRequest,
        *,
        model: str,
        prompt_tokens: int,
        limit: int | None,
        reasoning: bool,
    ) -> _Generation:
        text = self._reply if isinstance(self._reply, str) else self._reply(record)
        reasoning_tokens = self._reasoning_tokens if reasoning else 0
        if limit is not None:
            reasoning_tokens = min(reasoning_tokens, limit)
            limit -= reasoning_tokens
        pieces, output_tokens, truncated = _split(
            _token_bytes(model, text), limit=limit, chunk_tokens=self._chunk_tokens
        )
        cached = _portion(self._cached_tokens, prompt_tokens)
        return _Generation(
            pieces=pieces,
            prompt_tokens=prompt_tokens,
            cached_tokens=cached,
            cache_write_tokens=_portion(self._cache_write_tokens, prompt_tokens - cached),
            output_tokens=output_tokens + reasoning_tokens,
            reasoning_tokens=reasoning_tokens,
            truncated=truncated,
        )

    # -- OpenAI Chat Completions ----------------------------------------------------

    def _chat(self, record: RecordedRequest, serial: int) -> _Reply:
        body = _object_body(record)
        model = _model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest(400, "'messages' must be a non-empty array", param="messages")
        tools = body.get("tools") or body.get("functions")
        gen = self._generate(
            record,
            model=model,
            prompt_tokens=count_chat(messages, model=model, tools=tools),
            limit=_limit(body, "max_completion_tokens", "max_tokens"),
            reasoning=_is_reasoning(model),
        )
        finish = "length" if gen.truncated else "stop"
        base = {
            "id": f"chatcmpl-fake{serial:08d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }
        usage = {
            "prompt_tokens": gen.prompt_tokens,
            "completion_tokens": gen.output_tokens,
            "total_tokens": gen.prompt_tokens + gen.output_tokens,
            "prompt_tokens_details": {
                "cached_tokens": gen.cached_tokens,
                "cache_write_tokens": gen.cache_write_tokens,
                "audio_tokens": 0,
            },
            "completion_tokens_details": {
                "reasoning_tokens": gen.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        if not _streaming(body):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": gen.text,
                "refusal": None,
                "annotations": [],
            }
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            return _json_reply(200, {**base, "choices": [choice], "usage": usage})
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        base["object"] = "chat.completion.chunk"
        return _sse_reply(
            _chat_events(base, gen, finish, usage if include_usage else None), _chat_error
        )

    # -- OpenAI Responses -----------------------------------------------------------

    def _responses(self, record: RecordedRequest, serial: int) -> _Reply:
        body = _object_body(record)
        model = _model(body)
        if body.get("input") is None:
            raise _BadRequest(400, "'input' is required", param="input")
        gen = self._generate(
            record,
            model=model,
            prompt_tokens=count_request(body, model=model).tokens,
            limit=_limit(body, "max_output_tokens"),
            reasoning=_is_reasoning(model),
        )
        ids = _ResponseIds(
            f"resp_fake{serial:08d}", f"msg_fake{serial:08d}", f"rs_fake{serial:08d}"
        )
        response = {
            "id": ids.response,
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": model,
            "output": [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools", []),
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": None,
            "user": None,
            "metadata": body.get("metadata") or {},
        }
        if not _streaming(body):
            return _json_reply(200, _finished_response(response, gen, ids))
        return _sse_reply(_responses_events(response, gen, ids), _responses_error)

    # -- Anthropic Messages ---------------------------------------------------------

    def _messages(self, record: RecordedRequest, serial: int) -> _Reply:
        body = _object_body(record)
        model = _model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest(400, "messages: field required to be a non-empty list")
        limit = _limit(body, "max_tokens")
        if limit is None:
            raise _BadRequest(400, "max_tokens: Field required")
        prompt_tokens = count_anthropic(
            messages, model=model, system=body.get("system"), tools=body.get("tools")
        )
        thinking = body.get("thinking")
        reasoning = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
        gen = self._generate(
            record, model=model, prompt_tokens=prompt_tokens, limit=limit, reasoning=reasoning
        )
        usage: dict[str, Any] = {
            # Anthropic reports cache reads and writes beside input_tokens, not inside.
            "input_tokens": gen.prompt_tokens - gen.cached_tokens - gen.cache_write_tokens,
            "cache_creation_input_tokens": gen.cache_write_tokens,
            "cache_read_input_tokens": gen.cached_tokens,
            "output_tokens": gen.output_tokens,
            "service_tier": "standard",
        }
        if reasoning:
            usage["output_tokens_details"] = {"thinking_tokens": gen.reasoning_tokens}
        message = {
            "id": f"msg_fake{serial:08d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": gen.text}],
            "stop_reason": "max_tokens" if gen.truncated else "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        if not _streaming(body):
            return _json_reply(200, message)
        return _sse_reply(_anthropic_events(message, gen), _anthropic_event_error)

    # -- adapters -------------------------------------------------------------------

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        """Serve one ASGI connection scope (``http``; ``lifespan`` is acknowledged)."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        content = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            content += message.get("body", b"")
            if not message.get("more_body", False):
                break
        reply = self._exchange(
            scope["method"],
            scope["path"],
            scope.get("query_string", b"").decode("latin-1"),
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
            bytes(content),
        )
        await _asleep(reply.latency)
        cut = reply.cut_before_response
        if cut is not None and cut.kind == "timeout":
            await _until_disconnect(receive)
            return
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers],
            }
        )
        frames = reply.frames()
        try:
            for delay, frame in frames:
                await _asleep(delay)
                await send({"type": "http.response.body", "body": frame, "more_body": True})
        except _Interrupted as exc:
            if exc.kind == "timeout":
                await _until_disconnect(receive)
                return
            raise _InjectedDisconnect("metered.testing: injected disconnect") from None
        finally:
            frames.close()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def httpx2_transport(self) -> httpx2.BaseTransport:
        """A transport for ``httpx2.Client(transport=...)`` (openai 3.x, anthropic 2.x)."""
        transport: httpx2.BaseTransport = _transport_class("httpx2")(self)
        return transport

    def async_httpx2_transport(self) -> httpx2.AsyncBaseTransport:
        """A transport for ``httpx2.AsyncClient(transport=...)``."""
        transport: httpx2.AsyncBaseTransport = _transport_class("httpx2")(self)
        return transport

    def httpx_transport(self) -> httpx.BaseTransport:
        """A transport for ``httpx.Client(transport=...)`` (SDK lines built on httpx)."""
        transport: httpx.BaseTransport = _transport_class("httpx")(self)
        return transport

    def async_httpx_transport(self) -> httpx.AsyncBaseTransport:
        """A transport for ``httpx.AsyncClient(transport=...)``."""
        transport: httpx.AsyncBaseTransport = _transport_class("httpx")(self)
        return transport

    @overload
    def openai_client(self, *, async_: Literal[False] = False, **kwargs: Any) -> openai.OpenAI: ...

    @overload
    def openai_client(self, *, async_: Literal[True], **kwargs: Any) -> openai.AsyncOpenAI: ...

    def openai_client(
        self, *, async_: bool = False, **kwargs: Any
    ) -> openai.OpenAI | openai.AsyncOpenAI:
        """An ``openai`` client wired to this fake through an in-process transport.

        Defaults: a fake API key and ``max_retries=0`` (so injected faults surface at
        once). Pass ``base_url`` (e.g. from :meth:`serve`) to talk over a socket
        instead; any other keyword goes to the client constructor.

        Args:
            async_: build an ``AsyncOpenAI`` instead of an ``OpenAI``.
            **kwargs: client constructor arguments, overriding the defaults.
        """
        import openai

        kwargs = self._client_defaults(openai, kwargs, "sk-fake", f"{_FAKE_HOST}/v1", async_=async_)
        return openai.AsyncOpenAI(**kwargs) if async_ else openai.OpenAI(**kwargs)

    @overload
    def anthropic_client(
        self, *, async_: Literal[False] = False, **kwargs: Any
    ) -> anthropic.Anthropic: ...

    @overload
    def anthropic_client(
        self, *, async_: Literal[True], **kwargs: Any
    ) -> anthropic.AsyncAnthropic: ...

    def anthropic_client(
        self, *, async_: bool = False, **kwargs: Any
    ) -> anthropic.Anthropic | anthropic.AsyncAnthropic:
        """An ``anthropic`` client wired to this fake; same defaults as :meth:`openai_client`.

        Args:
            async_: build an ``AsyncAnthropic`` instead of an ``Anthropic``.
            **kwargs: client constructor arguments, overriding the defaults.
        """
        import anthropic

        kwargs = self._client_defaults(anthropic, kwargs, "sk-ant-fake", _FAKE_HOST, async_=async_)
        return anthropic.AsyncAnthropic(**kwargs) if async_ else anthropic.Anthropic(**kwargs)

    def _client_defaults(
        self, sdk: Any, kwargs: dict[str, Any], api_key: str, base_url: str, *, async_: bool
    ) -> dict[str, Any]:
        options = {"api_key": api_key, "max_retries": 0, **kwargs}
        if "base_url" not in kwargs:
            options["base_url"] = base_url
            if "http_client" not in kwargs:
                # Older SDK lines are built on httpx, newer ones on httpx2: use theirs.
                default = sdk.DefaultAsyncHttpxClient if async_ else sdk.DefaultHttpxClient
                library = _http_library(default)
                module = importlib.import_module(library)
                client_class = module.AsyncClient if async_ else module.Client
                options["http_client"] = client_class(transport=_transport_class(library)(self))
        return options

    @contextlib.contextmanager
    def serve(self, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve this fake over HTTP with uvicorn in a background thread.

        Needs ``uvicorn`` (the ``fastapi``/``gateway`` extras). Use it for tests that
        need real sockets; the transports are faster otherwise.

        Args:
            host: IPv4 address to listen on.
            port: TCP port; ``0`` picks a free one.

        Yields:
            The base URL, e.g. ``http://127.0.0.1:54321`` (OpenAI clients want
            ``f"{url}/v1"``; Anthropic clients take it as is).
        """
        # the injected disconnects are deliberate: keep their tracebacks out of the logs
        uvicorn_errors = logging.getLogger("uvicorn.error")
        uvicorn_errors.addFilter(_not_injected)
        try:
            with serve_asgi(self, host=host, port=port) as url:
                yield url
        finally:
            uvicorn_errors.removeFilter(_not_injected)


# -- request helpers ----------------------------------------------------------------


def _object_body(record: RecordedRequest) -> dict[str, Any]:
    if not isinstance(record.body, dict):
        raise _BadRequest(400, "The request body must be a JSON object.")
    return record.body


def _streaming(body: Any) -> bool:
    return isinstance(body, dict) and body.get("stream") is True


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest(400, "'model' is required", param="model")
    return model


def _limit(body: dict[str, Any], *names: str) -> int | None:
    """The tightest output-token limit among ``names``, validated as the APIs do."""
    limits = []
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if type(value) is not int or value < 1:
            raise _BadRequest(
                400, f"Invalid '{name}': expected an integer >= 1, got {value!r}", param=name
            )
        limits.append(value)
    return min(limits) if limits else None


def _is_reasoning(model: str) -> bool:
    return _REASONING_MODEL.search(model.lower()) is not None


def _check_portion(name: str, value: int | float) -> None:
    if type(value) is int:
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    elif type(value) is float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} as a float is a fraction in [0, 1], got {value!r}")
    else:
        raise ValueError(f"{name} must be an int count or a float fraction, got {value!r}")


def _portion(spec: int | float, total: int) -> int:
    if type(spec) is float:
        return int(total * spec)
    return min(int(spec), total)


def _token_bytes(model: str, text: str) -> tuple[bytes, ...]:
    return _encoded(encoding_for_model(model), text)


@functools.lru_cache(maxsize=256)
def _encoded(encoding: tiktoken.Encoding, text: str) -> tuple[bytes, ...]:
    # Replies repeat across calls: tokenise each (encoding, text) once.
    return tuple(encoding.decode_tokens_bytes(encoding.encode_ordinary(text)))


def _split(
    tokens: tuple[bytes, ...], *, limit: int | None, chunk_tokens: int
) -> tuple[tuple[str, ...], int, bool]:
    """Cut the reply at ``limit`` tokens and group it into stream deltas.

    Returns the deltas, the number of tokens kept and whether the reply was truncated.
    Tokens can split a multi-byte character: the incremental decoder holds partial
    bytes back, so every delta is valid text and the deltas join to the exact reply.
    """
    truncated = limit is not None and len(tokens) > limit
    if limit is not None:
        tokens = tokens[:limit]
    # never flushed: a truncation that ends mid-character drops the partial bytes
    decoder = codecs.getincrementaldecoder("utf-8")()
    pieces = []
    for start in range(0, len(tokens), chunk_tokens):
        piece = decoder.decode(b"".join(tokens[start : start + chunk_tokens]))
        if piece:
            pieces.append(piece)
    return tuple(pieces), len(tokens), truncated


# -- response building ----------------------------------------------------------------


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _sse(data: Any, event: str | None = None) -> bytes:
    head = b"" if event is None else f"event: {event}\n".encode()
    return head + b"data: " + _dumps(data) + b"\n\n"


def _json_reply(status: int, data: Any) -> _Reply:
    body = _dumps(data)
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    return _Reply(status, headers, body=body)


def _sse_reply(events: _Frames, error_event: Callable[[_Fault, int], bytes]) -> _Reply:
    headers = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]
    return _Reply(200, headers, events=events, error_event=error_event)


_OPENAI_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", None, "You are not allowed to access this resource."),
    404: ("invalid_request_error", None, "Not found."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request."),
}
_ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Rate limited. Please try again later."),
    500: ("api_error", "Internal server error."),
    529: ("overloaded_error", "Overloaded"),
}


def _openai_error(status: int, message: str | None, param: str | None = None) -> dict[str, Any]:
    kind, code, default = (
        _OPENAI_ERRORS.get(status) or _OPENAI_ERRORS[500 if status >= 500 else 400]
    )
    if status == 404 and param == "model":
        code = "model_not_found"
    return {"message": message or default, "type": kind, "param": param, "code": code}


def _anthropic_error(status: int, message: str | None) -> dict[str, Any]:
    kind, default = (
        _ANTHROPIC_ERRORS.get(status) or _ANTHROPIC_ERRORS[500 if status >= 500 else 400]
    )
    return {"type": "error", "error": {"type": kind, "message": message or default}}


def _error_reply(
    provider: _Provider,
    status: int,
    message: str | None,
    *,
    body: Any = None,
    param: str | None = None,
) -> _Reply:
    if body is None:
        if provider == "anthropic":
            body = _anthropic_error(status, message)
        else:
            body = {"error": _openai_error(status, message, param)}
    return _json_reply(status, body)


def _chat_error(fault: _Fault, index: int) -> bytes:
    if fault.body is not None:
        return _sse(fault.body)
    return _sse({"error": _openai_error(fault.status, fault.message)})


def _responses_error(fault: _Fault, index: int) -> bytes:
    if fault.body is not None:
        return _sse(fault.body, "error")
    error = _openai_error(fault.status, fault.message)
    data = {
        "type": "error",
        "code": error["code"] or error["type"],
        "message": error["message"],
        "param": None,
        "sequence_number": index,  # one event per frame, numbered from 0
    }
    return _sse(data, "error")


def _anthropic_event_error(fault: _Fault, index: int) -> bytes:
    if fault.body is not None:
        return _sse(fault.body, "error")
    return _sse(_anthropic_error(fault.status, fault.message), "error")


def _chat_events(
    base: dict[str, Any], gen: _Generation, finish: str, usage: dict[str, Any] | None
) -> _Frames:
    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        data = {**base, "choices": [choice]}
        if usage is not None:
            # with include_usage, OpenAI sends "usage": null on every chunk but the last
            data["usage"] = None
        return _sse(data)

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for piece in gen.pieces:
        yield chunk({"content": piece})
    yield chunk({}, finish)
    if usage is not None:
        yield _sse({**base, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class _ResponseIds:
    response: str
    message: str
    reasoning: str


def _responses_output(gen: _Generation, ids: _ResponseIds, *, done: bool) -> list[dict[str, Any]]:
    output: list[dict[str, Any]] = []
    if gen.reasoning_tokens:
        output.append({"id": ids.reasoning, "type": "reasoning", "summary": []})
    status = ("incomplete" if gen.truncated else "completed") if done else "in_progress"
    content = [{"type": "output_text", "text": gen.text, "annotations": [], "logprobs": []}]
    output.append(
        {
            "id": ids.message,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content if done else [],
        }
    )
    return output


def _finished_response(
    response: dict[str, Any], gen: _Generation, ids: _ResponseIds
) -> dict[str, Any]:
    return {
        **response,
        "status": "incomplete" if gen.truncated else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if gen.truncated else None,
        "output": _responses_output(gen, ids, done=True),
        "usage": {
            "input_tokens": gen.prompt_tokens,
            "input_tokens_details": {
                "cached_tokens": gen.cached_tokens,
                "cache_write_tokens": gen.cache_write_tokens,
            },
            "output_tokens": gen.output_tokens,
            "output_tokens_details": {"reasoning_tokens": gen.reasoning_tokens},
            "total_tokens": gen.prompt_tokens + gen.output_tokens,
        },
    }


def _responses_events(response: dict[str, Any], gen: _Generation, ids: _ResponseIds) -> _Frames:
    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        data = {"type": kind, **fields, "sequence_number": sequence}
        sequence += 1
        return _sse(data, kind)

    yield event("response.created", response=response)
    yield event("response.in_progress", response=response)
    final = _finished_response(response, gen, ids)
    *reasoning, message = final["output"]
    for index, item in enumerate(reasoning):
        yield event("response.output_item.added", output_index=index, item=item)
        yield event("response.output_item.done", output_index=index, item=item)
    index = len(reasoning)
    started = _responses_output(gen, ids, done=False)[-1]
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    where = {"item_id": ids.message, "output_index": index, "content_index": 0}
    yield event("response.output_item.added", output_index=index, item=started)
    yield event("response.content_part.added", **where, part=part)
    for piece in gen.pieces:
        yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
    yield event("response.output_text.done", **where, text=gen.text, logprobs=[])
    yield event("response.content_part.done", **where, part={**part, "text": gen.text})
    yield event("response.output_item.done", output_index=index, item=message)
    kind = "response.incomplete" if gen.truncated else "response.completed"
    yield event(kind, response=final)


def _anthropic_events(message: dict[str, Any], gen: _Generation) -> _Frames:
    usage = message["usage"]
    # message_start carries the input side; output_tokens there is provisional.
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    yield _sse({"type": "message_start", "message": start}, "message_start")
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    yield _sse(block, "content_block_start")
    yield _sse({"type": "ping"}, "ping")
    for piece in gen.pieces:
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": piece},
        }
        yield _sse(delta, "content_block_delta")
    yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    stop = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    output = {key: usage[key] for key in ("output_tokens", "output_tokens_details") if key in usage}
    final = {"type": "message_delta", "delta": stop, "usage": output}
    yield _sse(final, "message_delta")
    yield _sse({"type": "message_stop"}, "message_stop")


def _model_list(provider: _Provider, models: tuple[str, ...]) -> dict[str, Any]:
    data = [_model_entry(provider, model) for model in models]
    if provider == "anthropic":
        return {
            "data": data,
            "has_more": False,
            "first_id": models[0] if models else None,
            "last_id": models[-1] if models else None,
        }
    return {"object": "list", "data": data}


def _model_entry(provider: _Provider, model: str) -> dict[str, Any]:
    if provider == "anthropic":
        return {
            "type": "model",
            "id": model,
            "display_name": model,
            "created_at": "2025-01-01T00:00:00Z",
        }
    return {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "system"}


# -- adapter helpers ------------------------------------------------------------------


async def _asleep(seconds: float) -> None:
    if seconds <= 0:
        return
    try:
        import anyio
    except ImportError:  # pragma: no cover - anyio comes with httpx, httpx2 and starlette
        await asyncio.sleep(seconds)
    else:
        # anyio also runs under trio, which httpx clients support
        await anyio.sleep(seconds)


def _not_injected(record: logging.LogRecord) -> bool:
    return record.exc_info is None or not isinstance(record.exc_info[1], _InjectedDisconnect)


async def _until_disconnect(receive: _Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _lifespan(receive: _Receive, send: _Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _http_library(client_class: type) -> str:
    """``"httpx2"`` or ``"httpx"``: the library an SDK's default HTTP client comes from."""
    for base in client_class.__mro__:
        library = base.__module__.partition(".")[0]
        if library in ("httpx", "httpx2"):
            return library
    return "httpx2"


@functools.cache
def _transport_class(module_name: str) -> Any:
    """The transport class for ``httpx`` or ``httpx2`` (same API, separate classes)."""
    module: Any = importlib.import_module(module_name)

    def interrupted(kind: _FaultKind, request: Any, *, started: bool) -> Exception:
        if kind == "timeout":
            error: Exception = module.ReadTimeout("timed out", request=request)
        elif started:
            error = module.RemoteProtocolError(
                "peer closed connection without sending complete message body", request=request
            )
        else:
            error = module.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        return error

    class Body(module.SyncByteStream, module.AsyncByteStream):  # type: ignore[misc]
        # Frames are produced one at a time as the client reads: a real stream.
        def __init__(self, reply: _Reply, request: Any) -> None:
            self._frames = reply.frames()
            self._request = request

        def __iter__(self) -> Iterator[bytes]:
            try:
                for delay, frame in self._frames:
                    if delay:
                        time.sleep(delay)
                    yield frame
            except _Interrupted as exc:
                raise interrupted(exc.kind, self._request, started=True) from None

        async def __aiter__(self) -> AsyncIterator[bytes]:
            try:
                for delay, frame in self._frames:
                    await _asleep(delay)
                    yield frame
            except _Interrupted as exc:
                raise interrupted(exc.kind, self._request, started=True) from None

        def close(self) -> None:
            self._frames.close()

        async def aclose(self) -> None:
            self._frames.close()

    class Transport(module.BaseTransport, module.AsyncBaseTransport):  # type: ignore[misc]
        def __init__(self, upstream: FakeUpstream) -> None:
            self._upstream = upstream

        def _exchange(self, request: Any) -> _Reply:
            return self._upstream._exchange(
                request.method,
                request.url.path,
                request.url.query.decode("ascii"),
                request.headers.multi_items(),
                request.content,
            )

        def _response(self, reply: _Reply, request: Any) -> Any:
            cut = reply.cut_before_response
            if cut is not None:
                raise interrupted(cut.kind, request, started=False)
            return module.Response(
                reply.status, headers=reply.headers, stream=Body(reply, request), request=request
            )

        def handle_request(self, request: Any) -> Any:
            request.read()
            reply = self._exchange(request)
            if reply.latency:
                time.sleep(reply.latency)
            return self._response(reply, request)

        async def handle_async_request(self, request: Any) -> Any:
            await request.aread()
            reply = self._exchange(request)
            await _asleep(reply.latency)
            return self._response(reply, request)

    return Transport


@contextlib.contextmanager
def serve_asgi(app: Any, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a loopback socket in a background thread.

    For tests that need real HTTP (an SDK over sockets, client disconnects, first-byte
    timing). Needs ``uvicorn`` (the ``fastapi``/``gateway`` extras).

    Args:
        app: the ASGI application.
        host: IPv4 address to listen on.
        port: TCP port; ``0`` picks a free one.

    Yields:
        The base URL, e.g. ``http://127.0.0.1:54321``.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # accepted connections inherit it: no 40 ms Nagle/delayed-ACK stall between writes
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    config = uvicorn.Config(
        app,
        log_config=None,  # leave the host application's logging alone
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="metered-asgi-server", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the ASGI server did not start")
            time.sleep(0.001)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


class SpendCapture:
    """The usage records of the metered calls finished inside :func:`capture_spend`."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    @property
    def calls(self) -> int:
        """Calls finished (settled, released, refused ...)."""
        return len(self.records)

    @property
    def cost(self) -> Decimal:
        """Upstream cost of the settled calls (calls with an unknown cost add nothing)."""
        return sum((r.cost for r in self.records if r.cost is not None), Decimal(0))

    @property
    def price(self) -> Decimal:
        """What the settled calls were charged."""
        return sum((r.settlement_amount for r in self.records if r.payment_settled), Decimal(0))

    def by_model(self) -> dict[str, Decimal]:
        """Charged amount per requested model."""
        out: dict[str, Decimal] = {}
        for r in self.records:
            if r.payment_settled and r.requested_model is not None:
                out[r.requested_model] = (
                    out.get(r.requested_model, Decimal(0)) + r.settlement_amount
                )
        return out


@contextlib.contextmanager
def capture_spend() -> Iterator[SpendCapture]:
    """Collect the usage record of every metered call finished in this context.

    Works with any meter and any door (client proxies, middleware), including calls made
    in asyncio tasks started inside the block::

        with capture_spend() as spend:
            client.chat.completions.create(model="gpt-4o", messages=[...])
        assert spend.calls == 1 and spend.price > 0
    """
    capture = SpendCapture()
    token = _context_vars._captured.set(capture.records)
    try:
        yield capture
    finally:
        _context_vars._captured.reset(token)
