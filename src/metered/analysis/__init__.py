"""Reports over usage records, and bounded price proposals: ``metered report`` / ``propose``.

Pricing is a control loop: capture usage and settlement outcomes (the JSONL usage records
of :class:`~metered.records.JsonlSink`), measure margin per model, propose a *bounded*
price change, roll it out to a canary cohort and compare. This module does the measuring
and the proposing; it never writes a config.

``report`` groups records (by model, account, route, provider or pricing source) into the
numbers the first dashboards need:

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

``propose`` tunes a route's ``models:`` prices toward a target margin over the observed
mean cost per call. An entry's sample is the settled calls on the route that it priced
(``pricing_source`` ``route.models``, dated ids and ``"*"`` matched as pricing matches
them) with a known cost; entries with fewer than ``min_calls`` are left unchanged.

* Flat (per-request) prices: ``price = mean cost / (1 - target)``, moved at most
  ``+max_up`` / ``-max_down`` from the current price per deploy, then held inside the
  route's floor and ceiling for the model (``"*"`` applies to every model; these safety
  limits win over the per-deploy step).
* Token rates: every rate is scaled by one factor, bounded the same way, that takes the
  mean price per call to the target. Floors and ceilings bound each *call* at pricing
  time, not the rates, so they are applied per call to the current and the projected
  mean price (the reason says how many calls they hold) rather than to the factor.
* Markups already track cost and are left alone.

Proposed prices are rounded **up** to 3 significant digits (``$0.013889`` → ``$0.0139``),
with more digits only where 3 would cross the upper bound (the per-deploy step or the
ceiling). Rounding only ever raises a price, so it never takes one below cost.

All money is :class:`~decimal.Decimal` parsed from the records' strings; files are read
line by line, so their size is bounded by disk, not memory (``propose`` keeps 8 bytes per
sampled call for the p90, 16 for token-rate entries).
"""

from __future__ import annotations

import argparse
import json
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import partial
from typing import Any, Literal, NamedTuple

from metered.config import Config, ModelPrice, load_yaml
from metered.errors import ConfigError, MeteredError
from metered.money import NANOS_PER_USD, Rate, format_usd, from_nanos, to_nanos
from metered.pricing.catalog import CostRates
from metered.pricing.route import Pricer, RoutePricer
from metered.usage import Usage

__all__ = [
    "GroupBy",
    "GroupStats",
    "ModelProposal",
    "PriceProposal",
    "ReadStats",
    "UsageReport",
    "add_report_parsers",
    "propose_command",
    "propose_prices",
    "report_command",
    "summarize_usage",
]

GroupBy = Literal["model", "account", "route", "provider", "pricing_source"]
#: The record field each ``--by`` choice groups on.
_GROUP_FIELD: dict[str, str] = {
    "model": "requested_model",
    "account": "account",
    "route": "route",
    "provider": "provider",
    "pricing_source": "pricing_source",
}
Bound = Literal["up", "down", "floor", "ceiling", "none"]

_ZERO = Decimal(0)
_ONE = Decimal(1)
_HUNDRED = Decimal(100)
_PER_MTOK = Decimal(10**6)
_TENTH = Decimal("0.1")
_NANO = Decimal("1e-9")
_SIG_DIGITS = 3
_TOKEN_RATES = ("input", "output", "cache_read", "cache_write", "reasoning")


# --- reading ---------------------------------------------------------------------------


class _Row(NamedTuple):
    """The fields of one usage record that reports read, parsed (money as Decimal)."""

    timestamp: datetime
    route: str | None
    provider: str | None
    requested_model: str | None
    account: str | None
    pricing_source: str | None
    cost: Decimal | None
    settlement_amount: Decimal
    settlement_status: str
    policy_decision: str
    policy_reason: str | None
    error_type: str | None
    usage: Usage


