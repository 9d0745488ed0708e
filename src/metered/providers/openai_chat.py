"""OpenAI Chat Completions: responses, stream chunks and their usage.

Usage: ``prompt_tokens`` already includes ``prompt_tokens_details.cached_tokens`` and
``completion_tokens`` includes ``completion_tokens_details.reasoning_tokens``, so they
are the totals :class:`~metered.usage.Usage` wants. Finish reasons are the provider's
own ``choices[].finish_reason`` values (``stop``, ``length``, ``tool_calls``,
``content_filter``), one per choice, as the GenAI semantic conventions record them.

Delivered output of a stream cut short: content, refusal and tool-call names and
arguments, the text OpenAI bills as completion tokens.
"""

from __future__ import annotations

from typing import Any

from metered.providers._common import (
    Outcome,
    StreamReader,
    add_text,
    error_message,
    get,
    normalised,
    reader,
    string,
    whole,
)
from metered.providers.messages import Transcript
from metered.providers.openai_responses import responses_usage, with_tier
from metered.usage import Usage

__all__ = ["ChatStream", "finish_reasons", "from_openai_chat", "from_openai_chunk", "read"]

_CHAT_USAGE = reader(
    "prompt_tokens",
    "completion_tokens",
    "prompt_tokens_details.cached_tokens",
    "prompt_tokens_details.cache_write_tokens",
    "completion_tokens_details.reasoning_tokens",
)


def chat_usage(usage: Any) -> Usage:
    """The Usage of a chat ``usage`` object (SDK object or dict)."""
    prompt, completion, cached, cache_write, reasoning = _CHAT_USAGE(usage)
    if prompt is None and get(usage, "input_tokens") is not None:
        # some OpenAI-compatible servers answer chat calls with Responses-style names
        return responses_usage(usage)
    return normalised(prompt, completion, cached, cache_write, reasoning)


def from_openai_chat(response: Any) -> Usage | None:
    """Usage of an OpenAI Chat Completions response (SDK object or JSON dict), priced at
    the service tier the response says served it.

    Returns ``None`` when the response carries no usage.
    """
    usage = get(response, "usage")
    if usage is None:
        return None
    counted = chat_usage(usage)
    return with_tier(counted, get(response, "service_tier"))


def from_openai_chunk(chunk: Any) -> Usage | None:
    """Usage carried by a chat stream chunk (the ``include_usage`` final chunk)."""
    return from_openai_chat(chunk)


def finish_reasons(response: Any) -> list[str]:
    """The ``finish_reason`` of every choice that has one."""
    choices = get(response, "choices")
    if not isinstance(choices, list):
        return []
    return [reason for choice in choices if isinstance(reason := get(choice, "finish_reason"), str)]


def read(response: Any) -> Outcome:
    """Usage, model, id and finish reasons of a whole chat completion."""
    out = whole(response, from_openai_chat(response), finish_reasons(response), delivered)
    response_attributes(response, out.attributes)
    return out


def response_attributes(response: Any, into: dict[str, Any]) -> None:
    """OpenAI's response attributes (the official instrumentation's names): the service
    tier that served the call and the backend's system fingerprint."""
    for name in ("service_tier", "system_fingerprint"):
        value = get(response, name)
        if isinstance(value, str) and value:
            into[f"openai.response.{name}"] = value


def delivered(response: Any) -> list[str]:
    """The billed output of every choice: content, refusal, tool-call names and arguments."""
    pieces: list[str] = []
    choices = get(response, "choices")
    for choice in choices if isinstance(choices, list) else ():
        message = get(choice, "message")
        add_text(pieces, get(message, "content"))
        add_text(pieces, get(message, "refusal"))
        calls = get(message, "tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = get(call, "function")
            add_text(pieces, get(function, "name"))
            add_text(pieces, get(function, "arguments"))
    return pieces


class ChatStream(StreamReader):
    """Reads chat completion chunks; see :class:`~metered.providers.StreamReader`.

    With ``strip_usage``, the usage-only chunk (``choices == []``) metered asked for with
    ``stream_options.include_usage`` is reported as not to forward.
    """

    __slots__ = ()

    def read(self, event: Any) -> bool:
        out = self.outcome
        if out.response_id is None:
            out.response_id = string(get(event, "id"))
            out.response_model = string(get(event, "model"))
            response_attributes(event, out.attributes)
        error = get(event, "error")
        if error is not None:
            out.error = error_message(error)
        choices = get(event, "choices")
        if isinstance(choices, list):
            for choice in choices:
                delta = get(choice, "delta")
                if delta is not None and self.transcript is not None:
                    _transcribe(self.transcript, choice, delta)
                if delta is not None:
                    self.add(get(delta, "content"))
                    self.add(get(delta, "refusal"))
                    calls = get(delta, "tool_calls")
                    if isinstance(calls, list):
                        for call in calls:
                            function = get(call, "function")
                            self.add(get(function, "name"))
                            self.add(get(function, "arguments"))
                reason = get(choice, "finish_reason")
                if isinstance(reason, str):
                    out.finish_reasons.append(reason)
        usage = get(event, "usage")
        if usage is not None and (isinstance(usage, dict) or not isinstance(event, dict)):
            # the usage chunk comes after the last content chunk: the reply is complete
            out.usage = with_tier(chat_usage(usage), get(event, "service_tier"))
            out.complete = True
            return not (self.strip and not choices)
        return True


def _transcribe(transcript: Transcript, choice: Any, delta: Any) -> None:
    index = get(choice, "index")
    at = index if type(index) is int else 0
    transcript.text(get(delta, "content"), choice=at)
    transcript.text(get(delta, "refusal"), choice=at)
    calls = get(delta, "tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = get(call, "function")
        transcript.tool(
            get(call, "index"),
            choice=at,
            call_id=get(call, "id"),
            name=get(function, "name"),
            args=get(function, "arguments"),
        )
