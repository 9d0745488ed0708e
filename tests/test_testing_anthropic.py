"""The fake Anthropic Messages API, driven by the real anthropic SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest

from metered.testing import DEFAULT_REPLY, FakeUpstream
from metered.tokens import count_anthropic
from tests.testing_support import CLAUDE, first_tokens, reply_tokens


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def claude(upstream: FakeUpstream) -> Iterator[anthropic.Anthropic]:
    with upstream.anthropic_client() as client:
        yield client


@pytest.fixture
def raw(upstream: FakeUpstream) -> Iterator[httpx2.Client]:
    with httpx2.Client(transport=upstream.httpx2_transport(), base_url="http://fake") as client:
        yield client


def test_anthropic_message_reports_cache_tokens_beside_input() -> None:
    """Cache reads and writes are reported beside input_tokens, summing to the prompt."""
    upstream = FakeUpstream(cached_tokens=5, cache_write_tokens=3)
    messages: list[Any] = [{"role": "user", "content": "What does a meter do?"}]
    with upstream.anthropic_client() as client:
        message = client.messages.create(
            model=CLAUDE, max_tokens=100, system="Be brief.", messages=messages
        )

    usage = message.usage
    prompt = count_anthropic(messages, model=CLAUDE, system="Be brief.")
    assert message.content[0].type == "text"
    assert message.content[0].text == DEFAULT_REPLY
    assert message.stop_reason == "end_turn"
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (5, 3)
    assert usage.input_tokens == prompt - 5 - 3
    assert usage.output_tokens == len(reply_tokens(model=CLAUDE))


def test_anthropic_stream_context_manager_gives_final_usage(claude: anthropic.Anthropic) -> None:
    """messages.stream() yields the text and a final message with usage."""
    messages: list[Any] = [{"role": "user", "content": "Hi"}]
    with claude.messages.stream(model=CLAUDE, max_tokens=100, messages=messages) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == DEFAULT_REPLY
    assert final.usage.input_tokens == count_anthropic(messages, model=CLAUDE)
    assert final.usage.output_tokens == len(reply_tokens(model=CLAUDE))
    assert final.stop_reason == "end_turn"


def test_anthropic_raw_stream_event_order(claude: anthropic.Anthropic) -> None:
    """stream=True yields message_start … message_delta, message_stop in Anthropic's order."""
    events = list(
        claude.messages.create(
            model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    )

    kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    delta = events[-2]
    assert delta.type == "message_delta"
    assert delta.usage.output_tokens == len(reply_tokens(model=CLAUDE))


async def test_async_anthropic_stream(upstream: FakeUpstream) -> None:
    """AsyncAnthropic streams through the async transport."""
    async with (
        upstream.anthropic_client(async_=True) as client,
        client.messages.stream(
            model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
        ) as stream,
    ):
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()

    assert text == DEFAULT_REPLY
    assert final.usage.output_tokens == len(reply_tokens(model=CLAUDE))


def test_anthropic_thinking_tokens_count_into_the_output() -> None:
    """With thinking enabled, reasoning tokens are output_tokens_details.thinking_tokens."""
    upstream = FakeUpstream(reasoning_tokens=7)
    with (
        upstream.anthropic_client() as client,
        client.messages.stream(
            model=CLAUDE,
            max_tokens=2000,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[{"role": "user", "content": "Hi"}],
        ) as stream,
    ):
        final = stream.get_final_message()

    assert final.usage.output_tokens_details is not None
    assert final.usage.output_tokens_details.thinking_tokens == 7
    assert final.usage.output_tokens == len(reply_tokens(model=CLAUDE)) + 7


def test_anthropic_without_thinking_reports_no_thinking_tokens() -> None:
    """reasoning_tokens only apply to Anthropic requests that enable thinking."""
    upstream = FakeUpstream(reasoning_tokens=7)
    with upstream.anthropic_client() as client:
        message = client.messages.create(
            model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
        )

    assert message.usage.output_tokens_details is None
    assert message.usage.output_tokens == len(reply_tokens(model=CLAUDE))


def test_anthropic_max_tokens_truncation_sets_stop_reason(claude: anthropic.Anthropic) -> None:
    """max_tokens cuts the reply and stop_reason says max_tokens."""
    message = claude.messages.create(
        model=CLAUDE, max_tokens=2, messages=[{"role": "user", "content": "Hi"}]
    )

    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 2
    assert message.content[0].type == "text"
    assert message.content[0].text == first_tokens(2, model=CLAUDE)


def test_anthropic_requires_max_tokens(raw: httpx2.Client) -> None:
    """Like the real API, a Messages request without max_tokens is a 400."""
    response = raw.post(
        "/v1/messages", json={"model": CLAUDE, "messages": [{"role": "user", "content": "Hi"}]}
    )

    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"
