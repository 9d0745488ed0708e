"""Tests for metered.asgi: caller binding for handlers, and gateway routes metered in place.

Apps are driven through ``httpx.ASGITransport``, and through a real uvicorn server on
loopback with the real ``openai`` SDK as the client. The gateway-route tests put the
middleware straight in front of :class:`~metered.testing.FakeUpstream` (an ASGI app
speaking the OpenAI wire format), so the app behind the middleware is the upstream.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from fastapi import BackgroundTasks, FastAPI
from fastapi.responses import StreamingResponse
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from harness import Recorder, serve_asgi
from metered.clients import MeteredAsyncOpenAI
from metered.context import CallerContext, current, forwarding
from metered.engine.meter import Meter
from metered.http.asgi import ApiKeys, MeteredMiddleware
from metered.records import UsageRecord
from metered.testing import FakeUpstream

MeterFactory = Callable[..., Meter]
CHAT = "POST /v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
JSON = "application/json"
CONFIG: dict[str, Any] = {
    "models": {"deny": ["gpt-4.5*"]},
    "catalog": {
        "overrides": {
            "tiny-model": {
                "input": "$1 / 1M tokens",
                "output": "$2 / 1M tokens",
                "context_window": 300,
                "max_output_tokens": 100,
            }
        }
    },
    "routes": {
        CHAT: {
            "type": "token-based",
            "models": {"gpt-4o": "$0.05", "gpt-4o-mini": "$0.005", "tiny-model": "$0.001"},
            "fallback": "$0.02",
            "max_body_bytes": 65536,
        },
        "POST /v1/responses": {"models": {"gpt-4o": "$0.05"}},
        "POST /v1/messages": {"models": {"claude-sonnet-4-6": "$0.01"}},
    },
    "tiers": {"free": {"max_tokens": 20, "budgets": ["$0.01/day"]}},
    "accounts": {"bob": {"tier": "free"}},
}


def by_header(scope: dict[str, Any]) -> str | None:
    """Identify the caller by an ``x-user`` header (tests only: no secret involved)."""
    for name, value in scope["headers"]:
        if name == b"x-user":
            return str(value.decode())
    return None


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def meter(make_meter: MeterFactory) -> Meter:
    return make_meter(CONFIG)


@pytest.fixture
def gateway(meter: Meter, upstream: FakeUpstream) -> MeteredMiddleware:
    """The middleware in front of the fake upstream: every configured route is metered."""
    return MeteredMiddleware(upstream, meter=meter, identify=by_header)


@pytest.fixture
async def client(gateway: MeteredMiddleware) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        yield c


def handler_app(meter: Meter, upstream: FakeUpstream, **options: Any) -> FastAPI:
    """A FastAPI app whose handlers call the LLM through MeteredAsyncOpenAI."""
    llm = MeteredAsyncOpenAI(upstream.openai_client(async_=True), meter=meter)
    app = FastAPI()
    app.add_middleware(MeteredMiddleware, meter=meter, identify=by_header, **options)

    async def ask(text: str = "hi") -> str:
        reply = await llm.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
        )
        return reply.choices[0].message.content or ""

    @app.post("/ask")
    async def ask_route() -> dict[str, str]:
        return {"answer": await ask()}

    @app.post("/twice")
    async def twice() -> dict[str, str]:
        return {"answer": await ask("one") + await ask("two")}

    @app.post("/later")
    async def later(tasks: BackgroundTasks) -> dict[str, bool]:
        tasks.add_task(ask, "in the background")
        return {"queued": True}

    @app.post("/stream")
    async def stream() -> StreamingResponse:
        async def words() -> AsyncIterator[str]:
            yield "start "
            yield await ask("streamed")

        return StreamingResponse(words(), media_type="text/plain")

    @app.get("/whoami")
    async def whoami() -> dict[str, Any]:
        bound = current()
        return {"account": bound.account, "tier": bound.tier}

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    return app


@pytest.fixture
async def app_client(meter: Meter, upstream: FakeUpstream) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(handler_app(meter, upstream))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
        yield c


def allowed(records: list[UsageRecord]) -> list[UsageRecord]:
    return [r for r in records if r.policy_decision == "allowed"]


# -- the ASGI contract ----------------------------------------------------------------


async def test_non_http_scopes_reach_the_app_untouched(meter: Meter) -> None:
    """Lifespan and websocket scopes go straight to the app, same receive and send."""
    seen: list[tuple[str, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["type"], receive, send))

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        pass

    middleware = MeteredMiddleware(app, meter=meter, identify=by_header)
    await middleware({"type": "lifespan"}, receive, send)
    await middleware({"type": "websocket", "path": "/ws", "headers": []}, receive, send)
    assert seen == [("lifespan", receive, send), ("websocket", receive, send)]


async def test_paths_that_are_not_gateway_routes_reach_the_app(
    client: httpx.AsyncClient, upstream: FakeUpstream, records: list[UsageRecord]
) -> None:
    """Only configured routes are metered; GET /v1/models passes through as is."""
    response = await client.get("/v1/models")
    assert response.status_code == 200
    assert response.json()["object"] == "list"
    assert upstream.last_request.path == "/v1/models"
    assert records == []


# -- caller binding for handlers --------------------------------------------------------


async def test_handler_calls_are_charged_to_the_identified_caller(
    app_client: httpx.AsyncClient, meter: Meter, records: list[UsageRecord]
) -> None:
    """A MeteredAsyncOpenAI call inside a handler is charged to the request's caller."""
    response = await app_client.post("/ask", headers={"x-user": "alice"})
    assert response.status_code == 200
    (record,) = records
    assert record.account == "alice"
    assert meter.spent("alice") == record.settlement_amount > 0


