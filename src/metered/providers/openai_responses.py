"""OpenAI Responses API: responses, stream events and their usage.

Usage: ``input_tokens`` includes ``input_tokens_details.cached_tokens`` and
``output_tokens`` includes ``output_tokens_details.reasoning_tokens``.

Finish reasons: a Responses response has a ``status``, not a finish reason. metered maps
it to the Chat Completions vocabulary the GenAI semantic conventions use for
``gen_ai.response.finish_reasons``, so one dashboard reads both OpenAI APIs alike:
``completed`` -> ``stop``; ``incomplete`` -> ``incomplete_details.reason``
(``max_output_tokens``, ``content_filter``), or ``incomplete`` without one; any other
status (``failed``, ``cancelled``) is kept as it is. The same mapping serves JSON bodies,
SDK objects and the final stream event.

Delivered output of a stream cut short: output text, refusal, function-call arguments
and reasoning (text and summary) deltas, all billed as output tokens.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from metered.providers._common import (
    Outcome,
    StreamReader,
    add_text,
    error_message,
    get,
    normalised,
    reader,
    served_tier,
    string,
    whole,
)
from metered.providers.messages import Transcript, responses_output
from metered.usage import Usage

__all__ = [
    "ResponsesStream",
    "finish_reasons",
    "from_openai_responses",
    "from_openai_responses_event",
    "read",
    "responses_usage",
    "with_tier",
]

_RESPONSES_USAGE = reader(
    "input_tokens",
    "output_tokens",
    "input_tokens_details.cached_tokens",
    "input_tokens_details.cache_write_tokens",
    "output_tokens_details.reasoning_tokens",
)
#: Stream events whose ``delta`` is output the provider bills.
DELTA_EVENTS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta",
    }
)
#: Stream events that end the response and carry it whole, usage included.
FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def responses_usage(usage: Any) -> Usage:
    """The Usage of a Responses ``usage`` object (SDK object or dict)."""
    input_total, output_total, cached, cache_write, reasoning = _RESPONSES_USAGE(usage)
    return normalised(input_total, output_total, cached, cache_write, reasoning)


def from_openai_responses(response: Any) -> Usage | None:
    """Usage of an OpenAI Responses API response (SDK object or JSON dict), priced at
    the service tier the response says served it."""
    usage = get(response, "usage")
    if usage is None:
        return None
    counted = with_tier(responses_usage(usage), get(response, "service_tier"))
    searches = _web_searches(response)
    return replace(counted, web_search_requests=searches) if searches else counted


def _web_searches(response: Any) -> int:
    """The web searches the response ran (one ``web_search_call`` output item each, each
    billed per call by the web search tool's price)."""
    items = get(response, "output")
    if not isinstance(items, list):
        return 0
    return sum(1 for item in items if get(item, "type") == "web_search_call")


def with_tier(usage: Usage, tier: Any) -> Usage:
    """``usage`` served at ``tier`` (unchanged for a standard tier: no copy)."""
    served = served_tier(tier)
    if served is None:
        return usage
    if served == "batch":
        return replace(usage, batch=True)
    return replace(usage, service_tier=served)


def from_openai_responses_event(event: Any) -> Usage | None:
    """Usage from a Responses stream event (``response.completed`` and friends)."""
    kind = get(event, "type")
    if isinstance(kind, str) and kind in FINAL_EVENTS:
        return from_openai_responses(get(event, "response"))
    return None


def finish_reasons(response: Any) -> list[str]:
    """The response's status in the finish-reason vocabulary (see the module doc)."""
    status = get(response, "status")
    if status == "completed":
        return ["stop"]
    if status == "incomplete":
        reason = get(get(response, "incomplete_details"), "reason")
        return [reason if isinstance(reason, str) else "incomplete"]
    return [status] if isinstance(status, str) else []


def read(response: Any) -> Outcome:
    """Usage, model, id and finish reasons of a whole Responses API response."""
    out = whole(response, from_openai_responses(response), finish_reasons(response), delivered)
    _service_tier(response, out)
    return out


def _service_tier(response: Any, out: Outcome) -> None:
    tier = get(response, "service_tier")
    if isinstance(tier, str) and tier:
        out.attributes["openai.response.service_tier"] = tier


def delivered(response: Any) -> list[str]:
    """The billed output items: message text and refusals, reasoning summaries and text,
    function and custom tool calls (what the stream's delta events carry)."""
    pieces: list[str] = []
    items = get(response, "output")
    for item in items if isinstance(items, list) else ():
        add_text(pieces, get(item, "name"))
        add_text(pieces, get(item, "arguments"))
        add_text(pieces, get(item, "input"))
        for key in ("content", "summary"):
            parts = get(item, key)
            for part in parts if isinstance(parts, list) else ():
                add_text(pieces, get(part, "text"))
                add_text(pieces, get(part, "refusal"))
    return pieces


class ResponsesStream(StreamReader):
    """Reads Responses API stream events; see :class:`~metered.providers.StreamReader`."""

    __slots__ = ()

    def read(self, event: Any) -> bool:
        kind = get(event, "type")
        if not isinstance(kind, str):
            return True
        out = self.outcome
        transcript = self.transcript
        if transcript is not None:
            _transcribe(transcript, kind, event)
        if kind in DELTA_EVENTS:
            self.add(get(event, "delta"))
        elif kind in FINAL_EVENTS:
            response = get(event, "response")
            out.usage = from_openai_responses(response)
            out.complete = True
            out.finish_reasons[:] = finish_reasons(response)
            model = string(get(response, "model"))
            rid = string(get(response, "id"))
            out.response_model = model if model is not None else out.response_model
            out.response_id = rid if rid is not None else out.response_id
            _service_tier(response, out)
        elif kind == "response.created" and out.response_id is None:
            response = get(event, "response")
            out.response_model = string(get(response, "model"))
            out.response_id = string(get(response, "id"))
        elif kind == "error":
            out.error = error_message(event)
        return True


_TRANSCRIPT_TEXT = {
    "response.output_text.delta": "text",
    "response.refusal.delta": "text",
    "response.reasoning_summary_text.delta": "reasoning",
    "response.reasoning_text.delta": "reasoning",
}


def _transcribe(transcript: Transcript, kind: str, event: Any) -> None:
    text = _TRANSCRIPT_TEXT.get(kind)
    if text is not None:
        transcript.text(get(event, "delta"), kind=text)
    elif kind == "response.function_call_arguments.delta":
        transcript.tool(get(event, "item_id"), args=get(event, "delta"))
    elif kind == "response.output_item.added":
        item = get(event, "item")
        if get(item, "type") == "function_call":
            transcript.tool(get(item, "id"), call_id=get(item, "call_id"), name=get(item, "name"))
    elif kind in FINAL_EVENTS:
        transcript.final = responses_output(get(event, "response"), transcript.bound())
