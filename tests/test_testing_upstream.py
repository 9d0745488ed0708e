"""FakeUpstream: faults, errors, streaming behaviour, options and the request record."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from metered.testing import DEFAULT_MODELS, DEFAULT_REPLY, FakeUpstream, RecordedRequest
from tests.testing_support import CHAT_BODY, CLAUDE, MESSAGES, MODEL


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
