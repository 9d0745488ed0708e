"""What a finished call leaves behind: the facts taken when it finished, and the
:class:`~metered.records.UsageRecord` built from them.

A record is built lazily, when something reads it (a recording span, live metrics, a sink,
``capture_spend()``), from facts frozen at finish, so a record read later still describes
that moment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from opentelemetry.trace import Span

from metered import context as _context
from metered.errors import BudgetExceeded, MeteredError
from metered.ledger import Threshold
from metered.money import from_nanos, to_nanos
from metered.pricing.route import Quote
from metered.records import RecordSink, UsageRecord
from metered.telemetry import EVENT_BUDGET_ALERT, Content, Telemetry
from metered.usage import Usage

if TYPE_CHECKING:
    from metered.engine.call import Call

__all__ = [
    "OPERATION",
    "Facts",
    "Finish",
    "alert_events",
    "build_record",
    "emit",
    "finished_facts",
    "reasons",
    "refused_facts",
]

logger = logging.getLogger("metered")

#: The GenAI operation of each wire format.
OPERATION: dict[str, str] = {
    "chat": "chat",
    "responses": "chat",
    "anthropic": "chat",
    "gemini": "chat",
}
_NO_USAGE = Usage(source="unknown")


class Finish(NamedTuple):
    """What the door reported when the call ended (the arguments of ``finish``)."""

    usage: Usage | None
    error: BaseException | None
    status: int | None
    response_model: str | None
    response_id: str | None
    finish_reasons: tuple[str, ...]
    partial: bool
    vetoed: bool


class Facts(NamedTuple):
    """What a finished (or refused) call's record is built from."""

    usage: Usage | None
    quote: Quote | None
    priced: bool  # money moved: cost, price and margin go on the record
    status: str  # settlement status
    amount_nanos: int  # settled
    settlement_ms: float
    policy_decision: str
    policy_reason: str | None
    error_type: str | None
    fin: Finish | None
    remaining_nanos: int | None  # the payer's least remaining budget
    timestamp: float  # epoch seconds
    ended: float  # perf_counter


def finished_facts(
    fin: Finish,
    quote: Quote | None,
    status: str,
    amount_nanos: int,
    settlement_ms: float,
    remaining_nanos: int | None,
    ended: float,
) -> Facts:
    """The facts of a call that reached the upstream, once settled (or failed to)."""
    settled = status == "settled"
    return Facts(  # positional, in field order: built on every call
        quote.usage if quote is not None and settled else fin.usage,
        quote,
        settled,
        status,
        amount_nanos,
        settlement_ms,
        "allowed",
        None,
        type(fin.error).__name__ if fin.error is not None else None,
        fin,
        remaining_nanos,
        time.time(),
        ended,
    )


def refused_facts(exc: BaseException, estimate: Quote | None) -> Facts:
    """The facts of a call refused in steps 1-5 (nothing moved; the estimate is kept)."""
    reason = getattr(exc, "reason", None) or getattr(exc, "code", None) or type(exc).__name__
    remaining_nanos = None
    if isinstance(exc, BudgetExceeded):
        remaining_nanos = max(to_nanos(exc.limit - exc.spent), 0)
    return Facts(
        usage=None,
        quote=estimate,
        priced=False,
        status="skipped",
        amount_nanos=0,
        settlement_ms=0.0,
        policy_decision="denied" if isinstance(exc, MeteredError) else "error",
        policy_reason=str(reason),
        error_type=type(exc).__name__,
        fin=None,
        remaining_nanos=remaining_nanos,
        timestamp=time.time(),
        ended=time.perf_counter(),
    )


