"""What a client proxy sees of one response: thin shells over :mod:`metered.providers`.

An observer pairs a wire format's reader with what only the proxies need: hiding the
usage chunk metered asked for, the raw body being read past the proxy (``opaque``), and
the ``Call.finish`` arguments of a whole (non-streamed) response. All the reading (usage,
finish reasons, delivered text) is the format's, the same code the HTTP doors run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from metered.providers import (
    ANTHROPIC,
    CHAT,
    RESPONSES,
    Format,
    Outcome,
    StreamReader,
    settled_usage,
)
from metered.providers.anthropic import message_text

if TYPE_CHECKING:
    from metered.engine.call import Call

__all__ = [
    "AnthropicObserver",
    "AnthropicSnapshotObserver",
    "ChatObserver",
    "ResponsesObserver",
    "StreamObserver",
]


class StreamObserver:
    """Watches one stream's items through the format's :class:`StreamReader`.

    Args:
        hide_usage: hide the chat usage-only chunk (``choices == []``), because metered
            asked for it with ``stream_options.include_usage`` and the caller did not.

    Attributes:
        reader: the format's stream reader (usage, finish reasons, delivered text).
        seen: an item was observed (the first one marks the call's first chunk).
        opaque: the body was consumed raw (``iter_lines()`` ...): nothing could be seen.
    """

    __slots__ = ("opaque", "reader", "seen")

    #: The wire format this observer reads.
    format: ClassVar[Format]

    def __init__(self, *, hide_usage: bool = False) -> None:
        self.reader: StreamReader = self.format.stream(strip_usage=hide_usage)
        self.seen = False
        self.opaque = False

    @property
    def outcome(self) -> Outcome:
        """What the stream said so far."""
        return self.reader.outcome

    @classmethod
    def finish_args(cls, call: Call, response: Any, *, status: int | None = 200) -> dict[str, Any]:
        """``Call.finish`` keyword arguments for a whole response of this format (one that
        reports no usage is counted: see :func:`~metered.providers.settled_usage`)."""
        out = cls.format.read(response)
        return {
            "usage": settled_usage(out, call.model or "", call.prompt_tokens),
            "response": response,
            "status": status,
            "response_model": out.response_model,
            "response_id": out.response_id,
            "finish_reasons": tuple(out.finish_reasons),
            "attributes": out.attributes,
        }

    def feed(self, item: Any) -> bool:
        """Take one stream item; return ``False`` to hide it from the caller."""
        return self.reader.feed(item)

    def conclude(self) -> None:
        """Called once before settling; observers that read a snapshot do it here."""


class ChatObserver(StreamObserver):
    """OpenAI Chat Completions chunks."""

    __slots__ = ()
    format = CHAT


class ResponsesObserver(StreamObserver):
    """OpenAI Responses API stream events."""

    __slots__ = ()
    format = RESPONSES


class AnthropicObserver(StreamObserver):
    """Anthropic Messages stream events."""

    __slots__ = ()
    format = ANTHROPIC


class AnthropicSnapshotObserver(AnthropicObserver):
    """``messages.stream()`` streams: the SDK's message snapshot is the source of truth.

    The caller may consume the stream through paths that bypass the proxy
    (``get_final_message()``, ``until_done()``), so on settling the snapshot the SDK
    accumulated from every event it read is used, read by the same Anthropic reader.
    """

    __slots__ = ("_stream",)

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self._stream = stream

    def conclude(self) -> None:
        reader = self.reader
        if reader.outcome.usage is not None:
            return
        try:
            snapshot = self._stream.current_message_snapshot
        except Exception:  # no event was read at all
            return
        read = ANTHROPIC.read(snapshot)
        out = reader.outcome
        out.response_model, out.response_id = read.response_model, read.response_id
        if read.finish_reasons:  # message_delta was read: the output count is final
            out.usage = read.usage
            out.finish_reasons[:] = read.finish_reasons
            return
        reader.input_usage = read.usage
        # the proxy may have seen none of the deltas: count the snapshot's text instead
        fresh = ANTHROPIC.stream(model=reader.model)
        for piece in message_text(snapshot):
            fresh.add(piece)
        fresh.outcome, fresh.input_usage = out, read.usage
        self.reader = fresh