@dataclass(slots=True)
class ReadStats:
    """What reading the usage files found.

    Attributes:
        files: the files read, in order.
        records: records inside the time window (the ones reported on).
        outside_window: well-formed records left out by ``since`` / ``until``.
        malformed_lines: lines that are not a usage record (skipped).
        first_malformed: ``path:line: problem`` of the first malformed line.
    """

    files: list[str] = field(default_factory=list)
    records: int = 0
    outside_window: int = 0
    malformed_lines: int = 0
    first_malformed: str | None = None

    def malformed(self, where: str, exc: Exception) -> None:
        """Count a line that is not a usage record; remember the first problem."""
        self.malformed_lines += 1
        if self.first_malformed is None:
            if isinstance(exc, json.JSONDecodeError):
                problem = "not JSON"
            elif isinstance(exc, UnicodeDecodeError):
                problem = "not UTF-8"
            elif isinstance(exc, KeyError):
                problem = f"missing field {exc}"
            else:
                problem = str(exc)
            self.first_malformed = f"{where}: {problem}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "files": self.files,
            "records": self.records,
            "outside_window": self.outside_window,
            "malformed_lines": self.malformed_lines,
            "first_malformed": self.first_malformed,
        }


def _str(obj: dict[str, Any], name: str) -> str:
    value = obj[name]
    if not isinstance(value, str):
        raise TypeError(f"{name} is not a string")
    return value


def _opt_str(obj: dict[str, Any], name: str) -> str | None:
    value = obj[name]
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} is not a string")
    return value


def _money(obj: dict[str, Any], name: str) -> Decimal:
    value = obj[name]
    # records write money as strings; a JSON number went through a float somewhere
    if not isinstance(value, str):
        raise TypeError(f"{name} is not a decimal string")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{name} {value!r} is not a decimal") from None
    if not amount.is_finite():
        raise ValueError(f"{name} {value!r} is not finite")
    return amount


def _parse_row(obj: object) -> _Row:
    """One decoded JSON line → :class:`_Row`; raises on anything that is not a record."""
    if not isinstance(obj, dict):
        raise TypeError("not a JSON object")
    stamp = datetime.fromisoformat(_str(obj, "timestamp"))
    return _Row(
        timestamp=stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC),
        route=_opt_str(obj, "route"),
        provider=_opt_str(obj, "provider"),
        requested_model=_opt_str(obj, "requested_model"),
        account=_opt_str(obj, "account"),
        pricing_source=_opt_str(obj, "pricing_source"),
        cost=None if obj["cost"] is None else _money(obj, "cost"),
        settlement_amount=_money(obj, "settlement_amount"),
        settlement_status=_str(obj, "settlement_status"),
        policy_decision=_str(obj, "policy_decision"),
        policy_reason=_opt_str(obj, "policy_reason"),
        error_type=_opt_str(obj, "error_type"),
        # Usage checks the counts (non-negative ints, cached <= input, reasoning <= output)
        usage=Usage(
            input_tokens=obj["tokens_in"],
            output_tokens=obj["tokens_out"],
            cache_read_tokens=obj["cache_read_tokens"],
            cache_write_tokens=obj["cache_write_tokens"],
            reasoning_tokens=obj["reasoning_tokens"],
        ),
    )


def _read(
    paths: Iterable[str], *, since: datetime | None, until: datetime | None, stats: ReadStats
) -> Iterator[_Row]:
    """Yield the records of ``paths`` in ``[since, until)``, one line at a time.

    Malformed lines (not JSON, not an object, a missing or mistyped field) are counted in
    ``stats`` and skipped: a crash mid-write leaves a partial last line, and one bad line
    must not hide a month of good ones.

    Raises:
        OSError: a file cannot be opened or read.
    """
    for path in paths:
        stats.files.append(path)
        # bytes in, so an invalid UTF-8 sequence is one malformed line, not a crash
        source = nullcontext(sys.stdin.buffer) if path == "-" else open(path, "rb")  # noqa: SIM115
        with source as lines:
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    row = _parse_row(json.loads(line))
                except (ValueError, TypeError, KeyError) as exc:
                    stats.malformed(f"{path}:{lineno}", exc)
                    continue
                if (since is not None and row.timestamp < since) or (
                    until is not None and row.timestamp >= until
                ):
                    stats.outside_window += 1
                    continue
                stats.records += 1
                yield row


