"""The fake OpenAI Responses API (``POST /v1/responses``): the response object, the
``response.*`` event stream and its mid-stream error."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from metered.testing._exchange import (
    Generate,
    RecordedRequest,
    _BadRequest,
    _Fault,
    _Frames,
    _Generation,
    _is_reasoning,
    _limit,
    _model,
    _object_body,
    _Reply,
    _streaming,
)
from metered.testing._wire import _json_reply, _openai_error, _sse, _sse_reply
from metered.tokens import count_request


def responses_reply(record: RecordedRequest, serial: int, generate: Generate) -> _Reply:
    """Answer one Responses request as OpenAI would.

    Args:
        record: the request received.
        serial: the upstream's request number, used in the response and item ids.
        generate: the upstream's generation step (reply text, token counts).

    Returns:
        The finished response as JSON, or the ``response.*`` event stream when the
        request asks for ``stream``.

    Raises:
        _BadRequest: the body has no model or no input.
    """
    body = _object_body(record)
    model = _model(body)
    if body.get("input") is None:
        raise _BadRequest(400, "'input' is required", param="input")
    gen = generate(
        record,
        model=model,
        prompt_tokens=count_request(body, model=model).tokens,
        limit=_limit(body, "max_output_tokens"),
        reasoning=_is_reasoning(model),
    )
    ids = _ResponseIds(f"resp_fake{serial:08d}", f"msg_fake{serial:08d}", f"rs_fake{serial:08d}")
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