async def test_bound_caller_is_visible_to_handlers(app_client: httpx.AsyncClient) -> None:
    """The caller resolved by identify is bound in metered.context while the handler runs."""
    response = await app_client.get("/whoami", headers={"x-user": "alice"})
    assert response.json() == {"account": "alice", "tier": None}


async def test_resolver_may_return_a_caller_with_a_tier(
    meter: Meter, upstream: FakeUpstream
) -> None:
    """An async resolver returning a CallerContext binds its tier too."""

    async def identify(scope: Any) -> CallerContext:
        return CallerContext(account="carol", tier="free")

    app = handler_app(meter, upstream)
    app.user_middleware.clear()
    app.add_middleware(MeteredMiddleware, meter=meter, identify=identify)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://a") as c:
        response = await c.get("/whoami")
    assert response.json() == {"account": "carol", "tier": "free"}


async def test_background_task_calls_are_attributed_to_the_request(
    app_client: httpx.AsyncClient, records: list[UsageRecord]
) -> None:
    """A call made by a background task started during the request is charged to its caller."""
    response = await app_client.post("/later", headers={"x-user": "dora"})
    assert response.json() == {"queued": True}
    assert [r.account for r in records] == ["dora"]


async def test_streaming_response_calls_are_attributed_and_get_no_totals_headers(
    app_client: httpx.AsyncClient, records: list[UsageRecord]
) -> None:
    """A call made while a StreamingResponse is produced is charged; its headers left first."""
    response = await app_client.post("/stream", headers={"x-user": "erin"})
    assert response.text.startswith("start This is a reply")
    assert [r.account for r in records] == ["erin"]
    assert "x-metered-price" not in response.headers
    assert "x-metered-cost" not in response.headers


async def test_non_streamed_response_carries_the_request_totals(
    app_client: httpx.AsyncClient, records: list[UsageRecord]
) -> None:
    """Headers x-metered-cost / x-metered-price sum every call the handler made."""
    response = await app_client.post("/twice", headers={"x-user": "alice"})
    assert len(records) == 2
    assert Decimal(response.headers["x-metered-cost"]) == sum(r.cost or 0 for r in records)
    assert Decimal(response.headers["x-metered-price"]) == sum(r.settlement_amount for r in records)


