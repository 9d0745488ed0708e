"""The fake upstream, driven by the real openai/anthropic SDKs and raw httpx/httpx2 clients."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from metered.testing import DEFAULT_MODELS, DEFAULT_REPLY, FakeUpstream, RecordedRequest
from metered.tokens import count_anthropic, count_chat, count_request, encoding_for_model

MODEL = "gpt-4o-mini"
REASONER = "o4-mini"
CLAUDE = "claude-haiku-4-5"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What does a meter do?"},
]
CHAT_BODY = {"model": MODEL, "messages": MESSAGES}


def reply_tokens(text: str = DEFAULT_REPLY, model: str = MODEL) -> list[int]:
    return encoding_for_model(model).encode_ordinary(text)


def first_tokens(n: int, text: str = DEFAULT_REPLY, model: str = MODEL) -> str:
    encoding = encoding_for_model(model)
    return encoding.decode(encoding.encode_ordinary(text)[:n])


def sse_events(raw: str) -> list[tuple[str | None, str]]:
    """(event name, data) pairs of an SSE body, as an SDK decoder would see them."""
    events = []
    for block in raw.split("\n\n"):
        if not block:
            continue
        name = None
        data = []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        events.append((name, "\n".join(data)))
    return events


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def client(upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    with upstream.openai_client() as client:
        yield client


@pytest.fixture
async def aclient(upstream: FakeUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    async with upstream.openai_client(async_=True) as client:
        yield client


@pytest.fixture
def claude(upstream: FakeUpstream) -> Iterator[anthropic.Anthropic]:
    with upstream.anthropic_client() as client:
        yield client


@pytest.fixture
def raw(upstream: FakeUpstream) -> Iterator[httpx2.Client]:
    with httpx2.Client(transport=upstream.httpx2_transport(), base_url="http://fake") as client:
        yield client


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[FakeUpstream, str]]:
    upstream = FakeUpstream()
    with upstream.serve() as url:
        yield upstream, url


@pytest.fixture
def served(server: tuple[FakeUpstream, str]) -> tuple[FakeUpstream, str]:
    upstream, url = server
    upstream.reset()
    return upstream, url


# --- OpenAI Chat Completions -------------------------------------------------------------


def test_chat_completion_usage_is_counted_by_metered(client: openai.OpenAI) -> None:
    """prompt_tokens is metered's count of the messages; completion_tokens the reply's."""
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == count_chat(MESSAGES, model=MODEL)
    assert completion.usage.completion_tokens == len(reply_tokens())
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_chat_completion_echoes_the_requested_model(client: openai.OpenAI) -> None:
    """The response names the model the request asked for."""
    completion = client.chat.completions.create(model="gpt-4.1-nano", messages=MESSAGES)

    assert completion.model == "gpt-4.1-nano"
    assert completion.id.startswith("chatcmpl-")


def test_chat_prompt_count_includes_tools(client: openai.OpenAI) -> None:
    """Tool definitions are counted into prompt_tokens, as the API bills them."""
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "get_price",
                "description": "Price of a model",
                "parameters": {"type": "object", "properties": {"model": {"type": "string"}}},
            },
        }
    ]
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=tools)

    assert completion.usage is not None
    assert completion.usage.prompt_tokens == count_chat(MESSAGES, model=MODEL, tools=tools)


async def test_async_chat_completion(aclient: openai.AsyncOpenAI) -> None:
    """AsyncOpenAI works through the async httpx2 transport."""
    completion = await aclient.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == count_chat(MESSAGES, model=MODEL)


def test_chat_stream_without_include_usage(client: openai.OpenAI) -> None:
    """Every chunk has a choice with a delta, and no chunk carries usage."""
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    chunks = list(stream)

    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == DEFAULT_REPLY
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks)


def test_chat_stream_with_include_usage_ends_with_usage_chunk(client: openai.OpenAI) -> None:
    """With include_usage the last chunk has no choices and the usage."""
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    *chunks, last = list(stream)

    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == count_chat(MESSAGES, model=MODEL)
    assert last.usage.completion_tokens == len(reply_tokens())
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)


async def test_async_chat_stream(aclient: openai.AsyncOpenAI) -> None:
    """An async stream yields the reply chunk by chunk."""
    stream = await aclient.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    pieces = [chunk.choices[0].delta.content async for chunk in stream]

    assert "".join(piece or "" for piece in pieces) == DEFAULT_REPLY
    assert len(pieces) == len(reply_tokens()) + 2  # role chunk + one per token + finish


def test_chat_stream_helper_accumulates_final_completion(client: openai.OpenAI) -> None:
    """The SDK's chat.completions.stream() helper assembles the final completion."""
    with client.chat.completions.stream(
        model=MODEL, messages=MESSAGES, stream_options={"include_usage": True}
    ) as stream:
        final = stream.get_final_completion()

    assert final.choices[0].message.content == DEFAULT_REPLY
    assert final.usage is not None
    assert final.usage.completion_tokens == len(reply_tokens())


