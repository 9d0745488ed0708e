"""Tests for metered.providers: each wire format's usage, read from SDK objects and JSON
dicts alike (the extractors both doors share)."""

from __future__ import annotations

from typing import Any

import pytest
from anthropic.types import (
    Message,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStreamEvent,
)
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseCompletedEvent
from pydantic import TypeAdapter

from metered.providers import (
    ANTHROPIC,
    CHAT,
    FORMATS,
    RESPONSES,
    Outcome,
    StreamReader,
    openai_responses,
)
from metered.providers.anthropic import AnthropicStreamUsage, from_anthropic
from metered.providers.openai_chat import from_openai_chat, from_openai_chunk
from metered.providers.openai_responses import (
    from_openai_responses,
    from_openai_responses_event,
)
from metered.tokens import count_text
from metered.usage import Usage

# --- provider payloads, as the APIs send them -------------------------------------------


def chat_json(usage: dict[str, Any] | None) -> dict[str, Any]:
    """An OpenAI Chat Completions response body."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hi"},
            }
        ],
        "usage": usage,
    }


CHAT_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1024},
    "completion_tokens_details": {"reasoning_tokens": 128},
}


def responses_json(usage: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI Responses API response body."""
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1_700_000_000,
        "model": "o3",
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "status": "completed",
        "usage": usage,
    }


RESPONSES_USAGE = {
    "input_tokens": 5000,
    "input_tokens_details": {"cached_tokens": 4096, "cache_write_tokens": 0},
    "output_tokens": 900,
    "output_tokens_details": {"reasoning_tokens": 700},
    "total_tokens": 5900,
}


def anthropic_json(usage: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages response body."""
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


ANTHROPIC_USAGE = {
    "input_tokens": 100,
    "cache_read_input_tokens": 2000,
    "cache_creation_input_tokens": 500,
    "output_tokens": 50,
}


# --- OpenAI ----------------------------------------------------------------------------


def test_openai_chat_sdk_object() -> None:
    """A ChatCompletion keeps cached tokens inside the input and reasoning inside the output."""
    response = ChatCompletion.model_validate(chat_json(CHAT_USAGE))
    assert from_openai_chat(response) == Usage(
        input_tokens=1200, output_tokens=300, cache_read_tokens=1024, reasoning_tokens=128
    )


def test_openai_chat_json_dict() -> None:
    """A raw JSON body (a proxy's view) gives the same Usage as the SDK object."""
    assert from_openai_chat(chat_json(CHAT_USAGE)) == from_openai_chat(
        ChatCompletion.model_validate(chat_json(CHAT_USAGE))
    )


def test_openai_chat_usage_without_details() -> None:
    """A CompletionUsage without details has no cached or reasoning tokens."""
    usage = CompletionUsage(prompt_tokens=12, completion_tokens=3, total_tokens=15)
    assert from_openai_chat({"usage": usage}) == Usage(input_tokens=12, output_tokens=3)


def test_openai_chat_cache_writes_are_extracted() -> None:
    """prompt_tokens_details.cache_write_tokens (reported by the API) becomes cache writes."""
    body = chat_json(
        {
            "prompt_tokens": 3000,
            "completion_tokens": 10,
            "total_tokens": 3010,
            "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 1500},
        }
    )
    usage = from_openai_chat(ChatCompletion.model_validate(body))
    assert usage is not None
    assert usage.cache_write_tokens == 1500


def test_openai_chat_without_usage_is_none() -> None:
    """No usage block means the usage is unknown, not zero."""
    assert from_openai_chat(chat_json(None)) is None


def test_openai_chat_with_responses_style_names() -> None:
    """OpenAI-compatible servers that answer chat with input/output names still count."""
    assert from_openai_chat({"usage": RESPONSES_USAGE}) == Usage(
        input_tokens=5000, output_tokens=900, cache_read_tokens=4096, reasoning_tokens=700
    )


def test_openai_stream_final_chunk_carries_usage() -> None:
    """The include_usage chunk (no choices) yields the call's usage."""
    chunk = ChatCompletionChunk.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o",
            "choices": [],
            "usage": CHAT_USAGE,
        }
    )
    assert from_openai_chunk(chunk) == Usage(
        input_tokens=1200, output_tokens=300, cache_read_tokens=1024, reasoning_tokens=128
    )


