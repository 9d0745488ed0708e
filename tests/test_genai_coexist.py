"""Beside another producer of GenAI spans, a call gets one chat span carrying both sets of
attributes, and its tokens are counted once.

The official ``opentelemetry-instrumentation-genai-openai`` patches the SDK for the whole
process, so it runs in a subprocess that prints what was exported.
"""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from harness import run_json
from metered.clients import MeteredOpenAI
from metered.engine.meter import Meter
from metered.testing import FakeUpstream
from test_semconv_official import REQUEST, official_span

BOTH = """
import json, sys
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.instrumentation.genai.openai import OpenAIInstrumentor
from metered.clients import MeteredOpenAI
from metered.engine.meter import Meter
from metered.testing import FakeUpstream

request, stream, genai_spans = json.loads(sys.argv[1])
exporter = InMemorySpanExporter()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
reader = InMemoryMetricReader()
meter_provider = MeterProvider(metric_readers=[reader])
OpenAIInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
meter = Meter(
    {"telemetry": {"genai_spans": genai_spans}},
    tracer_provider=tracer_provider,
    meter_provider=meter_provider,
)
client = MeteredOpenAI(FakeUpstream().openai_client(), meter=meter)
if stream:
    for _ in client.chat.completions.create(**request, stream=True):
        pass
else:
    client.chat.completions.create(**request)
tokens = {}
for rm in reader.get_metrics_data().resource_metrics:
    for sm in rm.scope_metrics:
        for metric in sm.metrics:
            if metric.name == "gen_ai.client.token.usage":
                for point in metric.data.data_points:
                    kind = point.attributes["gen_ai.token.type"]
                    tokens.setdefault(kind, []).append([sm.scope.name, point.count, point.sum])
spans = [
    {"name": s.name, "kind": s.kind.name, "attributes": dict(s.attributes)}
    for s in exporter.get_finished_spans()
]
print(json.dumps({"spans": spans, "tokens": tokens}))
"""


def run_both(*, stream: bool, genai_spans: str = "merge") -> dict[str, Any]:
    data: dict[str, Any] = run_json(BOTH, [REQUEST, stream, genai_spans])
    return data


def chat_spans(found: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in found["spans"] if s["name"].startswith("chat ")]


@pytest.mark.parametrize("stream", [False, True])
def test_one_chat_span_and_tokens_counted_once_beside_the_official_instrumentation(
    stream: bool,
) -> None:
    found = run_both(stream=stream)
    (span,) = chat_spans(found)
    attributes = {k: list(v) if isinstance(v, tuple) else v for k, v in span["attributes"].items()}
    assert attributes["metered.pricing.source"] == "default-table"
    assert attributes["metered.cost.usd"] > 0
    if not stream:  # the official instrumentation's own attributes, same values
        official = official_span()["attributes"]
        assert {k: attributes.get(k) for k in official} == official
    for kind in ("input", "output"):
        (point,) = found["tokens"][kind]  # one series, one call: counted once
        assert point[1] == 1
    assert found["tokens"]["input"][0][2] == attributes["gen_ai.usage.input_tokens"]


def test_separate_keeps_both_producers_spans() -> None:
    found = run_both(stream=False, genai_spans="separate")
    assert len(chat_spans(found)) == 2


def test_inside_another_producers_genai_span_metered_reports_on_it() -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    meter = Meter({}, tracer_provider=tracer_provider, meter_provider=meter_provider)
    client = MeteredOpenAI(FakeUpstream().openai_client(), meter=meter)
    tracer = tracer_provider.get_tracer("some.framework")
    with tracer.start_as_current_span(
        "chat gpt-4o",
        kind=SpanKind.CLIENT,
        attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"},
    ):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    (span,) = exporter.get_finished_spans()
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "some.framework"
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.request.model"] == "gpt-4o"
    assert attributes["metered.cost.usd"] > 0
    assert attributes["metered.settlement.status"] == "settled"
    names = {
        metric.name
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    assert "metered.calls" in names
    assert "gen_ai.client.token.usage" not in names  # the producer's to record
