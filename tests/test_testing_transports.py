"""The fake upstream reached through httpx/httpx2 transports, ASGI and a loopback socket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import openai
import pytest

from metered.testing import DEFAULT_REPLY, FakeUpstream
from metered.tokens import count_chat
from tests.testing_support import CHAT_BODY, CLAUDE, MESSAGES, MODEL, reply_tokens, sse_events


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


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