def test_openai_stream_content_chunk_has_no_usage() -> None:
    """Content chunks carry no usage."""
    chunk = ChatCompletionChunk.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o",
            "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
        }
    )
    assert from_openai_chunk(chunk) is None


def test_openai_responses_sdk_object() -> None:
    """A Responses API Response counts cached input and reasoning output."""
    response = Response.model_validate(responses_json(RESPONSES_USAGE))
    assert from_openai_responses(response) == Usage(
        input_tokens=5000, output_tokens=900, cache_read_tokens=4096, reasoning_tokens=700
    )


def test_openai_responses_cache_writes_are_extracted() -> None:
    """input_tokens_details.cache_write_tokens (reported by the API) becomes cache writes."""
    details = {"cached_tokens": 1000, "cache_write_tokens": 2000}
    usage = from_openai_responses(
        Response.model_validate(
            responses_json({**RESPONSES_USAGE, "input_tokens_details": details})
        )
    )
    assert usage is not None
    assert usage.cache_write_tokens == 2000


def test_openai_responses_completed_event() -> None:
    """A response.completed stream event carries the final usage."""
    event = ResponseCompletedEvent.model_validate(
        {
            "type": "response.completed",
            "sequence_number": 7,
            "response": responses_json(RESPONSES_USAGE),
        }
    )
    assert from_openai_responses_event(event) == from_openai_responses(event.response)


def test_openai_responses_delta_event_has_no_usage() -> None:
    """Text delta events are ignored."""
    event = {"type": "response.output_text.delta", "delta": "hi", "sequence_number": 3}
    assert from_openai_responses_event(event) is None


# --- Anthropic -------------------------------------------------------------------------


def test_anthropic_cache_tokens_are_added_to_the_input_total() -> None:
    """Anthropic reports cache tokens beside input_tokens; Usage holds the total."""
    message = Message.model_validate(anthropic_json(ANTHROPIC_USAGE))
    assert from_anthropic(message) == Usage(
        input_tokens=2600, output_tokens=50, cache_read_tokens=2000, cache_write_tokens=500
    )


def test_anthropic_json_dict_matches_sdk_object() -> None:
    """A raw Messages JSON body gives the same Usage as the SDK object."""
    body = anthropic_json(ANTHROPIC_USAGE)
    assert from_anthropic(body) == from_anthropic(Message.model_validate(body))


def test_anthropic_without_cache_fields() -> None:
    """Older responses without cache fields count only input and output."""
    usage = {"input_tokens": 10, "output_tokens": 2}
    assert from_anthropic(anthropic_json(usage)) == Usage(input_tokens=10, output_tokens=2)


def test_anthropic_thinking_tokens_are_reasoning() -> None:
    """output_tokens_details.thinking_tokens is reported as reasoning inside the output."""
    usage = {
        "input_tokens": 10,
        "output_tokens": 500,
        "output_tokens_details": {"thinking_tokens": 420},
    }
    extracted = from_anthropic(Message.model_validate(anthropic_json(usage)))
    assert extracted is not None
    assert (extracted.output_tokens, extracted.reasoning_tokens) == (500, 420)


def _message_start(usage: dict[str, Any]) -> RawMessageStartEvent:
    return RawMessageStartEvent.model_validate(
        {"type": "message_start", "message": anthropic_json(usage)}
    )


def _message_delta(usage: dict[str, Any]) -> RawMessageDeltaEvent:
    return RawMessageDeltaEvent.model_validate(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": usage,
        }
    )


