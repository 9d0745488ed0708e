"""``make demo`` (``python -m metered.demo``): a metered session, offline, in a few seconds.

A FastAPI app runs in process with :class:`~metered.http.asgi.MeteredMiddleware` in front:
one handler answers support questions through ``MeteredAsyncOpenAI`` (attributed to the
caller by the middleware), and ``POST /v1/chat/completions`` is a metered gateway route
forwarded by :class:`~metered.gateway.GatewayProxy`. Both talk to the fake upstream
(:class:`~metered.testing.FakeUpstream`); the ledger is in memory; the configuration is
embedded below. The real ``openai`` SDK drives a scripted session: allowed calls, a
stream, a denied model, a trimmed history, an unknown model priced by the fallback, and
a budget running out (402). A table shows what each call cost, what it was charged and
why.

Spans go to an in-memory exporter and are summarised; with
``OTEL_EXPORTER_OTLP_ENDPOINT`` set (e.g. ``http://localhost:4318`` for Jaeger) they are
also exported over OTLP/HTTP. No network is used otherwise, and no API key.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from metered.money import format_usd

if TYPE_CHECKING:
    import openai
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider

    from metered.engine.meter import Meter
    from metered.records import UsageRecord

__all__ = ["CONFIG", "KEYS", "build_app", "main"]

#: The demo's configuration: what a reseller's ``metered.yaml`` would say.
CONFIG: dict[str, Any] = {
    "models": {"deny": ["gpt-4.5*", "o1-pro*"]},
    "catalog": {
        "overrides": {
            # a small self-hosted model: a short context window makes trimming visible
            "acme-small": {
                "input": "$0.10 / 1M tokens",
                "output": "$0.40 / 1M tokens",
                "context_window": 512,
                "max_output_tokens": 128,
            }
        }
    },
    "routes": {
        "POST /v1/chat/completions": {
            "upstream": "fake",
            "type": "token-based",
            "models": {
                "gpt-4o": "$0.05",
                "gpt-4o-mini": "$0.005",
                "acme-small": {"markup": "300%"},
            },
            "fallback": "$0.02",
            "settlement": "after-response",
        },
        # the support handler's own calls: upstream cost plus 40%
        "support": {"markup": "40%"},
    },
    "tiers": {
        "free": {"max_tokens": 128, "budgets": ["$0.015/day"]},
        "pro": {"max_tokens": 1024, "budgets": ["$5/day"]},
    },
    "accounts": {"alice": {"tier": "pro"}, "bob": {"tier": "free"}, "carol": {"tier": "free"}},
}
#: Demo API keys (kept out of the config, as real keys must be).
KEYS = {"sk-demo-alice": "alice", "sk-demo-bob": "bob", "sk-demo-carol": "carol"}


def build_app(meter: Meter, *, tracer_provider: TracerProvider | None = None) -> FastAPI:
    """The demo app: a support handler calling the LLM, and the metered gateway route."""
    from fastapi import Body, FastAPI

    from metered.clients import MeteredAsyncOpenAI
    from metered.gateway import GatewayProxy, resolve_upstream
    from metered.http.asgi import ApiKeys, MeteredMiddleware
    from metered.testing import FakeUpstream

    llm = MeteredAsyncOpenAI(
        FakeUpstream().openai_client(async_=True), meter=meter, route="support"
    )
    upstream = resolve_upstream("fake")
    app = FastAPI(title="metered demo")

    @app.post("/support/answer")
    async def answer(question: str = Body(embed=True)) -> dict[str, str]:
        reply = await llm.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": "You answer billing questions briefly."},
                {"role": "user", "content": question},
            ],
        )
        return {"answer": reply.choices[0].message.content or ""}

    app.mount("/v1", GatewayProxy({("POST", "/v1/chat/completions"): upstream}, default=upstream))
    app.add_middleware(
        MeteredMiddleware, meter=meter, identify=ApiKeys(KEYS), unidentified="reject"
    )
    if tracer_provider is not None:
        app.add_middleware(_ServerSpans, tracer_provider=tracer_provider)
    return app


class _ServerSpans:
    """A SERVER span per request, so each call's span nests under its request in Jaeger.

    Production apps get this from opentelemetry-instrumentation-asgi; the demo keeps its
    dependencies to the OTel SDK.
    """

    def __init__(self, app: Any, *, tracer_provider: TracerProvider) -> None:
        self.app = app
        self._tracer = tracer_provider.get_tracer("metered.demo")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry.trace import SpanKind

        name = f"{scope['method']} {scope['path']}"
        with self._tracer.start_as_current_span(name, kind=SpanKind.SERVER):
            await self.app(scope, receive, send)


@dataclass
class _Step:
    caller: str
    door: str
    what: str
    status: int = 0
    records: Sequence[UsageRecord] = ()
    note: str = ""


def _history(turns: int) -> list[Any]:
    messages: list[Any] = [{"role": "system", "content": "You are the Acme assistant."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"Question {i}: " + "tell me more " * 12})
        messages.append({"role": "assistant", "content": f"Answer {i}: " + "here is more " * 12})
    messages.append({"role": "user", "content": "So, in one line?"})
    return messages


async def _session(app: FastAPI, records: list[UsageRecord]) -> list[_Step]:
    import httpx2
    import openai

    transport = httpx2.ASGITransport(app=app)
    steps: list[_Step] = []

    def client(account: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=f"sk-demo-{account}",
            base_url="http://demo.local/v1",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=transport),
        )

    async def run(step: _Step, action: Callable[[], Awaitable[object]]) -> None:
        before = len(records)
        try:
            result = await action()
            step.status = 200
            if isinstance(result, str):
                step.note = result
        except openai.APIStatusError as exc:
            step.status = exc.status_code
            step.note = str(exc.code or exc.message)
        step.records = records[before:]
        steps.append(step)

    alice, bob, carol = client("alice"), client("bob"), client("carol")
    hi: list[Any] = [{"role": "user", "content": "What does my plan include?"}]

    async def support() -> str:
        # the app's own endpoint, called as its web front end would
        async with httpx2.AsyncClient(transport=transport, base_url="http://demo.local") as web:
            response = await web.post(
                "/support/answer",
                json={"question": "Why was I charged twice?"},
                headers={"authorization": "Bearer sk-demo-alice"},
            )
        response.raise_for_status()
        return f"x-metered-price: {response.headers.get('x-metered-price')}"

    async def stream() -> None:
        chunks = await alice.chat.completions.create(model="gpt-4o-mini", messages=hi, stream=True)
        async for _ in chunks:
            pass

    await run(_Step("alice", "handler", "support question"), support)
    await run(
        _Step("alice", "gateway", "chat"),
        lambda: alice.chat.completions.create(model="gpt-4o", messages=hi),
    )
    await run(_Step("alice", "gateway", "chat, streamed"), stream)
    await run(
        _Step("bob", "gateway", "denied model"),
        lambda: bob.chat.completions.create(model="gpt-4.5-preview", messages=hi),
    )
    await run(
        _Step("bob", "gateway", "41-message history"),
        lambda: bob.chat.completions.create(model="acme-small", messages=_history(20)),
    )
    await run(
        _Step("alice", "gateway", "unknown model"),
        lambda: alice.chat.completions.create(model="acme-research-preview", messages=hi),
    )
    for attempt in range(1, 6):
        step = _Step("carol", "gateway", f"call {attempt}, $0.015/day budget")
        await run(step, lambda: carol.chat.completions.create(model="gpt-4o-mini", messages=hi))
        if step.status == 402:
            break
    for sdk in (alice, bob, carol):
        await sdk.close()
    return steps


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) for cell, width in zip(cells, widths, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _row(number: int, step: _Step, record: UsageRecord) -> list[str]:
    allowed = record.policy_decision == "allowed"
    charged = record.payment_settled
    settled = record.settlement_status
    if not allowed:
        settled = f"{settled}: {record.policy_reason or record.error_type}"
    elif record.trimmed_messages:
        settled = f"{settled}, {record.trimmed_messages} msgs trimmed"
    return [
        str(number),
        step.caller,
        step.door,
        step.what,
        str(step.status),
        record.requested_model or "-",
        f"{record.tokens_in}/{record.tokens_out}" if allowed else "-",
        format_usd(record.cost) if allowed else "-",
        format_usd(record.settlement_amount) if charged else "-",
        format_usd(record.margin) if charged else "-",
        record.pricing_source or "-",
        settled,
    ]


#: Seconds an OTLP export may take before the demo gives up on the collector.
EXPORT_TIMEOUT_S = 2.0
_TIMEOUT_VARS = {"OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"}


class _Counted:
    """A span exporter that remembers whether its exports succeeded (for the summary)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.exported = 0
        self.failed = 0

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            result = self.inner.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))


