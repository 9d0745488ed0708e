"""What a finished call leaves behind: the facts taken when it finished, and the
:class:`~metered.records.UsageRecord` built from them.

A record is built lazily, when something reads it (a recording span, live metrics, a sink,
``capture_spend()``), from facts frozen at finish, so a record read later still describes
that moment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from metered.money import from_nanos
from metered.pricing.route import Quote
from metered.records import UsageRecord
from metered.usage import Usage

if TYPE_CHECKING:
    from metered.engine.call import Call

__all__ = ["OPERATION", "Facts", "Finish", "build_record", "reasons"]

#: The GenAI operation of each wire format.
OPERATION: dict[str, str] = {"chat": "chat", "responses": "chat", "anthropic": "chat"}
_NO_USAGE = Usage(source="unknown")


@dataclass(frozen=True, slots=True)
class Finish:
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
    money = quote if facts.priced else None
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
        request_max_tokens=call.output_limit or None,
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
    )


def reasons(value: object) -> tuple[str, ...]:
    """The finish reasons a door passed, as strings. Doors read them from provider JSON:
    ``None``, a bare string or odd items must not raise once the call is claimed (the hold
    would then outlive the call)."""
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
