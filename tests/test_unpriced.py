"""Honest defaults: ``Meter()`` with no configuration never refuses a call for its model.

A model no catalog knows (a local ``llama3.1:8b`` on Ollama, a model released this week)
is served and recorded *unpriced*: cost unknown (``None``, never $0), a warning logged
once per model. Enforcement starts where the configuration asks for it, and a budget is
never bypassed by naming an unknown model.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

import httpx
import pytest

from metered.clients import MeteredAsyncOpenAI, MeteredOpenAI
from metered.engine.meter import Meter
from metered.errors import UnknownModel
from metered.http.asgi import MeteredMiddleware
from metered.records import UsageRecord
from metered.testing import FakeUpstream

LOCAL = "llama3.1:8b"
HI = [{"role": "user", "content": "hi"}]


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