def _instant(text: str) -> datetime:
    """An ISO 8601 date or time; naive means UTC (records are stamped in UTC)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date or time (e.g. 2025-06-01 or 2025-06-01T12:00Z)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# --- numbers ---------------------------------------------------------------------------


def _pct(part: Decimal | int, whole: Decimal | int) -> Decimal | None:
    """``part / whole`` as a percentage to 0.1, ``None`` when ``whole`` is zero."""
    if not whole:
        return None
    return (Decimal(part) * _HUNDRED / Decimal(whole)).quantize(_TENTH, ROUND_HALF_EVEN)


def _show_pct(value: Decimal | None) -> str | None:
    return None if value is None else f"{value}%"


def _sig_up(value: Decimal, digits: int) -> Decimal:
    """``value`` rounded toward +infinity to ``digits`` significant digits."""
    quantum = _ONE.scaleb(value.adjusted() - digits + 1)
    return value.quantize(quantum, rounding=ROUND_CEILING)


def _round_up(value: Decimal, *, upper: Decimal) -> Decimal:
    """Round a proposed price up to 3 significant digits, more if 3 would exceed ``upper``.

    Only ever rounds up, so a price at or above cost stays there; ``value`` itself is at
    most ``upper``, so some number of digits always fits.
    """
    if value <= 0:
        return value
    for digits in range(_SIG_DIGITS, 29):
        rounded = _sig_up(value, digits)
        if rounded <= upper:
            return rounded.normalize()
    return value


def _nano(value: Decimal | None) -> Decimal | None:
    """A divided amount (a mean) to the nano-USD, so it does not show 28 digits."""
    if value is None:
        return None
    rounded = value.quantize(_NANO, ROUND_HALF_EVEN)
    return (value if rounded == value else rounded).normalize()


# --- report ----------------------------------------------------------------------------


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

    def _add(self, row: _Row) -> None:
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
        return None if margin is None else _pct(margin, self.charged_known_cost)

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
            "fallback_rate_pct": _pct(self.fallback, self.calls),
            "unknown_model_denied": self.unknown_model,
            "unknown_model_rate_pct": _pct(self.unknown_model, self.calls),
            "budget_exceeded_402": self.budget_exceeded,
            "settlement_failed": self.settlement_failed,
            "settlement_failure_rate_pct": _pct(self.settlement_failed, self.allowed),
            "released": self.released,
            "refunded": self.refunded,
        }

    def cells(self) -> list[object]:
        """The table cells after the group name."""
        return [
            self.calls,
            self.settled,
            self.tokens_in,
            self.tokens_out,
            format_usd(self.known_cost),
            format_usd(self.charged),
            format_usd(self.margin),
            _show_pct(self.margin_pct),
            self.unknown_cost,
            _show_pct(_pct(self.fallback, self.calls)),
            _show_pct(_pct(self.unknown_model, self.calls)),
            self.budget_exceeded,
            _show_pct(_pct(self.settlement_failed, self.allowed)),
            self.released,
            self.refunded,
        ]


_REPORT_HEADERS = [
    "calls",
    "settled",
    "tokens in",
    "tokens out",
    "cost",
    "charged",
    "margin",
    "margin %",
    "no cost",
    "fallback %",
    "unknown %",
    "402",
    "failed %",
    "released",
    "refunded",
]


@dataclass(slots=True)
class UsageReport:
    """Usage grouped by one record field, with a total.

    Attributes:
        by: the ``--by`` choice.
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
    attr = _GROUP_FIELD[by]
    stats = ReadStats()
    groups: dict[str | None, GroupStats] = {}
    total = GroupStats()
    for row in _read(paths, since=since, until=until, stats=stats):
        key: str | None = getattr(row, attr)
        group = groups.get(key)
        if group is None:
            group = groups[key] = GroupStats()
        group._add(row)
        total._add(row)
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1].calls, kv[0] is None, kv[0] or ""))
    return UsageReport(by=by, groups=dict(ordered), total=total, read=stats)


