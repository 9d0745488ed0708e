"""The ``metered.request.*`` totals land on the request's SERVER span, wherever the server
instrumentation sits: outside the metered middleware (its span is current when the
middleware starts) or inside it (its span starts after the middleware did, and ends before
the middleware is done).

Real OpenTelemetry SDK, real server instrumentations (FastAPI / ASGI, Flask / WSGI), real
apps served in-process, the real ``openai`` SDK against :class:`~metered.testing.FakeUpstream`.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any, Literal

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from flask import Flask, stream_with_context
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as AsgiOtel
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as WsgiOtel
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanKind

from metered.clients import MeteredAsyncOpenAI, MeteredOpenAI
from metered.context import RequestTotals
from metered.engine.meter import Meter
from metered.http.asgi import MeteredMiddleware
from metered.http.wsgi import MeteredWSGIMiddleware
from metered.records import UsageRecord
from metered.testing import FakeUpstream

MeterFactory = Callable[..., Meter]
Placement = Literal["outside", "inside", "none"]
CONFIG: dict[str, Any] = {
    "routes": {"POST /v1/chat/completions": {"models": {"gpt-4o-mini": "$0.005"}}},
}
TOTALS = ("metered.request.cost.usd", "metered.request.price.usd", "metered.request.calls")


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def meter(make_meter: MeterFactory) -> Meter:
    return make_meter(CONFIG)


def _assert_totals_on_server_span(
    spans: tuple[ReadableSpan, ...], records: list[UsageRecord]
) -> None:
    """Exactly the one SERVER span carries the totals of the two calls."""
    servers = [span for span in spans if span.kind is SpanKind.SERVER]
    assert len(servers) == 1
    server = servers[0]
    carriers = [
        span.name
        for span in spans
        if any(key.startswith("metered.request.") for key in span.attributes or {})
    ]
    assert carriers == [server.name]
    assert len(records) == 2
    assert all(record.settlement_status == "settled" for record in records)
    attrs = server.attributes or {}
    assert attrs["metered.request.calls"] == 2
    assert isinstance(attrs["metered.request.calls"], int)
    assert attrs["metered.request.cost.usd"] == float(sum(r.cost or 0 for r in records))
    assert attrs["metered.request.price.usd"] == float(sum(r.settlement_amount for r in records))
    assert isinstance(attrs["metered.request.cost.usd"], float)
    assert isinstance(attrs["metered.request.price.usd"], float)
    assert attrs["metered.request.price.usd"] > 0


# -- FastAPI -----------------------------------------------------------------------------


def fastapi_app(
    meter: Meter,
    upstream: FakeUpstream,
    provider: TracerProvider,
    placement: Placement,
    model: str = "gpt-4o-mini",
) -> FastAPI:
    """A FastAPI app whose handlers make two MeteredAsyncOpenAI calls.

    ``outside``: FastAPIInstrumentor (its server middleware wraps the whole stack);
    ``inside``: the plain ASGI middleware added first, so metered's is the outermost;
    ``none``: no server instrumentation.
    """
    llm = MeteredAsyncOpenAI(upstream.openai_client(async_=True), meter=meter)
    tracer = provider.get_tracer("handler")
    app = FastAPI()
    if placement == "inside":
        app.add_middleware(AsgiOtel, tracer_provider=provider)
    app.add_middleware(MeteredMiddleware, meter=meter)
    if placement == "outside":
        FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)

    async def ask(text: str) -> str:
        reply = await llm.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}]
        )
        return reply.choices[0].message.content or ""

    @app.post("/twice")
    async def twice() -> dict[str, str]:
        return {"answer": await ask("one") + await ask("two")}

    @app.post("/spanned")
    async def spanned() -> dict[str, str]:
        with tracer.start_as_current_span("work", kind=SpanKind.INTERNAL):
            return {"answer": await ask("one") + await ask("two")}

    @app.post("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[str]:
            yield await ask("one")
            yield await ask("two")

        return StreamingResponse(chunks(), media_type="text/plain")

    return app


async def _post(app: Any, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        response = await c.post(path)
    assert response.status_code == 200
    return response


@pytest.mark.parametrize("placement", ["outside", "inside"])
@pytest.mark.parametrize("path", ["/twice", "/spanned", "/stream"])
async def test_fastapi_totals_on_the_server_span(
    placement: Placement,
    path: str,
    meter: Meter,
    upstream: FakeUpstream,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    records: list[UsageRecord],
) -> None:
    """(a) instrumentation outside, (b) inside: the SERVER span gets the two calls'
    totals, (c) also when they settle under the handler's own INTERNAL span, and when
    they are made while a response streams (after its headers left)."""
    app = fastapi_app(meter, upstream, tracer_provider, placement)
    response = await _post(app, path)
    # a streamed response's headers leave before its calls: only whole ones have totals
    assert ("x-metered-price" in response.headers) is (path != "/stream")
    spans = span_exporter.get_finished_spans()
    if path == "/spanned":
        assert [s.kind for s in spans if s.name == "work"] == [SpanKind.INTERNAL]
    _assert_totals_on_server_span(spans, records)


# -- Flask -------------------------------------------------------------------------------


def flask_app(
    meter: Meter, upstream: FakeUpstream, provider: TracerProvider, placement: Placement
) -> Flask:
    """A Flask app whose view makes two MeteredOpenAI calls.

    ``outside``: the WSGI server middleware wraps metered's; ``inside``: FlaskInstrumentor
    (its span lives inside the Flask app, so within metered's middleware).
    """
    llm = MeteredOpenAI(upstream.openai_client(), meter=meter)
    tracer = provider.get_tracer("handler")
    app = Flask(__name__)
    if placement == "inside":
        FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    app.wsgi_app = MeteredWSGIMiddleware(app.wsgi_app, meter=meter)  # type: ignore[method-assign]
    if placement == "outside":
        app.wsgi_app = WsgiOtel(app.wsgi_app, tracer_provider=provider)  # type: ignore[method-assign]

    def ask(text: str) -> str:
        reply = llm.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
        )
        return reply.choices[0].message.content or ""

    @app.post("/twice")
    def twice() -> dict[str, str]:
        return {"answer": ask("one") + ask("two")}

    @app.post("/spanned")
    def spanned() -> dict[str, str]:
        with tracer.start_as_current_span("work", kind=SpanKind.INTERNAL):
            return {"answer": ask("one") + ask("two")}

    @app.post("/stream")
    def stream() -> Any:
        def chunks() -> Iterator[str]:
            yield ask("one")
            yield ask("two")

        return app.response_class(stream_with_context(chunks()), mimetype="text/plain")

    return app


# FlaskInstrumentor ends its span when the view returns, before a streamed body (and
# the calls it makes) is produced, stream_with_context or not: no span can have those
@pytest.mark.parametrize(
    ("placement", "path"),
    [
        ("outside", "/twice"),
        ("outside", "/spanned"),
        ("outside", "/stream"),
        ("inside", "/twice"),
        ("inside", "/spanned"),
    ],
)
def test_flask_totals_on_the_server_span(
    placement: Placement,
    path: str,
    meter: Meter,
    upstream: FakeUpstream,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    records: list[UsageRecord],
) -> None:
    """(d) Flask, server instrumentation outside or inside metered's middleware."""
    app = flask_app(meter, upstream, tracer_provider, placement)
    response = app.test_client().post(path)
    assert response.status_code == 200
    assert response.get_data()  # the whole body: a streamed one makes its calls as it goes
    response.close()
    _assert_totals_on_server_span(span_exporter.get_finished_spans(), records)


# -- no server span ------------------------------------------------------------------------


async def test_without_a_server_span_the_current_span_gets_them(
    meter: Meter,
    upstream: FakeUpstream,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    records: list[UsageRecord],
) -> None:
    """No SERVER span anywhere: the span current at the middleware keeps them, as before."""
    tracer = tracer_provider.get_tracer("outer")
    app = fastapi_app(meter, upstream, tracer_provider, "none")

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        with tracer.start_as_current_span("outer", kind=SpanKind.INTERNAL):
            await app(scope, receive, send)

    await _post(outer, "/twice")
    spans = span_exporter.get_finished_spans()
    (carrier,) = [s for s in spans if (s.attributes or {}).get("metered.request.calls")]
    assert carrier.name == "outer"
    assert (carrier.attributes or {})["metered.request.calls"] == 2


@pytest.mark.parametrize("placement", ["outside", "inside"])
async def test_unpriced_calls_set_no_totals(
    placement: Placement,
    meter: Meter,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    records: list[UsageRecord],
) -> None:
    """calls == 0 (nothing priced): no ``metered.request.*`` attribute anywhere."""
    upstream = FakeUpstream(models=["llama3.1:8b"])
    app = fastapi_app(meter, upstream, tracer_provider, placement, model="llama3.1:8b")
    await _post(app, "/twice")
    assert [r.pricing_source for r in records] == ["unpriced", "unpriced"]
    for span in span_exporter.get_finished_spans():
        assert not any(key in (span.attributes or {}) for key in TOTALS)


# -- RequestTotals itself ------------------------------------------------------------------


def test_totals_added_from_threads_all_reach_the_span(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    """Handlers fan calls out to threads: the span ends with every call counted."""
    totals = RequestTotals()
    tracer = tracer_provider.get_tracer("server")
    with (
        tracer.start_as_current_span("GET /fan", kind=SpanKind.SERVER),
        ThreadPoolExecutor(8) as pool,
    ):
        for _ in range(200):
            pool.submit(
                contextvars.copy_context().run, totals.add, Decimal("0.001"), Decimal("0.002")
            )
    (span,) = span_exporter.get_finished_spans()
    attrs = span.attributes or {}
    assert attrs["metered.request.calls"] == totals.calls == 200
    assert attrs["metered.request.cost.usd"] == float(Decimal("0.2"))
    assert attrs["metered.request.price.usd"] == float(Decimal("0.4"))


class _Broken(NonRecordingSpan):
    """A recording SERVER span whose attributes cannot be set."""

    kind = SpanKind.SERVER

    def is_recording(self) -> bool:
        return True

    def set_attributes(self, attributes: Any) -> None:
        raise RuntimeError("exporter bug")


def test_a_failing_span_never_breaks_the_call(caplog: pytest.LogCaptureFixture) -> None:
    totals = RequestTotals()
    broken = _Broken(trace.INVALID_SPAN_CONTEXT)
    with caplog.at_level(logging.ERROR, logger="metered"), trace.use_span(broken):
        totals.find_span()
        totals.add(Decimal("0.001"), Decimal("0.002"))
        totals.annotate()
    assert (totals.calls, totals.span) == (1, broken)
    assert "could not set the request totals" in caplog.text
