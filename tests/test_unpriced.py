"""Honest defaults: ``Meter()`` with no configuration never refuses a call for its model.

A model no catalog knows (a local ``llama3.1:8b`` on Ollama, a model released this week)
is served and recorded *unpriced*: cost unknown (``None``, never $0), a warning logged
once per model. Enforcement starts where the configuration asks for it, and a budget is
never bypassed by naming an unknown model.

Also here: the record's money fields, spans and metrics, the JSONL round trip and
``capture_spend``, request totals, gateway routes with and without config, and a real
``redis-server`` ledger (a $0 hold must capture there).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conftest import MeterFactory
from metered.clients import MeteredAsyncOpenAI, MeteredOpenAI
from metered.engine.meter import Meter
from metered.errors import UnknownModel
from metered.http.asgi import MeteredMiddleware
from metered.ledger.redis import RedisLedger
from metered.records import JsonlSink, UsageRecord
from metered.telemetry import ATTR, METRIC
from metered.testing import DEFAULT_REPLY, FakeUpstream, capture_spend
from sdk_support import sdk_http_client
from tests.redis_server import RedisServer, redis_server_fixture  # noqa: F401 (fixture)

LOCAL = "llama3.1:8b"
MODEL = LOCAL
HI = [{"role": "user", "content": "hi"}]
CHAT = "POST /v1/chat/completions"
BUDGETED = {"accounts": {"acme": {"budgets": ["$1/day"]}}}


def test_an_unknown_model_is_served_and_recorded_unpriced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    records: list[UsageRecord] = []
    upstream = FakeUpstream(models=[LOCAL])
    client = MeteredOpenAI(upstream.openai_client(), meter=Meter(sink=records.append))
    with caplog.at_level(logging.WARNING, logger="metered"):
        for _ in range(2):
            reply = client.chat.completions.create(model=LOCAL, messages=HI)
            assert reply.choices[0].message.content
    record = records[-1]
    assert (record.pricing_source, record.cost, record.resolved_price) == ("unpriced", None, None)
    assert record.margin is None
    assert (record.settlement_status, record.settlement_amount) == ("settled", 0)
    assert record.tokens_out > 0  # usage is still measured
    warnings = [r for r in caplog.records if LOCAL in r.getMessage()]
    assert len(warnings) == 1  # once per model, not per call


def test_the_async_client_serves_it_too() -> None:
    records: list[UsageRecord] = []
    upstream = FakeUpstream(models=[LOCAL])
    client = MeteredAsyncOpenAI(
        upstream.openai_client(async_=True), meter=Meter(sink=records.append)
    )
    reply = asyncio.run(client.chat.completions.create(model=LOCAL, messages=HI))
    assert reply.choices[0].message.content
    assert records[-1].pricing_source == "unpriced"


def test_a_gateway_route_without_prices_serves_it_with_no_cost_header() -> None:
    records: list[UsageRecord] = []
    meter = Meter({"routes": {"POST /v1/chat/completions": {}}}, sink=records.append)
    app = MeteredMiddleware(FakeUpstream(models=[LOCAL]), meter=meter)

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://g") as http:
            return await http.post("/v1/chat/completions", json={"model": LOCAL, "messages": HI})

    response = asyncio.run(post())
    assert response.status_code == 200
    assert "x-metered-cost" not in response.headers  # unknown, so not claimed as $0
    assert records[-1].pricing_source == "unpriced"


def test_a_budget_is_never_bypassed_by_an_unknown_model() -> None:
    upstream = FakeUpstream(models=[LOCAL])
    meter = Meter({"accounts": {"acme": {"budgets": ["$1/day"]}}})
    client = MeteredOpenAI(upstream.openai_client(), meter=meter, account="acme")
    with pytest.raises(UnknownModel) as refused:
        client.chat.completions.create(model=LOCAL, messages=HI)
    assert refused.value.status_code == 400
    assert upstream.requests == []
    # an unbudgeted caller of the same meter is served
    MeteredOpenAI(upstream.openai_client(), meter=meter, account="other").chat.completions.create(
        model=LOCAL, messages=HI
    )


def test_enforcement_starts_where_the_config_asks_for_it() -> None:
    upstream = FakeUpstream(models=[LOCAL])
    strict = Meter({"routes": {"r": {"unknown_model": "reject"}}, "default_route": "r"})
    with pytest.raises(UnknownModel):
        MeteredOpenAI(upstream.openai_client(), meter=strict).chat.completions.create(
            model=LOCAL, messages=HI
        )
    records: list[UsageRecord] = []
    priced = Meter(
        {"routes": {"r": {"fallback": "$0.01"}}, "default_route": "r"}, sink=records.append
    )
    MeteredOpenAI(upstream.openai_client(), meter=priced).chat.completions.create(
        model=LOCAL, messages=HI
    )
    assert (records[-1].pricing_source, records[-1].settlement_amount) == (
        "fallback",
        Decimal("0.01"),
    )


# -- the same, in depth (real SDK over HTTP, in-memory telemetry) --------------------------


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def raw_client(upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    http_client = sdk_http_client("openai", upstream, async_=False)
    with upstream.openai_client(http_client=http_client) as client:
        yield client


@pytest.fixture
async def raw_async_client(upstream: FakeUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    http_client = sdk_http_client("openai", upstream, async_=True)
    async with upstream.openai_client(async_=True, http_client=http_client) as client:
        yield client


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "has no price" in r.getMessage()]


def _assert_unpriced(record: UsageRecord) -> None:
    assert record.requested_model == MODEL
    assert record.pricing_source == "unpriced"
    assert (record.cost, record.resolved_price, record.margin) == (None, None, None)
    assert record.settlement_status == "settled"
    assert record.settlement_amount == 0
    assert record.payment_required == 0
    assert record.policy_decision == "allowed"


async def test_the_async_client_streams_it_unpriced(
    make_meter: MeterFactory,
    records: list[UsageRecord],
    raw_async_client: openai.AsyncOpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """MeteredAsyncOpenAI, streaming too: the same unpriced records and one warning."""
    meter = make_meter()
    client = MeteredAsyncOpenAI(raw_async_client, meter=meter)
    with caplog.at_level("WARNING", logger="metered"):
        response = await client.chat.completions.create(model=MODEL, messages=HI)
        assert response.choices[0].message.content == DEFAULT_REPLY
        stream = await client.chat.completions.create(model=MODEL, messages=HI, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == DEFAULT_REPLY
    assert len(records) == 2
    for record in records:
        _assert_unpriced(record)
    assert len(_warnings(caplog)) == 1


@pytest.mark.parametrize("account", ["acme", None])
def test_any_budget_refuses_it_before_anything_is_held(
    make_meter: MeterFactory,
    records: list[UsageRecord],
    raw_client: openai.OpenAI,
    upstream: FakeUpstream,
    account: str | None,
) -> None:
    """A budget (the account's own, or the default budget) is never bypassed by naming an
    unknown model: UnknownModel, nothing held, the upstream saw nothing."""
    config = BUDGETED if account else {"default_budgets": ["$1/day"]}
    meter = make_meter(config)
    client = MeteredOpenAI(raw_client, meter=meter, account=account)
    with pytest.raises(UnknownModel) as info:
        client.chat.completions.create(model=MODEL, messages=HI)
    assert info.value.status_code == 400
    assert upstream.requests == []
    (record,) = records
    assert (record.policy_decision, record.policy_reason) == ("denied", "unknown_model")
    assert meter.ledger.balance(account or "anonymous").held_nanos == 0
    # a priced model on the same account still works
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert len(upstream.requests) == 1


def test_unpriced_call_has_no_money_in_telemetry(
    make_meter: MeterFactory,
    raw_client: openai.OpenAI,
    span_exporter: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
) -> None:
    """The span says pricing source unpriced, with no cost/price/margin (never 0), and the
    cost and price metrics get no point; the call is still counted."""
    client = MeteredOpenAI(raw_client, meter=make_meter())
    client.chat.completions.create(model=MODEL, messages=HI)
    (span,) = span_exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert attrs[ATTR.PRICING_SOURCE] == "unpriced"
    for name in (ATTR.COST, ATTR.PRICE, ATTR.MARGIN):
        assert name not in attrs
    data = metric_reader.get_metrics_data()
    assert data is not None
    metrics = {m.name: m for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    assert METRIC.COST not in metrics
    assert METRIC.PRICE not in metrics
    (point,) = metrics[METRIC.CALLS].data.data_points
    assert dict(point.attributes or {})[ATTR.PRICING_SOURCE] == "unpriced"


def test_unpriced_record_round_trips_through_jsonl(
    make_meter: MeterFactory,
    raw_client: openai.OpenAI,
    tmp_path: Any,
) -> None:
    """The JSONL line says null for cost and price, and capture_spend adds nothing."""
    sink = JsonlSink(tmp_path / "usage.jsonl")
    client = MeteredOpenAI(raw_client, meter=make_meter(sink=sink))
    with capture_spend() as spend:
        client.chat.completions.create(model=MODEL, messages=HI)
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    sink.close()
    with (tmp_path / "usage.jsonl").open() as lines:
        unpriced, _ = (json.loads(line) for line in lines)
    assert unpriced["pricing_source"] == "unpriced"
    assert (unpriced["cost"], unpriced["resolved_price"], unpriced["margin"]) == (None,) * 3
    assert spend.calls == 2
    assert spend.cost == spend.records[1].cost
    assert spend.price == spend.records[1].settlement_amount
    assert spend.price == spend.records[1].resolved_price


async def test_gateway_route_with_no_config_passes_an_unknown_model(
    make_meter: MeterFactory,
    records: list[UsageRecord],
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gateway route over Meter() (no config): 200 with the answer, an unpriced record,
    one warning for two calls."""
    gateway = MeteredMiddleware(upstream, meter=make_meter(), routes=[CHAT])
    transport = httpx.ASGITransport(gateway)
    with caplog.at_level("WARNING", logger="metered"):
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            for _ in range(2):
                response = await client.post(
                    "/v1/chat/completions", json={"model": MODEL, "messages": HI}
                )
                assert response.status_code == 200
                assert response.json()["choices"][0]["message"]["content"] == DEFAULT_REPLY
    assert len(records) == 2
    for record in records:
        _assert_unpriced(record)
    assert len(_warnings(caplog)) == 1


async def test_gateway_route_refuses_an_unknown_model_for_a_budgeted_account(
    make_meter: MeterFactory, records: list[UsageRecord], upstream: FakeUpstream
) -> None:
    """Through the gateway, a budgeted caller naming an unknown model gets a 400
    unknown_model in OpenAI's error shape and the upstream sees nothing."""
    gateway = MeteredMiddleware(
        upstream, meter=make_meter(BUDGETED), identify=lambda scope: "acme", routes=[CHAT]
    )
    transport = httpx.ASGITransport(gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": HI})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_model"
    assert upstream.requests == []
    (record,) = records
    assert record.policy_reason == "unknown_model"


async def test_request_totals_leave_unpriced_calls_out(
    make_meter: MeterFactory, records: list[UsageRecord], upstream: FakeUpstream
) -> None:
    """A handler making one unpriced and one priced call: x-metered-cost/-price are the
    priced call's alone; a handler making only unpriced calls gets no totals headers."""
    meter = make_meter()
    llm = MeteredAsyncOpenAI(upstream.openai_client(async_=True), meter=meter)
    app = FastAPI()
    app.add_middleware(MeteredMiddleware, meter=meter)

    @app.post("/both")
    async def both() -> dict[str, str]:
        await llm.chat.completions.create(model=MODEL, messages=HI)
        await llm.chat.completions.create(model="gpt-4o-mini", messages=HI)
        return {"ok": "yes"}

    @app.post("/unpriced")
    async def only_unpriced() -> dict[str, str]:
        await llm.chat.completions.create(model=MODEL, messages=HI)
        return {"ok": "yes"}

    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        both_response = await client.post("/both")
        unpriced_response = await client.post("/unpriced")
    assert both_response.status_code == unpriced_response.status_code == 200
    unpriced, priced, alone = records
    assert unpriced.pricing_source == alone.pricing_source == "unpriced"
    assert priced.cost is not None
    assert Decimal(both_response.headers["x-metered-cost"]) == priced.cost
    assert Decimal(both_response.headers["x-metered-price"]) == priced.settlement_amount
    assert "x-metered-cost" not in unpriced_response.headers
    assert "x-metered-price" not in unpriced_response.headers


@pytest.mark.redis
def test_unpriced_and_refused_calls_on_a_redis_ledger(
    redis_server: RedisServer,
    make_meter: MeterFactory,
    records: list[UsageRecord],
    raw_client: openai.OpenAI,
    upstream: FakeUpstream,
) -> None:
    """On a real redis-server: the unpriced call settles at 0 and leaves no hold; the
    budgeted account's call is refused with nothing held or spent."""
    ledger = RedisLedger(redis_server.url, prefix="unpriced-test:")
    try:
        meter = make_meter(BUDGETED, ledger=ledger)
        MeteredOpenAI(raw_client, meter=meter, account="free").chat.completions.create(
            model=MODEL, messages=HI
        )
        with pytest.raises(UnknownModel):
            MeteredOpenAI(raw_client, meter=meter, account="acme").chat.completions.create(
                model=MODEL, messages=HI
            )
        assert len(upstream.requests) == 1
        unpriced, refused = records
        _assert_unpriced(unpriced)
        assert refused.policy_reason == "unknown_model"
        for account in ("free", "acme"):
            balance = ledger.balance(account)
            assert (balance.held_nanos, balance.spent) == (0, 0)
    finally:
        ledger.close()