# --- propose ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Sample:
    """The settled calls one ``route.models`` entry priced.

    Keeps the summed cost and usage and each call's cost; for token rates also each call's
    price at those rates before floors and ceilings.
    """

    rates: CostRates | None = None  # the entry's token rates (None: a flat price or markup)
    calls: int = 0
    unknown_cost: int = 0
    cost: Decimal = _ZERO
    # integer nano-USD: 8 bytes a call instead of a Decimal's ~100
    cost_nanos: array[int] = field(default_factory=lambda: array("q"))
    price_nanos: array[int] = field(default_factory=lambda: array("q"))
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def add(self, row: _Row) -> None:
        if row.cost is None:
            self.unknown_cost += 1
            return
        self.calls += 1
        self.cost += row.cost
        self.cost_nanos.append(to_nanos(row.cost))
        u = row.usage
        if self.rates is not None:
            self.price_nanos.append(to_nanos(self.rates.cost(u)))
        self.input_tokens += u.input_tokens
        self.output_tokens += u.output_tokens
        self.cache_read_tokens += u.cache_read_tokens
        self.cache_write_tokens += u.cache_write_tokens
        self.reasoning_tokens += u.reasoning_tokens

    def usage(self) -> Usage:
        """All sampled calls as one usage.

        Resale rates are linear in usage, so pricing this sum prices the whole sample at
        any rates without keeping the calls.
        """
        return Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens,
            requests=self.calls,
        )

    def p90(self) -> Decimal:
        """90th percentile cost per call (nearest rank), to the nano-USD."""
        ranked = sorted(self.cost_nanos)
        return from_nanos(ranked[-(-9 * len(ranked) // 10) - 1])  # rank ceil(0.9 n), no float

    def held(
        self, scale: Decimal, floor: Decimal | None, ceiling: Decimal | None
    ) -> tuple[Decimal, int, int]:
        """Mean price per call at the token rates times ``scale``, floor and ceiling applied.

        Each call is bounded as pricing bounds it (to the nano-USD); also returns how many
        calls the floor and the ceiling hold.
        """
        low = None if floor is None else to_nanos(floor)
        high = None if ceiling is None else to_nanos(ceiling)
        total, floored, ceiled = _ZERO, 0, 0
        for nanos in self.price_nanos:
            price = scale * nanos
            if low is not None and price < low:
                price, floored = Decimal(low), floored + 1
            if high is not None and price > high:
                price, ceiled = Decimal(high), ceiled + 1
            total += price
        return total / len(self.price_nanos) / NANOS_PER_USD, floored, ceiled


@dataclass(frozen=True, slots=True)
class ModelProposal:
    """The proposal for one ``route.models`` entry.

    Attributes:
        model: the entry's key as written in the config.
        kind: ``flat`` (per request), ``token`` (token rates) or ``markup``.
        calls: settled calls with a known cost this entry priced (the sample).
        unknown_cost_calls: settled calls it priced whose cost is unknown (left out).
        current: the entry as configured (USD per request or per token, by rate name).
        proposed: the new rates, ``None`` when nothing is proposed (see ``reason``).
        mean_cost / p90_cost: observed cost per call.
        current_price / proposed_price: mean price per sampled call at those rates.
        current_margin_pct / proposed_margin_pct: margin over mean cost, in % of price.
        change_pct: change of the mean price per call, in %.
        bound: what limited the change; ``None`` when nothing is proposed.
        reason: why, in words.
    """

    model: str
    kind: Literal["flat", "token", "markup"]
    calls: int
    unknown_cost_calls: int
    current: dict[str, Decimal]
    proposed: dict[str, Decimal] | None
    mean_cost: Decimal | None
    p90_cost: Decimal | None
    current_price: Decimal | None
    proposed_price: Decimal | None
    current_margin_pct: Decimal | None
    proposed_margin_pct: Decimal | None
    change_pct: Decimal | None
    bound: Bound | None
    reason: str

    def config_value(self, *, proposed: bool = True) -> str | dict[str, str]:
        """The entry as YAML would write it: ``"$0.0123"`` or a mapping of rates."""
        rates = self.proposed if proposed and self.proposed is not None else self.current
        if self.kind == "flat":
            return format_usd(rates["request"])
        if self.kind == "markup":
            return {"markup": f"{rates['markup'].normalize():f}x"}
        return {
            name: str(Rate(usd=usd, unit="request" if name == "request" else "token"))
            for name, usd in rates.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "model": self.model,
            "kind": self.kind,
            "calls": self.calls,
            "unknown_cost_calls": self.unknown_cost_calls,
            "current": self.config_value(proposed=False),
            "proposed": None if self.proposed is None else self.config_value(),
            "mean_cost_usd": _nano(self.mean_cost),
            "p90_cost_usd": self.p90_cost,
            "current_price_usd": _nano(self.current_price),
            "proposed_price_usd": _nano(self.proposed_price),
            "current_margin_pct": self.current_margin_pct,
            "proposed_margin_pct": self.proposed_margin_pct,
            "change_pct": self.change_pct,
            "bound": self.bound,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class PriceProposal:
    """Proposed ``models:`` prices for one route (never written anywhere by metered)."""

    route: str
    target_margin: Decimal
    max_up: Decimal
    max_down: Decimal
    min_calls: int
    models: list[ModelProposal]
    read: ReadStats

    def yaml(self) -> str:
        """The route's ``models:`` block with the proposed prices, ready to paste.

        Every entry is listed (unchanged ones with the reason as a comment), so the block
        can replace the route's ``models:`` as a whole.
        """
        lines = [f"# routes.{json.dumps(self.route)}.models", "models:"]
        for p in self.models:
            value = p.config_value()
            note = "" if p.proposed is not None else f"  # unchanged: {p.reason}"
            if isinstance(value, str):
                lines.append(f"  {json.dumps(p.model)}: {json.dumps(value)}{note}")
                continue
            lines.append(f"  {json.dumps(p.model)}:{note}")
            lines += [f"    {name}: {json.dumps(text)}" for name, text in value.items()]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "route": self.route,
            "target_margin_pct": _pct(self.target_margin, 1),
            "max_up_pct": _pct(self.max_up, 1),
            "max_down_pct": _pct(self.max_down, 1),
            "min_calls": self.min_calls,
            "rounding": _ROUNDING,
            **self.read.to_dict(),
            "models": [p.to_dict() for p in self.models],
            "yaml": self.yaml(),
        }


_ROUNDING = (
    f"rounded up to {_SIG_DIGITS} significant digits (more where that would cross the "
    "upper bound); never down, so never below cost"
)


def _check_share(name: str, value: Decimal, *, below_one: bool) -> None:
    if not value.is_finite() or value < 0 or (below_one and value >= 1):
        limit = "from 0% to below 100%" if below_one else "0% or more"
        raise ValueError(f"{name} must be {limit}, got {value * _HUNDRED:f}%")


def _pick_route(pricer: Pricer, name: str | None) -> RoutePricer:
    config = pricer.config
    if name is None:
        name = config.default_route
    if name is None:
        if len(config.routes) != 1:
            names = ", ".join(json.dumps(r) for r in config.routes) or "none"
            problem = f"has {len(config.routes)} routes ({names}) and no default_route"
            raise ConfigError("routes", problem + "; choose one with --route")
        name = next(iter(config.routes))
    if name not in pricer.routes:
        raise ConfigError(f"routes.{json.dumps(name)}", "is not a route of this config")
    return pricer.routes[name]


def _by_name(route: RoutePricer, keys: Iterable[str]) -> dict[str, str]:
    """Normalised model name → the key as written (``"*"`` left out), as pricing reads them."""
    return {route.resolve(key).normalized: key for key in keys if key != "*"}


def _limit(route: RoutePricer, key: str, limits: dict[str, Decimal]) -> Decimal | None:
    """The floor or ceiling that applies to entry ``key``: the most specific, else ``"*"``."""
    if key != "*":
        names = _by_name(route, limits)
        for name in route.resolve(key).chain:
            if name in names:
                return limits[names[name]]
    return limits.get("*")


def _current_rates(price: ModelPrice) -> dict[str, Decimal]:
    if price.markup is not None:
        return {"markup": price.markup}
    rates = {n: r.usd for n in _TOKEN_RATES if (r := getattr(price, n)) is not None}
    if price.request is not None:
        rates["request"] = price.request.usd
    return rates


def _propose_one(
    key: str,
    price: ModelPrice,
    sample: _Sample,
    route: RoutePricer,
    *,
    target: Decimal,
    max_up: Decimal,
    max_down: Decimal,
    min_calls: int,
) -> ModelProposal:
    current = _current_rates(price)
    kind: Literal["flat", "token", "markup"] = (
        "markup" if price.markup is not None else "token" if price.input is not None else "flat"
    )
    floor = _limit(route, key, route.config.floors)
    ceiling = _limit(route, key, route.config.ceilings)
    n = sample.calls
    mean = sample.cost / n if n else None
    price_now: Decimal | None = None
    if kind == "flat":
        price_now = current["request"]
    elif kind == "token" and n:
        price_now = sample.held(_ONE, floor, ceiling)[0]
    unknown = (
        f"; {sample.unknown_cost} settled call(s) with unknown cost left out"
        if sample.unknown_cost
        else ""
    )
    result = partial(
        ModelProposal,
        model=key,
        kind=kind,
        calls=n,
        unknown_cost_calls=sample.unknown_cost,
        current=current,
        mean_cost=mean,
        p90_cost=sample.p90() if n else None,
        current_price=price_now,
        current_margin_pct=(
            None if mean is None or price_now is None else _pct(price_now - mean, price_now)
        ),
    )

    def unchanged(reason: str) -> ModelProposal:
        return result(
            proposed=None,
            proposed_price=None,
            proposed_margin_pct=None,
            change_pct=None,
            bound=None,
            reason=reason + unknown,
        )

    if kind == "markup":
        return unchanged("a markup over cost: its margin does not depend on cost")
    if mean is None or price_now is None or n < min_calls:
        return unchanged(f"{n} settled call(s) with a known cost, under --min-calls {min_calls}")
    linear_now = CostRates(**current).cost(sample.usage())  # the sample at today's rates
    if price_now == 0 or linear_now == 0:
        return unchanged("priced at $0: a relative step cannot move it; set a price by hand")

    wanted = mean / (1 - target)  # the mean price per call that earns the target margin
    low, high = price_now * (1 - max_down), price_now * (1 + max_up)
    bound: Bound = "none"
    goal = wanted
    if wanted > high:
        goal, bound = high, "up"
    elif wanted < low:
        goal, bound = low, "down"
    proposed: dict[str, Decimal] = {}
    notes = ""
    if kind == "flat":
        # floors and ceilings are safety limits: they win over the per-deploy step
        if floor is not None and goal < floor:
            goal, bound = floor, "floor"
        if ceiling is not None and goal > ceiling:
            goal, bound = ceiling, "ceiling"
        upper = high if ceiling is None else min(high, ceiling)
        proposed["request"] = price_new = _round_up(goal, upper=max(goal, upper))
    else:
        # one factor for every rate; floors and ceilings keep bounding each call
        factor = goal / price_now
        for name, usd in current.items():
            unit = _ONE if name == "request" else _PER_MTOK  # round the number the config shows
            rounded = _round_up(usd * unit * factor, upper=usd * unit * (1 + max_up))
            proposed[name] = rounded / unit
        scale = CostRates(**proposed).cost(sample.usage()) / linear_now
        price_new, floored, ceiled = sample.held(scale, floor, ceiling)
        if floored:
            notes += f"; the floor holds {floored} of {n} calls"
        if ceiled:
            notes += f"; the ceiling holds {ceiled} of {n} calls"

    if bound == "up":
        reason = (
            f"needs +{_pct(wanted - price_now, price_now)}% for the target; "
            f"capped at +{_pct(max_up, 1)}% per deploy"
        )
    elif bound == "down":
        reason = (
            f"could drop {_pct(price_now - wanted, price_now)}% at the target; "
            f"capped at -{_pct(max_down, 1)}% per deploy"
        )
    elif bound in ("floor", "ceiling"):
        reason = f"held at the {bound} {format_usd(goal)}"
    else:
        direction = "raised" if wanted > price_now else "lowered"
        reason = f"{direction} to the {_pct(target, 1)}% target margin"
    if price_new < mean:
        notes += "; still below mean cost: calls lose money"
    return result(
        proposed=proposed,
        proposed_price=price_new,
        proposed_margin_pct=_pct(price_new - mean, price_new),
        change_pct=_pct(price_new - price_now, price_now),
        bound=bound,
        reason=reason + notes + unknown,
    )


def propose_prices(
    paths: Sequence[str],
    config: Config,
    *,
    route: str | None = None,
    target_margin: Decimal = Decimal("0.40"),
    max_up: Decimal = Decimal("0.15"),
    max_down: Decimal = Decimal("0.10"),
    min_calls: int = 20,
    since: datetime | None = None,
    until: datetime | None = None,
) -> PriceProposal:
    """Propose bounded new prices for a route's ``models:`` entries from usage records.

    The sample of an entry is the settled calls on the route that the entry priced
    (``pricing_source`` ``route.models``) and whose cost is known. See the module
    docstring for the rule, the bounds and the rounding.

    Args:
        paths: JSONL usage files (``-``: stdin).
        config: the configuration the calls were priced with.
        route: route name; default the config's ``default_route``, or its only route.
        target_margin: margin as a share of price, e.g. ``Decimal("0.40")``.
        max_up: largest price rise per deploy as a share of the current price.
        max_down: largest price cut per deploy as a share of the current price.
        min_calls: entries with fewer sampled calls are left unchanged.
        since / until: the time window, ``[since, until)``.

    Raises:
        ConfigError: no such route, no route to choose, a route without ``models:``, or
            invalid model names.
        ValueError: a share out of range or ``min_calls`` below 1.
        OSError: a file cannot be read.
    """
    _check_share("target margin", target_margin, below_one=True)
    _check_share("max up", max_up, below_one=False)
    _check_share("max down", max_down, below_one=False)
    if max_down > 1:
        raise ValueError(f"max down must be at most 100%, got {max_down * _HUNDRED:f}%")
    if min_calls < 1:
        raise ValueError(f"min calls must be at least 1, got {min_calls}")
    pricer = Pricer(config)
    chosen = _pick_route(pricer, route)
    entries = chosen.config.models
    if not entries:
        where = f"routes.{json.dumps(chosen.name)}.models"
        raise ConfigError(where, "is empty: propose tunes the per-model prices listed there")
    by_name = _by_name(chosen, entries)
    samples = {
        key: _Sample(rates=CostRates(**_current_rates(price)) if price.input else None)
        for key, price in entries.items()
    }
    entry_of: dict[str | None, str | None] = {None: None}  # requested model → entry key
    stats = ReadStats()
    for row in _read(paths, since=since, until=until, stats=stats):
        if (
            row.route != chosen.name
            or row.pricing_source != "route.models"
            or row.settlement_status != "settled"
        ):
            continue
        model = row.requested_model
        if model not in entry_of:
            entry_of[model] = _entry_key(chosen, model, by_name, "*" in entries)
        key = entry_of[model]
        if key is not None:
            samples[key].add(row)
    models = [
        _propose_one(
            key,
            price,
            samples[key],
            chosen,
            target=target_margin,
            max_up=max_up,
            max_down=max_down,
            min_calls=min_calls,
        )
        for key, price in entries.items()
    ]
    return PriceProposal(
        route=chosen.name or "",
        target_margin=target_margin,
        max_up=max_up,
        max_down=max_down,
        min_calls=min_calls,
        models=models,
        read=stats,
    )


def _entry_key(
    route: RoutePricer, model: str | None, by_name: dict[str, str], wildcard: bool
) -> str | None:
    """The ``models:`` key that prices ``model`` on ``route``, the way pricing picks it."""
    if model is None:
        return None
    try:
        chain = route.resolve(model).chain
    except (MeteredError, ValueError):  # an id pricing would refuse cannot be in the sample
        return None
    for name in chain:
        if name in by_name:
            return by_name[name]
    return "*" if wildcard else None


# --- commands --------------------------------------------------------------------------


def _warn_malformed(stats: ReadStats) -> None:
    if stats.malformed_lines:
        print(
            f"warning: skipped {stats.malformed_lines} malformed line(s); "
            f"first at {stats.first_malformed}",
            file=sys.stderr,
        )


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _os_error(exc: OSError) -> str:
    return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)


def report_command(args: argparse.Namespace) -> int:
    """Run ``metered report``; returns the exit code."""
    # cli.py registers these commands: importing it at call time keeps either module
    # importable first
    from metered.cli import _dump, _table

    try:
        report = summarize_usage(args.files, by=args.by, since=args.since, until=args.until)
    except OSError as exc:
        return _fail(_os_error(exc))
    _warn_malformed(report.read)
    if args.json:
        _dump(report.to_dict())
        return 0
    rows: list[list[object]] = [[key, *stats.cells()] for key, stats in report.groups.items()]
    rows.append(["total", *report.total.cells()])
    print(_table([args.by, *_REPORT_HEADERS], rows))
    read, total = report.read, report.total
    window = f" ({read.outside_window} outside the time window)" if read.outside_window else ""
    print(
        f"\n{read.records} record(s) from {len(read.files)} file(s){window}; margin covers "
        f"{total.settled - total.unknown_cost} settled call(s) with a known cost, "
        f"{total.unknown_cost} settled call(s) have no cost"
    )
    return 0


def _show_value(value: str | dict[str, str] | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return ", ".join(f"{name} {text}" for name, text in value.items())


def propose_command(args: argparse.Namespace) -> int:
    """Run ``metered propose``; returns the exit code. Never writes the config."""
    from metered.cli import _dump, _table

    try:
        proposal = propose_prices(
            args.files,
            load_yaml(args.config),
            route=args.route,
            target_margin=args.target_margin,
            max_up=args.max_up,
            max_down=args.max_down,
            min_calls=args.min_calls,
            since=args.since,
            until=args.until,
        )
    except MeteredError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(_os_error(exc))
    _warn_malformed(proposal.read)
    if args.json:
        _dump(proposal.to_dict())
        return 0
    p = proposal
    print(
        f"route {json.dumps(p.route)}: target margin {_pct(p.target_margin, 1)}%, "
        f"at most +{_pct(p.max_up, 1)}% / -{_pct(p.max_down, 1)}% per deploy; "
        f"{p.read.records} record(s) read\n"
    )
    print(
        _table(
            [
                "model",
                "calls",
                "current price",
                "mean cost",
                "p90 cost",
                "margin %",
                "proposed price",
                "change %",
                "new margin %",
                "bound",
                "reason",
            ],
            [
                [
                    m.model,
                    m.calls,
                    _show_value(m.config_value(proposed=False)),
                    format_usd(_nano(m.mean_cost)),
                    format_usd(m.p90_cost),
                    _show_pct(m.current_margin_pct),
                    _show_value(None if m.proposed is None else m.config_value()),
                    _show_pct(m.change_pct),
                    _show_pct(m.proposed_margin_pct),
                    m.bound,
                    m.reason,
                ]
                for m in p.models
            ],
        )
    )
    print(f"\nProposed models (prices {_ROUNDING}); metered never writes the config:\n")
    print(proposal.yaml(), end="")
    return 0


def _percent(text: str) -> Decimal:
    """``"15%"`` → ``Decimal("0.15")``; a bare number is refused (a share or a percent?)."""
    body = text.strip()
    if not body.endswith("%"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage; write e.g. '15%'")
    try:
        value = Decimal(body[:-1].strip()) / _HUNDRED
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a percentage of 0% or more")
    return value


def _below_100(text: str) -> Decimal:
    value = _percent(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be below 100%")
    return value


def _at_most_100(text: str) -> Decimal:
    value = _percent(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most 100%")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def _window_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="USAGE.jsonl", help="usage records ('-': stdin)"
    )
    parser.add_argument("--since", type=_instant, help="records at or after this ISO 8601 time")
    parser.add_argument("--until", type=_instant, help="records before this ISO 8601 time")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def add_report_parsers(subparsers: Any) -> None:
    """Add the ``report`` and ``propose`` subcommands to the ``metered`` CLI's subparsers."""
    r: argparse.ArgumentParser = subparsers.add_parser(
        "report",
        help="margin, fallback, unknown-model, 402 and settlement rates from usage records",
        description="Summarise JSONL usage records, grouped by one field.",
    )
    _window_arguments(r)
    r.add_argument("--by", choices=list(_GROUP_FIELD), default="model", help="group by (model)")
    r.set_defaults(func=report_command)

    p: argparse.ArgumentParser = subparsers.add_parser(
        "propose",
        help="propose bounded new per-model prices toward a target margin",
        description=(
            "Propose new route.models prices from observed cost per settled call, bounded "
            "per deploy and by floors/ceilings. Prints a YAML snippet; never writes the config."
        ),
    )
    _window_arguments(p)
    p.add_argument("--config", required=True, help="the metered YAML config the calls ran with")
    p.add_argument("--route", help="route name (default: default_route, or the only route)")
    p.add_argument(
        "--target-margin",
        type=_below_100,
        default=Decimal("0.40"),
        help="margin as a share of price (40%%)",
    )
    p.add_argument(
        "--max-up", type=_percent, default=Decimal("0.15"), help="largest rise per deploy (15%%)"
    )
    p.add_argument(
        "--max-down", type=_at_most_100, default=Decimal("0.10"), help="largest cut (10%%)"
    )
    p.add_argument(
        "--min-calls",
        type=_positive_int,
        default=20,
        help="leave models with fewer settled calls unchanged (20)",
    )
    p.set_defaults(func=propose_command)
