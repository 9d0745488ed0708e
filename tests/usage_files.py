"""Usage records for the analysis and ``metered report`` / ``propose`` tests."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from metered.records import UsageRecord

CHAT = "POST /v1/chat/completions"
JUNE = datetime(2025, 6, 1, tzinfo=UTC).timestamp()
DAY = 86400.0

#: A settled gpt-4o call priced $0.01 flat that cost $0.006.
BASE = UsageRecord(
    timestamp=JUNE,
    call_id="call-1",
    route=CHAT,
    provider="openai",
    operation="chat",
    requested_model="gpt-4o",
    response_model="gpt-4o-2024-08-06",
    resolved_model="gpt-4o",
    resolved_pricing_mode="flat",
    pricing_source="route.models",
    resolved_price=Decimal("0.01"),
    cost=Decimal("0.006"),
    margin=Decimal("0.004"),
    tokens_in=1000,
    tokens_out=200,
    cache_read_tokens=0,
    cache_write_tokens=0,
    reasoning_tokens=0,
    tokens_source="actual",
    payment_required=Decimal("0.01"),
    payment_settled=True,
    settlement_mode="after-response",
    settlement_status="settled",
    settlement_amount=Decimal("0.01"),
    settlement_latency_ms=0.2,
    upstream_status=200,
    upstream_latency_ms=120.0,
    account="acme",
    accounts=("acme",),
    tier=None,
    feature=None,
    policy_decision="allowed",
    policy_reason=None,
    error_type=None,
    stream=False,
    request_max_tokens=None,
    time_to_first_chunk_ms=None,
    trimmed_messages=0,
    max_tokens_clamped_from=None,
    budget_remaining=None,
    finish_reasons=("stop",),
    response_id=None,
    server_address=None,
    catalog_version=None,
)
UNSETTLED = {
    "resolved_price": None,
    "cost": None,
    "margin": None,
    "payment_settled": False,
    "settlement_amount": Decimal(0),
}


def rec(**changes: Any) -> UsageRecord:
    """``BASE`` with some fields changed."""
    return replace(BASE, **changes)


def calls(n: int, *costs: str, **changes: Any) -> list[UsageRecord]:
    """``n`` settled records cycling through ``costs`` (USD strings)."""
    return [rec(cost=Decimal(costs[i % len(costs)]), **changes) for i in range(n)]


def jsonl(records: Iterable[UsageRecord]) -> str:
    """Records as :class:`JsonlSink` writes them."""
    return "".join(json.dumps(r.to_dict(), separators=(",", ":")) + "\n" for r in records)
