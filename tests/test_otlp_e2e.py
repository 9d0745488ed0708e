"""End to end: metered calls through the ASGI middleware, their spans exported over
OTLP/HTTP (protobuf) to a receiver on loopback, decoded, and checked against the
telemetry contract (GenAI semantic conventions + metered.* attributes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from harness import OtlpReceiver, ReceivedSpan
from metered.engine.meter import Meter
from metered.http.asgi import MeteredMiddleware
from metered.telemetry import ATTR
from metered.testing import FakeUpstream

MeterFactory = Callable[..., Meter]
HI = [{"role": "user", "content": "hi"}]
CONFIG: dict[str, Any] = {
    "models": {"deny": ["gpt-4.5*"]},
    "routes": {
        "POST /v1/chat/completions": {"models": {"gpt-4o": {"markup": "25%"}}, "fallback": "$0.02"}
    },
}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture
def exported(make_meter: MeterFactory, receiver: OtlpReceiver) -> list[ReceivedSpan]:
    """Three gateway calls (JSON, stream, denied) exported through the OTLP/HTTP exporter."""
    provider = TracerProvider(resource=Resource.create({"service.name": "metered-e2e"}))
    exporter = OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter = make_meter(CONFIG, tracer_provider=provider)
    app = MeteredMiddleware(FakeUpstream(), meter=meter, identify=lambda scope: "acme")
    transport = httpx.ASGITransport(app)

    async def drive() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            for body in (
                {"model": "gpt-4o", "messages": HI},
                {"model": "gpt-4o", "messages": HI, "stream": True},
                {"model": "gpt-4.5-preview", "messages": HI},
            ):
                await client.post("/v1/chat/completions", json=body)

    asyncio.run(drive())
    spans = receiver.wait_for(3)
    provider.shutdown()
    return spans


def test_exported_spans_are_client_chat_spans_of_the_service(
    exported: list[ReceivedSpan],
) -> None:
    """Each call is one CLIENT span named '{operation} {model}' under the app's resource."""
    assert [s.name for s in exported] == ["chat gpt-4o", "chat gpt-4o", "chat gpt-4.5-preview"]
    assert {s.kind for s in exported} == {ProtoSpan.SPAN_KIND_CLIENT}
    assert {s.service_name for s in exported} == {"metered-e2e"}


def test_settled_call_spans_carry_the_genai_and_metered_attributes(
    exported: list[ReceivedSpan],
) -> None:
    """Usage, prices, pricing source, settlement and account survive the OTLP round trip."""
    for span in exported[:2]:
        attrs = span.attributes
        assert attrs[ATTR.OPERATION] == "chat"
        assert attrs[ATTR.PROVIDER] == "openai"
        assert attrs[ATTR.REQUEST_MODEL] == "gpt-4o"
        assert attrs[ATTR.RESPONSE_MODEL] == "gpt-4o"
        assert attrs[ATTR.RESPONSE_ID].startswith("chatcmpl-")
        assert attrs[ATTR.FINISH_REASONS] == ["stop"]
        assert attrs[ATTR.INPUT_TOKENS] > 0
        assert attrs[ATTR.OUTPUT_TOKENS] > 0
        assert attrs[ATTR.TOKENS_SOURCE] == "actual"
        assert attrs[ATTR.PRICING_SOURCE] == "route.models"
        assert attrs[ATTR.MODEL_RESOLVED] == "gpt-4o"
        assert attrs[ATTR.PRICE] == pytest.approx(attrs[ATTR.COST] * 1.25)
        assert attrs[ATTR.MARGIN] == pytest.approx(attrs[ATTR.PRICE] - attrs[ATTR.COST])
        assert attrs[ATTR.SETTLEMENT_MODE] == "after-response"
        assert attrs[ATTR.SETTLEMENT_STATUS] == "settled"
        assert attrs[ATTR.SETTLEMENT_AMOUNT] == pytest.approx(attrs[ATTR.PRICE])
        assert attrs[ATTR.PAYMENT_REQUIRED] >= attrs[ATTR.PRICE]
        assert attrs[ATTR.ACCOUNT] == "acme"
        assert attrs[ATTR.ROUTE] == "POST /v1/chat/completions"
        assert attrs[ATTR.POLICY_DECISION] == "allowed"
    assert exported[1].attributes[ATTR.REQUEST_STREAM] is True


def test_refused_call_span_says_why_and_charges_nothing(exported: list[ReceivedSpan]) -> None:
    """The denied call's span names the policy decision and reason; no settlement amount."""
    attrs = exported[2].attributes
    assert attrs[ATTR.POLICY_DECISION] == "denied"
    assert attrs[ATTR.POLICY_REASON]
    assert attrs[ATTR.SETTLEMENT_STATUS] == "skipped"
    assert attrs[ATTR.SETTLEMENT_AMOUNT] == 0
