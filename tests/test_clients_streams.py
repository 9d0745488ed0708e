"""Stream proxies and observers: settle exactly once, whichever way a stream ends."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from anthropic.types import RawMessageStreamEvent
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from metered import tokens
from metered.clients.observers import (
    AnthropicObserver,
    AnthropicSnapshotObserver,
    ChatObserver,
    ResponsesObserver,
)
from metered.clients.streams import CollectingStreamManager, MeteredStream
from metered.clients.tally import Tally
from metered.engine.meter import Call, Meter
from metered.records import UsageRecord

MESSAGES = [{"role": "user", "content": "Say something."}]


class SdkStream:
    """The sync stream interface the SDKs share: ``__next__``, ``close()``, ``response``."""

    def __init__(self, items: Iterable[Any]) -> None:
        self._items = iter(items)
        self.closed = 0
        self.response = "the http response"

    def __next__(self) -> Any:
        return next(self._items)

    def __iter__(self) -> Iterator[Any]:
        return self

    def close(self) -> None:
        self.closed += 1


def _chunk(
    content: str | None = None, *, usage: bool = False, choices: bool = True, **delta: Any
) -> Any:
    data: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gpt-4o-2024-08-06",
        "choices": (
            [{"index": 0, "delta": {"content": content, **delta}, "finish_reason": None}]
            if choices
            else []
        ),
    }
    if usage:
        data["usage"] = {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
    return ChatCompletionChunk.model_validate(data)


@pytest.fixture
def records() -> list[UsageRecord]:
    return []


@pytest.fixture
def call(records: list[UsageRecord]) -> Call:
    meter = Meter(sink=records.append)
    return meter.begin({"model": "gpt-4o", "messages": MESSAGES, "stream": True}, provider="openai")


def _stream(call: Call, items: Iterable[Any], *, hide_usage: bool = False) -> tuple[Any, SdkStream]:
    upstream = SdkStream(items)
    tally = Tally(call, ChatObserver(hide_usage=hide_usage), close=upstream.close)
    return MeteredStream(upstream, tally), upstream


def test_injected_usage_chunk_is_hidden_and_settled(call: Call, records: list[UsageRecord]) -> None:
    """The usage-only chunk metered asked for is consumed, not delivered."""
    stream, _ = _stream(call, [_chunk("Hi"), _chunk(usage=True, choices=False)], hide_usage=True)

    delivered = list(stream)

    assert [c.choices[0].delta.content for c in delivered] == ["Hi"]
    (record,) = records
    assert (record.tokens_in, record.tokens_out, record.tokens_source) == (9, 5, "actual")


def test_empty_choices_without_usage_are_delivered(call: Call) -> None:
    """Chunks with no choices and no usage (Azure's filter results) are the caller's."""
    stream, _ = _stream(call, [_chunk(choices=False), _chunk("Hi")], hide_usage=True)

    assert len(list(stream)) == 2


def test_tool_call_arguments_and_refusals_count_as_delivered(
    call: Call, records: list[UsageRecord]
) -> None:
    """An estimate counts tool-call arguments and refusals, not only content."""
    tool = {
        "index": 0,
        "id": "t1",
        "type": "function",
        "function": {"name": "f", "arguments": '{"a":1}'},
    }
    stream, _ = _stream(call, [_chunk(tool_calls=[tool]), _chunk(refusal="No.")])

    list(stream)

    expected = tokens.count_text('f{"a":1}No.', model="gpt-4o")
    assert records[0].tokens_out == expected
    assert records[0].tokens_source == "estimated"


def test_every_ending_settles_exactly_once(call: Call, records: list[UsageRecord]) -> None:
    """Exhaustion, close(), __exit__ and collection after one another settle once."""
    stream, upstream = _stream(call, [_chunk("a"), _chunk("b")])

    with stream:
        assert list(stream)
    stream.close()
    del stream
    gc.collect()

    assert len(records) == 1
    assert records[0].tokens_out == tokens.count_text("ab", model="gpt-4o")
    assert upstream.closed == 2


def test_abandoned_stream_closes_the_upstream_response(
    call: Call, records: list[UsageRecord]
) -> None:
    """Garbage collection closes the SDK stream and settles the delivered part."""
    stream, upstream = _stream(call, [_chunk("a"), _chunk("b")])
    next(stream)

    del stream
    gc.collect()

    assert upstream.closed == 1
    assert records[0].tokens_out == tokens.count_text("a", model="gpt-4o")


def test_concurrent_settles_finish_once(call: Call, records: list[UsageRecord]) -> None:
    """Two threads ending the stream at once produce one record."""
    tally = Tally(call, ChatObserver())
    barrier = threading.Barrier(8)

    def end() -> None:
        barrier.wait()
        tally.settle(complete=False)

    threads = [threading.Thread(target=end) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(records) == 1


def test_an_unreadable_item_is_still_delivered(call: Call, records: list[UsageRecord]) -> None:
    """A stream item the observer cannot read never breaks the caller's loop."""
    stream, _ = _stream(call, ["not a chunk", _chunk("Hi")])

    assert len(list(stream)) == 2
    assert records[0].tokens_source == "estimated"


def test_attributes_pass_through_to_the_sdk_stream(call: Call) -> None:
    """Everything not metered is the SDK stream's own."""
    stream, upstream = _stream(call, [])

    assert stream.response == "the http response"
    assert stream.__wrapped__ is upstream
    assert isinstance(stream, SdkStream)


def test_stream_error_is_reraised_and_recorded(call: Call, records: list[UsageRecord]) -> None:
    """An exception from the SDK stream reaches the caller and ends the call as failed."""

    def failing() -> Iterator[Any]:
        yield _chunk("a")
        raise ConnectionError("upstream went away")

    stream, _ = _stream(call, failing())

    with pytest.raises(ConnectionError):
        list(stream)

    assert records[0].error_type == "ConnectionError"


def test_collecting_manager_settles_streams_opened_inside(
    call: Call, records: list[UsageRecord]
) -> None:
    """Leaving a stream manager's block settles the metered stream it opened."""

    class Manager:
        def __enter__(self) -> Any:
            self.stream, _ = _stream(call, [_chunk("a"), _chunk("b")])
            return self.stream

        def __exit__(self, *exc_info: Any) -> None:
            pass

    with CollectingStreamManager(Manager()) as stream:
        next(stream)
        assert records == []

    assert len(records) == 1


def test_responses_observer_reads_deltas_and_the_final_usage() -> None:
    """Responses events: text and tool-argument deltas, then response.completed's usage."""
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    response = {
        "id": "resp_1",
        "object": "response",
        "created_at": 0,
        "model": "gpt-4o",
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
        "usage": {
            "input_tokens": 7,
            "output_tokens": 3,
            "total_tokens": 10,
            "input_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 1},
        },
    }
    common = {"item_id": "m", "output_index": 0, "sequence_number": 1}
    events = [
        {
            "type": "response.output_text.delta",
            "delta": "Hi",
            "content_index": 0,
            "logprobs": [],
            **common,
        },
        {"type": "response.function_call_arguments.delta", "delta": "{}", **common},
        {"type": "response.incomplete", "response": response, "sequence_number": 2},
    ]
    observer = ResponsesObserver()

    assert all(observer.feed(adapter.validate_python(event)) for event in events)

    assert observer.reader.delivered_tokens() == tokens.count_text("Hi{}", model="")
    out = observer.outcome
    assert out.usage is not None
    assert (out.usage.input_tokens, out.usage.cache_read_tokens) == (7, 2)
    assert out.usage.reasoning_tokens == 1
    assert out.finish_reasons == ["max_output_tokens"]
    assert out.response_id == "resp_1"


def _anthropic_events() -> list[Any]:
    adapter: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "cache_read_input_tokens": 3, "output_tokens": 1},
    }
    events = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 6},
        },
    ]
    return [adapter.validate_python(event) for event in events]


