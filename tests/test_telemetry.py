"""Tests for metered.telemetry: the span and metric contract, through the engine."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from metered.engine.meter import Call, Meter
from metered.errors import BudgetExceeded, PolicyDenied
from metered.ledger import Threshold
from metered.records import UsageRecord
from metered.telemetry import ATTR, METRIC, SCHEMA_URL
from metered.tokens import count_chat
from metered.usage import Usage

MeterFactory = Callable[..., Meter]
SECRET = "sk-test-SECRET"
CANARY = "CANARY-PROMPT-7f3a9c"
HEADERS = {"authorization": f"Bearer {SECRET}", "x-api-key": SECRET}
HI = [{"role": "user", "content": "hi"}]
MODELS = {"gpt-4o": {"input": "$1 / 1M tokens", "output": "$10 / 1M tokens"}}
CONFIG: dict[str, Any] = {
    "routes": {"chat": {"models": MODELS}},
    "default_route": "chat",
    "tiers": {"free": {"max_tokens": 200}},
    "accounts": {"u1": {"budgets": ["$1/total"]}},
}
USAGE = Usage(
    input_tokens=30,
    output_tokens=20,
    cache_read_tokens=10,
    cache_write_tokens=5,
    reasoning_tokens=3,
)
# The contract of ARCHITECTURE.md "Telemetry contract": the names as documented.
CONTRACT_NAMES = {
    "OPERATION": "gen_ai.operation.name",
    "PROVIDER": "gen_ai.provider.name",
    "REQUEST_MODEL": "gen_ai.request.model",
    "RESPONSE_MODEL": "gen_ai.response.model",
    "INPUT_TOKENS": "gen_ai.usage.input_tokens",
    "OUTPUT_TOKENS": "gen_ai.usage.output_tokens",
    "CACHE_READ_TOKENS": "gen_ai.usage.cache_read.input_tokens",
    "CACHE_CREATION_TOKENS": "gen_ai.usage.cache_creation.input_tokens",
    "REASONING_TOKENS": "gen_ai.usage.reasoning.output_tokens",
    "FINISH_REASONS": "gen_ai.response.finish_reasons",
    "RESPONSE_ID": "gen_ai.response.id",
    "SERVER_ADDRESS": "server.address",
    "ERROR_TYPE": "error.type",
    "PRICING_SOURCE": "metered.pricing.source",
    "PRICING_MODE": "metered.pricing.mode",
    "MODEL_RESOLVED": "metered.model.resolved",
    "COST": "metered.cost.usd",
    "PRICE": "metered.price.usd",
    "MARGIN": "metered.margin.usd",
    "TOKENS_SOURCE": "metered.tokens.source",
    "SETTLEMENT_MODE": "metered.settlement.mode",
    "SETTLEMENT_STATUS": "metered.settlement.status",
    "SETTLEMENT_AMOUNT": "metered.settlement.amount.usd",
    "SETTLEMENT_LATENCY": "metered.settlement.latency_ms",
    "PAYMENT_REQUIRED": "metered.payment.required.usd",
    "ACCOUNT": "metered.account",
    "BUDGET_REMAINING": "metered.budget.remaining.usd",
    "POLICY_DECISION": "metered.policy.decision",
    "POLICY_REASON": "metered.policy.reason",
    "TRIM_DROPPED": "metered.trim.messages_dropped",
    "MAX_TOKENS_CLAMPED_FROM": "metered.max_tokens.clamped_from",
}
CONTRACT = tuple(CONTRACT_NAMES.values())
LATENCY = "<non-negative ms>"
DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip


def chat(model: str = "gpt-4o", content: str = "hi", **extra: Any) -> dict[str, Any]:
    """A chat-completions request body."""
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1
    return spans[0]


def contract(span: ReadableSpan) -> dict[str, Any]:
    """Every contract attribute of ``span`` (``None`` when absent); latency normalised."""
    attrs = dict(span.attributes or {})
    out = {name: attrs.get(name) for name in CONTRACT}
    latency = out[ATTR.SETTLEMENT_LATENCY]
    if isinstance(latency, float) and latency >= 0:
        out[ATTR.SETTLEMENT_LATENCY] = LATENCY
    return out


def refused(**attrs: Any) -> dict[str, Any]:
    """The contract of a call refused before the upstream call, with ``attrs`` overriding."""
    base: dict[str, Any] = dict.fromkeys(CONTRACT)
    base.update(
        {
            ATTR.OPERATION: "chat",
            ATTR.PROVIDER: "openai",
            # no gen_ai.usage.* attributes: usage that did not happen is omitted, not 0
            ATTR.SERVER_ADDRESS: "api.openai.com",
            ATTR.TOKENS_SOURCE: "unknown",
            ATTR.SETTLEMENT_MODE: "after-response",
            ATTR.SETTLEMENT_STATUS: "skipped",
            ATTR.SETTLEMENT_AMOUNT: 0.0,
            ATTR.SETTLEMENT_LATENCY: LATENCY,
            ATTR.PAYMENT_REQUIRED: 0.0,
            ATTR.ACCOUNT: "u1",
            ATTR.POLICY_DECISION: "denied",
            ATTR.TRIM_DROPPED: 0,
        }
    )
    base.update(attrs)
    return base


def begin(meter: Meter, body: Mapping[str, Any], **kwargs: Any) -> Call:
    """meter.begin as an OpenAI client proxy calls it."""
    return meter.begin(
        body, provider="openai", server_address="api.openai.com", account="u1", **kwargs
    )


# -- names -----------------------------------------------------------------------------------


def test_attribute_names_follow_the_contract() -> None:
    """ATTR spells every contract attribute exactly as documented (semconv v1.41.0)."""
    assert {key: getattr(ATTR, key) for key in CONTRACT_NAMES} == CONTRACT_NAMES


def test_metric_names_follow_the_contract() -> None:
    """METRIC spells the GenAI and metered metric names as documented."""
    assert {
        METRIC.TOKEN_USAGE,
        METRIC.DURATION,
        METRIC.COST,
        METRIC.PRICE,
        METRIC.CALLS,
    } == {
        "gen_ai.client.token.usage",
        "gen_ai.client.operation.duration",
        "metered.cost",
        "metered.price",
        "metered.calls",
    }


# -- spans -----------------------------------------------------------------------------------


def test_allowed_call_span_carries_every_contract_attribute(
    make_meter: MeterFactory, span_exporter: InMemorySpanExporter
) -> None:
    """A settled call's CLIENT span has every GenAI and metered attribute of the contract."""
    meter = make_meter(CONFIG)
    call = begin(meter, chat(max_tokens=500), tier="free")
    call.finish(
        USAGE,
        response_model="gpt-4o-2024-08-06",
        response_id="chatcmpl-123",
        finish_reasons=["stop"],
    )
    quote = meter.quote("gpt-4o", USAGE, route="chat")
    assert quote.cost is not None
    assert quote.margin is not None
    span = only_span(span_exporter)
    assert span.kind is SpanKind.CLIENT
    assert span.name == "chat gpt-4o"
    assert span.status.status_code is StatusCode.UNSET
    assert contract(span) == {
        ATTR.OPERATION: "chat",
        ATTR.PROVIDER: "openai",
        ATTR.REQUEST_MODEL: "gpt-4o",
        ATTR.RESPONSE_MODEL: "gpt-4o-2024-08-06",
        ATTR.INPUT_TOKENS: 30,
        ATTR.OUTPUT_TOKENS: 20,
        ATTR.CACHE_READ_TOKENS: 10,
        ATTR.CACHE_CREATION_TOKENS: 5,
        ATTR.REASONING_TOKENS: 3,
        ATTR.FINISH_REASONS: ("stop",),
        ATTR.RESPONSE_ID: "chatcmpl-123",
        ATTR.SERVER_ADDRESS: "api.openai.com",
        ATTR.ERROR_TYPE: None,
        ATTR.PRICING_SOURCE: "route.models",
        ATTR.PRICING_MODE: "token-based",
        ATTR.MODEL_RESOLVED: "gpt-4o",
        ATTR.COST: float(quote.cost),
        ATTR.PRICE: float(quote.price),
        ATTR.MARGIN: float(quote.margin),
        ATTR.TOKENS_SOURCE: "actual",
        ATTR.SETTLEMENT_MODE: "after-response",
        ATTR.SETTLEMENT_STATUS: "settled",
        ATTR.SETTLEMENT_AMOUNT: float(quote.price),
        ATTR.SETTLEMENT_LATENCY: LATENCY,
        ATTR.PAYMENT_REQUIRED: float(call.payment_required),
        ATTR.ACCOUNT: "u1",
        ATTR.BUDGET_REMAINING: float(Decimal(1) - quote.price),
        ATTR.POLICY_DECISION: "allowed",
        ATTR.POLICY_REASON: None,
        ATTR.TRIM_DROPPED: 0,
        ATTR.MAX_TOKENS_CLAMPED_FROM: 500,
    }


