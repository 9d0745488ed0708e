"""Bounded price proposals from usage records: the ``metered propose`` numbers.

:func:`propose_prices` tunes a route's ``models:`` prices toward a target margin over the
observed mean cost per call. An entry's sample is the settled calls on the route that it
priced (``pricing_source`` ``route.models``, dated ids and ``"*"`` matched as pricing
matches them) with a known cost; entries with fewer than ``min_calls`` are left unchanged.

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
line by line, so their size is bounded by disk, not memory (8 bytes are kept per sampled
call for the p90, 16 for token-rate entries). Nothing here writes a config.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Literal

from metered.analysis.numbers import pct, round_up
from metered.analysis.proposal import SIG_DIGITS, Bound, ModelProposal, PriceProposal
from metered.analysis.records import ReadStats, Row, read_rows
from metered.config import Config, ModelPrice
from metered.errors import ConfigError, MeteredError
from metered.money import NANOS_PER_USD, format_usd, from_nanos, to_nanos
from metered.pricing.catalog import CostRates
from metered.pricing.route import Pricer, RoutePricer
from metered.usage import Usage

__all__ = ["propose_prices"]

_ZERO = Decimal(0)
_ONE = Decimal(1)
_HUNDRED = Decimal(100)
_PER_MTOK = Decimal(10**6)
_TOKEN_RATES = ("input", "output", "cache_read", "cache_write", "reasoning")


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

    def add(self, row: Row) -> None:
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
            None if mean is None or price_now is None else pct(price_now - mean, price_now)
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
        proposed["request"] = price_new = round_up(goal, digits=SIG_DIGITS, upper=max(goal, upper))
    else:
        # one factor for every rate; floors and ceilings keep bounding each call
        factor = goal / price_now
        for name, usd in current.items():
            unit = _ONE if name == "request" else _PER_MTOK  # round the number the config shows
            rounded = round_up(
                usd * unit * factor, digits=SIG_DIGITS, upper=usd * unit * (1 + max_up)
            )
            proposed[name] = rounded / unit
        scale = CostRates(**proposed).cost(sample.usage()) / linear_now
        price_new, floored, ceiled = sample.held(scale, floor, ceiling)
        if floored:
            notes += f"; the floor holds {floored} of {n} calls"
        if ceiled:
            notes += f"; the ceiling holds {ceiled} of {n} calls"

    if bound == "up":
        reason = (
            f"needs +{pct(wanted - price_now, price_now)}% for the target; "
            f"capped at +{pct(max_up, 1)}% per deploy"
        )
    elif bound == "down":
        reason = (
            f"could drop {pct(price_now - wanted, price_now)}% at the target; "
            f"capped at -{pct(max_down, 1)}% per deploy"
        )
    elif bound in ("floor", "ceiling"):
        reason = f"held at the {bound} {format_usd(goal)}"
    else:
        direction = "raised" if wanted > price_now else "lowered"
        reason = f"{direction} to the {pct(target, 1)}% target margin"
    if price_new < mean:
        notes += "; still below mean cost: calls lose money"
    return result(
        proposed=proposed,
        proposed_price=price_new,
        proposed_margin_pct=pct(price_new - mean, price_new),
        change_pct=pct(price_new - price_now, price_now),
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
    for row in read_rows(paths, since=since, until=until, stats=stats):
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
