"""The google-genai door: the real ``google-genai`` SDK, its requests metered at the HTTP
transport (``metered.clients.genai``), against the fake Gemini API."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx2
import pytest
from google import genai
from google.genai import types

from metered.clients.genai import metered_http_options, metered_transport
from metered.engine.meter import Meter
from metered.errors import BudgetExceeded
from metered.records import UsageRecord
from metered.testing import FakeUpstream
from metered.testing.transports import _transport_class
from metered.usage import Usage

MODEL = "gemini-2.5-flash"
BUDGET: dict[str, Any] = {"accounts": {"a": {"budgets": ["$10/day"]}}}


def client_of(upstream: FakeUpstream, meter: Meter, **identity: Any) -> genai.Client:
    transport = metered_transport(meter, inner=_transport_class("httpx2")(upstream), **identity)
    return genai.Client(
        api_key="fake-google-key",
        http_options=types.HttpOptions(
            base_url="http://fake-upstream.test",
            httpx_client=httpx2.Client(transport=transport),
            httpx_async_client=httpx2.AsyncClient(transport=transport),
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )


def priced(meter: Meter, record: UsageRecord) -> Decimal | None:
    usage = Usage(
        input_tokens=record.tokens_in,
        output_tokens=record.tokens_out,
        reasoning_tokens=record.reasoning_tokens,
    )
    return meter.pricer.quote(MODEL, usage).cost


def test_a_generate_call_is_metered_with_the_limit_in_the_body() -> None:
    upstream = FakeUpstream(reasoning_tokens=5)
    records: list[UsageRecord] = []
    meter = Meter(BUDGET, sink=records.append)
    reply = client_of(upstream, meter, account="a").models.generate_content(
        model=MODEL, contents="hello"
    )
    (record,) = records
    assert (record.settlement_status, record.account, record.stream) == ("settled", "a", False)
    assert reply.usage_metadata is not None
    assert record.tokens_out == (reply.usage_metadata.candidates_token_count or 0) + 5
    assert record.cost == priced(meter, record)
    assert record.cost_source == "genai-prices"
    sent = upstream.last_request.body
    assert sent["generationConfig"]["maxOutputTokens"] == record.request_max_tokens
    assert "model" not in sent
    assert "stream" not in sent
    assert meter.spent("a") == record.settlement_amount


def test_a_streamed_call_is_metered_and_delivered_whole() -> None:
    upstream = FakeUpstream()
    records: list[UsageRecord] = []
    meter = Meter(BUDGET, sink=records.append)
    client = client_of(upstream, meter, account="a")
    whole = client.models.generate_content(model=MODEL, contents="hello").text
    streamed = "".join(
        chunk.text or ""
        for chunk in client.models.generate_content_stream(model=MODEL, contents="hello")
    )
    assert streamed == whole
    assert [r.stream for r in records] == [False, True]
    assert records[0].cost == records[1].cost
    assert records[1].settlement_status == "settled"


def test_async_calls_are_metered() -> None:
    upstream = FakeUpstream()
    records: list[UsageRecord] = []
    meter = Meter(BUDGET, sink=records.append)
    client = client_of(upstream, meter, account="a")

    async def main() -> None:
        await client.aio.models.generate_content(model=MODEL, contents="hi")
        async for _ in await client.aio.models.generate_content_stream(model=MODEL, contents="hi"):
            pass

    asyncio.run(main())
    assert [(r.stream, r.settlement_status) for r in records] == [
        (False, "settled"),
        (True, "settled"),
    ]
    assert meter.spent("a") == sum(r.settlement_amount for r in records)


def test_a_refused_call_raises_and_sends_nothing() -> None:
    upstream = FakeUpstream()
    meter = Meter({"accounts": {"a": {"budgets": ["$0.0000001/day"]}}})
    with pytest.raises(BudgetExceeded):
        client_of(upstream, meter, account="a").models.generate_content(
            model=MODEL, contents="hello"
        )
    assert upstream.requests == []


def test_a_body_naming_the_model_is_refused() -> None:
    transport = metered_transport(Meter({}), inner=_transport_class("httpx2")(FakeUpstream()))
    http = httpx2.Client(transport=transport, base_url="http://fake-upstream.test")
    with pytest.raises(Exception, match="URL names the model"):
        http.post(
            f"/v1beta/models/{MODEL}:generateContent",
            json={"model": "gemini-2.5-pro", "contents": [{"parts": [{"text": "hi"}]}]},
        )


def test_other_requests_pass_through_unmetered() -> None:
    upstream = FakeUpstream()
    records: list[UsageRecord] = []
    transport = metered_transport(
        Meter({}, sink=records.append), inner=_transport_class("httpx2")(upstream)
    )
    http = httpx2.Client(transport=transport, base_url="http://fake-upstream.test")
    http.get("/v1beta/models")
    assert records == []


def test_http_options_meter_a_client_over_loopback() -> None:
    upstream = FakeUpstream()
    records: list[UsageRecord] = []
    meter = Meter(BUDGET, sink=records.append)
    with upstream.serve() as url:
        base = types.HttpOptions(base_url=url, retry_options=types.HttpRetryOptions(attempts=1))
        with genai.Client(
            api_key="fake-google-key",
            http_options=metered_http_options(meter, base=base, account="a"),
        ) as client:  # closed: no socket left for the GC
            client.models.generate_content(model=MODEL, contents="hello")
    (record,) = records
    assert (record.settlement_status, record.account) == ("settled", "a")
    assert record.server_address == "127.0.0.1"


def test_an_upstream_error_releases_the_hold() -> None:
    from google.genai import errors

    upstream = FakeUpstream()
    upstream.fail_next(500)
    records: list[UsageRecord] = []
    meter = Meter(BUDGET, sink=records.append)
    with pytest.raises(errors.ServerError):
        client_of(upstream, meter, account="a").models.generate_content(
            model=MODEL, contents="hello"
        )
    (record,) = records
    assert (record.settlement_status, record.upstream_status) == ("released", 500)
    assert meter.spent("a") == 0


def test_a_stream_cut_by_the_upstream_settles_once() -> None:
    upstream = FakeUpstream(reply="one two three four five six seven eight nine ten")
    upstream.disconnect_next(after_chunks=2)
    records: list[UsageRecord] = []
    meter = Meter(BUDGET, sink=records.append)
    client = client_of(upstream, meter, account="a")
    with pytest.raises(httpx2.RemoteProtocolError):  # the connection broke mid-stream
        for _ in client.models.generate_content_stream(model=MODEL, contents="hello"):
            pass
    (record,) = records
    assert record.stream
    assert record.error_type is not None
    assert meter.spent("a") == record.settlement_amount


def test_a_stream_the_caller_leaves_settles_what_was_delivered() -> None:
    import gc

    upstream = FakeUpstream(reply="one two three four five six seven eight nine ten")
    records: list[UsageRecord] = []
    meter = Meter(BUDGET, sink=records.append)
    stream = client_of(upstream, meter, account="a").models.generate_content_stream(
        model=MODEL, contents="hello"
    )
    next(iter(stream))
    del stream
    gc.collect()
    (record,) = records
    assert record.settlement_status == "settled"  # never released: output was delivered
    assert record.tokens_out > 0
    assert meter.spent("a") == record.settlement_amount > 0