def test_span_has_only_attributes_from_the_names_table(
    make_meter: MeterFactory, span_exporter: InMemorySpanExporter
) -> None:
    """No attribute name is invented outside telemetry.ATTR (one table of names)."""
    meter = make_meter(CONFIG)
    begin(meter, chat(stream=True), tier="free").finish(USAGE, finish_reasons=["stop"])
    names = {v for k, v in vars(ATTR).items() if k.isupper()}
    assert set(only_span(span_exporter).attributes or {}) <= names


@pytest.mark.parametrize(
    ("config", "model", "reason"),
    [
        ({"models": {"allow": ["gpt-4o-mini"]}}, "gpt-4o", "not_allowlisted"),
        ({"models": {"deny": ["gpt-4o*"]}}, "GPT-4o-2024-08-06 ", "denylist"),
        ({}, "gpt-4\u043e", "invalid_model_id"),  # Cyrillic o: a look-alike of gpt-4o
    ],
    ids=["allowlist", "denylist", "look-alike"],
)
def test_denied_call_span(
    make_meter: MeterFactory,
    span_exporter: InMemorySpanExporter,
    config: dict[str, Any],
    model: str,
    reason: str,
) -> None:
    """A model refused by policy still gets a span saying denied, why, and that it was free."""
    meter = make_meter({**CONFIG, **config})
    with pytest.raises(PolicyDenied):
        begin(meter, chat(model))
    span = only_span(span_exporter)
    assert span.kind is SpanKind.CLIENT
    assert span.name == f"chat {model}"
    assert span.status.status_code is StatusCode.ERROR
    assert contract(span) == refused(
        **{
            ATTR.REQUEST_MODEL: model,
            ATTR.ERROR_TYPE: "PolicyDenied",
            ATTR.POLICY_REASON: reason,
        }
    )