def test_chat_max_tokens_truncates_with_finish_reason_length(client: openai.OpenAI) -> None:
    """max_tokens cuts the reply to that many tokens and reports finish_reason length."""
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)

    assert completion.choices[0].message.content == first_tokens(4)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 4


def test_chat_stream_truncation_ends_with_finish_reason_length(client: openai.OpenAI) -> None:
    """A truncated stream carries only the allowed tokens, then finish_reason length."""
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, max_completion_tokens=3
    )
    chunks = list(stream)

    assert "".join(c.choices[0].delta.content or "" for c in chunks) == first_tokens(3)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_tightest_of_max_tokens_and_max_completion_tokens_applies(client: openai.OpenAI) -> None:
    """When both limits are sent, the smaller one truncates."""
    completion = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=5, max_completion_tokens=2
    )

    assert completion.usage is not None
    assert completion.usage.completion_tokens == 2


def test_reasoning_tokens_count_against_max_completion_tokens() -> None:
    """A reasoning model spends reasoning tokens first, then the visible reply is cut."""
    upstream = FakeUpstream(reasoning_tokens=5)
    with upstream.openai_client() as client:
        completion = client.chat.completions.create(
            model=REASONER, messages=MESSAGES, max_completion_tokens=8
        )

    usage = completion.usage
    assert usage is not None
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 5
    assert usage.completion_tokens == 8
    assert completion.choices[0].message.content == first_tokens(3, model=REASONER)
    assert completion.choices[0].finish_reason == "length"


def test_reasoning_can_exhaust_the_output_limit() -> None:
    """Reasoning longer than the limit leaves an empty, truncated reply."""
    upstream = FakeUpstream(reasoning_tokens=50)
    with upstream.openai_client() as client:
        completion = client.chat.completions.create(
            model=REASONER, messages=MESSAGES, max_completion_tokens=8
        )

    assert completion.usage is not None
    assert completion.usage.completion_tokens == 8
    assert completion.choices[0].message.content == ""
    assert completion.choices[0].finish_reason == "length"


def test_reasoning_tokens_only_for_reasoning_models() -> None:
    """gpt-4o-class models report no reasoning tokens even when configured."""
    upstream = FakeUpstream(reasoning_tokens=50)
    with upstream.openai_client() as client:
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)

    usage = completion.usage
    assert usage is not None
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert usage.completion_tokens == len(reply_tokens())


def test_cached_tokens_count_is_capped_at_the_prompt() -> None:
    """An int cached_tokens is reported as is, but never above the prompt size."""
    upstream = FakeUpstream(cached_tokens=10_000)
    with upstream.openai_client() as client:
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)

    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens


def test_cached_tokens_fraction_of_the_prompt() -> None:
    """A float cached_tokens is a fraction of the prompt, rounded down."""
    upstream = FakeUpstream(cached_tokens=0.5)
    with upstream.openai_client() as client:
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)

    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens // 2


def test_cache_write_tokens_are_reported_inside_the_prompt() -> None:
    """OpenAI reports cache writes in prompt_tokens_details, beside the cache reads."""
    upstream = FakeUpstream(cached_tokens=3, cache_write_tokens=4)
    with upstream.openai_client() as client:
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)

    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 3
    assert usage.prompt_tokens_details.cache_write_tokens == 4
    assert usage.prompt_tokens == count_chat(MESSAGES, model=MODEL)


