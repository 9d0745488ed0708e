"""The fake Anthropic Messages API (``POST /v1/messages``): the message, the
``message_start`` ... ``message_stop`` event stream and its mid-stream error."""

from __future__ import annotations

from typing import Any

from metered.testing._exchange import (
    Generate,
    RecordedRequest,
    _BadRequest,
    _Fault,
    _Frames,
    _Generation,
    _limit,
    _model,
    _object_body,
    _Reply,
    _streaming,
)
from metered.testing._wire import _anthropic_error, _json_reply, _sse, _sse_reply
from metered.tokens import count_anthropic


def messages_reply(record: RecordedRequest, serial: int, generate: Generate) -> _Reply:
    """Answer one Messages request as Anthropic would.

    Args:
        record: the request received.
        serial: the upstream's request number, used in the message id.
        generate: the upstream's generation step (reply text, token counts).

    Returns:
        The message as JSON, or the ``message_start`` ... ``message_stop`` event stream
        when the request asks for ``stream``.

    Raises:
        _BadRequest: the body has no model, no messages or no ``max_tokens``.
    """
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


def _anthropic_event_error(fault: _Fault, index: int) -> bytes:
    if fault.body is not None:
        return _sse(fault.body, "error")
    return _sse(_anthropic_error(fault.status, fault.message), "error")


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