def test_over_budget_call_span(
    make_meter: MeterFactory, span_exporter: InMemorySpanExporter
) -> None:
    """A 402 refusal records the price it would have needed and the budget left; the
    error names the least the call could have cost (its minimum useful output)."""
    meter = make_meter({**CONFIG, "accounts": {"u1": {"budgets": ["$0.0001/total"]}}})
    with pytest.raises(BudgetExceeded) as caught:
        begin(meter, chat(max_tokens=100))
    span = only_span(span_exporter)
    assert span.status.status_code is StatusCode.ERROR
    prompt = count_chat(HI, model="gpt-4o")
    estimate = meter.quote(
        "gpt-4o", Usage(input_tokens=prompt, output_tokens=100, source="estimated"), route="chat"
    )
    least = meter.quote(
        "gpt-4o", Usage(input_tokens=prompt, output_tokens=16, source="estimated"), route="chat"
    )
    assert estimate.cost is not None
    assert estimate.margin is not None
    assert caught.value.required == least.price > Decimal("0.0001")
    required = estimate.price
    assert contract(span) == refused(
        **{
            ATTR.REQUEST_MODEL: "gpt-4o",
            ATTR.ERROR_TYPE: "BudgetExceeded",
            ATTR.POLICY_REASON: "budget_exceeded",
            ATTR.PRICING_SOURCE: "route.models",
            ATTR.PRICING_MODE: "token-based",
            ATTR.MODEL_RESOLVED: "gpt-4o",
            # nothing was charged: no cost/price/margin, the estimate is the payment required
            ATTR.PAYMENT_REQUIRED: float(required),
            ATTR.BUDGET_REMAINING: 0.0001,
        }
    )