def build_record(
    call: Call,
    facts: Facts,
    *,
    started: float,
    first_chunk: float | None,
    accounts: tuple[str, ...],
) -> UsageRecord:
    """The usage record of ``call`` from the facts taken when it finished (``started`` and
    ``first_chunk`` are ``perf_counter`` readings; ``accounts`` those the call reserved on)."""
    usage = facts.usage or _NO_USAGE
    quote = facts.quote
    fin = facts.fin
    # cost, price and margin describe money that moved: a released, refunded or refused
    # call shows none (what it would have cost stays in payment_required)
    # (an unpriced call moved none: its cost is unknown, not $0)
    money = quote if facts.priced and quote and quote.pricing_source != "unpriced" else None
    return UsageRecord(
        timestamp=facts.timestamp,
        call_id=call.id,
        route=call.route_name,
        provider=quote.provider if quote is not None and quote.provider else call.provider,
        operation=OPERATION[call.api],
        requested_model=call.model or _str_or_none(call.body.get("model")),
        # doors read these from provider JSON: keep the types the record promises
        response_model=_str_or_none(fin.response_model) if fin else None,
        resolved_model=quote.resolved_model if quote is not None else None,
        resolved_pricing_mode=quote.pricing_mode if quote is not None else None,
        pricing_source=quote.pricing_source if quote is not None else None,
        resolved_price=money.price if money is not None else None,
        cost=money.cost if money is not None else None,
        margin=money.margin if money is not None else None,
        tokens_in=usage.input_tokens,
        tokens_out=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        tokens_source=usage.source,
        payment_required=call.payment_required,
        payment_settled=facts.status == "settled",
        settlement_mode=call.mode,
        settlement_status=facts.status,
        settlement_amount=from_nanos(facts.amount_nanos),
        settlement_latency_ms=facts.settlement_ms,
        upstream_status=_status_or_none(fin.status) if fin else None,
        upstream_latency_ms=(facts.ended - started) * 1000 if fin is not None else None,
        account=call.account,
        accounts=accounts,
        tier=call.tier,
        feature=call.feature,
        policy_decision=facts.policy_decision,
        policy_reason=facts.policy_reason,
        error_type=facts.error_type,
        stream=bool(call.body.get("stream")),
        # the limit sent upstream; none when the call went without one
        request_max_tokens=call.output_limit if call.output_limit_source else None,
        time_to_first_chunk_ms=None if first_chunk is None else (first_chunk - started) * 1000,
        trimmed_messages=call.trimmed,
        max_tokens_clamped_from=call.clamped_from,
        budget_remaining=(
            None if facts.remaining_nanos is None else from_nanos(facts.remaining_nanos)
        ),
        finish_reasons=fin.finish_reasons if fin else (),
        response_id=_str_or_none(fin.response_id) if fin else None,
        server_address=call.server_address,
        catalog_version=quote.catalog_version if quote is not None else None,
        max_tokens_source=call.output_limit_source,
        cost_source=quote.cost_source if quote is not None else None,
        cost_resolution=quote.cost_resolution or None if quote is not None else None,
    )


def reasons(value: object) -> tuple[str, ...]:
    """The finish reasons a door passed, as strings. Doors read them from provider JSON:
    ``None``, a bare string or odd items must not raise once the call is claimed (the hold
    would then outlive the call)."""
    if type(value) is tuple or type(value) is list:
        return tuple(reason for reason in value if type(reason) is str)
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable) and not isinstance(value, Mapping):
        return tuple(reason for reason in value if type(reason) is str)
    return ()


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _status_or_none(value: object) -> int | None:
    # an HTTPStatus is an int too; a bool is not a status
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return None


def alert_events(
    crossed: Sequence[Threshold], callback: Callable[[Threshold], object] | None
) -> list[tuple[str, dict[str, Any]]]:
    """Span events for the budget thresholds a spend crossed; ``callback`` is told of each
    (its failure is logged: an alert must not break the call)."""
    events = []
    for threshold in crossed:
        budget = threshold.budget
        events.append(
            (
                EVENT_BUDGET_ALERT,
                {
                    "metered.account": threshold.account,
                    "metered.budget.window": str(budget.window),
                    "metered.budget.fraction": float(threshold.fraction),
                    "metered.budget.spent.usd": float(from_nanos(threshold.spent_nanos)),
                    "metered.budget.limit.usd": float(budget.limit),
                },
            )
        )
        if callback is not None:
            try:
                callback(threshold)
            except Exception:
                logger.exception("metered: on_budget_alert callback failed")
    return events


def emit(
    record: Callable[[], UsageRecord | None],
    telemetry: Telemetry,
    sink: RecordSink | None,
    span: Span | None,
    *,
    events: Sequence[tuple[str, Mapping[str, Any]]],
    attributes: Mapping[str, Any] | None = None,
    error: BaseException | None,
    started: float,
    content: Callable[[], Content] | None = None,
    gaps: Sequence[float] = (),
) -> None:
    """Hand a finished call's record to its span and metrics, ``capture_spend()`` and the
    sink, whichever are there. ``record`` builds it on demand: with none of them, it is
    not built until someone reads it."""
    if span is not None and telemetry.wants_record(span):
        built = record()
        assert built is not None  # called once the call's facts are set
        telemetry.finish(
            span,
            built,
            operation=built.operation,
            duration_s=time.perf_counter() - started,
            events=events,
            attributes=attributes,
            error=error,
            content=content,
            gaps=gaps,
        )
    captured = _context.bound.captured.get()
    if captured is None and sink is None:
        return
    built = record()
    assert built is not None
    if captured is not None:
        captured.append(built)
    if sink is not None:
        try:
            sink(built)
        except Exception:
            logger.exception("metered: usage record sink failed")