async def test_total_headers_option_keeps_the_cost_private(
    meter: Meter, upstream: FakeUpstream
) -> None:
    """total_headers=("price",) sends the price and never the upstream cost."""
    app = handler_app(meter, upstream, total_headers=("price",))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://a") as c:
        response = await c.post("/ask")
    assert "x-metered-price" in response.headers
    assert "x-metered-cost" not in response.headers


async def test_requests_without_metered_calls_get_no_totals_headers(
    app_client: httpx.AsyncClient,
) -> None:
    """A route that calls no LLM is answered exactly as the app answered it."""
    response = await app_client.get("/health")
    assert response.json() == {"ok": True}
    assert not any(name.startswith("x-metered") for name in response.headers)


async def test_unidentified_requests_get_401_when_rejected(
    meter: Meter, upstream: FakeUpstream, records: list[UsageRecord]
) -> None:
    """unidentified="reject" answers 401 in OpenAI's error shape; public paths stay open."""
    app = handler_app(meter, upstream, unidentified="reject", public_paths={"/health"})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://a") as c:
        refused = await c.post("/ask")
        health = await c.get("/health")
        served = await c.post("/ask", headers={"x-user": "alice"})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert health.status_code == 200
    assert served.status_code == 200
    assert [r.account for r in records] == ["alice"]


async def test_unidentified_requests_are_charged_to_the_default_account(
    app_client: httpx.AsyncClient, meter: Meter
) -> None:
    """By default unidentified callers are served as the meter's default account."""
    await app_client.post("/ask")
    assert meter.spent("anonymous") > 0


# -- API keys -------------------------------------------------------------------------


async def test_raw_api_keys_never_reach_spans_records_or_logs(
    meter: Meter,
    upstream: FakeUpstream,
    records: list[UsageRecord],
    span_exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The caller's key identifies it, and appears nowhere in what metering emits."""
    caplog.set_level("DEBUG")
    secret = "sk-live-do-not-leak-123"
    app = MeteredMiddleware(upstream, meter=meter, identify=ApiKeys({secret: "acme"}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://g") as c:
        await c.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": HI},
            headers={"authorization": f"Bearer {secret}", "x-api-key": secret},
        )
    (record,) = records
    assert record.account == "acme"
    assert secret not in json.dumps(record.to_dict())
    for span in span_exporter.get_finished_spans():
        assert secret not in json.dumps(dict(span.attributes or {}), default=str)
    assert secret.encode() not in upstream.last_request.content
    assert secret not in caplog.text


# -- gateway routes: JSON and streams ---------------------------------------------------


async def test_gateway_json_route_settles_the_reported_usage(
    client: httpx.AsyncClient, meter: Meter, records: list[UsageRecord]
) -> None:
    """A JSON chat completion is priced from its usage, settled, and priced in headers."""
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o", "messages": HI},
        headers={"x-user": "alice"},
    )
    body = response.json()
    (record,) = records
    assert response.status_code == 200
    assert record.route == CHAT
    assert record.tokens_source == "actual"
    assert record.tokens_in == body["usage"]["prompt_tokens"]
    assert record.tokens_out == body["usage"]["completion_tokens"]
    assert record.settlement_status == "settled"
    assert record.response_id == body["id"]
    assert record.finish_reasons == ("stop",)
    assert response.headers["x-metered-price"] == "0.05"
    assert Decimal(response.headers["x-metered-cost"]) == record.cost
    assert meter.spent("alice") == Decimal("0.05")


async def test_gateway_stream_is_settled_from_its_usage_chunk_which_the_client_never_sees(
    client: httpx.AsyncClient, upstream: FakeUpstream, records: list[UsageRecord]
) -> None:
    """The middleware asks for include_usage, reads the usage chunk, and strips it again."""
    async with client.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "gpt-4o", "messages": HI, "stream": True},
    ) as response:
        text = (await response.aread()).decode()
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]"
    assert all(chunk["choices"] for chunk in chunks)
    assert upstream.last_request.body["stream_options"] == {"include_usage": True}
    (record,) = records
    assert record.tokens_source == "actual"
    assert record.tokens_out > 0
    assert record.settlement_status == "settled"
    assert record.time_to_first_chunk_ms is not None