def _tracing() -> tuple[TracerProvider, Any, _Counted | None]:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": "metered-demo"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    exporter: _Counted | None = None
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # The exporter reads the OTEL_EXPORTER_OTLP_* variables itself (endpoint, headers,
        # timeout). Without a timeout of yours, a collector that never answers costs at
        # most EXPORT_TIMEOUT_S at exit, not the SDK's 10 s per attempt.
        timeout = None if _TIMEOUT_VARS & os.environ.keys() else EXPORT_TIMEOUT_S
        exporter = _Counted(OTLPSpanExporter(timeout=timeout))
        provider.add_span_processor(
            # duck-typed: the SDK is imported only when the demo runs
            BatchSpanProcessor(
                cast(Any, exporter), export_timeout_millis=int(EXPORT_TIMEOUT_S * 1000)
            )
        )
    return provider, memory, exporter


def main() -> int:
    """Run the demo session and print its table; returns the exit code."""
    from metered.engine.meter import Meter

    started = time.perf_counter()
    provider, memory, exporter = _tracing()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    records: list[UsageRecord] = []
    meter = Meter(CONFIG, tracer_provider=provider, sink=records.append)
    app = build_app(meter, tracer_provider=provider)
    steps = asyncio.run(_session(app, records))
    provider.shutdown()  # flushes the OTLP exporter, if any

    headers = ["#", "caller", "door", "scenario", "HTTP", "model", "tokens", "cost", "charged",
               "margin", "pricing source", "settlement"]  # fmt: skip
    print("metered demo: a FastAPI app with MeteredMiddleware, the fake upstream, no network\n")
    rows = [_row(n, step, record) for n, step in enumerate(steps, 1) for record in step.records]
    print(_table(headers, rows))
    print()
    for step in steps:
        if step.door == "handler" and step.note:
            print(f"support handler response header: {step.note}")
    for account in ("alice", "bob", "carol"):
        remaining = meter.remaining(account)
        print(
            f"{account:<6} spent {format_usd(meter.spent(account)):<10} "
            f"remaining today {format_usd(remaining) if remaining is not None else 'unlimited'}"
        )
    spans = memory.get_finished_spans()
    kinds = Counter(span.name for span in spans)
    summary = ", ".join(f"{name} x{count}" for name, count in sorted(kinds.items()))
    print(f"\n{len(spans)} spans: {summary}")
    if exporter is not None and exporter.failed == 0 and exporter.exported:
        print(f"spans exported over OTLP/HTTP to {endpoint}")
    elif exporter is not None:
        print(
            f"{exporter.failed} of {exporter.failed + exporter.exported} spans could not be "
            f"exported to {endpoint} (is the collector up?)"
        )
    else:
        print("set OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 to send them to Jaeger")
    print(f"done in {time.perf_counter() - started:.1f}s")
    meter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