def test_reply_callable_builds_the_reply_from_the_request() -> None:
    """A reply callable receives the recorded request."""
    upstream = FakeUpstream(
        reply=lambda request: f"echo: {request.body['messages'][-1]['content']}"
    )
    with upstream.openai_client() as client:
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert completion.choices[0].message.content == "echo: What does a meter do?"


def test_chunk_tokens_groups_tokens_per_delta() -> None:
    """chunk_tokens=4 sends four tokens per content delta."""
    upstream = FakeUpstream(chunk_tokens=4)
    with upstream.openai_client() as client:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        contents = [c.choices[0].delta.content for c in stream if c.choices[0].delta.content]

    assert contents[0] == first_tokens(4)
    assert len(contents) == -(-len(reply_tokens()) // 4)


def test_multibyte_reply_streams_without_broken_characters() -> None:
    """Tokens that split a character never produce a broken delta."""
    text = "Prix: 5 € — 値段は五ユーロ 🎉🎉"
    upstream = FakeUpstream(reply=text)
    with upstream.openai_client() as client:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        pieces = [c.choices[0].delta.content or "" for c in stream]

    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_recorded_request_redacts_credentials(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    """The record keeps method, path and body; the API key is redacted."""
    client.chat.completions.create(model=MODEL, messages=MESSAGES)

    request = upstream.last_request
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "[redacted]"
    assert "sk-fake" not in repr(request)
    assert request.body == {"model": MODEL, "messages": MESSAGES}


def test_recorded_body_shows_what_was_sent(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """Tests can assert the exact body that reached the upstream."""
    client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=7,
    ).close()

    body = upstream.last_request.body
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 7


# --- OpenAI Responses ----------------------------------------------------------------------


def test_responses_create_reports_cached_and_reasoning_usage() -> None:
    """usage has input_tokens_details.cached_tokens and output_tokens_details.reasoning."""
    upstream = FakeUpstream(cached_tokens=2, reasoning_tokens=6)
    body = {"model": REASONER, "input": "What does a meter do?", "instructions": "Be brief."}
    with upstream.openai_client() as client:
        response = client.responses.create(
            model=REASONER, input=body["input"], instructions=body["instructions"]
        )

    assert response.output_text == DEFAULT_REPLY
    assert response.status == "completed"
    assert response.usage is not None
    assert response.usage.input_tokens == count_request(body, model=REASONER).tokens
    assert response.usage.input_tokens_details.cached_tokens == 2
    assert response.usage.output_tokens_details.reasoning_tokens == 6
    assert response.usage.output_tokens == len(reply_tokens(model=REASONER)) + 6
    assert [item.type for item in response.output] == ["reasoning", "message"]


def test_responses_stream_event_sequence(client: openai.OpenAI) -> None:
    """A Responses stream goes created → deltas → completed, with usage at the end."""
    stream = client.responses.create(model=MODEL, input="Hello", stream=True)
    events = list(stream)

    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == DEFAULT_REPLY
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == len(reply_tokens())


def test_responses_stream_helper_returns_final_response(client: openai.OpenAI) -> None:
    """The SDK's responses.stream() helper accepts the events and builds the final response."""
    with client.responses.stream(model=MODEL, input="Hello") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()

    assert text == DEFAULT_REPLY
    assert final.output_text == DEFAULT_REPLY
    assert final.usage is not None
    assert final.usage.input_tokens == count_request({"input": "Hello"}, model=MODEL).tokens


def test_responses_max_output_tokens_makes_response_incomplete(client: openai.OpenAI) -> None:
    """max_output_tokens truncates: status incomplete, reason max_output_tokens."""
    response = client.responses.create(model=MODEL, input="Hello", max_output_tokens=3)

    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == first_tokens(3)


def test_responses_truncated_stream_ends_with_incomplete_event(client: openai.OpenAI) -> None:
    """A truncated Responses stream ends with response.incomplete, as OpenAI's does."""
    events = list(
        client.responses.create(model=MODEL, input="Hello", max_output_tokens=3, stream=True)
    )

    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.usage is not None
    assert last.response.usage.output_tokens == 3


# --- Anthropic Messages --------------------------------------------------------------------


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


# --- errors and faults ---------------------------------------------------------------------


def test_429_raises_openai_rate_limit_error_once(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    """fail_next(429) raises RateLimitError with OpenAI's error body; the next call succeeds."""
    upstream.fail_next(429)

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert caught.value.code == "rate_limit_exceeded"
    assert set(caught.value.response.json()["error"]) == {"message", "type", "param", "code"}
    assert completion.choices[0].message.content == DEFAULT_REPLY


def test_429_raises_anthropic_rate_limit_error(
    claude: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    """fail_next(429) on /v1/messages answers in Anthropic's error shape."""
    upstream.fail_next(429, message="slow down")

    with pytest.raises(anthropic.RateLimitError) as caught:
        claude.messages.create(
            model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        )

    assert caught.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }


def test_529_raises_anthropic_overloaded_error(
    claude: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    """Anthropic's 529 maps to OverloadedError."""
    upstream.fail_next(529)

    with pytest.raises(anthropic.OverloadedError):
        claude.messages.create(
            model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        )


def test_500_raises_openai_internal_server_error(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    """A 5xx fault raises InternalServerError."""
    upstream.fail_next(503)

    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)


def test_retry_after_lets_the_sdk_retry_quickly(upstream: FakeUpstream) -> None:
    """With retry_after, the SDK's own retries get through once the faults are used up."""
    upstream.fail_next(429, times=2, retry_after=0.001)
    with upstream.openai_client(max_retries=2) as client:
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert len(upstream.requests) == 3
    assert upstream.requests[0].headers["x-stainless-retry-count"] == "0"
    assert upstream.requests[2].headers["x-stainless-retry-count"] == "2"


def test_faults_are_consumed_in_order(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """Queued faults hit consecutive requests in the order they were queued."""
    upstream.fail_next(429)
    upstream.fail_next(500)

    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    client.chat.completions.create(model=MODEL, messages=MESSAGES)


def test_custom_error_body_is_sent_verbatim(raw: httpx2.Client, upstream: FakeUpstream) -> None:
    """fail_next(body=...) replaces the provider-shaped error body."""
    upstream.fail_next(402, body={"detail": "pay up"}, headers={"x-custom": "1"})

    response = raw.post("/v1/chat/completions", json=CHAT_BODY)

    assert response.status_code == 402
    assert response.json() == {"detail": "pay up"}
    assert response.headers["x-custom"] == "1"


def test_mid_stream_disconnect_raises_connection_error(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    """disconnect_next(after_chunks=3) delivers three chunks, then the client raises."""
    upstream.disconnect_next(after_chunks=3)
    received = []

    with pytest.raises(openai.APIConnectionError):  # noqa: PT012 - the error comes mid-loop
        for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            received.append(chunk)

    assert len(received) == 3


async def test_async_mid_stream_disconnect_raises_connection_error(
    aclient: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """An async stream cut mid-way raises APIConnectionError."""
    upstream.disconnect_next(after_chunks=2)
    stream = await aclient.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    received = []

    with pytest.raises(openai.APIConnectionError):  # noqa: PT012 - the error comes mid-loop
        async for chunk in stream:
            received.append(chunk)

    assert len(received) == 2


def test_disconnect_before_response_raises_connection_error(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    """A disconnect before the response surfaces as APIConnectionError."""
    upstream.disconnect_next()

    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)


def test_timeout_raises_api_timeout_error(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """timeout_next() makes the client's read time out, without waiting for it."""
    upstream.timeout_next()

    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)


def test_error_event_mid_stream_raises_api_error(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    """fail_next(after_chunks=2) sends two chunks, then an in-stream error the SDK raises."""
    upstream.fail_next(500, after_chunks=2, message="boom")
    received = []

    with pytest.raises(openai.APIError, match="boom"):  # noqa: PT012 - the error comes mid-loop
        for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            received.append(chunk)

    assert len(received) == 2


def test_anthropic_error_event_mid_stream(
    claude: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    """An Anthropic stream can fail with an ``event: error`` after some events."""
    upstream.fail_next(529, after_chunks=4)

    with (
        pytest.raises(anthropic.APIStatusError, match="overloaded_error"),
        claude.messages.stream(
            model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
        ) as stream,
    ):
        stream.until_done()


def test_responses_error_event_mid_stream(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """A Responses stream fault arrives as an ``error`` event numbered in sequence."""
    upstream.fail_next(500, after_chunks=3)

    events = list(client.responses.create(model=MODEL, input="Hello", stream=True))

    assert [event.type for event in events][-1] == "error"
    assert events[-1].sequence_number == 3


def test_unknown_path_is_404_in_openai_shape(raw: httpx2.Client) -> None:
    """Unknown URLs answer 404 with OpenAI's error body."""
    response = raw.post("/v1/embeddings", json={"model": "text-embedding-3-small"})

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_invalid_max_tokens_is_rejected(client: openai.OpenAI) -> None:
    """A non-positive max_tokens is a 400, as upstream: a clamp must send a valid value."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=0)

    assert caught.value.param == "max_tokens"


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    """GET /v1/models lists the configured models; retrieving an unknown one is a 404."""
    ids = [model.id for model in client.models.list()]

    assert ids == list(DEFAULT_MODELS)
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-0")


def test_anthropic_models_list(claude: anthropic.Anthropic) -> None:
    """Anthropic's models.list() parses the Anthropic-shaped listing."""
    ids = [model.id for model in claude.models.list()]

    assert CLAUDE in ids


# --- streaming behaviour -------------------------------------------------------------------


def test_stream_body_is_produced_event_by_event(upstream: FakeUpstream) -> None:
    """The transport's body yields one SSE event per read, not one buffer."""
    transport = upstream.httpx2_transport()
    request = httpx2.Request(
        "POST", "http://fake/v1/chat/completions", json={**CHAT_BODY, "stream": True}
    )
    response = transport.handle_request(request)
    first = next(response.iter_raw())
    response.close()

    assert response.headers["content-type"].startswith("text/event-stream")
    assert first.startswith(b"data: {")
    assert first.count(b"\n\n") == 1


def test_abandoned_stream_does_not_wait_for_the_rest() -> None:
    """The first chunk arrives at once and closing the stream skips the remaining delays."""
    upstream = FakeUpstream(chunk_latency=2.0)
    started = time.monotonic()
    with upstream.openai_client() as client:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        first = next(iter(stream))
        stream.close()

    assert first.choices[0].delta.role == "assistant"
    assert time.monotonic() - started < 1.0  # reading one more event would take 2 s


def test_latency_delays_the_response() -> None:
    """latency holds the response back for at least that many seconds."""
    upstream = FakeUpstream(latency=0.05)
    with upstream.openai_client() as client:
        started = time.perf_counter()
        client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert time.perf_counter() - started >= 0.05


async def test_chunk_latency_paces_the_stream() -> None:
    """chunk_latency separates consecutive events."""
    upstream = FakeUpstream(reply="one two", chunk_latency=0.01)
    async with upstream.openai_client(async_=True) as client:
        started = time.perf_counter()
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        chunks = [chunk async for chunk in stream]

    # role, "one", " two", finish, [DONE]: four gaps between five events
    assert len(chunks) == 4
    assert time.perf_counter() - started >= 0.04


# --- httpx (the older SDK lines' HTTP client) -----------------------------------------------


def test_httpx_transport_serves_json(upstream: FakeUpstream) -> None:
    """A plain httpx.Client gets an OpenAI JSON completion through httpx_transport()."""
    with httpx.Client(transport=upstream.httpx_transport(), base_url="http://fake") as client:
        response = client.post("/v1/chat/completions", json=CHAT_BODY)

    assert response.status_code == 200
    assert response.headers["x-request-id"].startswith("req_")
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["usage"]["prompt_tokens"] == count_chat(MESSAGES, model=MODEL)


def test_httpx_transport_frames_chat_sse(upstream: FakeUpstream) -> None:
    """Chat SSE is ``data: {...}`` blocks ending with ``data: [DONE]``."""
    body = {**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}}
    with (
        httpx.Client(transport=upstream.httpx_transport(), base_url="http://fake") as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        parts = list(response.iter_bytes())

    events = sse_events(b"".join(parts).decode())
    assert len(parts) == len(events)
    assert all(name is None for name, _ in events)
    assert events[-1] == (None, "[DONE]")
    assert json.loads(events[-2][1])["usage"]["completion_tokens"] == len(reply_tokens())


async def test_async_httpx_transport_frames_named_anthropic_events(
    upstream: FakeUpstream,
) -> None:
    """Anthropic SSE carries an ``event:`` line naming each event's type."""
    body = {
        "model": CLAUDE,
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    transport = upstream.async_httpx_transport()
    async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
        response = await client.post("/v1/messages", json=body)

    events = sse_events(response.text)
    assert events[0][0] == "message_start"
    assert events[-1][0] == "message_stop"
    assert all(json.loads(data)["type"] == name for name, data in events)


def test_httpx_transport_disconnect_raises_remote_protocol_error(upstream: FakeUpstream) -> None:
    """An injected mid-stream disconnect is httpx.RemoteProtocolError for httpx clients."""
    upstream.disconnect_next(after_chunks=1)
    body = {**CHAT_BODY, "stream": True}

    with (
        httpx.Client(transport=upstream.httpx_transport(), base_url="http://fake") as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        response.read()


def test_openai_sdk_accepts_httpx_client_with_fake_transport(upstream: FakeUpstream) -> None:
    """openai 3.x also takes a legacy httpx.Client; the httpx transport serves it."""
    http_client = httpx.Client(transport=upstream.httpx_transport())
    # the SDK's annotations name httpx2 only, but it accepts httpx clients at runtime
    legacy: Any = http_client
    with openai.OpenAI(api_key="x", base_url="http://fake/v1", http_client=legacy) as client:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)

    assert text == DEFAULT_REPLY


# --- ASGI and loopback server ---------------------------------------------------------------


async def test_asgi_app_answers_through_asgi_transport(upstream: FakeUpstream) -> None:
    """FakeUpstream is an ASGI app: httpx2.ASGITransport can drive it."""
    transport = httpx2.ASGITransport(app=upstream)
    async with httpx2.AsyncClient(transport=transport, base_url="http://fake") as client:
        response = await client.post("/v1/chat/completions", json={**CHAT_BODY, "stream": True})

    events = sse_events(response.text)
    assert events[-1] == (None, "[DONE]")
    assert upstream.last_request.body["stream"] is True


def test_served_openai_chat_and_stream(served: tuple[FakeUpstream, str]) -> None:
    """The real SDK talks to the fake over a loopback socket."""
    upstream, url = served
    with upstream.openai_client(base_url=f"{url}/v1") as client:
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)

    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert text == DEFAULT_REPLY
    assert upstream.last_request.headers["authorization"] == "[redacted]"


async def test_served_async_stream_with_usage(served: tuple[FakeUpstream, str]) -> None:
    """AsyncOpenAI streams over the socket, final usage chunk included."""
    upstream, url = served
    async with upstream.openai_client(async_=True, base_url=f"{url}/v1") as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]

    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == count_chat(MESSAGES, model=MODEL)


def test_served_anthropic_stream(served: tuple[FakeUpstream, str]) -> None:
    """Anthropic's stream helper works over the socket."""
    upstream, url = served
    with (
        upstream.anthropic_client(base_url=url) as client,
        client.messages.stream(
            model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
        ) as stream,
    ):
        final = stream.get_final_message()

    assert final.usage.output_tokens == len(reply_tokens(model=CLAUDE))


def test_served_mid_stream_disconnect(served: tuple[FakeUpstream, str]) -> None:
    """Over a socket, an injected disconnect cuts the stream after the given events."""
    upstream, url = served
    upstream.disconnect_next(after_chunks=3)
    received = []

    with (  # noqa: PT012 - the error comes mid-loop
        upstream.openai_client(base_url=f"{url}/v1") as client,
        pytest.raises(openai.APIConnectionError),
    ):
        for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            received.append(chunk)

    assert len(received) == 3


def test_served_timeout_holds_until_the_client_gives_up(served: tuple[FakeUpstream, str]) -> None:
    """Over a socket, timeout_next() really goes silent; the client's timeout fires."""
    upstream, url = served
    upstream.timeout_next()

    with (
        upstream.openai_client(base_url=f"{url}/v1", timeout=0.1) as client,
        pytest.raises(openai.APITimeoutError),
    ):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)


# --- configuration and bookkeeping ----------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"chunk_tokens": 0},
        {"latency": -1.0},
        {"chunk_latency": float("nan")},
        {"cached_tokens": 1.5},
        {"cached_tokens": -1},
        {"cache_write_tokens": "10"},
        {"reasoning_tokens": -3},
        {"keep_requests": -1},
    ],
)
def test_invalid_options_raise_value_error(options: dict[str, Any]) -> None:
    """Out-of-range options fail at construction, not at the first request."""
    with pytest.raises(ValueError, match=next(iter(options))):
        FakeUpstream(**options)


@pytest.mark.parametrize(
    "inject",
    [
        lambda u: u.fail_next(200),
        lambda u: u.fail_next(429, times=0),
        lambda u: u.disconnect_next(after_chunks=-1),
    ],
)
def test_invalid_faults_raise_value_error(inject: Any) -> None:
    """A fault that could never fire is refused when queued."""
    with pytest.raises(ValueError, match="must be"):
        inject(FakeUpstream())


def test_reset_forgets_requests_and_faults(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """reset() clears the record and the fault queue."""
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    upstream.fail_next(500)

    upstream.reset()
    client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert len(upstream.requests) == 1


def test_keep_requests_bounds_the_record() -> None:
    """keep_requests keeps only the latest requests."""
    upstream = FakeUpstream(keep_requests=2)
    with upstream.openai_client() as client:
        for n in range(3):
            client.chat.completions.create(model=f"gpt-4o-{n}", messages=MESSAGES)

    assert [request.body["model"] for request in upstream.requests] == ["gpt-4o-1", "gpt-4o-2"]


def test_last_request_before_any_request_raises(upstream: FakeUpstream) -> None:
    """last_request raises LookupError until something arrived."""
    with pytest.raises(LookupError):
        _ = upstream.last_request


def test_recorded_request_is_immutable(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """Records are frozen: a test cannot rewrite what was received."""
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    request: RecordedRequest = upstream.last_request

    with pytest.raises(AttributeError):
        request.path = "/elsewhere"  # type: ignore[misc]


# --- capture_spend ----------------------------------------------------------------------


def test_capture_spend_collects_calls_finished_in_the_block() -> None:
    """capture_spend() sees every call finished inside it, and none outside."""
    from decimal import Decimal

    from metered.engine.meter import Meter
    from metered.testing import capture_spend
    from metered.usage import Usage

    meter = Meter({"routes": {"r": {"models": {"gpt-4o": "$0.05"}}}, "default_route": "r"})
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    meter.begin(body).finish(Usage(input_tokens=8, output_tokens=5))  # outside: not captured
    with capture_spend() as spend:
        meter.begin(body).finish(Usage(input_tokens=8, output_tokens=5))
        meter.begin(body).finish(error=TimeoutError("upstream timed out"))  # released
    assert spend.calls == 2
    assert spend.price == Decimal("0.05")
    assert spend.by_model() == {"gpt-4o": Decimal("0.05")}
    assert spend.cost == Decimal("2.50") * 8 / 10**6 + Decimal(10) * 5 / 10**6


async def test_capture_spend_follows_asyncio_tasks() -> None:
    """Calls finished in tasks started inside the block are captured too."""
    import asyncio

    from metered.engine.meter import Meter
    from metered.testing import capture_spend
    from metered.usage import Usage

    meter = Meter()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

    async def one() -> None:
        call = await meter.abegin(body)
        await call.afinish(Usage(input_tokens=8, output_tokens=3))

    with capture_spend() as spend:
        await asyncio.gather(one(), one(), one())
    assert spend.calls == 3
    assert all(r.settlement_status == "settled" for r in spend.records)
