"""Google Gemini ``generateContent``: responses, stream chunks and their usage.

One reader for the JSON wire format (camelCase: ``usageMetadata``, ``promptTokenCount``)
and the ``google-genai`` SDK's objects (snake_case: ``usage_metadata``,
``prompt_token_count``): every field is looked up under both names.

Usage (``usageMetadata``), mapped to :class:`~metered.usage.Usage` totals (cached inside
input, reasoning inside output):

* input = ``promptTokenCount`` + ``toolUsePromptTokenCount``. The prompt count already
  includes the cached content ("when cachedContent is set, this is still the total
  effective prompt size meaning this includes the number of tokens in the cached
  content"); tool-use prompt tokens are reported beside it and billed as input;
* cache reads = ``cachedContentTokenCount`` (inside the input);
* output = ``candidatesTokenCount`` + ``thoughtsTokenCount``: thinking is reported beside
  the candidates and billed as output (Gemini API pricing: "output price, including
  thinking tokens");
* reasoning = ``thoughtsTokenCount`` (inside the output).

Sources: the ``UsageMetadata`` reference of the Generative Language API
(https://ai.google.dev/api/generate-content#UsageMetadata) and the pricing page
(https://ai.google.dev/gemini-api/docs/pricing); the bundled genai-prices catalog's own
Google extractor maps the fields the same way (prompt + tool-use prompt → input,
candidates + thoughts → output, thoughts → reasoning, cached content → cache reads).

Finish reasons are the provider's own ``candidates[].finishReason`` values (``STOP``,
``MAX_TOKENS``, ``SAFETY`` ...), one per candidate; a prompt blocked before generation
reports its ``promptFeedback.blockReason``.

Streams (``streamGenerateContent?alt=sse``): each event is a partial
``GenerateContentResponse`` whose parts are deltas; every chunk may carry a running
``usageMetadata``, the one of the chunk that finishes the candidate is final. Delivered
output of a stream cut short: text (thoughts included) and function-call names and
arguments.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

from metered.providers._common import (
    Outcome,
    StreamReader,
    add_text,
    as_int,
    error_message,
    get,
    normalised,
    string,
)
from metered.usage import Usage

__all__ = [
    "GeminiStream",
    "field",
    "finish_reasons",
    "from_gemini",
    "gemini_finish_reason",
    "gemini_usage",
    "parts_of",
    "read",
]

# (JSON name, SDK attribute name) of every field read here
_USAGE = ("usageMetadata", "usage_metadata")
_PROMPT = ("promptTokenCount", "prompt_token_count")
_TOOL_PROMPT = ("toolUsePromptTokenCount", "tool_use_prompt_token_count")
_CACHED = ("cachedContentTokenCount", "cached_content_token_count")
_CANDIDATES = ("candidatesTokenCount", "candidates_token_count")
_THOUGHTS = ("thoughtsTokenCount", "thoughts_token_count")
_FINISH = ("finishReason", "finish_reason")
_FEEDBACK = ("promptFeedback", "prompt_feedback")
_BLOCK = ("blockReason", "block_reason")
_MODEL = ("modelVersion", "model_version")
_ID = ("responseId", "response_id")
_CALL = ("functionCall", "function_call")


def field(obj: Any, names: tuple[str, str]) -> Any:
    """Field ``names`` (JSON name, SDK name) of a JSON dict or an SDK object."""
    value = get(obj, names[0])
    return get(obj, names[1]) if value is None else value


def _enum_text(value: Any) -> str | None:
    # the SDK's enums (FinishReason, BlockedReason) are str enums: keep the wire value
    if isinstance(value, Enum):
        value = value.value
    return string(value)


_FILTERED = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
)


def gemini_finish_reason(reason: Any, tool: bool = False) -> str:
    """The GenAI conventions' finish reason (content capture) for a Gemini
    ``finishReason``: ``STOP`` → ``stop`` (``tool_call`` when the candidate calls a
    function), ``MAX_TOKENS`` → ``length``, the safety stops → ``content_filter``."""
    reason = _enum_text(reason)
    if reason is None:
        return "error"
    if reason == "STOP":
        return "tool_call" if tool else "stop"
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "error" if reason == "MALFORMED_FUNCTION_CALL" else reason.lower()


def gemini_usage(usage: Any) -> Usage:
    """The Usage of a ``usageMetadata`` object (SDK object or dict)."""
    thoughts = as_int(field(usage, _THOUGHTS))
    return normalised(
        as_int(field(usage, _PROMPT)) + as_int(field(usage, _TOOL_PROMPT)),
        as_int(field(usage, _CANDIDATES)) + thoughts,
        field(usage, _CACHED),
        0,
        thoughts,
    )


def from_gemini(response: Any) -> Usage | None:
    """Usage of a Gemini ``GenerateContentResponse`` (SDK object or JSON dict); ``None``
    when it carries no ``usageMetadata``."""
    usage = field(response, _USAGE)
    return None if usage is None else gemini_usage(usage)


def _candidates(response: Any) -> list[Any]:
    candidates = get(response, "candidates")
    return candidates if isinstance(candidates, list) else []


def finish_reasons(response: Any) -> list[str]:
    """The ``finishReason`` of every candidate that has one; a blocked prompt's
    ``blockReason`` when no candidate came back."""
    reasons = [r for c in _candidates(response) if (r := _enum_text(field(c, _FINISH)))]
    if not reasons:
        blocked = _enum_text(field(field(response, _FEEDBACK), _BLOCK))
        if blocked:
            reasons.append(blocked)
    return reasons


def parts_of(candidate: Any) -> list[Any]:
    """The parts of a candidate's content."""
    parts = get(get(candidate, "content"), "parts")
    return parts if isinstance(parts, list) else []