async def test_gateway_stream_keeps_the_usage_chunk_the_client_asked_for(
    client: httpx.AsyncClient,
) -> None:
    """A client that asked for include_usage gets the usage chunk as the upstream sent it."""
    response = await client.post(
        "/v1/chat/completions",
        json={
            "model": "gpt-4o",
            "messages": HI,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    usage_chunk = json.loads(events[-2])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] > 0


async def test_gateway_responses_route_reads_usage_from_response_completed(
    client: httpx.AsyncClient, records: list[UsageRecord]
) -> None:
    """A Responses API stream is settled from its response.completed event."""
    response = await client.post(
        "/v1/responses", json={"model": "gpt-4o", "input": "hi", "stream": True}
    )
    assert "response.completed" in response.text
    (record,) = records
    assert record.route == "POST /v1/responses"
    assert record.tokens_source == "actual"
    assert record.finish_reasons == ("stop",)  # the one vocabulary: providers.openai_responses


async def test_gateway_messages_route_meters_an_anthropic_stream(
    client: httpx.AsyncClient, records: list[UsageRecord]
) -> None:
    """A route ending in /messages speaks Anthropic: usage from message_start + message_delta."""
    response = await client.post(
        "/v1/messages",
        json={"model": "claude-sonnet-4-6", "max_tokens": 50, "messages": HI, "stream": True},
        headers={"anthropic-version": "2023-06-01"},
    )
    assert "message_stop" in response.text
    (record,) = records
    assert record.provider == "anthropic"
    assert record.tokens_source == "actual"
    assert record.tokens_in > 0
    assert record.finish_reasons == ("end_turn",)


async def test_gateway_prices_an_unknown_model_with_the_fallback(
    client: httpx.AsyncClient, records: list[UsageRecord]
) -> None:
    """A model the route does not list is priced with the route's fallback price."""
    response = await client.post(
        "/v1/chat/completions", json={"model": "acme-llama-70b", "messages": HI}
    )
    assert response.status_code == 200
    (record,) = records
    assert record.pricing_source == "fallback"
    assert record.resolved_price == Decimal("0.02")


async def test_gateway_forwards_the_clients_own_bytes_when_nothing_is_fitted(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    """A request metering leaves as it is goes upstream byte for byte (spacing, key order,
    escapes), not re-encoded."""
    raw = '{ "messages": [{"content": "h\\u00e9llo", "role": "user"}],  "model": "gpt-4o" }'
    response = await client.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    assert upstream.last_request.content == raw.encode()


async def test_gateway_trims_history_and_fixes_the_content_length(
    client: httpx.AsyncClient, upstream: FakeUpstream, records: list[UsageRecord]
) -> None:
    """A history longer than the context window is trimmed before it is forwarded."""
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 20}
        for i in range(40)
    ]
    response = await client.post(
        "/v1/chat/completions", json={"model": "tiny-model", "messages": history}
    )
    assert response.status_code == 200
    forwarded = upstream.last_request
    assert 0 < len(forwarded.body["messages"]) < len(history)
    assert forwarded.body["messages"][-1] == history[-1]
    assert int(forwarded.headers["content-length"]) == len(forwarded.content)
    (record,) = records
    assert record.trimmed_messages == len(history) - len(forwarded.body["messages"])


async def test_gateway_clamps_the_output_limit_to_the_tier_cap(
    client: httpx.AsyncClient, upstream: FakeUpstream, records: list[UsageRecord]
) -> None:
    """A free-tier caller asking for 500 output tokens is forwarded with the tier's 20."""
    await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": HI, "max_tokens": 500},
        headers={"x-user": "bob"},
    )
    assert upstream.last_request.body["max_tokens"] == 20
    assert records[-1].max_tokens_clamped_from == 500


