"""Tests for metered.http.wire: usage read from responses as they pass through the ASGI
and WSGI doors (caller keys and request checks are tested in test_http_identity.py and
test_http_request.py)."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metered.http import wire
from metered.http.wire import StreamMeter
from metered.testing import FakeUpstream

HI = [{"role": "user", "content": "hi"}]
REPLY = "Metering streams one line at a time keeps memory flat."


def raw_stream(path: str, body: dict[str, Any]) -> bytes:
    """The exact bytes the fake upstream streams for ``body``."""
    upstream = FakeUpstream(reply=REPLY)
    with httpx.Client(transport=upstream.httpx_transport(), base_url="http://up") as client:
        return client.post(path, json={**body, "stream": True}).content


CHAT = raw_stream(
    "/v1/chat/completions",
    {"model": "gpt-4o", "messages": HI, "stream_options": {"include_usage": True}},
)


def without_usage_chunk(data: bytes) -> bytes:
    events = data.split(b"\n\n")
    return b"\n\n".join(e for e in events if b'"choices":[]' not in e)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def feed(meter: StreamMeter, chunks: list[bytes]) -> bytes:
    return b"".join(meter.feed(chunk) for chunk in chunks) + meter.close()


# -- streams ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_stream_passes_through_unchanged_however_it_is_chunked(cuts: list[int]) -> None:
    """Without stripping, every byte is forwarded as it came and the usage is read."""
    meter = StreamMeter("chat", model="gpt-4o")
    chunks = split(CHAT, cuts)
    assert [meter.feed(chunk) for chunk in chunks] == chunks
    assert meter.outcome.complete
    assert meter.outcome.usage is not None
    assert meter.outcome.usage.output_tokens == meter.delivered(0).output_tokens


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_stripping_removes_exactly_the_usage_chunk_however_it_is_chunked(cuts: list[int]) -> None:
    """The client sees the stream it asked for: every event but the usage-only chunk."""
    meter = StreamMeter("chat", model="gpt-4o", strip_usage=True)
    assert feed(meter, split(CHAT, cuts)) == without_usage_chunk(CHAT)
    assert meter.outcome.usage is not None
    assert meter.outcome.response_id is not None
    assert meter.outcome.finish_reasons == ["stop"]


def test_crlf_line_endings_are_understood() -> None:
    """SSE allows CRLF: usage and completion are still found."""
    meter = StreamMeter("chat", model="gpt-4o")
    meter.feed(CHAT.replace(b"\n", b"\r\n"))
    assert meter.outcome.complete
    assert meter.outcome.usage is not None


def test_a_line_over_the_limit_is_skipped_without_losing_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An oversized line is forwarded but not held; the lines after it are read normally."""
    monkeypatch.setattr(wire, "MAX_SSE_LINE", 64)
    meter = StreamMeter("chat", model="gpt-4o", strip_usage=True)
    huge = b"data: " + b"x" * 200 + b"\n\n"
    out = feed(meter, [huge[:100], huge[100:], CHAT])
    assert out == huge + without_usage_chunk(CHAT)
    assert meter.outcome.usage is not None


def test_cut_stream_estimates_the_delivered_text() -> None:
    """A stream that stops half-way is counted from the text that went through."""
    meter = StreamMeter("chat", model="gpt-4o")
    meter.feed(CHAT[: len(CHAT) // 2])
    assert not meter.outcome.complete
    delivered = meter.delivered(prompt_tokens=8)
    assert delivered.source == "estimated"
    assert delivered.input_tokens == 8
    assert 0 < delivered.output_tokens < 12


def test_responses_stream_usage_comes_from_response_completed() -> None:
    """A Responses API stream is complete at response.completed, which carries the usage."""
    meter = StreamMeter("responses", model="gpt-4o")
    meter.feed(raw_stream("/v1/responses", {"model": "gpt-4o", "input": "hi"}))
    assert meter.outcome.complete
    assert meter.outcome.usage is not None
    assert meter.outcome.usage.output_tokens == meter.delivered(0).output_tokens
    assert meter.outcome.finish_reasons == [
        "stop"
    ]  # the one vocabulary: providers.openai_responses


def test_anthropic_stream_usage_combines_message_start_and_delta() -> None:
    """Anthropic's input side (message_start) and output count (message_delta) add up."""
    meter = StreamMeter("anthropic", model="claude-sonnet-4-6")
    data = raw_stream(
        "/v1/messages", {"model": "claude-sonnet-4-6", "max_tokens": 100, "messages": HI}
    )
    meter.feed(data)
    usage = meter.outcome.usage
    assert meter.outcome.complete
    assert usage is not None
    assert usage.input_tokens > 0
    assert usage.output_tokens == meter.delivered(0).output_tokens
    assert meter.outcome.finish_reasons == ["end_turn"]


def test_in_stream_error_is_reported() -> None:
    """An error event in a stream is surfaced (the call then settles as failed)."""
    meter = StreamMeter("chat", model="gpt-4o")
    meter.feed(b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n')
    assert meter.outcome.error == "overloaded"
