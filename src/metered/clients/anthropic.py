"""Metered Anthropic clients: wrap one ``Anthropic`` / ``AsyncAnthropic`` object, nothing else.

Usage stays one line::

    client = MeteredAnthropic(Anthropic())
    client = MeteredAnthropic(Anthropic(), meter=meter, account="team-a")

Metered: ``messages.create`` (streamed or not), ``messages.parse``, ``messages.stream()``,
the same under ``beta.messages``, and ``with_raw_response`` / ``with_streaming_response``
of ``create``. Everything else (``models``, ``messages.count_tokens``, ``batches`` ...) is
the SDK's own object, untouched; ``with_options()``/``copy()`` return a metered client and
``isinstance(client, Anthropic)`` stays true. No SDK class or module is patched.

Who pays follows the same precedence as :mod:`metered.clients.openai`: per-call
``extra_headers={"x-metered-account": ...}`` (also ``-tier``, ``-feature``, ``-route``,
``-urgent``; removed before sending) > the proxy's ``account=`` ... > the bound context >
the meter's default account. ``metadata.user_id`` is sent to Anthropic as usual and is not
taken as the account: it identifies an end user to Anthropic, not a payer to metered.

Streams: ``create(stream=True)`` is metered from the events read (``message_start`` gives
the input side, ``message_delta`` the final output count). ``messages.stream()`` sends
nothing until its ``with`` block is entered, so metering (and a refusal) starts there too;
on leaving the block the call is settled from the SDK's message snapshot, whichever way
the stream was read (iteration, ``text_stream``, ``get_final_message()``). A stream left
early settles the text delivered, counted locally.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from metered.clients.adapter import SDK_OPTIONS, Endpoint, abegin, ainvoke, begin, invoke
from metered.clients.observers import AnthropicObserver, AnthropicSnapshotObserver
from metered.clients.proxy import MeteredClient, Node, async_method, child, method
from metered.clients.streams import AsyncMeteredStream, MeteredStream
from metered.clients.tally import Tally

__all__ = ["MeteredAnthropic", "MeteredAsyncAnthropic"]

_MESSAGES = Endpoint(api="anthropic", observer=AnthropicObserver)
# keyword arguments the SDK turns into headers, not body fields
_OPTIONS = SDK_OPTIONS | {"betas", "user_profile_id", "workspace_id"}


def _texts(event: Any) -> str | None:
    if event.type == "content_block_delta" and event.delta.type == "text_delta":
        text: str = event.delta.text
        return text
    return None


class _MessageStream(MeteredStream):
    """``MessageStream`` of ``messages.stream()``: iteration is watched, the rest is the SDK's."""

    @property
    def text_stream(self) -> Iterator[str]:
        """The text deltas, read through the metered stream."""
        return (text for event in self if (text := _texts(event)) is not None)


class _AsyncMessageStream(AsyncMeteredStream):
    """``AsyncMessageStream`` of ``messages.stream()``."""

    @property
    def text_stream(self) -> AsyncIterator[str]:
        """The text deltas, read through the metered stream."""
        return (text async for event in self if (text := _texts(event)) is not None)


class _StreamManager:
    """What ``messages.stream()`` returns: metering begins when the block is entered.

    The SDK's manager sends nothing before ``__enter__`` either; beginning there means a
    manager that is never entered holds no budget.
    """

    def __init__(self, node: Node, kwargs: dict[str, Any]) -> None:
        self._node = node
        self._kwargs = kwargs
        self._manager: Any = None
        self._stream: Any = None

    def _open(self, kwargs: dict[str, Any]) -> Any:
        kwargs.pop("stream", None)  # the engine's marker; the SDK's stream() takes no such kwarg
        self._manager = self._node.__wrapped__.stream(**kwargs)
        return self._manager

    def _enter(self, **kwargs: Any) -> Any:
        return self._open(kwargs).__enter__()

    async def _aenter(self, **kwargs: Any) -> Any:
        return await self._open(kwargs).__aenter__()

    def __enter__(self) -> Any:
        call, prepared = begin(self._node._self_ctx, _MESSAGES, {**self._kwargs, "stream": True})
        stream = invoke(call, self._enter, prepared.options)
        tally = Tally(call, AnthropicSnapshotObserver(stream), close=stream.close)
        self._stream = _MessageStream(stream, tally)
        return self._stream

    def __exit__(self, *exc_info: Any) -> None:
        try:
            if self._manager is not None:
                self._manager.__exit__(*exc_info)
        finally:
            if self._stream is not None:
                self._stream.close()

    async def __aenter__(self) -> Any:
        kwargs = {**self._kwargs, "stream": True}
        call, prepared = await abegin(self._node._self_ctx, _MESSAGES, kwargs)
        stream = await ainvoke(call, self._aenter, prepared.options)
        tally = Tally(call, AnthropicSnapshotObserver(stream))
        self._stream = _AsyncMessageStream(stream, tally)
        return self._stream

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            if self._manager is not None:
                await self._manager.__aexit__(*exc_info)
        finally:
            if self._stream is not None:
                await self._stream.close()


def _stream(self: Node, **kwargs: Any) -> _StreamManager:
    """The SDK's ``messages.stream()``, metered from the moment its block is entered."""
    return _StreamManager(self, kwargs)


class _Messages(Node):
    create = method("create", _MESSAGES)
    parse = method("parse", _MESSAGES)
    stream = _stream


class _AsyncMessages(Node):
    create = async_method("create", _MESSAGES)
    parse = async_method("parse", _MESSAGES)
    stream = _stream


class _Beta(Node):
    messages = child("messages", _Messages)


class _AsyncBeta(Node):
    messages = child("messages", _AsyncMessages)


class MeteredAnthropic(MeteredClient):
    """An ``anthropic.Anthropic`` client whose messages calls are metered.

    Args:
        client: the ``Anthropic`` client to meter (it is not modified).
        meter: the engine; default a shared ``Meter()`` (see
            :func:`metered.clients.default_meter`).
        account / tier / feature / route: who pays and under which rules, for every call
            of this client (per-call headers override; unset items come from the bound
            context).
        urgent: raise the tier's output cap for this client's calls.

    Example::

        client = MeteredAnthropic(Anthropic(), meter=meter, account="team-a")
        client.messages.create(model="claude-sonnet-4-5", max_tokens=512, messages=[...])
    """

    _provider = "anthropic"
    _options = _OPTIONS
    messages = child("messages", _Messages)
    beta = child("beta", _Beta)


class MeteredAsyncAnthropic(MeteredClient):
    """An ``anthropic.AsyncAnthropic`` client whose messages calls are metered (see
    :class:`MeteredAnthropic`)."""

    _async = True
    _provider = "anthropic"
    _options = _OPTIONS
    messages = child("messages", _AsyncMessages)
    beta = child("beta", _AsyncBeta)