# -- gateway routes: refusals -----------------------------------------------------------


async def test_denied_model_is_refused_with_400_and_never_forwarded(
    client: httpx.AsyncClient, upstream: FakeUpstream, meter: Meter
) -> None:
    """A denied model gets OpenAI's error shape; the upstream sees nothing; nothing is charged."""
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4.5-preview", "messages": HI},
        headers={"x-user": "alice"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "model_not_allowed"
    assert upstream.requests == []
    assert meter.spent("alice") == 0


async def test_exhausted_budget_is_refused_with_402_and_a_retry_hint(
    client: httpx.AsyncClient, upstream: FakeUpstream, meter: Meter
) -> None:
    """402 names the account, its limit and spend; Retry-After says when the day resets."""
    body = {"model": "gpt-4o-mini", "messages": HI}
    paid = [
        await client.post("/v1/chat/completions", json=body, headers={"x-user": "bob"})
        for _ in range(2)
    ]
    refused = await client.post("/v1/chat/completions", json=body, headers={"x-user": "bob"})
    assert [r.status_code for r in paid] == [200, 200]
    assert refused.status_code == 402
    details = refused.json()["error"]["metered"]
    assert details["account"] == "bob"
    assert Decimal(details["limit_usd"]) == Decimal("0.01")
    assert Decimal(details["spent_usd"]) == Decimal("0.01")
    assert 0 < int(refused.headers["retry-after"]) <= 86400
    assert len(upstream.requests) == 2
    assert meter.spent("bob") == Decimal("0.01")


async def test_call_above_the_whole_budget_is_refused_without_a_retry_hint(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    """A call priced above the budget's limit can never fit: 402 with no Retry-After."""
    refused = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o", "messages": HI},
        headers={"x-user": "bob"},
    )
    assert refused.status_code == 402
    assert refused.json()["error"]["metered"]["required_usd"] == "0.05"
    assert "retry-after" not in refused.headers
    assert upstream.requests == []


async def test_body_over_the_route_limit_is_refused_with_413(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    """A declared or streamed body over max_body_bytes is refused before it is parsed."""
    big = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 70000}]})
    declared = await client.post(
        "/v1/chat/completions", content=big, headers={"content-type": "application/json"}
    )

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192].encode()

    streamed = await client.post(
        "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json()["error"]["metered"]["limit_bytes"] == 65536
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("content", "content_type", "status", "param"),
    [
        (b"{not json", JSON, 400, None),
        (b"[1, 2]", JSON, 400, None),
        (b'{"model": "gpt-4o", "messages": []}', "text/plain", 415, None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', JSON, 400, "model"),
        (b'{"model": 42, "messages": []}', JSON, 400, "model"),
        (b'{"model": "gpt-4o", "messages": [], "max_tokens": 1e12}', JSON, 400, "max_tokens"),
        (b'{"model": "gpt-4o", "messages": [], "max_tokens": 9999999}', JSON, 400, "max_tokens"),
        (b'{"model": "gpt-4o", "messages": [], "n": 2}', JSON, 400, "n"),
        (b'{"model": "gpt-4o", "messages": [], "stream": "yes"}', JSON, 400, "stream"),
        (b'{"model": "gpt-4o", "messages": "hi"}', JSON, 400, "messages"),
    ],
    ids=[
        "malformed-json",
        "not-an-object",
        "wrong-content-type",
        "missing-model",
        "non-string-model",
        "float-max-tokens",
        "huge-max-tokens",
        "n-above-1",
        "non-boolean-stream",
        "messages-not-a-list",
    ],
)
async def test_bad_requests_get_a_json_4xx_and_no_charge(
    client: httpx.AsyncClient,
    upstream: FakeUpstream,
    meter: Meter,
    content: bytes,
    content_type: str,
    status: int,
    param: str | None,
) -> None:
    """Malformed or out-of-range requests are refused clearly: never a 500, never a charge."""
    response = await client.post(
        "/v1/chat/completions",
        content=content,
        headers={"content-type": content_type, "x-user": "alice"},
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"]
    assert error["param"] == param
    assert upstream.requests == []
    assert meter.spent("alice") == 0


# -- gateway routes: upstream failures --------------------------------------------------


async def test_upstream_error_status_passes_through_and_releases_the_hold(
    client: httpx.AsyncClient, upstream: FakeUpstream, meter: Meter, records: list[UsageRecord]
) -> None:
    """An upstream 500 reaches the client as sent; after-response settlement charges nothing."""
    upstream.fail_next(500)
    response = await client.post(
        "/v1/chat/completions", json={"model": "gpt-4o", "messages": HI}, headers={"x-user": "al"}
    )
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert records[-1].settlement_status == "released"
    assert records[-1].upstream_status == 500
    assert meter.spent("al") == 0


async def test_stream_cut_by_the_upstream_settles_as_failed(
    client: httpx.AsyncClient, upstream: FakeUpstream, meter: Meter, records: list[UsageRecord]
) -> None:
    """An upstream dropping the connection mid-stream releases the hold; the error surfaces."""
    upstream.disconnect_next(after_chunks=3)
    with pytest.raises(ConnectionAbortedError):
        await client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": HI, "stream": True},
            headers={"x-user": "al"},
        )
    (record,) = records
    assert record.settlement_status == "released"
    assert record.error_type is not None
    assert meter.spent("al") == 0


async def test_app_failing_before_answering_gets_a_502_not_a_500(
    meter: Meter, records: list[UsageRecord]
) -> None:
    """If the app behind a gateway route raises before responding, the client gets 502 JSON."""

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    app = MeteredMiddleware(broken, meter=meter)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://g") as c:
        response = await c.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": HI})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    assert records[-1].settlement_status == "released"


# -- telemetry --------------------------------------------------------------------------


async def test_gateway_span_is_a_child_of_the_server_span(
    meter: Meter,
    upstream: FakeUpstream,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    """The call's CLIENT span nests under the request's SERVER span, which gets the totals."""
    tracer = tracer_provider.get_tracer("test")
    metered = MeteredMiddleware(upstream, meter=meter)

    async def server(scope: Any, receive: Any, send: Any) -> None:
        with tracer.start_as_current_span("POST /v1/chat/completions", kind=SpanKind.SERVER):
            await metered(scope, receive, send)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(server), base_url="http://g") as c:
        await c.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": HI})
    spans = {span.kind: span for span in span_exporter.get_finished_spans()}
    client_span, server_span = spans[SpanKind.CLIENT], spans[SpanKind.SERVER]
    assert client_span.name == "chat gpt-4o"
    assert client_span.parent is not None
    assert client_span.parent.span_id == server_span.context.span_id
    assert server_span.attributes is not None
    assert server_span.attributes["metered.request.price.usd"] == 0.05
    assert server_span.attributes["metered.request.calls"] == 1


# -- over a real socket, with the real openai SDK --------------------------------------


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def served(make_meter: MeterFactory, upstream: FakeUpstream, recorder: Recorder) -> Iterator[str]:
    meter = make_meter(CONFIG, sink=recorder)
    with serve_asgi(MeteredMiddleware(upstream, meter=meter, identify=by_header)) as url:
        yield url


@pytest.fixture
def sdk(served: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        api_key="sk-test", base_url=f"{served}/v1", max_retries=0, default_headers={"x-user": "al"}
    ) as client:
        yield client


def test_openai_sdk_json_call_through_uvicorn(sdk: openai.OpenAI, recorder: Recorder) -> None:
    """The unmodified SDK gets a normal completion; the call is charged and priced."""
    raw = sdk.chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert raw.headers["x-metered-price"] == "0.05"
    (record,) = recorder.records  # settled before the response left
    assert record.account == "al"
    assert completion.usage is not None
    assert record.tokens_in == completion.usage.prompt_tokens


def test_openai_sdk_stream_through_uvicorn(sdk: openai.OpenAI, recorder: Recorder) -> None:
    """The SDK iterates the stream normally; no usage-only chunk shows up."""
    stream = sdk.chat.completions.create(model="gpt-4o", messages=HI, stream=True)
    chunks = list(stream)
    assert all(chunk.choices for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("This is")
    (record,) = recorder.wait_for(1)
    assert record.tokens_source == "actual"
    assert record.settlement_status == "settled"


def test_openai_sdk_raises_its_typed_errors_for_400_and_402(sdk: openai.OpenAI) -> None:
    """Refusals come back in OpenAI's error shape, so the SDK raises its usual exceptions."""
    with pytest.raises(openai.BadRequestError) as denied:
        sdk.chat.completions.create(model="gpt-4.5-preview", messages=HI)
    assert denied.value.code == "model_not_allowed"
    broke = sdk.with_options(default_headers={"x-user": "bob"})
    with pytest.raises(openai.APIStatusError) as unpaid:
        broke.chat.completions.create(model="gpt-4o", messages=HI)
    assert unpaid.value.status_code == 402
    assert unpaid.value.code == "budget_exceeded"


def test_stream_first_byte_is_not_delayed_by_the_middleware(meter: Meter) -> None:
    """Time to first chunk through the middleware stays far below the stream's duration."""
    slow = FakeUpstream(reply="word " * 12, chunk_latency=0.04)
    body = {"model": "gpt-4o", "messages": HI, "stream": True}

    def timings(url: str) -> tuple[float, float]:
        with httpx.Client(base_url=url, timeout=10) as c:
            started = time.perf_counter()
            with c.stream("POST", "/v1/chat/completions", json=body) as response:
                first = None
                for chunk in response.iter_raw():
                    if chunk and first is None:
                        first = time.perf_counter() - started
            return first or 0.0, time.perf_counter() - started

    with slow.serve() as direct_url:
        direct_first, direct_total = timings(direct_url)
    with serve_asgi(MeteredMiddleware(slow, meter=meter)) as metered_url:
        metered_first, metered_total = timings(metered_url)
    # a buffering middleware would deliver the first byte at the end of the stream
    assert metered_first < metered_total / 4
    assert metered_first < direct_first + direct_total / 4


async def test_gateway_route_forwarded_with_a_metered_client_is_charged_once(
    meter: Meter, upstream: FakeUpstream, records: list[UsageRecord]
) -> None:
    """A gateway route whose app forwards with MeteredAsyncOpenAI charges the caller once."""
    llm = MeteredAsyncOpenAI(upstream.openai_client(async_=True), meter=meter)
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def forward(body: dict[str, Any]) -> Any:
        completion = await llm.chat.completions.create(**body)
        return completion.model_dump()

    app.add_middleware(MeteredMiddleware, meter=meter, identify=by_header)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://a") as c:
        response = await c.post(
            "/v1/chat/completions",
            headers={"x-user": "alice"},
            json={"model": "gpt-4o", "messages": HI},
        )
    assert response.status_code == 200
    (record,) = records  # the route's call; the forwarding client did not meter again
    assert record.pricing_source == "route.models"
    assert meter.spent("alice") == Decimal("0.05")
    assert len(upstream.requests) == 1


async def test_side_calls_inside_a_gateway_route_are_still_metered(
    meter: Meter, upstream: FakeUpstream, records: list[UsageRecord]
) -> None:
    """Only the forwarding call passes through; a later side call is metered, and
    x-metered-* headers never reach the upstream."""
    llm = MeteredAsyncOpenAI(upstream.openai_client(async_=True), meter=meter)
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def forward(body: dict[str, Any]) -> Any:
        completion = await llm.chat.completions.create(
            **body, extra_headers={"x-metered-account": "moderation"}
        )
        await llm.chat.completions.create(  # a side call: metered as usual
            model="gpt-4o-mini", messages=HI, extra_headers={"x-metered-account": "moderation"}
        )
        return completion.model_dump()

    app.add_middleware(MeteredMiddleware, meter=meter, identify=by_header)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://a") as c:
        response = await c.post(
            "/v1/chat/completions",
            headers={"x-user": "alice"},
            json={"model": "gpt-4o", "messages": HI},
        )
    assert response.status_code == 200
    assert sorted(r.account or "" for r in records) == ["alice", "moderation"]
    assert meter.spent("alice") == Decimal("0.05")
    assert all("x-metered-account" not in r.headers for r in upstream.requests)


async def test_a_side_call_before_the_forward_is_metered_and_the_forward_is_not(
    meter: Meter, upstream: FakeUpstream, records: list[UsageRecord]
) -> None:
    """The forward is recognised by its request, not by coming first: a moderation call
    made before it is charged to its own account, and the caller pays once, by the route."""
    llm = MeteredAsyncOpenAI(upstream.openai_client(async_=True), meter=meter)
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def forward(body: dict[str, Any]) -> Any:
        await llm.chat.completions.create(  # a side call first: metered as usual
            model="gpt-4o-mini", messages=HI, extra_headers={"x-metered-account": "moderation"}
        )
        completion = await llm.chat.completions.create(**body)
        return completion.model_dump()

    app.add_middleware(MeteredMiddleware, meter=meter, identify=by_header)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://a") as c:
        response = await c.post(
            "/v1/chat/completions",
            headers={"x-user": "alice"},
            json={"model": "gpt-4o", "messages": HI},
        )
    assert response.status_code == 200
    assert sorted((r.account or "", r.requested_model) for r in records) == [
        ("alice", "gpt-4o"),
        ("moderation", "gpt-4o-mini"),
    ]
    assert meter.spent("alice") == Decimal("0.05")
    assert meter.spent("moderation") > 0
    assert len(upstream.requests) == 2


async def test_a_marked_forward_that_changes_the_request_is_charged_once(
    meter: Meter, upstream: FakeUpstream, records: list[UsageRecord]
) -> None:
    """A forward marked with forwarding() passes through even when the handler adds a
    system prompt, and a side call made before it is still metered."""
    llm = MeteredAsyncOpenAI(upstream.openai_client(async_=True), meter=meter)
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def forward(body: dict[str, Any]) -> Any:
        await llm.chat.completions.create(  # a side call first: metered as usual
            model="gpt-4o-mini", messages=HI, extra_headers={"x-metered-account": "moderation"}
        )
        body["messages"] = [{"role": "system", "content": "be brief"}, *body["messages"]]
        with forwarding():
            completion = await llm.chat.completions.create(**body)
        return completion.model_dump()

    app.add_middleware(MeteredMiddleware, meter=meter, identify=by_header)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://a") as c:
        response = await c.post(
            "/v1/chat/completions",
            headers={"x-user": "alice"},
            json={"model": "gpt-4o", "messages": HI},
        )
    assert response.status_code == 200
    assert sorted((r.account or "", r.requested_model) for r in records) == [
        ("alice", "gpt-4o"),
        ("moderation", "gpt-4o-mini"),
    ]
    assert meter.spent("alice") == Decimal("0.05")
    assert len(upstream.requests) == 2


async def test_reject_refuses_unknown_keys_even_with_a_secret(
    meter: Meter, upstream: FakeUpstream
) -> None:
    """unidentified='reject' answers 401 to an unlisted key although a secret names it."""
    keys = ApiKeys({"sk-known": "acme"}, secret="s3cret")
    app = MeteredMiddleware(upstream, meter=meter, identify=keys, unidentified="reject")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://a") as c:
        body = {"model": "gpt-4o", "messages": HI}
        random_key = await c.post(
            "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-random"}
        )
        known_key = await c.post(
            "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-known"}
        )
    assert random_key.status_code == 401
    assert known_key.status_code == 200
    assert not upstream.requests[:-1]  # only the known key's request went upstream
