"""Spans and metrics, emitted from the usage record (the names and attribute builders are
in :mod:`metered.semconv`).

The library depends on ``opentelemetry-api`` only. With no SDK configured no span is
started and no attribute is built (the checks are whether the tracer and the metric
instruments delegate to an SDK yet, and ``span.is_recording()``), so metering costs next
to nothing. Telemetry faults are logged and swallowed: they never break the user's call.

Span contract: one CLIENT span per call named ``"{operation} {model}"`` with the GenAI
semantic-convention attributes (v1.41.0 names, ``schema_url`` set to match: the request's
sampling parameters at start, the response and usage at the end — no usage attribute on a
call the provider never saw) and the ``metered.*`` attributes.
Prompt/completion content is never recorded unless content capture is on
(:mod:`metered.telemetry.content`); API keys never are (no attribute here takes a header
or credential). Beside another producer of GenAI spans (the official instrumentation,
a framework), a call still gets one chat span and one copy of the GenAI metrics
(:mod:`metered.telemetry.genai`).

Money is only ever stated when known, never as a stand-in $0: an *unpriced* call
(``metered.pricing.source`` = ``unpriced``; its record has no cost, price or margin)
carries no ``metered.cost.usd`` / ``metered.price.usd`` / margin attribute and adds no
point to the cost and price metrics. It is counted in ``metered.calls`` with its pricing
source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from opentelemetry import _logs, metrics, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from metered.records import UsageRecord
from metered.semconv import (
    ATTR,
    DURATION_BUCKETS,
    EVENT_BUDGET_ALERT,
    METRIC,
    SCHEMA_URL,
    TOKEN_BUCKETS,
    provider_name,
    record_attributes,
    request_attributes,
)
from metered.telemetry.content import (
    EVENT_DETAILS,
    CaptureMode,
    Content,
    capture_mode,
    events_content,
    spans_content,
)
from metered.telemetry.genai import JoinedSpan, enclosing_genai_span, upstream_context

__all__ = [
    "ATTR",
    "EVENT_BUDGET_ALERT",
    "METRIC",
    "SCHEMA_URL",
    "Content",
    "Telemetry",
    "provider_name",
    "record_attributes",
    "request_attributes",
]

logger = logging.getLogger("metered")


class Telemetry:
    """Starts call spans and records their outcome.

    Args:
        tracer_provider: defaults to the global provider (resolved at each call, so an SDK
            configured after the meter was built is picked up).
        meter_provider: defaults to the global provider.
        logger_provider: where content events go; defaults to the global provider.
        enabled: ``False`` turns every span and metric off.
        capture_content: ``True``/``False`` or a mode (``span_only``, ``event_only``,
            ``span_and_event``, ``no_content``); ``None`` follows
            ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``.
        content_max_chars: the text budget of each side (input, output) of a call's
            captured content.
        genai_spans: ``merge`` (one span per call beside other GenAI producers) or
            ``separate`` (each producer its own span and metrics).
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        logger_provider: Any = None,
        enabled: bool = True,
        capture_content: bool | str | None = None,
        content_max_chars: int = 16384,
        genai_spans: Literal["merge", "separate"] = "merge",
    ) -> None:
        from metered import __version__

        self.enabled = enabled
        self.capture: CaptureMode = capture_mode(capture_content)
        self.content_max_chars = content_max_chars
        self.merge = genai_spans == "merge"
        self._tracer = trace.get_tracer(
            "metered", __version__, tracer_provider=tracer_provider, schema_url=SCHEMA_URL
        )
        self._events = _logs.get_logger(
            "metered", __version__, logger_provider=logger_provider, schema_url=SCHEMA_URL
        )
        meter = metrics.get_meter(
            "metered", __version__, meter_provider=meter_provider, schema_url=SCHEMA_URL
        )
        self._token_usage = meter.create_histogram(
            METRIC.TOKEN_USAGE,
            unit="{token}",
            description="Tokens used per call, by token type",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self._duration, self._first_chunk, self._chunk_gap = (
            meter.create_histogram(
                name,
                unit="s",
                description=text,
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            )
            for name, text in (
                (METRIC.DURATION, "GenAI operation duration"),
                (METRIC.TIME_TO_FIRST_CHUNK, "Time to the first chunk of a streamed response"),
                (METRIC.TIME_PER_OUTPUT_CHUNK, "Time between consecutive chunks of a stream"),
            )
        )
        self._cost = meter.create_counter(
            METRIC.COST, unit="{USD}", description="Upstream cost of calls, in US dollars"
        )
        self._price = meter.create_counter(
            METRIC.PRICE, unit="{USD}", description="Price charged for calls, in US dollars"
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
        body: Mapping[str, Any],
        api: str = "chat",
        server_port: int | None = None,
    ) -> Span:
        """Start the CLIENT span of a call, parented to the current span (or, inside
        another producer's GenAI span, report on that one: see :mod:`.genai`)."""
        tracer = self._live_tracer() if self.enabled else None
        if tracer is None:
            return trace.INVALID_SPAN
        try:
            if self.merge:
                enclosing = enclosing_genai_span()
                if enclosing is not None:
                    return JoinedSpan(enclosing)
            attrs = request_attributes(body, api)
            attrs[ATTR.OPERATION] = operation
            if model is not None:
                attrs[ATTR.REQUEST_MODEL] = model
            name = provider_name(provider)
            if name is not None:
                attrs[ATTR.PROVIDER] = name
            if server_address:
                attrs[ATTR.SERVER_ADDRESS] = server_address
            if server_port is not None:
                attrs[ATTR.SERVER_PORT] = server_port
            # attributes given at start are visible to samplers, and cost one call
            return tracer.start_span(
                f"{operation} {model}" if model else operation,
                kind=SpanKind.CLIENT,
                attributes=attrs,
            )
        except Exception:  # telemetry must never break a call
            logger.exception("metered: could not start span")
            return trace.INVALID_SPAN

    def upstream_context(self, span: Span) -> Context | None:
        """The context to send the upstream request in (its HTTP spans nest under the
        call's span; an inner official GenAI instrumentation stands down); ``None`` when
        there is nothing to make current."""
        if span is trace.INVALID_SPAN or isinstance(span, JoinedSpan) or not span.is_recording():
            return None
        return upstream_context(span) if self.merge else trace.set_span_in_context(span)

    def captures(self, span: Span) -> bool:
        """Whether a call with ``span`` has its content captured."""
        return self.capture != "no_content" and span.is_recording()

    def finish(
        self,
        span: Span,
        record: UsageRecord,
        *,
        operation: str,
        duration_s: float,
        events: Sequence[tuple[str, Mapping[str, Any]]] = (),
        attributes: Mapping[str, Any] | None = None,
        error: BaseException | None = None,
        content: Callable[[], Content] | None = None,
        gaps: Sequence[float] = (),
    ) -> None:
        """Set the outcome attributes, add events, end the span and record metrics.

        Args:
            attributes: provider-specific response attributes, set with the record's
                (which win a clash).
            content: the call's messages, read only when content capture is on.
            gaps: seconds between consecutive chunks of a stream.
        """
        if not self.enabled:
            return
        if span is not trace.INVALID_SPAN:
            captured = None
            if content is not None and self.captures(span):
                try:
                    captured = content()
                except Exception:
                    logger.exception("metered: could not read the call's content")
            self._end(span, record, events, attributes, error, captured)
        if self._metrics_live():
            try:
                self._record_metrics(
                    record, operation, duration_s, gaps, genai=not isinstance(span, JoinedSpan)
                )
            except Exception:
                logger.exception("metered: could not record metrics")

    def _end(
        self,
        span: Span,
        record: UsageRecord,
        events: Sequence[tuple[str, Mapping[str, Any]]],
        extra: Mapping[str, Any] | None,
        error: BaseException | None,
        content: Content | None,
    ) -> None:
        try:
            if span.is_recording():
                attributes = record_attributes(record)
                if extra:
                    attributes = {**extra, **attributes}
                span.set_attributes(attributes)  # once: each call is a lock and a pass
                if content is not None:
                    self._content(span, attributes, content)
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

    def _content(self, span: Span, attributes: dict[str, Any], content: Content) -> None:
        """Put the call's content on its span and/or in an event, as the mode says."""
        if spans_content(self.capture):
            span.set_attributes(content.as_json())
        if events_content(self.capture):
            start = getattr(span, "attributes", None)
            details = dict(start) if isinstance(start, Mapping) else {}
            details.update(attributes)
            details.update(content.structured())
            self._events.emit(
                _logs.LogRecord(
                    event_name=EVENT_DETAILS,
                    attributes=details,
                    context=trace.set_span_in_context(span),
                )
            )

    def _record_metrics(
        self,
        record: UsageRecord,
        operation: str,
        duration_s: float,
        gaps: Sequence[float],
        *,
        genai: bool,
    ) -> None:
        base: dict[str, Any] = {ATTR.OPERATION: operation}
        provider = provider_name(record.provider)
        if provider is not None:
            base[ATTR.PROVIDER] = provider
        if record.requested_model is not None:
            base[ATTR.REQUEST_MODEL] = record.requested_model
        if record.response_model is not None:
            base[ATTR.RESPONSE_MODEL] = record.response_model
        if record.server_address is not None:
            base[ATTR.SERVER_ADDRESS] = record.server_address
        if genai:  # beside another producer's span, its GenAI metrics are the ones
            self._genai_metrics(record, base, duration_s, gaps)
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

    def _genai_metrics(
        self, record: UsageRecord, base: dict[str, Any], duration_s: float, gaps: Sequence[float]
    ) -> None:
        duration_attrs = dict(base)
        if record.error_type is not None:
            duration_attrs[ATTR.ERROR_TYPE] = record.error_type
        self._duration.record(duration_s, duration_attrs)
        if record.time_to_first_chunk_ms is not None:
            self._first_chunk.record(record.time_to_first_chunk_ms / 1000, duration_attrs)
            for gap in gaps:
                self._chunk_gap.record(gap, duration_attrs)
        if record.tokens_in or record.tokens_out:
            self._token_usage.record(record.tokens_in, {**base, ATTR.TOKEN_TYPE: "input"})
            self._token_usage.record(record.tokens_out, {**base, ATTR.TOKEN_TYPE: "output"})
