"""Anthropic Messages: responses, stream events and their usage.

Usage: Anthropic reports ``cache_read_input_tokens`` and ``cache_creation_input_tokens``
*beside* ``input_tokens``; the total input is their sum. Thinking is billed as output and
is already inside ``output_tokens``. Finish reasons are the provider's ``stop_reason``
values (``end_turn``, ``max_tokens``, ``tool_use``, ``refusal`` ...).

Streams: ``message_start`` carries the input side and a provisional output count;
``message_delta`` carries the final, cumulative output count (and, on newer API
versions, the input side again); ``message_stop`` ends the stream. Delivered output of a
stream cut short: text, thinking and tool-input JSON deltas, all billed as output.
"""

from __future__ import annotations

import json
from typing import Any

from metered.providers._common import (
    Outcome,
    StreamReader,
    add_text,
    as_int,
    error_message,
    get,
    normalised,
    reader,
    string,
    whole,
)
from metered.providers.messages import Transcript
from metered.usage import Usage

__all__ = [
    "AnthropicStream",
    "AnthropicStreamUsage",
    "finish_reasons",
    "from_anthropic",
    "message_text",
    "read",
]

_ANTHROPIC_USAGE = reader(
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
    "output_tokens_details",
    "cache_creation",
    "server_tool_use.web_search_requests",
    "service_tier",
)
_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation",
    "output_tokens_details",
    "server_tool_use",
    "service_tier",
)
#: The ``content_block_delta`` fields that hold billed output, by delta type.
_DELTA_FIELDS = ("text", "thinking", "partial_json")


def _anthropic_usage(usage: Any) -> Usage:
    base, cache_read, cache_write, output, output_details, cache_creation, searches, tier = (
        _ANTHROPIC_USAGE(usage)
    )
    cache_read = as_int(cache_read)
    cache_write = as_int(cache_write)
    return normalised(
        as_int(base) + cache_read + cache_write,
        output,
        cache_read,
        cache_write,
        get(output_details, "thinking_tokens"),
        get(cache_creation, "ephemeral_1h_input_tokens"),
        web_searches=searches,
        service_tier=tier,
    )


def from_anthropic(message: Any) -> Usage | None:
    """Usage of an Anthropic Messages response (SDK object or JSON dict)."""
    usage = get(message, "usage")
    return None if usage is None else _anthropic_usage(usage)


def finish_reasons(message: Any) -> list[str]:
    """The message's ``stop_reason``, if it has one."""
    reason = get(message, "stop_reason")
    return [reason] if isinstance(reason, str) else []


def read(message: Any) -> Outcome:
    """Usage, model, id and stop reason of a whole Anthropic message."""
    return whole(message, from_anthropic(message), finish_reasons(message), delivered)


def delivered(message: Any) -> list[str]:
    """The billed output of a whole message: text, thinking and tool inputs (as JSON)."""
    pieces = message_text(message)
    blocks = get(message, "content")
    for block in blocks if isinstance(blocks, list) else ():
        if get(block, "type") in ("tool_use", "server_tool_use"):
            add_text(pieces, get(block, "name"))
            tool_input = get(block, "input")
            if tool_input is not None:
                add_text(pieces, json.dumps(_plain(tool_input), separators=(",", ":")))
    return pieces


def _plain(value: Any) -> Any:
    # an SDK block's input is already a dict; a pydantic model dumps to one
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else value


def message_text(message: Any) -> list[str]:
    """The billed output pieces of a (partial) message's content blocks: text, thinking
    and tool input (as the SDK's snapshot accumulates it)."""
    pieces: list[str] = []
    blocks = get(message, "content")
    for block in blocks if isinstance(blocks, list) else ():
        for name in ("text", "thinking"):
            piece = get(block, name)
            if isinstance(piece, str) and piece:
                pieces.append(piece)
    return pieces


class AnthropicStreamUsage:
    """Accumulates usage from Anthropic stream events (the latest value of each field wins).

    Attributes:
        seen: a usage-bearing event was fed.
    """

    __slots__ = ("_fields", "seen")

    def __init__(self) -> None:
        self._fields: dict[str, Any] = {}
        self.seen = False

    def feed(self, event: Any) -> None:
        """Take one stream event (SDK object or dict); other event types are ignored."""
        kind = get(event, "type")
        if kind == "message_start":
            usage = get(get(event, "message"), "usage")
        elif kind == "message_delta":
            usage = get(event, "usage")
        else:
            return
        if usage is None:
            return
        self.seen = True
        for name in _USAGE_FIELDS:
            value = get(usage, name)
            if value is not None:
                self._fields[name] = value

    def usage(self) -> Usage | None:
        """The usage so far, or ``None`` if no usage-bearing event was seen."""
        return _anthropic_usage(self._fields) if self.seen else None


class AnthropicStream(StreamReader):
    """Reads Anthropic stream events; see :class:`~metered.providers.StreamReader`."""

    __slots__ = ("_usage",)

    def __init__(self, *, model: str = "", strip_usage: bool = False) -> None:
        super().__init__(model=model, strip_usage=strip_usage)
        self._usage = AnthropicStreamUsage()

    def read(self, event: Any) -> bool:
        kind = get(event, "type")
        out = self.outcome
        if self.transcript is not None:
            _transcribe(self.transcript, kind, event)
        if kind == "content_block_delta":
            delta = get(event, "delta")
            for name in _DELTA_FIELDS:
                self.add(get(delta, name))
        elif kind == "message_start":
            self._usage.feed(event)
            message = get(event, "message")
            out.response_model = string(get(message, "model"))
            out.response_id = string(get(message, "id"))
            self.input_usage = self._usage.usage()
        elif kind == "message_delta":
            self._usage.feed(event)
            # message_delta carries the final, cumulative output count
            out.usage = self._usage.usage()
            reason = get(get(event, "delta"), "stop_reason")
            if isinstance(reason, str):
                out.finish_reasons[:] = [reason]
        elif kind == "message_stop":
            out.complete = True
        elif kind == "error":
            out.error = error_message(get(event, "error"))
        return True


_TRANSCRIPT_DELTAS = (("text", "text"), ("thinking", "reasoning"))


def _transcribe(transcript: Transcript, kind: Any, event: Any) -> None:
    index = get(event, "index")
    if kind == "content_block_start":
        block = get(event, "content_block")
        if get(block, "type") in ("tool_use", "server_tool_use"):
            transcript.tool(index, call_id=get(block, "id"), name=get(block, "name"))
    elif kind == "content_block_delta":
        delta = get(event, "delta")
        for name, part in _TRANSCRIPT_DELTAS:
            transcript.text(get(delta, name), kind=part)
        partial = get(delta, "partial_json")
        if isinstance(partial, str):
            transcript.tool(index, args=partial)
