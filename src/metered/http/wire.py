"""Reading provider responses as they pass through the gateway routes: usage, model, id
and finish reasons from JSON bodies and server-sent-event streams.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from metered.errors import UpstreamError
from metered.usage import (
    AnthropicStreamUsage,
    Usage,
    from_anthropic,
    from_openai_chat,
    from_openai_chunk,
    from_openai_responses,
    from_openai_responses_event,
)

if TYPE_CHECKING:
    from metered.engine.meter import Api, Call

__all__ = [
    "MAX_JSON_RESPONSE",
    "MAX_SSE_LINE",
    "Outcome",
    "StreamMeter",
    "finish_args",
    "json_outcome",
]

#: A gateway JSON response larger than this is passed through unparsed (usage unknown).
MAX_JSON_RESPONSE: Final = 8 * 1024 * 1024
#: Longest SSE line kept while looking for usage (a Responses ``response.completed``
#: event repeats the whole output); longer lines are skipped.
MAX_SSE_LINE: Final = 8 * 1024 * 1024
# Delivered stream text is counted in batches of this many characters: constant memory,
# one tokenizer call per batch instead of one per chunk.
_COUNT_BATCH = 4096


# -- reading the response -------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """What a response said about the call (``usage`` is ``None`` when it said nothing)."""

    usage: Usage | None = None
    response_model: str | None = None
    response_id: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    error: str | None = None
    complete: bool = False


def json_outcome(data: bytes, api: Api) -> Outcome:
    """Read usage, model, id and finish reasons from a JSON (non-streamed) response."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return Outcome()
    if not isinstance(body, dict):
        return Outcome()
    out = Outcome(response_model=_str(body.get("model")), response_id=_str(body.get("id")))
    out.complete = True
    if api == "chat":
        out.usage = from_openai_chat(body)
        for choice in body.get("choices") or ():
            if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
                out.finish_reasons.append(choice["finish_reason"])
    elif api == "responses":
        out.usage = from_openai_responses(body)
        if isinstance(body.get("status"), str):
            out.finish_reasons.append(body["status"])
    else:
        out.usage = from_anthropic(body)
        if isinstance(body.get("stop_reason"), str):
            out.finish_reasons.append(body["stop_reason"])
    return out


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


