"""Helpers shared by the client-proxy tests (also run against the older SDK lines)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from metered.engine.meter import Meter
from metered.records import UsageRecord
from metered.testing import FakeUpstream


def sdk_http_client(
    sdk: str,
    upstream: FakeUpstream,
    *,
    async_: bool,
    wrap: Callable[[Any], Any] = lambda transport: transport,
) -> Any:
    """An HTTP client of the library the installed ``sdk`` is built on (httpx2 or httpx),
    talking to ``upstream`` in process (``wrap`` may decorate the transport)."""
    if hasattr(importlib.import_module(f"{sdk}._base_client"), "httpx2"):
        import httpx2

        if async_:
            return httpx2.AsyncClient(transport=wrap(upstream.async_httpx2_transport()))
        return httpx2.Client(transport=wrap(upstream.httpx2_transport()))
    import httpx

    if async_:
        return httpx.AsyncClient(transport=wrap(upstream.async_httpx_transport()))
    return httpx.Client(transport=wrap(upstream.httpx_transport()))


class Metering:
    """A meter with its spans and usage records captured."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.records: list[UsageRecord] = []
        self.meter = Meter(config, tracer_provider=provider, sink=self.records.append)

    @property
    def spans(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())

    @property
    def record(self) -> UsageRecord:
        (record,) = self.records
        return record

    @property
    def attributes(self) -> dict[str, Any]:
        (span,) = self.spans
        return dict(span.attributes or {})
