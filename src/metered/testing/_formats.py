"""The providers' wire formats as the fake upstream writes them: JSON bodies, server-sent
events for OpenAI chat, OpenAI Responses and Anthropic messages, error shapes, model lists."""

from __future__ import annotations

import json
from collections.abc import (
    Callable,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from metered.testing._exchange import _Fault, _Frames, _Generation, _Provider, _Reply

if TYPE_CHECKING:
    pass


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