class StreamMeter:
    """Reads usage from a server-sent-event response as it passes through.

    Chunks are forwarded as they come (never held for a whole event, let alone the
    stream); only the last incomplete line is kept, and delivered text is counted in
    small batches, so memory stays constant however long the stream. With
    ``strip_usage`` the usage-only chunk the gateway asked for is removed from what the
    client sees; the chunks around it pass unchanged.

    Args:
        api: the wire format (``chat``, ``responses`` or ``anthropic``).
        model: the requested model, to count delivered text with its tokenizer.
        strip_usage: drop the chat usage chunk (see :func:`prepare_stream`).
    """

    __slots__ = (
        "_anthropic",
        "_api",
        "_batch",
        "_batch_chars",
        "_drop_blank",
        "_model",
        "_partial",
        "_skipping",
        "_strip",
        "delivered_tokens",
        "outcome",
        "started",
    )

    def __init__(self, api: Api, *, model: str, strip_usage: bool = False) -> None:
        self._api = api
        self._model = model
        self._strip = strip_usage
        self._partial = b""
        self._skipping = False
        self._drop_blank = False
        self._batch: list[str] = []
        self._batch_chars = 0
        self._anthropic = AnthropicStreamUsage() if api == "anthropic" else None
        self.outcome = Outcome()
        self.started = False
        self.delivered_tokens = 0

    def feed(self, chunk: bytes) -> bytes:
        """Take one body chunk; return the bytes to forward to the client."""
        if not chunk:
            return chunk
        self.started = True
        lines = chunk.split(b"\n")
        lines[0] = self._partial + lines[0]
        tail = lines.pop()
        overflow = len(tail) > MAX_SSE_LINE
        self._partial = b"" if overflow else tail
        if not self._strip:
            for line in lines:
                self._line(line)
            if overflow:
                self._skipping = True
            return chunk
        # Stripping: forward whole lines only, so a dropped event never leaves a fragment.
        kept = [line + b"\n" for line in lines if self._line(line)]
        if overflow:
            # too long to hold: it cannot be the usage chunk, forward it as it comes
            kept.append(tail)
            self._skipping = True
        return b"".join(kept)

    def close(self) -> bytes:
        """End of the body: handle and return the last line if it had no newline."""
        tail, self._partial = self._partial, b""
        if tail and self._line(tail) and self._strip:
            return tail
        return b""

    def _line(self, line: bytes) -> bool:
        """Handle one complete line; ``False`` when it must not be forwarded."""
        if self._skipping:
            self._skipping = False
            return True
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if self._drop_blank:
                self._drop_blank = False
                return False
            return True
        if not line.startswith(b"data:"):
            return True
        payload = line[5:].lstrip(b" ")
        if payload == b"[DONE]":
            self.outcome.complete = True
            return True
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return True
        if not isinstance(data, dict):
            return True
        if self._api == "chat":
            return self._chat(data)
        if self._api == "responses":
            self._responses(data)
        else:
            self._anthropic_event(data)
        return True

    def _chat(self, data: dict[str, Any]) -> bool:
        out = self.outcome
        if out.response_id is None:
            out.response_id = _str(data.get("id"))
            out.response_model = _str(data.get("model"))
        error = data.get("error")
        if error is not None:
            out.error = _error_message(error)
        choices = data.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                reason = choice.get("finish_reason")
                if isinstance(reason, str):
                    out.finish_reasons.append(reason)
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    self._add(delta.get("content"))
                    self._add(delta.get("refusal"))
                    for call in delta.get("tool_calls") or ():
                        function = call.get("function") if isinstance(call, dict) else None
                        if isinstance(function, dict):
                            self._add(function.get("name"))
                            self._add(function.get("arguments"))
        if isinstance(data.get("usage"), dict):
            # the usage chunk comes after the last content chunk: the reply is complete
            out.usage = from_openai_chunk(data)
            out.complete = True
            if self._strip and not choices:
                self._drop_blank = True
                return False
        return True

    def _responses(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        out = self.outcome
        if kind in ("response.output_text.delta", "response.function_call_arguments.delta"):
            self._add(data.get("delta"))
        elif kind == "response.created":
            response = data.get("response")
            if isinstance(response, dict):
                out.response_id = _str(response.get("id"))
                out.response_model = _str(response.get("model"))
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            out.usage = from_openai_responses_event(data)
            out.complete = True
            response = data.get("response")
            if isinstance(response, dict) and isinstance(response.get("status"), str):
                out.finish_reasons.append(response["status"])
        elif kind == "error":
            out.error = _error_message(data)

    def _anthropic_event(self, data: dict[str, Any]) -> None:
        assert self._anthropic is not None
        kind = data.get("type")
        out = self.outcome
        self._anthropic.feed(data)
        if kind == "content_block_delta":
            delta = data.get("delta")
            if isinstance(delta, dict):
                self._add(delta.get("text") or delta.get("partial_json"))
        elif kind == "message_start":
            message = data.get("message")
            if isinstance(message, dict):
                out.response_id = _str(message.get("id"))
                out.response_model = _str(message.get("model"))
        elif kind == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                out.finish_reasons.append(delta["stop_reason"])
        elif kind == "message_stop":
            out.complete = True
        elif kind == "error":
            out.error = _error_message(data.get("error"))
        out.usage = self._anthropic.usage()

    def _add(self, text: object) -> None:
        if isinstance(text, str) and text:
            self._batch.append(text)
            self._batch_chars += len(text)
            if self._batch_chars >= _COUNT_BATCH:
                self._count()

    def _count(self) -> None:
        if self._batch:
            from metered.tokens import count_text

            self.delivered_tokens += count_text("".join(self._batch), model=self._model)
            self._batch.clear()
            self._batch_chars = 0

    def delivered(self, prompt_tokens: int) -> Usage:
        """An estimate of what the stream delivered so far (for streams cut short)."""
        self._count()
        return Usage(
            input_tokens=prompt_tokens, output_tokens=self.delivered_tokens, source="estimated"
        )


def _error_message(error: object) -> str:
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str):
            return message
        inner = error.get("error")
        if isinstance(inner, dict):
            return _error_message(inner)
    return "the upstream reported an error in the stream"


def finish_args(
    call: Call, stream: StreamMeter | None, outcome: Outcome, *, status: int | None
) -> dict[str, Any]:
    """Keyword arguments for ``call.finish`` once a gateway response has ended."""
    args: dict[str, Any] = {
        "status": status,
        "response_model": outcome.response_model,
        "response_id": outcome.response_id,
        "finish_reasons": outcome.finish_reasons,
    }
    if status is not None and status >= 400:
        args["error"] = UpstreamError(f"the upstream answered HTTP {status}", status=status)
        return args
    if outcome.error is not None:
        args["error"] = UpstreamError(outcome.error, status=status)
    usage = outcome.usage
    if stream is not None:
        if not outcome.complete:
            args["partial"] = True
        if usage is None or not outcome.complete:
            # a cut stream, or an upstream that ignores include_usage: what was
            # delivered, counted locally
            usage = stream.delivered(call.prompt_tokens)
    args["usage"] = usage
    return args
