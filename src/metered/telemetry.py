"""Spans and metrics: every name in one table, attributes built from the usage record.

The library depends on ``opentelemetry-api`` only. With no SDK configured no span is
started and no attribute is built (the checks are whether the tracer and the metric
instruments delegate to an SDK yet, and ``span.is_recording()``), so metering costs next
to nothing. Telemetry faults are logged and swallowed: they never break the user's call.

Span contract: one CLIENT span per call named ``"{operation} {model}"`` with the GenAI
semantic-convention attributes (v1.41.0 names) and the ``metered.*`` attributes below.
Prompt/completion content is never recorded unless ``capture_content`` is on; API keys
never are (no attribute here takes a header or credential).

Money is only ever stated when known, never as a stand-in $0: an *unpriced* call
(``metered.pricing.source`` = ``unpriced``; its record has no cost, price or margin)
carries no ``metered.cost.usd`` / ``metered.price.usd`` / margin attribute and adds no
point to the cost and price metrics. It is counted in ``metered.calls`` with its pricing
source.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from metered.records import UsageRecord

__all__ = ["ATTR", "METRIC", "Telemetry"]

logger = logging.getLogger("metered")


class ATTR:
    """Attribute names (GenAI semconv v1.41.0 + metered.*)."""

    OPERATION = "gen_ai.operation.name"
    PROVIDER = "gen_ai.provider.name"
    REQUEST_MODEL = "gen_ai.request.model"
    REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
    REQUEST_STREAM = "gen_ai.request.stream"
    RESPONSE_MODEL = "gen_ai.response.model"
    RESPONSE_ID = "gen_ai.response.id"
    FINISH_REASONS = "gen_ai.response.finish_reasons"
    INPUT_TOKENS = "gen_ai.usage.input_tokens"
    OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
    CACHE_READ_TOKENS = "gen_ai.usage.cache_read.input_tokens"
    CACHE_CREATION_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
    REASONING_TOKENS = "gen_ai.usage.reasoning.output_tokens"
    TOKEN_TYPE = "gen_ai.token.type"
    SERVER_ADDRESS = "server.address"
    ERROR_TYPE = "error.type"

    PRICING_SOURCE = "metered.pricing.source"
    PRICING_MODE = "metered.pricing.mode"
    MODEL_RESOLVED = "metered.model.resolved"
    COST = "metered.cost.usd"
    PRICE = "metered.price.usd"
    MARGIN = "metered.margin.usd"
    TOKENS_SOURCE = "metered.tokens.source"
    SETTLEMENT_MODE = "metered.settlement.mode"
    SETTLEMENT_STATUS = "metered.settlement.status"
    SETTLEMENT_AMOUNT = "metered.settlement.amount.usd"
    SETTLEMENT_LATENCY = "metered.settlement.latency_ms"
    PAYMENT_REQUIRED = "metered.payment.required.usd"
    ACCOUNT = "metered.account"
    BUDGET_REMAINING = "metered.budget.remaining.usd"
    POLICY_DECISION = "metered.policy.decision"
    POLICY_REASON = "metered.policy.reason"
    TRIM_DROPPED = "metered.trim.messages_dropped"
    MAX_TOKENS_CLAMPED_FROM = "metered.max_tokens.clamped_from"
    MAX_TOKENS_SOURCE = "metered.max_tokens.source"
    ROUTE = "metered.route"
    TIER = "metered.tier"
    FEATURE = "metered.feature"
    CALL_ID = "metered.call.id"
    TTFC = "metered.stream.time_to_first_chunk_ms"
    UPSTREAM_STATUS = "metered.upstream.status"
    CATALOG_VERSION = "metered.catalog.version"
    # on the server span of an HTTP request: totals of the calls made while serving it
    REQUEST_COST = "metered.request.cost.usd"
    REQUEST_PRICE = "metered.request.price.usd"
    REQUEST_CALLS = "metered.request.calls"


class METRIC:
    """Metric names."""

    TOKEN_USAGE = "gen_ai.client.token.usage"
    DURATION = "gen_ai.client.operation.duration"
    COST = "metered.cost"
    PRICE = "metered.price"
    CALLS = "metered.calls"


EVENT_BUDGET_ALERT = "metered.budget.alert"
EVENT_SETTLEMENT = "metered.settlement"

# semconv advisory buckets
_DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
_TOKEN_BUCKETS = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)

# semconv well-known provider names, from the names users and catalogs use
_PROVIDERS = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "google": "gcp.gemini",
    "aws": "aws.bedrock",
    "x-ai": "x_ai",
    "mistral": "mistral_ai",
    "deepseek": "deepseek",
    "groq": "groq",
    "cohere": "cohere",
    "perplexity": "perplexity",
}


def provider_name(provider: str | None) -> str | None:
    """The semconv ``gen_ai.provider.name`` for a catalog provider id."""
    if provider is None:
        return None
    return _PROVIDERS.get(provider, provider)


# (span attribute, UsageRecord field) of a finished call, in the order spans show them;
# finish_reasons is added apart (a list, and only when there are some)
_RECORD_ATTRIBUTES = (
    (ATTR.RESPONSE_MODEL, "response_model"),
    (ATTR.RESPONSE_ID, "response_id"),
    (ATTR.REQUEST_MAX_TOKENS, "request_max_tokens"),
    (ATTR.INPUT_TOKENS, "tokens_in"),
    (ATTR.OUTPUT_TOKENS, "tokens_out"),
    (ATTR.CACHE_READ_TOKENS, "cache_read_tokens"),
    (ATTR.CACHE_CREATION_TOKENS, "cache_write_tokens"),
    (ATTR.REASONING_TOKENS, "reasoning_tokens"),
    (ATTR.ERROR_TYPE, "error_type"),
    (ATTR.PRICING_SOURCE, "pricing_source"),
    (ATTR.PRICING_MODE, "resolved_pricing_mode"),
    (ATTR.MODEL_RESOLVED, "resolved_model"),
    (ATTR.COST, "cost"),
    (ATTR.PRICE, "resolved_price"),
    (ATTR.MARGIN, "margin"),
    (ATTR.TOKENS_SOURCE, "tokens_source"),
    (ATTR.SETTLEMENT_MODE, "settlement_mode"),
    (ATTR.SETTLEMENT_STATUS, "settlement_status"),
    (ATTR.SETTLEMENT_AMOUNT, "settlement_amount"),
    (ATTR.SETTLEMENT_LATENCY, "settlement_latency_ms"),
    (ATTR.PAYMENT_REQUIRED, "payment_required"),
    (ATTR.ACCOUNT, "account"),
    (ATTR.BUDGET_REMAINING, "budget_remaining"),
    (ATTR.POLICY_DECISION, "policy_decision"),
    (ATTR.POLICY_REASON, "policy_reason"),
    (ATTR.TRIM_DROPPED, "trimmed_messages"),
    (ATTR.MAX_TOKENS_CLAMPED_FROM, "max_tokens_clamped_from"),
    (ATTR.MAX_TOKENS_SOURCE, "max_tokens_source"),
    (ATTR.ROUTE, "route"),
    (ATTR.TIER, "tier"),
    (ATTR.FEATURE, "feature"),
    (ATTR.CALL_ID, "call_id"),
    (ATTR.TTFC, "time_to_first_chunk_ms"),
    (ATTR.UPSTREAM_STATUS, "upstream_status"),
    (ATTR.CATALOG_VERSION, "catalog_version"),
)
_RECORD_ATTRIBUTE_NAMES = tuple(name for name, _ in _RECORD_ATTRIBUTES)
# one C call reads every field: ~3x cheaper than reading them one by one on every span
_record_values = operator.attrgetter(*(field for _, field in _RECORD_ATTRIBUTES))
# Decimal amounts, rendered as doubles
_USD_ATTRIBUTES = (
    ATTR.COST,
    ATTR.PRICE,
    ATTR.MARGIN,
    ATTR.SETTLEMENT_AMOUNT,
    ATTR.PAYMENT_REQUIRED,
    ATTR.BUDGET_REMAINING,
)


def record_attributes(record: UsageRecord) -> dict[str, Any]:
    """Span attributes for a finished call (``None`` values are left out)."""
    attrs: dict[str, Any] = {
        name: value
        for name, value in zip(_RECORD_ATTRIBUTE_NAMES, _record_values(record), strict=True)
        if value is not None
    }
    for name in _USD_ATTRIBUTES:
        amount = attrs.get(name)
        if amount is not None:
            attrs[name] = float(amount)
    if record.finish_reasons:
        attrs[ATTR.FINISH_REASONS] = list(record.finish_reasons)
    return attrs


class Telemetry:
    """Starts call spans and records their outcome.

    Args:
        tracer_provider: defaults to the global provider (resolved at each call, so an SDK
            configured after the meter was built is picked up).
        meter_provider: defaults to the global provider.
        enabled: ``False`` turns every span and metric off.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        enabled: bool = True,
    ) -> None:
        from metered import __version__

        self.enabled = enabled
        self._tracer = trace.get_tracer("metered", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("metered", __version__, meter_provider=meter_provider)
        self._token_usage = meter.create_histogram(
            METRIC.TOKEN_USAGE,
            unit="{token}",
            description="Tokens used per call, by token type",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self._duration = meter.create_histogram(
            METRIC.DURATION,
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._cost = meter.create_counter(
            METRIC.COST, unit="USD", description="Upstream cost of calls"
        )
        self._price = meter.create_counter(
            METRIC.PRICE, unit="USD", description="Price charged for calls"
        )
        self._calls = meter.create_counter(
            METRIC.CALLS,
            unit="{call}",
            description="Metered calls by pricing source, settlement and policy",
        )

    def _live_tracer(self) -> trace.Tracer | None:
        """The tracer spans start on; ``None`` while only the no-op API is installed.

        A tracer from the global provider is a ``ProxyTracer`` that hands out no-op spans
        until an SDK is set, then delegates for good: asking it which tracer it delegates
        to (``_tracer``) costs a property read, while starting a no-op span with its
        attributes costs about 1 us on every call.
        """
        tracer = self._tracer
        if type(tracer) is trace.ProxyTracer:
            # a private property of the API: should it ever go, spans are started on the
            # proxy itself (correct, just not skipped while no SDK is installed)
            tracer = getattr(tracer, "_tracer", tracer)
        return None if type(tracer) is trace.NoOpTracer else tracer

    def _metrics_live(self) -> bool:
        """Whether metrics go anywhere. Instruments of the global provider are proxies
        whose real instrument appears once an SDK provider is set."""
        calls = self._calls
        real = getattr(calls, "_real_instrument", calls)
        return real is not None and not isinstance(real, metrics.NoOpCounter)

    def wants_record(self, span: Span) -> bool:
        """Whether :meth:`finish` has anything to do for a call with ``span``."""
        return self.enabled and (span is not trace.INVALID_SPAN or self._metrics_live())

    def start(
        self,
        *,
        operation: str,
        model: str | None,
        provider: str | None,
        server_address: str | None,
        stream: bool,
    ) -> Span:
        """Start the CLIENT span of a call, parented to the current span."""
        tracer = self._live_tracer() if self.enabled else None
        if tracer is None:
            return trace.INVALID_SPAN
        try:
            attrs: dict[str, Any] = {ATTR.OPERATION: operation, ATTR.REQUEST_STREAM: stream}
            if model is not None:
                attrs[ATTR.REQUEST_MODEL] = model
            name = provider_name(provider)
            if name is not None:
                attrs[ATTR.PROVIDER] = name
            if server_address:
                attrs[ATTR.SERVER_ADDRESS] = server_address
            # attributes given at start are visible to samplers, and cost one call
            return tracer.start_span(
                f"{operation} {model}" if model else operation,
                kind=SpanKind.CLIENT,
                attributes=attrs,
            )
        except Exception:  # telemetry must never break a call
            logger.exception("metered: could not start span")
            return trace.INVALID_SPAN

    def finish(
        self,
        span: Span,
        record: UsageRecord,
        *,
        operation: str,
        duration_s: float,
        events: Sequence[tuple[str, Mapping[str, Any]]] = (),
        error: BaseException | None = None,
    ) -> None:
        """Set the outcome attributes, add events, end the span and record metrics."""
        if not self.enabled:
            return
        if span is not trace.INVALID_SPAN:
            self._end(span, record, events, error)
        if self._metrics_live():
            try:
                self._record_metrics(record, operation, duration_s)
            except Exception:
                logger.exception("metered: could not record metrics")

    def _end(
        self,
        span: Span,
        record: UsageRecord,
        events: Sequence[tuple[str, Mapping[str, Any]]],
        error: BaseException | None,
    ) -> None:
        try:
            if span.is_recording():
                span.set_attributes(record_attributes(record))
                for name, attrs in events:
                    span.add_event(name, attrs)  # the SDK copies them: no copy of ours
                if error is not None or record.error_type is not None:
                    description = record.policy_reason or record.error_type or type(error).__name__
                    span.set_status(Status(StatusCode.ERROR, description))
        except Exception:
            logger.exception("metered: could not set the span's outcome")
        try:
            span.end()
        except Exception:
            logger.exception("metered: could not end span")

    def _record_metrics(self, record: UsageRecord, operation: str, duration_s: float) -> None:
        base: dict[str, Any] = {ATTR.OPERATION: operation}
        provider = provider_name(record.provider)
        if provider is not None:
            base[ATTR.PROVIDER] = provider
        if record.requested_model is not None:
            base[ATTR.REQUEST_MODEL] = record.requested_model
        if record.response_model is not None:
            base[ATTR.RESPONSE_MODEL] = record.response_model
        duration_attrs = dict(base)
        if record.error_type is not None:
            duration_attrs[ATTR.ERROR_TYPE] = record.error_type
        self._duration.record(duration_s, duration_attrs)
        if record.tokens_in or record.tokens_out:
            self._token_usage.record(record.tokens_in, {**base, ATTR.TOKEN_TYPE: "input"})
            self._token_usage.record(record.tokens_out, {**base, ATTR.TOKEN_TYPE: "output"})
        money_attrs = {**base, ATTR.PRICING_SOURCE: record.pricing_source or "none"}
        if record.cost is not None and record.payment_settled:
            self._cost.add(float(record.cost), money_attrs)
        if record.resolved_price is not None and record.payment_settled:
            self._price.add(float(record.settlement_amount), money_attrs)
        self._calls.add(
            1,
            {
                **base,
                ATTR.PRICING_SOURCE: record.pricing_source or "none",
                ATTR.SETTLEMENT_STATUS: record.settlement_status,
                ATTR.POLICY_DECISION: record.policy_decision,
            },
        )
