"""Content capture: the messages of a call on its span or in an event, as the GenAI
semantic conventions define them, off unless asked for.

The mode follows ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` (the variable the
official GenAI instrumentations read): ``NO_CONTENT`` (the default), ``SPAN_ONLY``,
``EVENT_ONLY`` or ``SPAN_AND_EVENT``, case-insensitive; ``true`` / ``false`` are read as
``SPAN_ONLY`` / ``NO_CONTENT``. The config's ``telemetry.capture_content`` overrides it
(``true``, ``false`` or a mode).

On the span, ``gen_ai.input.messages``, ``gen_ai.output.messages`` and
``gen_ai.system_instructions`` are JSON strings; in the event
(``gen_ai.client.inference.operation.details``, a log record parented to the span) they
are structured values beside the span's GenAI attributes. Each is bounded by
``content_max_chars`` characters of text; no header, key or URL query is ever included.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from metered.providers import FORMATS, Bound, Message, StreamReader
from metered.semconv import ATTR

__all__ = ["ENV", "EVENT_DETAILS", "CaptureMode", "Content", "capture_mode", "content_of"]

logger = logging.getLogger("metered")

#: The environment variable the official GenAI instrumentations read.
ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
#: The event that carries the content when the mode asks for events.
EVENT_DETAILS = "gen_ai.client.inference.operation.details"

CaptureMode = Literal["no_content", "span_only", "event_only", "span_and_event"]
_MODES: tuple[CaptureMode, ...] = ("no_content", "span_only", "event_only", "span_and_event")


def capture_mode(setting: bool | str | None = None) -> CaptureMode:
    """The content capture mode: ``setting`` (the config's) when given, else the
    environment variable's; anything unknown captures nothing (and is logged)."""
    value: bool | str | None = setting
    if value is None:
        value = os.environ.get(ENV, "").strip()
    if value is True:
        return "span_only"
    if value is False or value == "":
        return "no_content"
    text = str(value).lower()
    if text == "true":
        return "span_only"
    if text == "false":
        return "no_content"
    for mode in _MODES:
        if text == mode:
            return mode
    logger.warning("metered: %r is no content capture mode; capturing nothing", value)
    return "no_content"


def spans_content(mode: CaptureMode) -> bool:
    """Whether ``mode`` puts content on spans."""
    return mode in ("span_only", "span_and_event")


def events_content(mode: CaptureMode) -> bool:
    """Whether ``mode`` emits content events."""
    return mode in ("event_only", "span_and_event")


@dataclass(frozen=True, slots=True)
class Content:
    """The messages of one call, in the conventions' shape."""

    system: list[dict[str, Any]]
    inputs: list[Message]
    outputs: list[Message]

    def structured(self) -> dict[str, Any]:
        """The content attributes, as structured values (for events); empty ones left out."""
        pairs = (
            (ATTR.INPUT_MESSAGES, self.inputs),
            (ATTR.OUTPUT_MESSAGES, self.outputs),
            (ATTR.SYSTEM_INSTRUCTIONS, self.system),
        )
        return {name: value for name, value in pairs if value}

    def as_json(self) -> dict[str, str]:
        """The content attributes as JSON strings (for spans)."""
        return {
            name: json.dumps(value, separators=(",", ":"), ensure_ascii=False)
            for name, value in self.structured().items()
        }


def content_of(api: str, body: Mapping[str, Any], output: Any, limit: int) -> Content:
    """The content of a call: the request ``body`` as sent, and what came back
    (``output``: the stream reader, or the whole response as an SDK object, a JSON dict
    or its bytes; ``None`` when nothing did), each side bounded by ``limit`` characters."""
    fmt = FORMATS[api]
    system, inputs = fmt.input_messages(body, Bound(limit))
    outputs: list[Message] = []
    if isinstance(output, StreamReader):
        if output.transcript is not None:
            outputs = output.transcript.messages(output.outcome.finish_reasons)
    elif output is not None:
        if isinstance(output, bytes | bytearray):
            try:
                output = json.loads(output)
            except ValueError:
                output = None
        if output is not None:
            outputs = fmt.output_messages(output, Bound(limit))
    return Content(system, inputs, outputs)
