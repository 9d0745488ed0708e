"""The fake OpenAI Chat Completions API, driven by the real openai SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest

from metered.testing import DEFAULT_REPLY, FakeUpstream
from metered.tokens import count_chat
from tests.testing_support import MESSAGES, MODEL, REASONER, first_tokens, reply_tokens


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