def test_anthropic_observer_keeps_the_input_side_for_partial_streams() -> None:
    """Before message_delta only the input side is known; the output count is final after."""
    observer = AnthropicObserver()
    events = _anthropic_events()
    for event in events[:3]:
        observer.feed(event)

    reader = observer.reader
    assert reader.outcome.usage is None
    assert reader.input_usage is not None
    assert (reader.input_usage.input_tokens, reader.input_usage.cache_read_tokens) == (8, 3)
    assert reader.delivered_tokens() == tokens.count_text("Hi", model="")

    observer.feed(events[3])
    usage = reader.outcome.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (8, 6)
    assert reader.outcome.finish_reasons == ["end_turn"]


def test_snapshot_observer_with_nothing_read_settles_the_prompt_estimate(
    records: list[UsageRecord],
) -> None:
    """A messages.stream() left before any event: the prompt estimate and no output."""

    class Unread:
        @property
        def current_message_snapshot(self) -> Any:
            raise AssertionError("no snapshot before the first event")

    meter = Meter(sink=records.append)
    body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": MESSAGES}
    call = meter.begin(body, api="anthropic", provider="anthropic")

    Tally(call, AnthropicSnapshotObserver(Unread())).settle(complete=False)

    (record,) = records
    assert record.tokens_in == call.prompt_tokens
    assert record.tokens_out == 0
    assert record.tokens_source == "estimated"