def test_anthropic_stream_combines_start_and_delta() -> None:
    """message_start gives the input side, message_delta the final output count."""
    acc = AnthropicStreamUsage()
    acc.feed(_message_start({**ANTHROPIC_USAGE, "output_tokens": 1}))
    acc.feed({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}})
    acc.feed(_message_delta({"output_tokens": 321}))
    assert acc.usage() == Usage(
        input_tokens=2600, output_tokens=321, cache_read_tokens=2000, cache_write_tokens=500
    )


def test_anthropic_stream_delta_with_input_side_wins() -> None:
    """Newer API versions repeat the input side in message_delta; the latest value wins."""
    acc = AnthropicStreamUsage()
    acc.feed(_message_start({"input_tokens": 100, "output_tokens": 1}))
    acc.feed(
        _message_delta({"input_tokens": 120, "cache_read_input_tokens": 30, "output_tokens": 9})
    )
    assert acc.usage() == Usage(input_tokens=150, output_tokens=9, cache_read_tokens=30)


def test_anthropic_stream_without_usage_events_is_unknown() -> None:
    """A stream cut before message_start has no usage at all."""
    acc = AnthropicStreamUsage()
    acc.feed({"type": "ping"})
    assert acc.usage() is None
    assert not acc.seen


# --- odd provider data -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 50},
            },
            Usage(input_tokens=10, output_tokens=5, cache_read_tokens=10),
        ),
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "completion_tokens_details": {"reasoning_tokens": 9},
            },
            Usage(input_tokens=10, output_tokens=5, reasoning_tokens=5),
        ),
        ({"prompt_tokens": -3, "completion_tokens": "7"}, Usage()),
        ({"prompt_tokens": 10.0, "completion_tokens": None}, Usage(input_tokens=10)),
        ({"prompt_tokens": True, "completion_tokens": 10.5}, Usage()),
        ({"prompt_tokens_details": None}, Usage()),
    ],
)
def test_odd_openai_data_is_clamped_not_raised(usage: dict[str, Any], expected: Usage) -> None:
    """Provider bugs (details over totals, negatives, strings) never break the user's call."""
    assert from_openai_chat({"usage": usage}) == expected


def test_odd_anthropic_stream_data_is_clamped_not_raised() -> None:
    """Garbage counts in stream events count as zero."""
    acc = AnthropicStreamUsage()
    acc.feed({"type": "message_start", "message": {"usage": {"input_tokens": "many"}}})
    acc.feed({"type": "message_delta", "usage": {"output_tokens": -4}})
    assert acc.usage() == Usage()


# --- one reader for dicts and SDK objects -----------------------------------------------


def _sdk_events(adapter: TypeAdapter[Any], events: list[dict[str, Any]]) -> list[Any]:
    return [adapter.validate_python(event) for event in events]


def _read_stream(reader: StreamReader, events: list[Any]) -> tuple[Outcome, int]:
    for event in events:
        reader.feed(event)
    return reader.outcome, reader.delivered_tokens()


ANTHROPIC_THINKING_EVENTS: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-6",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 5, "cache_read_input_tokens": 3, "output_tokens": 1},
        },
    },
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "Weighing the question first."},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "signature_delta", "signature": "c2lnbmF0dXJl"},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "text_delta", "text": "Hello there."},
    },
]


def test_anthropic_stream_reads_dicts_and_sdk_events_alike() -> None:
    """The gateway's decoded events and the SDK's objects give the same outcome and count."""
    sdk = _sdk_events(TypeAdapter(RawMessageStreamEvent), ANTHROPIC_THINKING_EVENTS)
    from_dicts = _read_stream(
        ANTHROPIC.stream(model="claude-sonnet-4-6"), ANTHROPIC_THINKING_EVENTS
    )
    from_sdk = _read_stream(ANTHROPIC.stream(model="claude-sonnet-4-6"), sdk)
    assert from_dicts == from_sdk


