"""The fake upstream's three chat APIs: OpenAI Chat Completions, OpenAI Responses and
Anthropic Messages, each turning a request into a reply."""

from __future__ import annotations

import time
from collections.abc import (
    Callable,
)
from typing import TYPE_CHECKING, Any

from metered.testing._exchange import (
    RecordedRequest,
    _BadRequest,
    _Generation,
    _is_reasoning,
    _limit,
    _model,
    _object_body,
    _Reply,
    _streaming,
)
from metered.testing._formats import (
    _anthropic_event_error,
    _anthropic_events,
    _chat_error,
    _chat_events,
    _finished_response,
    _json_reply,
    _ResponseIds,
    _responses_error,
    _responses_events,
    _sse_reply,
)
from metered.tokens import count_anthropic, count_chat, count_request

if TYPE_CHECKING:
    pass


Generate = Callable[..., _Generation]


# -- OpenAI Chat Completions ----------------------------------------------------


def chat_reply(record: RecordedRequest, serial: int, generate: Generate) -> _Reply:
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


# -- OpenAI Responses -----------------------------------------------------------


def responses_reply(record: RecordedRequest, serial: int, generate: Generate) -> _Reply:
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


# -- Anthropic Messages ---------------------------------------------------------


def messages_reply(record: RecordedRequest, serial: int, generate: Generate) -> _Reply:
    body = _object_body(record)
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest(400, "messages: field required to be a non-empty list")
    limit = _limit(body, "max_tokens")
    if limit is None:
        raise _BadRequest(400, "max_tokens: Field required")
    prompt_tokens = count_anthropic(
        messages, model=model, system=body.get("system"), tools=body.get("tools")
    )
    thinking = body.get("thinking")
    reasoning = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
    gen = generate(
        record, model=model, prompt_tokens=prompt_tokens, limit=limit, reasoning=reasoning
    )
    usage: dict[str, Any] = {
        # Anthropic reports cache reads and writes beside input_tokens, not inside.
        "input_tokens": gen.prompt_tokens - gen.cached_tokens - gen.cache_write_tokens,
        "cache_creation_input_tokens": gen.cache_write_tokens,
        "cache_read_input_tokens": gen.cached_tokens,
        "output_tokens": gen.output_tokens,
        "service_tier": "standard",
    }
    if reasoning:
        usage["output_tokens_details"] = {"thinking_tokens": gen.reasoning_tokens}
    message = {
        "id": f"msg_fake{serial:08d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": gen.text}],
        "stop_reason": "max_tokens" if gen.truncated else "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    if not _streaming(body):
        return _json_reply(200, message)
    return _sse_reply(_anthropic_events(message, gen), _anthropic_event_error)
