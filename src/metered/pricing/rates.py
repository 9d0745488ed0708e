"""Compiled price rates: what one model costs per unit of each kind of usage.

:class:`CostRates` is one set of rates; :class:`TieredRates` switches every token to a
tier's rates once the input exceeds the tier's start (long-context prices);
:class:`TimedRates` picks the rates in force at the request time (a price change on a
date) or the request's service tier or batch processing.
The arithmetic follows genai-prices exactly (a property test checks equality on random
usages): a priced cache-read / cache-write / reasoning rate takes its tokens out of the
input / output total, an unpriced one leaves them at the base rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from metered.usage import Usage

__all__ = [
    "CostRates",
    "Rates",
    "TieredRates",
    "TimedRates",
    "VariantRates",
    "compile_model_price",
    "price_context",
]

_PER_MTOK = Decimal(1_000_000)
_PER_K = Decimal(1000)
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class CostRates:
    """USD per unit for each kind of usage; ``None`` means "not priced separately".

    An unpriced ``cache_read``/``cache_write`` bills those tokens at the ``input`` rate, an
    unpriced ``cache_write_1h`` at the ``cache_write`` rate, an unpriced ``reasoning`` at
    the ``output`` rate (genai-prices semantics).
    """

    input: Decimal | None = None
    output: Decimal | None = None
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    reasoning: Decimal | None = None
    request: Decimal | None = None
    second: Decimal | None = None
    web_search: Decimal | None = None

    def cost(self, usage: Usage) -> Decimal:
        """Exact cost of ``usage`` at these rates."""
        total = _ZERO
        leaf_in = usage.input_tokens
        if self.cache_read is not None:
            total += self.cache_read * usage.cache_read_tokens
            leaf_in -= usage.cache_read_tokens
        written_1h = 0
        if self.cache_write_1h is not None:
            written_1h = usage.cache_write_1h_tokens
            total += self.cache_write_1h * written_1h
            leaf_in -= written_1h
        if self.cache_write is not None:
            total += self.cache_write * (usage.cache_write_tokens - written_1h)
            leaf_in -= usage.cache_write_tokens - written_1h
        if self.input is not None:
            total += self.input * leaf_in
        leaf_out = usage.output_tokens
        if self.reasoning is not None:
            total += self.reasoning * usage.reasoning_tokens
            leaf_out -= usage.reasoning_tokens
        if self.output is not None:
            total += self.output * leaf_out
        if self.request is not None:
            total += self.request * usage.requests
        if self.second is not None:
            total += self.second * usage.seconds
        if self.web_search is not None and usage.web_search_requests:
            total += self.web_search * usage.web_search_requests
        return total

    def per_mtok(self) -> dict[str, Decimal]:
        """Token rates per 1M tokens and other rates as written, for display."""
        out: dict[str, Decimal] = {}
        for name in ("input", "output", "cache_read", "cache_write", "cache_write_1h", "reasoning"):
            value = getattr(self, name)
            if value is not None:
                out[name] = (value * _PER_MTOK).normalize()
        if self.request is not None:
            out["request"] = self.request.normalize()
        if self.second is not None:
            out["second"] = self.second.normalize()
        if self.web_search is not None:
            out["web_search"] = self.web_search.normalize()
        return out


@dataclass(frozen=True, slots=True)
class TieredRates:
    """Rates that switch once total input tokens exceed a threshold (long-context tiers)."""

    base: CostRates
    tiers: tuple[tuple[int, CostRates], ...]  # ascending; applies when input_tokens > start

    def rates_for(self, input_tokens: int) -> CostRates:
        """The rates that apply to a call with this many input tokens."""
        rates = self.base
        for start, tier in self.tiers:
            if input_tokens > start:
                rates = tier
            else:
                break
        return rates

    def cost(self, usage: Usage) -> Decimal:
        """Exact cost of ``usage``, tier chosen by its total input tokens."""
        return self.rates_for(usage.input_tokens).cost(usage)


def price_context(usage: Usage | None) -> tuple[tuple[str, str], ...]:
    """The genai-prices request context of a call: its service tier and batch processing
    (the standard tier has none)."""
    if usage is None:
        return ()
    context: list[tuple[str, str]] = []
    tier = usage.service_tier
    if usage.batch or tier == "batch":
        context.append(("processing", "batch"))
    elif tier is not None and tier not in ("default", "standard", "auto", "on_demand"):
        context.append(("service_tier", tier))
    return tuple(context)


class TimedRates:
    """Rates of a model whose price depends on the request: its time (a price change on a
    date) or its service tier / batch processing (genai-prices' price variants). The rates
    in force are compiled once per (minute, context): the catalog's date constraints are
    no finer than a minute.
    """

    __slots__ = ("_compiled", "_current", "_model")

    def __init__(self, model: Any) -> None:
        self._model = model
        self._compiled: dict[tuple[int, tuple[tuple[str, str], ...]], CostRates | TieredRates] = {}
        # (minute, rates) of the standard tier in one attribute: read and replaced as a
        # unit, so a reader never pairs one minute's rates with another minute's stamp
        self._current: tuple[int, CostRates | TieredRates] | None = None

    def at(
        self, when: datetime | None = None, context: tuple[tuple[str, str], ...] = ()
    ) -> CostRates | TieredRates:
        """The rates in force now (or at ``when``) for a request ``context``."""
        if when is not None or context:
            return self._select(when or datetime.now(tz=UTC), context)
        minute = int(time.time() // 60)
        current = self._current
        if current is not None and current[0] == minute:
            return current[1]
        # concurrent callers may both select: they compute the same rates for the minute
        rates = self._select(datetime.now(tz=UTC), ())
        self._current = (minute, rates)
        return rates

    def _select(
        self, when: datetime, context: tuple[tuple[str, str], ...]
    ) -> CostRates | TieredRates:
        prices = self._model.get_prices(when, dict(context) or None)
        key = (id(prices), context)
        compiled = self._compiled.get(key)
        if compiled is None:
            # the ModelPrice objects of the standard tier live as long as the snapshot; a
            # variant's is a fresh copy each time, so its key is its context and prices
            if context:
                key = (hash(tuple(sorted(map(str, prices.__dict__.items())))), context)
                compiled = self._compiled.get(key)
            if compiled is None:
                compiled = self._compiled[key] = compile_model_price(prices)
        return compiled

    def cost(self, usage: Usage) -> Decimal:
        """Exact cost of ``usage`` at the rates in force now for its tier."""
        if usage.service_tier is None and not usage.batch:
            return self.at().cost(usage)
        return self.at(None, price_context(usage)).cost(usage)


class VariantRates:
    """Rates of a model with a constant standard price and price variants (service tiers,
    batch): a standard call costs what :attr:`standard` says, with no other work; a
    variant's rates are compiled on first use (once per minute: a variant may start on a
    date)."""

    __slots__ = ("_timed", "standard")

    def __init__(self, standard: CostRates | TieredRates, model: Any) -> None:
        self.standard = standard
        self._timed = TimedRates(model)

    def cost(self, usage: Usage) -> Decimal:
        """Exact cost of ``usage`` at its tier's rates."""
        if usage.service_tier is None and not usage.batch:
            return self.standard.cost(usage)
        return self._timed.at(None, price_context(usage)).cost(usage)