def test_anthropic_cut_stream_counts_thinking_but_not_signatures() -> None:
    """Thinking deltas are billed output; the signature is not text the model wrote."""
    reader = ANTHROPIC.stream(model="claude-sonnet-4-6")
    _read_stream(reader, ANTHROPIC_THINKING_EVENTS)
    expected = count_text("Weighing the question first.Hello there.", model="claude-sonnet-4-6")
    assert reader.delivered(prompt_tokens=99) == Usage(
        input_tokens=8, cache_read_tokens=3, output_tokens=expected, source="estimated"
    )
    assert reader.measured(99) == (reader.delivered(99), True)


def test_anthropic_final_usage_wins_over_the_delivered_estimate() -> None:
    """Once message_delta reported the output count, the stream settles on it."""
    reader = ANTHROPIC.stream(model="claude-sonnet-4-6")
    _read_stream(reader, ANTHROPIC_THINKING_EVENTS)
    reader.feed(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 40},
        }
    )
    usage, partial = reader.measured(99)
    assert (usage.input_tokens, usage.output_tokens, usage.source, partial) == (
        8,
        40,
        "actual",
        False,
    )
    assert reader.outcome.finish_reasons == ["end_turn"]


@pytest.mark.parametrize(
    ("status", "details", "expected"),
    [
        ("completed", None, ["stop"]),
        ("incomplete", {"reason": "max_output_tokens"}, ["max_output_tokens"]),
        ("incomplete", {"reason": "content_filter"}, ["content_filter"]),
        ("incomplete", None, ["incomplete"]),
        ("failed", None, ["failed"]),
        (None, None, []),
    ],
)
def test_responses_status_maps_to_one_finish_reason_vocabulary(
    status: str | None, details: dict[str, Any] | None, expected: list[str]
) -> None:
    """A Responses status reads as the chat finish-reason vocabulary, JSON or SDK object."""
    body = {**responses_json(RESPONSES_USAGE), "status": status, "incomplete_details": details}
    assert openai_responses.finish_reasons(body) == expected
    if status is not None:
        assert RESPONSES.read(Response.model_validate(body)).finish_reasons == expected


def test_responses_stream_counts_refusal_and_reasoning_deltas() -> None:
    """Refusal and reasoning deltas are billed output of a Responses stream."""
    reader = RESPONSES.stream(model="gpt-4o")
    for kind in (
        "response.refusal.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta",
        "response.output_text.done",
    ):
        reader.feed({"type": kind, "delta": "four words of text"})
    assert reader.delivered_tokens() == count_text("four words of text" * 3, model="gpt-4o")


def test_chat_stream_hides_only_the_usage_chunk_it_was_asked_to_strip() -> None:
    """With strip_usage the usage-only chunk is not forwarded; other chunks always are."""
    usage_chunk = {"id": "c", "model": "gpt-4o", "choices": [], "usage": CHAT_USAGE}
    content = {"id": "c", "model": "gpt-4o", "choices": [{"delta": {"content": "hi"}}]}
    stripping = CHAT.stream(model="gpt-4o", strip_usage=True)
    assert stripping.feed(content)
    assert not stripping.feed(usage_chunk)
    assert CHAT.stream(model="gpt-4o").feed(usage_chunk)
    assert stripping.outcome.complete
    assert stripping.outcome.usage == from_openai_chat({"usage": CHAT_USAGE})


def test_odd_stream_events_are_ignored_not_raised() -> None:
    """Events of the wrong shape (lists, numbers, unhashable types) leave the reader intact."""
    odd: list[Any] = [{"type": []}, {"type": 3}, {"choices": "x"}, {"choices": [1, None]}, {}]
    for fmt in FORMATS.values():
        reader = fmt.stream()
        for event in odd:
            reader.feed(event)
        assert reader.outcome.usage is None
        assert reader.delivered_tokens() == 0
