"""Stream timing and server identity in the GenAI conventions' terms: time to first chunk
and time per output chunk (the attribute and the metrics), ``server.address`` /
``server.port`` of the client's base URL."""

from __future__ import annotations

from typing import Any

import httpx2
from openai import OpenAI
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from metered.clients import MeteredOpenAI
from metered.semconv import ATTR, METRIC
from metered.testing import FakeUpstream

MESSAGES = [{"role": "user", "content": "Count to twenty."}]


def metrics_of(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    return {
        metric.name: metric
        for resource in (data.resource_metrics if data else ())
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def client_at(upstream: FakeUpstream, base_url: str) -> OpenAI:
    return OpenAI(
        api_key="sk-test",
        base_url=base_url,
        max_retries=0,
        http_client=httpx2.Client(transport=upstream.httpx2_transport()),
    )


def test_a_stream_records_one_gap_per_chunk_after_the_first(
    make_meter: Any, metric_reader: InMemoryMetricReader, span_exporter: InMemorySpanExporter
) -> None:
    upstream = FakeUpstream(reply="one two three four five six seven eight", chunk_tokens=1)
    client = MeteredOpenAI(upstream.openai_client(), meter=make_meter({}))
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    (span,) = span_exporter.get_finished_spans()
    attributes = span.attributes or {}
    first = attributes[ATTR.TTFC]
    assert isinstance(first, float)
    assert first > 0
    found = metrics_of(metric_reader)
    (gaps,) = found[METRIC.TIME_PER_OUTPUT_CHUNK].data.data_points
    # every event after the first, the usage chunk metered asked for (and hid) included
    assert gaps.count == len(chunks)
    assert 0 <= gaps.sum <= found[METRIC.DURATION].data.data_points[0].sum
    (ttfc,) = found[METRIC.TIME_TO_FIRST_CHUNK].data.data_points
    assert ttfc.count == 1


def test_a_whole_response_records_no_chunk_timing(
    make_meter: Any, metric_reader: InMemoryMetricReader, span_exporter: InMemorySpanExporter
) -> None:
    client = MeteredOpenAI(FakeUpstream().openai_client(), meter=make_meter({}))
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    (span,) = span_exporter.get_finished_spans()
    assert ATTR.TTFC not in (span.attributes or {})
    found = metrics_of(metric_reader)
    assert METRIC.TIME_PER_OUTPUT_CHUNK not in found
    assert METRIC.TIME_TO_FIRST_CHUNK not in found


def test_server_port_is_set_when_the_base_url_names_one(
    make_meter: Any, span_exporter: InMemorySpanExporter
) -> None:
    upstream = FakeUpstream()
    meter = make_meter({})
    for base_url in ("http://llm.internal:8080/v1", "https://llm.internal/v1"):
        client = MeteredOpenAI(client_at(upstream, base_url), meter=meter)
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    custom, default = span_exporter.get_finished_spans()
    assert (custom.attributes or {})[ATTR.SERVER_ADDRESS] == "llm.internal"
    assert (custom.attributes or {})[ATTR.SERVER_PORT] == 8080
    assert ATTR.SERVER_PORT not in (default.attributes or {})  # https's 443 is implied