def _plain(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else value


def _arguments(call: Any) -> str | None:
    args = get(call, "args")
    if args is None:
        return None
    try:
        return json.dumps(_plain(args), separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        return None


def _part_output(part: Any, pieces: list[str]) -> None:
    add_text(pieces, get(part, "text"))
    call = field(part, _CALL)
    if call is not None:
        add_text(pieces, get(call, "name"))
        add_text(pieces, _arguments(call))


def delivered(response: Any) -> list[str]:
    """The billed output of a response: text (thoughts included), function calls."""
    pieces: list[str] = []
    for candidate in _candidates(response):
        for part in parts_of(candidate):
            _part_output(part, pieces)
    return pieces


def read(response: Any) -> Outcome:
    """Usage, model, id and finish reasons of a whole ``generateContent`` response."""
    usage = from_gemini(response)
    error = get(response, "error")
    return Outcome(
        usage=usage,
        response_model=string(field(response, _MODEL)),
        response_id=string(field(response, _ID)),
        finish_reasons=finish_reasons(response),
        error=error_message(error) if error is not None else None,
        complete=True,
        delivered=delivered(response) if usage is None else [],
    )


def _choice(candidate: Any, index: int) -> int:
    choice = get(candidate, "index")
    return choice if type(choice) is int else index


class GeminiStream(StreamReader):
    """Reads ``streamGenerateContent`` chunks; see :class:`~metered.providers.StreamReader`.

    The running ``usageMetadata`` of the chunks gives the input side early; the usage of
    the chunk that carries a finish reason (or of the last chunk, once the door says the
    stream ended) is the call's usage.
    """

    __slots__ = ("_calls", "_latest", "_tools")

    def __init__(self, *, model: str = "", strip_usage: bool = False) -> None:
        super().__init__(model=model, strip_usage=strip_usage)
        self._latest: Usage | None = None
        self._calls = 0
        self._tools: set[int] = set()  # candidates that called a function

    def read(self, event: Any) -> bool:
        out = self.outcome
        error = get(event, "error")
        if error is not None:
            out.error = error_message(error)
            return True
        model = string(field(event, _MODEL))
        if model:
            out.response_model = model
        response_id = string(field(event, _ID))
        if response_id:
            out.response_id = response_id
        usage = from_gemini(event)
        if usage is not None:
            self._latest = usage
            self.input_usage = Usage(
                input_tokens=usage.input_tokens, cache_read_tokens=usage.cache_read_tokens
            )
        pieces: list[str] = []
        for index, candidate in enumerate(_candidates(event)):
            choice = _choice(candidate, index)
            for part in parts_of(candidate):
                _part_output(part, pieces)
                if self.transcript is not None:
                    self._transcribe(part, choice)
        for piece in pieces:
            self.add(piece)
        reasons = finish_reasons(event)
        if reasons:
            out.finish_reasons[:] = reasons
            out.usage = self._latest
            out.complete = True
            if self.transcript is not None:
                self._conclude(event)
        return True

    def _conclude(self, event: Any) -> None:
        """The stream's output messages, with the conventions' finish reasons."""
        transcript = self.transcript
        assert transcript is not None
        ends = {
            _choice(candidate, index): gemini_finish_reason(
                field(candidate, _FINISH), _choice(candidate, index) in self._tools
            )
            for index, candidate in enumerate(_candidates(event))
        }
        transcript.final = transcript.messages([ends[choice] for choice in sorted(ends)])

    def measured(self, prompt_tokens: int, *, ended: bool = False) -> tuple[Usage, bool]:
        if self.outcome.usage is None and ended and self._latest is not None:
            # the door saw the stream end: the last running usage is the final one
            self.outcome.usage = self._latest
        return super().measured(prompt_tokens, ended=ended)

    def _transcribe(self, part: Any, choice: int) -> None:
        transcript = self.transcript
        assert transcript is not None
        kind = "reasoning" if get(part, "thought") is True else "text"
        transcript.text(get(part, "text"), choice=choice, kind=kind)
        call = field(part, _CALL)
        if call is not None:
            self._tools.add(choice)
            self._calls += 1
            transcript.tool(
                self._calls,
                choice=choice,
                call_id=get(call, "id"),
                name=get(call, "name"),
                args=_arguments(call),
            )
