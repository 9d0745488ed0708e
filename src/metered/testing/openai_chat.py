"""The fake OpenAI Chat Completions API (``POST /v1/chat/completions``): the JSON
completion, the ``chat.completion.chunk`` stream and its mid-stream error."""

from __future__ import annotations

import time
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
from metered.tokens import count_chat


def chat_reply(record: RecordedRequest, serial: int, generate: Generate) -> _Reply:
    """Answer one Chat Completions request as OpenAI would.

    Args:
        record: the request received.
        serial: the upstream's request number, used in the completion id.
        generate: the upstream's generation step (reply text, token counts).

    Returns:
        The completion as JSON, or a ``chat.completion.chunk`` stream when the request
        asks for ``stream``.

    Raises:
        _BadRequest: the body has no model or no messages.
    """
    body = _object_body(record)
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest(400, "'messages' must be a non-empty array", param="messages")
    tools = body.get("tools") or body.get("functions")
    gen = generate(
        record,
        model=model,
        prompt_tokens=count_chat(messages, model=model, tools=tools),
        limit=_limit(body, "max_completion_tokens", "max_tokens"),
        reasoning=_is_reasoning(model),
    )
    finish = "length" if gen.truncated else "stop"
    base = {
        "id": f"chatcmpl-fake{serial:08d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }
    usage = {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.output_tokens,
        "total_tokens": gen.prompt_tokens + gen.output_tokens,
        "prompt_tokens_details": {
            "cached_tokens": gen.cached_tokens,
            "cache_write_tokens": gen.cache_write_tokens,
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": gen.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    if not _streaming(body):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": gen.text,
            "refusal": None,
            "annotations": [],
        }
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        return _json_reply(200, {**base, "choices": [choice], "usage": usage})
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    base["object"] = "chat.completion.chunk"
    return _sse_reply(
        _chat_events(base, gen, finish, usage if include_usage else None), _chat_error
    )


def _chat_error(fault: _Fault, index: int) -> bytes:
    if fault.body is not None:
        return _sse(fault.body)
    return _sse({"error": _openai_error(fault.status, fault.message)})


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