def _per_unit(value: Any, per: Decimal) -> Any:
    return None if value is None else value / per


def compile_model_price(prices: Any) -> CostRates | TieredRates:
    """Turn a genai-prices ``ModelPrice`` into per-unit rates (exact division by 10**6)."""
    from genai_prices.types import TieredPrices

    fields = {
        "input": getattr(prices, "input_mtok", None),
        "output": getattr(prices, "output_mtok", None),
        "cache_read": getattr(prices, "cache_read_mtok", None),
        "cache_write": getattr(prices, "cache_write_mtok", None),
        "cache_write_1h": getattr(prices, "cache_write_1h_mtok", None),
        "reasoning": getattr(prices, "output_reasoning_mtok", None),
    }
    requests = getattr(prices, "requests_kcount", None)
    request = None if requests is None else requests / _PER_K
    searches = getattr(prices, "web_searches_kcount", None)
    web_search = None if searches is None else searches / _PER_K
    starts = sorted(
        {t.start for v in fields.values() if isinstance(v, TieredPrices) for t in v.tiers}
    )

    def at(input_tokens: int | None) -> CostRates:
        chosen: dict[str, Decimal | None] = {}
        for name, value in fields.items():
            if isinstance(value, TieredPrices):
                price = value.base
                if input_tokens is not None:
                    for tier in value.tiers:
                        if input_tokens > tier.start:
                            price = tier.price
                chosen[name] = price / _PER_MTOK
            else:
                chosen[name] = _per_unit(value, _PER_MTOK)
        return CostRates(request=request, web_search=web_search, **chosen)

    if not starts:
        return at(None)
    return TieredRates(base=at(None), tiers=tuple((s, at(s + 1)) for s in starts))


#: Any compiled rates a catalog entry may hold.
Rates = CostRates | TieredRates | TimedRates | VariantRates