def test_errored_call_span(make_meter: MeterFactory, span_exporter: InMemorySpanExporter) -> None:
    """An upstream failure: error.type set, span status ERROR, hold released, nothing paid."""
    meter = make_meter(CONFIG)
    call = begin(meter, chat(max_tokens=100))
    call.finish(error=TimeoutError("read timeout"))
    assert call.estimate is not None
    estimate = call.estimate
    assert estimate.cost is not None
    assert estimate.margin is not None
    span = only_span(span_exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert contract(span) == refused(
        **{
            ATTR.REQUEST_MODEL: "gpt-4o",
            ATTR.ERROR_TYPE: "TimeoutError",
            ATTR.POLICY_DECISION: "allowed",
            ATTR.SETTLEMENT_STATUS: "released",
            ATTR.PRICING_SOURCE: "route.models",
            ATTR.PRICING_MODE: "token-based",
            ATTR.MODEL_RESOLVED: "gpt-4o",
            # released: no money moved, so no cost/price/margin on the span
            ATTR.PAYMENT_REQUIRED: float(call.payment_required),
            ATTR.BUDGET_REMAINING: 1.0,
        }
    )


def test_streamed_call_span(make_meter: MeterFactory, span_exporter: InMemorySpanExporter) -> None:
    """A stream records stream=true, time to first chunk, and the usage it reported."""
    meter = make_meter(CONFIG)
    call = begin(meter, chat(stream=True, max_tokens=100))
    call.first_chunk()
    call.finish(USAGE, response_model="gpt-4o-2024-08-06", finish_reasons=["stop"])
    span = only_span(span_exporter)
    attrs = span.attributes or {}
    assert attrs[ATTR.REQUEST_STREAM] is True
    ttfc = attrs[ATTR.TTFC]
    assert isinstance(ttfc, float)
    assert ttfc >= 0
    got = contract(span)
    assert got[ATTR.INPUT_TOKENS] == 30
    assert got[ATTR.OUTPUT_TOKENS] == 20
    assert got[ATTR.TOKENS_SOURCE] == "actual"
    assert got[ATTR.SETTLEMENT_STATUS] == "settled"
    assert got[ATTR.FINISH_REASONS] == ("stop",)


def test_span_is_parented_to_the_server_span_when_finished_elsewhere(
    make_meter: MeterFactory,
    span_exporter: InMemorySpanExporter,
    tracer_provider: TracerProvider,
) -> None:
    """begin inside a server span, finish in another thread: the parent is the server span."""
    meter = make_meter(CONFIG)
    tracer = tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("POST /chat", kind=SpanKind.SERVER) as server:
        call = begin(meter, chat())
    worker = threading.Thread(target=call.finish, args=(USAGE,))
    worker.start()
    worker.join()
    client = next(s for s in span_exporter.get_finished_spans() if s.kind is SpanKind.CLIENT)
    assert client.parent is not None
    assert client.parent.span_id == server.get_span_context().span_id
    assert client.context is not None
    assert client.context.trace_id == server.get_span_context().trace_id


def test_span_without_a_current_span_is_a_root(
    make_meter: MeterFactory, span_exporter: InMemorySpanExporter
) -> None:
    """Outside any span the call span starts its own trace."""
    begin(make_meter(CONFIG), chat()).finish(USAGE)
    assert only_span(span_exporter).parent is None


def _exported_text(exporter: InMemorySpanExporter, reader: InMemoryMetricReader) -> str:
    """Everything exported (span names, attributes, events, statuses, metric attributes)."""
    parts: list[Any] = []
    for span in exporter.get_finished_spans():
        parts += [span.name, dict(span.attributes or {}), span.status.description]
        parts += [(e.name, dict(e.attributes or {})) for e in span.events]
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                parts += [dict(p.attributes or {}) for p in metric.data.data_points]
    return json.dumps(parts, default=str)


def test_no_api_key_or_prompt_in_exported_telemetry(
    make_meter: MeterFactory,
    span_exporter: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
    records: list[UsageRecord],
) -> None:
    """Keys in headers, prompt text and upstream error messages never reach telemetry."""
    meter = make_meter({**CONFIG, "models": {"deny": ["gpt-3.5*"]}})
    body = chat(content=f"{CANARY} what is my key {SECRET}?")
    meta = {"user_note": "ordinary"}
    begin(meter, body, headers=HEADERS, metadata=meta).finish(USAGE)
    failed = begin(meter, body, headers=HEADERS)
    failed.finish(error=PermissionError(f"Incorrect API key provided: {SECRET}"))
    with pytest.raises(PolicyDenied):
        begin(meter, {**body, "model": "gpt-3.5-turbo"}, headers=HEADERS)
    exported = _exported_text(span_exporter, metric_reader)
    exported += json.dumps([r.to_dict() for r in records])
    assert len(span_exporter.get_finished_spans()) == 3
    assert SECRET not in exported
    assert CANARY not in exported


# -- budget alerts ---------------------------------------------------------------------------


def _alert_fractions(span: ReadableSpan) -> list[Any]:
    return [
        (e.attributes or {})["metered.budget.fraction"]
        for e in span.events
        if e.name == "metered.budget.alert"
    ]


@pytest.mark.parametrize("mode", ["after-response", "before-response"])
def test_budget_alerts_at_50_80_and_100_percent(
    make_meter: MeterFactory, span_exporter: InMemorySpanExporter, mode: str
) -> None:
    """Spend crossing 50%, 80% and 100% of a budget adds span events and calls back once each."""
    alerts: list[Threshold] = []
    meter = make_meter(
        {
            "routes": {"flat": {"models": {"gpt-4o": "$0.25"}, "settlement": mode}},
            "default_route": "flat",
            "accounts": {"u1": {"budgets": ["$1/total"]}},
        },
        on_budget_alert=alerts.append,
    )
    for _ in range(4):
        begin(meter, chat()).finish(USAGE)
    spans = span_exporter.get_finished_spans()
    assert [_alert_fractions(s) for s in spans] == [[], [0.5], [], [0.8, 1.0]]
    assert [(t.account, t.fraction) for t in alerts] == [
        ("u1", Decimal("0.5")),
        ("u1", Decimal("0.8")),
        ("u1", Decimal("1")),
    ]
    event = next(e for e in spans[1].events if e.name == "metered.budget.alert")
    assert dict(event.attributes or {}) == {
        "metered.account": "u1",
        "metered.budget.window": "total",
        "metered.budget.fraction": 0.5,
        "metered.budget.spent.usd": 0.5,
        "metered.budget.limit.usd": 1.0,
    }


def test_failing_budget_alert_callback_does_not_break_the_call(make_meter: MeterFactory) -> None:
    """A callback that raises is logged; the call settles as usual."""

    def callback(threshold: Threshold) -> None:
        raise RuntimeError("pager down")

    meter = make_meter(
        {
            "routes": {"flat": {"models": {"gpt-4o": "$0.75"}}},
            "default_route": "flat",
            "accounts": {"u1": {"budgets": ["$1/total"]}},
        },
        on_budget_alert=callback,
    )
    call = begin(meter, chat())
    call.finish(USAGE)
    record = call.record
    assert record is not None
    assert record.settlement_status == "settled"


def test_settlement_on_the_span_not_in_an_event(
    make_meter: MeterFactory, span_exporter: InMemorySpanExporter
) -> None:
    """A finished call's span carries its settlement status and amount as attributes,
    once: no event repeats them."""
    meter = make_meter(
        {"routes": {"flat": {"models": {"gpt-4o": "$0.25"}}}, "default_route": "flat"}
    )
    begin(meter, chat()).finish(USAGE)
    span = only_span(span_exporter)
    attrs = dict(span.attributes or {})
    assert attrs["metered.settlement.status"] == "settled"
    assert attrs["metered.settlement.amount.usd"] == 0.25
    assert not [e for e in span.events if e.name.startswith("metered.settlement")]


# -- metrics ---------------------------------------------------------------------------------


def _metrics(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    if data is None:  # nothing was ever recorded
        return {}
    return {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


@pytest.fixture
def metered_calls(make_meter: MeterFactory) -> Meter:
    """Two settled calls, one upstream failure and one policy refusal."""
    meter = make_meter({**CONFIG, "models": {"deny": ["gpt-3.5*"]}})
    begin(meter, chat()).finish(USAGE)
    begin(meter, chat()).finish(Usage(input_tokens=100, output_tokens=50))
    begin(meter, chat()).finish(error=TimeoutError())
    with pytest.raises(PolicyDenied):
        begin(meter, chat("gpt-3.5-turbo"))
    return meter


def test_token_usage_metric_by_token_type(
    metered_calls: Meter, metric_reader: InMemoryMetricReader
) -> None:
    """gen_ai.client.token.usage records input and output tokens as separate series."""
    metric = _metrics(metric_reader)[METRIC.TOKEN_USAGE]
    assert metric.unit == "{token}"
    by_type = {p.attributes[ATTR.TOKEN_TYPE]: p for p in metric.data.data_points}
    assert set(by_type) == {"input", "output"}
    assert (by_type["input"].sum, by_type["input"].count) == (130, 2)
    assert (by_type["output"].sum, by_type["output"].count) == (70, 2)
    attrs = dict(by_type["input"].attributes)
    assert attrs[ATTR.OPERATION] == "chat"
    assert attrs[ATTR.PROVIDER] == "openai"
    assert attrs[ATTR.REQUEST_MODEL] == "gpt-4o"


def test_duration_metric_uses_semconv_buckets(
    metered_calls: Meter, metric_reader: InMemoryMetricReader
) -> None:
    """gen_ai.client.operation.duration is a seconds histogram with the semconv buckets."""
    metric = _metrics(metric_reader)[METRIC.DURATION]
    assert metric.unit == "s"
    points = metric.data.data_points
    assert all(tuple(p.explicit_bounds) == DURATION_BUCKETS for p in points)
    assert sum(p.count for p in points) == 4
    errors = {p.attributes.get(ATTR.ERROR_TYPE) for p in points}
    assert errors == {None, "TimeoutError", "PolicyDenied"}


def test_cost_and_price_metrics_count_settled_calls_only(
    metered_calls: Meter, metric_reader: InMemoryMetricReader
) -> None:
    """metered.cost and metered.price add up what settled calls cost and were charged."""
    metered = _metrics(metric_reader)
    quotes = [
        metered_calls.quote("gpt-4o", usage, route="chat")
        for usage in (USAGE, Usage(input_tokens=100, output_tokens=50))
    ]
    cost = sum(p.value for p in metered[METRIC.COST].data.data_points)
    price = sum(p.value for p in metered[METRIC.PRICE].data.data_points)
    assert cost == pytest.approx(float(sum(q.cost or 0 for q in quotes)))
    assert price == pytest.approx(float(sum(q.price for q in quotes)))
    sources = {p.attributes[ATTR.PRICING_SOURCE] for p in metered[METRIC.PRICE].data.data_points}
    assert sources == {"route.models"}


def test_calls_metric_by_source_status_and_decision(
    metered_calls: Meter, metric_reader: InMemoryMetricReader
) -> None:
    """metered.calls counts calls by pricing source, settlement status and policy decision."""
    points = _metrics(metric_reader)[METRIC.CALLS].data.data_points
    counts = {
        (
            p.attributes[ATTR.PRICING_SOURCE],
            p.attributes[ATTR.SETTLEMENT_STATUS],
            p.attributes[ATTR.POLICY_DECISION],
        ): p.value
        for p in points
    }
    assert counts == {
        ("route.models", "settled", "allowed"): 2,
        ("route.models", "released", "allowed"): 1,
        ("none", "skipped", "denied"): 1,
    }


# -- no SDK, disabled, faults ----------------------------------------------------------------


def test_works_with_the_global_no_op_api(records: list[UsageRecord]) -> None:
    """With no SDK configured, calls meter normally behind non-recording spans."""
    meter = Meter(CONFIG, sink=records.append)
    call = begin(meter, chat())
    assert call.span is not None
    assert not call.span.is_recording()
    call.finish(USAGE)
    record = call.record
    assert record is not None
    assert record.settlement_status == "settled"
    with pytest.raises(PolicyDenied):
        begin(meter, chat("gpt-4\u043e"))
    assert len(records) == 2


_LATE_SDK = """
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from metered.engine.meter import Meter
from metered.usage import Usage

meter = Meter()
body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
meter.begin(body).finish(Usage(input_tokens=5, output_tokens=2))  # before any SDK
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
meter.begin(body).finish(Usage(input_tokens=5, output_tokens=2))
names = [m.name for rm in reader.get_metrics_data().resource_metrics
         for sm in rm.scope_metrics for m in sm.metrics]
print([s.name for s in exporter.get_finished_spans()], "metered.calls" in names)
"""


def test_an_sdk_configured_after_the_meter_is_used_from_then_on() -> None:
    """Global SDK providers set after the meter was built get the next call's span and
    metrics (run in a subprocess: global providers can be set once per process)."""
    out = subprocess.run(
        [sys.executable, "-c", _LATE_SDK], check=True, capture_output=True, text=True
    )
    assert out.stdout.split("\n")[0] == "['chat gpt-4o'] True"


def test_telemetry_disabled_emits_nothing(
    make_meter: MeterFactory,
    span_exporter: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
) -> None:
    """telemetry.enabled: false turns spans and metrics off; metering still works."""
    meter = make_meter({**CONFIG, "telemetry": {"enabled": False}})
    call = begin(meter, chat())
    call.finish(USAGE)
    record = call.record
    assert record is not None
    assert record.settlement_status == "settled"
    assert span_exporter.get_finished_spans() == ()
    assert METRIC.CALLS not in _metrics(metric_reader)


def test_span_fault_at_start_never_breaks_a_call(
    make_meter: MeterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spans whose set_attributes raise: the call is metered and settled regardless."""

    def explode(self: SdkSpan, attributes: Any) -> None:
        raise RuntimeError("tracing backend bug")

    monkeypatch.setattr(SdkSpan, "set_attributes", explode)
    meter = make_meter(CONFIG)
    call = begin(meter, chat())
    call.finish(USAGE)
    record = call.record
    assert record is not None
    assert record.settlement_status == "settled"
    assert meter.spent("u1") == record.settlement_amount


def test_span_fault_at_finish_still_ends_the_span(
    make_meter: MeterFactory,
    span_exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If setting the outcome attributes fails, the span is still ended (and exported)."""
    meter = make_meter(CONFIG)
    call = begin(meter, chat())

    def explode(self: SdkSpan, attributes: Any) -> None:
        raise RuntimeError("tracing backend bug")

    monkeypatch.setattr(SdkSpan, "set_attributes", explode)
    call.finish(USAGE)
    record = call.record
    assert record is not None
    assert record.settlement_status == "settled"
    assert len(span_exporter.get_finished_spans()) == 1


class _Broken:
    """A metric instrument whose backend fails."""

    def add(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("metrics backend down")

    record = add


class _BrokenMeter(metrics.NoOpMeter):
    def create_counter(self, *args: Any, **kwargs: Any) -> Any:
        return _Broken()

    def create_histogram(self, *args: Any, **kwargs: Any) -> Any:
        return _Broken()


class _BrokenMeterProvider(metrics.NoOpMeterProvider):
    def get_meter(self, *args: Any, **kwargs: Any) -> metrics.Meter:
        return _BrokenMeter("broken")


def test_metric_fault_never_breaks_a_call(make_meter: MeterFactory) -> None:
    """Instruments that raise on record: the call is metered and settled regardless."""
    meter = make_meter(CONFIG, meter_provider=_BrokenMeterProvider())
    call = begin(meter, chat())
    call.finish(USAGE)
    record = call.record
    assert record is not None
    assert record.settlement_status == "settled"


def test_invalid_span_from_a_custom_provider_is_tolerated(make_meter: MeterFactory) -> None:
    """A provider handing out non-recording spans (sampled out) costs nothing and breaks nothing."""
    meter = make_meter(CONFIG, tracer_provider=trace.NoOpTracerProvider())
    call = begin(meter, chat())
    assert call.span is not None
    assert not call.span.is_recording()
    call.finish(USAGE)
    record = call.record
    assert record is not None
    assert record.settlement_status == "settled"


# -- request attributes (GenAI semconv) -----------------------------------------------------


def test_the_request_sampling_parameters_are_span_attributes(
    make_meter: MeterFactory, span_exporter: InMemorySpanExporter
) -> None:
    """temperature, top_p, seed, penalties and stop sequences, with the convention's
    names and types (what the official instrumentation records too)."""
    body = chat(
        temperature=0,
        top_p=0.9,
        seed=7,
        frequency_penalty=0.5,
        presence_penalty=-0.25,
        stop="END",
        max_tokens=50,
    )
    begin(make_meter(CONFIG), body).finish(Usage(input_tokens=8, output_tokens=5))
    attrs = dict(only_span(span_exporter).attributes or {})
    assert attrs[ATTR.REQUEST_TEMPERATURE] == 0.0
    assert isinstance(attrs[ATTR.REQUEST_TEMPERATURE], float)
    assert attrs[ATTR.REQUEST_TOP_P] == 0.9
    assert attrs[ATTR.REQUEST_SEED] == 7
    assert attrs[ATTR.REQUEST_FREQUENCY_PENALTY] == 0.5
    assert attrs[ATTR.REQUEST_PRESENCE_PENALTY] == -0.25
    assert list(attrs[ATTR.REQUEST_STOP_SEQUENCES]) == ["END"]
    assert attrs[ATTR.REQUEST_MAX_TOKENS] == 50


def test_max_tokens_is_recorded_only_when_one_was_sent(
    make_meter: MeterFactory, span_exporter: InMemorySpanExporter
) -> None:
    """An unbudgeted call without a limit goes upstream without one: no attribute (it was
    recorded as 4096 before); odd values (a bool, a string) are never emitted."""
    meter = make_meter({"routes": {"chat": {"models": MODELS}}, "default_route": "chat"})
    body = chat(temperature=True, seed="7", stop=["a", 1])
    meter.begin(body, account="nobody").finish(Usage(input_tokens=8, output_tokens=5))
    span = only_span(span_exporter)
    attrs = dict(span.attributes or {})
    assert ATTR.REQUEST_MAX_TOKENS not in attrs
    assert ATTR.REQUEST_TEMPERATURE not in attrs
    assert ATTR.REQUEST_SEED not in attrs
    assert ATTR.REQUEST_STOP_SEQUENCES not in attrs
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.schema_url == SCHEMA_URL


def test_streams_report_time_to_first_chunk_in_seconds(
    make_meter: MeterFactory,
    span_exporter: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
) -> None:
    """The convention's attribute and metric, in seconds, for streamed calls only; the
    metrics carry server.address."""
    meter = make_meter(CONFIG)
    call = begin(meter, chat(stream=True, max_tokens=100))
    call.first_chunk()
    call.finish(USAGE)
    begin(meter, chat(max_tokens=100)).finish(USAGE)  # not streamed: no point
    streamed = span_exporter.get_finished_spans()[0]
    assert call.record is not None
    ttfc_ms = call.record.time_to_first_chunk_ms
    assert ttfc_ms is not None
    assert (streamed.attributes or {})[ATTR.TTFC] == ttfc_ms / 1000
    metric = _metrics(metric_reader)[METRIC.TIME_TO_FIRST_CHUNK]
    assert metric.unit == "s"
    (point,) = metric.data.data_points
    assert point.count == 1
    assert point.sum == pytest.approx(ttfc_ms / 1000)
    duration = _metrics(metric_reader)[METRIC.DURATION]
    assert {p.attributes[ATTR.SERVER_ADDRESS] for p in duration.data.data_points} == {
        "api.openai.com"
    }


def test_cost_is_also_where_genai_backends_read_it(
    make_meter: MeterFactory,
    span_exporter: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
) -> None:
    """Langfuse reads gen_ai.usage.cost, OpenInference/Phoenix llm.cost.total: both carry
    the call's known cost; the cost metrics use a UCUM-valid unit."""
    meter = make_meter(CONFIG)
    call = begin(meter, chat(max_tokens=100))
    call.finish(USAGE)
    attrs = dict(only_span(span_exporter).attributes or {})
    assert call.record is not None
    assert call.record.cost is not None
    cost = float(call.record.cost)
    assert attrs[ATTR.COST] == attrs[ATTR.COST_LANGFUSE] == attrs[ATTR.COST_OPENINFERENCE] == cost
    metrics_by_name = _metrics(metric_reader)
    assert metrics_by_name[METRIC.COST].unit == metrics_by_name[METRIC.PRICE].unit == "{USD}"


def test_a_refused_call_states_no_cost_anywhere(
    make_meter: MeterFactory, span_exporter: InMemorySpanExporter
) -> None:
    meter = make_meter({**CONFIG, "models": {"deny": ["gpt-3.5*"]}})
    with pytest.raises(PolicyDenied):
        begin(meter, chat("gpt-3.5-turbo"))
    attrs = dict(only_span(span_exporter).attributes or {})
    assert not {ATTR.COST, ATTR.COST_LANGFUSE, ATTR.COST_OPENINFERENCE} & set(attrs)
