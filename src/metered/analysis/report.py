"""The ``metered report`` numbers: usage records grouped by one field.

Pricing is a control loop: capture usage and settlement outcomes (the JSONL usage records
of :class:`~metered.records.JsonlSink`), measure margin per model, propose a *bounded*
price change (:mod:`metered.analysis.propose`), roll it out to a canary cohort and
compare. This module does the measuring.

:func:`summarize_usage` groups records (by model, account, route, provider or pricing
source) into the numbers the first dashboards need:

* **calls / settled**: records, and those whose settlement status is ``settled``.
* **cost / charged / margin**: cost summed over settled calls with a known cost; charged
  is ``settlement_amount`` summed over settled calls; margin is charged − cost over the
  calls with a known cost only (calls whose model has no catalog price are counted apart
  as *no cost*, never priced at $0). Margin % is margin over what those calls were charged.
* **fallback %**: calls priced by the route's fallback price (``pricing_source``).
* **unknown %**: calls denied because no rule prices the model (``unknown_model``).
* **402**: calls refused for budget (``BudgetExceeded``).
* **failed %**: settlements that failed, over calls that passed policy (refused calls never
  reach settlement); **released / refunded**: holds given back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from metered.analysis.numbers import pct
from metered.analysis.records import ReadStats, Row, read_rows

__all__ = ["GROUP_FIELD", "GroupBy", "GroupStats", "UsageReport", "summarize_usage"]

GroupBy = Literal["model", "account", "route", "provider", "pricing_source"]
#: The record field each ``by`` choice groups on.
GROUP_FIELD: dict[str, str] = {
    "model": "requested_model",
    "account": "account",
    "route": "route",
    "provider": "provider",
    "pricing_source": "pricing_source",
}

_ZERO = Decimal(0)


@dataclass(slots=True)
class GroupStats:
    """Counts and money of one group of usage records (see the module docstring)."""

    calls: int = 0
    settled: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: Decimal = _ZERO
    charged: Decimal = _ZERO
    charged_known_cost: Decimal = _ZERO
    unknown_cost: int = 0
    fallback: int = 0
    unknown_model: int = 0
    budget_exceeded: int = 0
    allowed: int = 0
    settlement_failed: int = 0
    released: int = 0
    refunded: int = 0

    def add(self, row: Row) -> None:
        """Count one record."""
        self.calls += 1
        self.tokens_in += row.usage.input_tokens
        self.tokens_out += row.usage.output_tokens
        status = row.settlement_status
        if status == "settled":
            self.settled += 1
            self.charged += row.settlement_amount
            if row.cost is None:
                self.unknown_cost += 1
            else:
                self.cost += row.cost
                self.charged_known_cost += row.settlement_amount
        elif status == "failed":
            self.settlement_failed += 1
        elif status == "released":
            self.released += 1
        elif status == "refunded":
            self.refunded += 1
        if row.pricing_source == "fallback":
            self.fallback += 1
        if row.policy_decision == "allowed":
            self.allowed += 1
        elif row.policy_decision == "denied" and row.policy_reason == "unknown_model":
            self.unknown_model += 1
        if row.error_type == "BudgetExceeded":
            self.budget_exceeded += 1

    @property
    def known_cost(self) -> Decimal | None:
        """Cost of the settled calls with a known cost; ``None`` when there are none."""
        return self.cost if self.settled > self.unknown_cost else None

    @property
    def margin(self) -> Decimal | None:
        """Charged − cost over the settled calls with a known cost (``None``: no such call)."""
        return None if self.known_cost is None else self.charged_known_cost - self.cost

    @property
    def margin_pct(self) -> Decimal | None:
        """Margin as a percentage of what the known-cost calls were charged."""
        margin = self.margin
        return None if margin is None else pct(margin, self.charged_known_cost)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: exact USD amounts, counts, and percentages to 0.1."""
        return {
            "calls": self.calls,
            "settled": self.settled,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": self.known_cost,
            "charged_usd": self.charged,
            "margin_usd": self.margin,
            "margin_pct": self.margin_pct,
            "unknown_cost_calls": self.unknown_cost,
            "fallback_calls": self.fallback,
            "fallback_rate_pct": pct(self.fallback, self.calls),
            "unknown_model_denied": self.unknown_model,
            "unknown_model_rate_pct": pct(self.unknown_model, self.calls),
            "budget_exceeded_402": self.budget_exceeded,
            "settlement_failed": self.settlement_failed,
            "settlement_failure_rate_pct": pct(self.settlement_failed, self.allowed),
            "released": self.released,
            "refunded": self.refunded,
        }


@dataclass(slots=True)
class UsageReport:
    """Usage grouped by one record field, with a total.

    Attributes:
        by: the record field grouped on (a :data:`GroupBy` choice).
        groups: group key (``None`` when the record has no value) → stats, busiest first.
        total: every record in the window.
        read: what reading the files found.
    """

    by: str
    groups: dict[str | None, GroupStats]
    total: GroupStats
    read: ReadStats

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "by": self.by,
            **self.read.to_dict(),
            "groups": [{self.by: key, **stats.to_dict()} for key, stats in self.groups.items()],
            "total": self.total.to_dict(),
        }


def summarize_usage(
    paths: Sequence[str],
    *,
    by: GroupBy = "model",
    since: datetime | None = None,
    until: datetime | None = None,
) -> UsageReport:
    """Read usage records and group them (the ``metered report`` numbers).

    Args:
        paths: JSONL files written by :class:`~metered.records.JsonlSink` (``-``: stdin).
        by: the record field to group on (``model`` is the requested model).
        since: keep records stamped at or after this instant.
        until: keep records stamped before this instant.

    Raises:
        OSError: a file cannot be read.
    """
    attr = GROUP_FIELD[by]
    stats = ReadStats()
    groups: dict[str | None, GroupStats] = {}
    total = GroupStats()
    for row in read_rows(paths, since=since, until=until, stats=stats):
        key: str | None = getattr(row, attr)
        group = groups.get(key)
        if group is None:
            group = groups[key] = GroupStats()
        group.add(row)
        total.add(row)
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1].calls, kv[0] is None, kv[0] or ""))
    return UsageReport(by=by, groups=dict(ordered), total=total, read=stats)
