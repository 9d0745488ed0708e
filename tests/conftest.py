"""Shared fixtures: in-memory OpenTelemetry pipelines and a Meter factory.

Tests never install global OTel providers: every meter that should record telemetry gets
the providers below explicitly, so the global API stays a no-op for tests that check the
"no SDK configured" path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from metered.config import Config
from metered.engine.meter import Meter
from metered.records import UsageRecord

MeterFactory = Callable[..., Meter]


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    """Collects every span ended through :func:`tracer_provider`."""
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(span_exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """An SDK tracer provider exporting synchronously to :func:`span_exporter`."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def metric_reader() -> InMemoryMetricReader:
    """Reads the metrics of :func:`meter_provider` on demand (``get_metrics_data()``)."""
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(metric_reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    """An SDK meter provider read by :func:`metric_reader`."""
    provider = MeterProvider(metric_readers=[metric_reader])
    yield provider
    provider.shutdown()


@pytest.fixture
def records() -> list[UsageRecord]:
    """Usage records emitted by meters built with :func:`make_meter`, in order."""
    return []


@pytest.fixture
def make_meter(
    records: list[UsageRecord],
    tracer_provider: TracerProvider,
    meter_provider: MeterProvider,
) -> Iterator[MeterFactory]:
    """Build a :class:`Meter` wired to the in-memory span/metric pipelines and ``records``.

    ``make_meter(config, **kwargs)`` takes :class:`Meter`'s arguments; any of ``sink``,
    ``tracer_provider`` and ``meter_provider`` given explicitly replaces the default.
    """
    built: list[Meter] = []

    def make(config: Config | Mapping[str, Any] | None = None, **kwargs: Any) -> Meter:
        kwargs.setdefault("sink", records.append)
        kwargs.setdefault("tracer_provider", tracer_provider)
        kwargs.setdefault("meter_provider", meter_provider)
        meter = Meter(config, **kwargs)
        built.append(meter)
        return meter

    yield make
    for meter in built:
        meter.close()
