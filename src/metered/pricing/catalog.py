"""Upstream list prices: what the provider charges you for a call.

The default catalog is the bundled snapshot of the ``genai-prices`` package (offline; its
auto-updater is never started). Each model id is resolved once and cached, together with
its prices compiled into :class:`CostRates`, so the hot path is a dict lookup and a few
Decimal multiplications. The arithmetic follows genai-prices exactly (a property test
checks equality on random usages): a priced cache-read / cache-write / reasoning rate
takes its tokens out of the input / output total, an unpriced one leaves them at the
base rate, and tiered prices switch *all* tokens to the tier rate once the total input
tokens exceed the tier's start.

Operator overrides (negotiated rates, self-hosted models, per-second billing) sit on top
and win over the snapshot.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from importlib.metadata import version as _dist_version
from typing import TYPE_CHECKING, Any, Literal

from metered.usage import Usage

if TYPE_CHECKING:
    from metered.config import ModelOverride

__all__ = [
    "Catalog",
    "CatalogEntry",
    "CostRates",
    "TieredRates",
    "TimedRates",
]

_PER_MTOK = Decimal(1_000_000)
_CACHE_LIMIT = 4096
_PER_K = Decimal(1000)
_ZERO = Decimal(0)

# provider names users write (prefixes, route upstreams) -> genai-prices provider ids
_PROVIDER_IDS = {
    "openai": "openai",
    "azure": "azure",
    "azure_openai": "azure",
    "anthropic": "anthropic",
    "claude": "anthropic",
    "google": "google",
    "gemini": "google",
    "vertex": "google",
    "vertex_ai": "google",
    "bedrock": "aws",
    "aws": "aws",
    "mistral": "mistral",
    "groq": "groq",
    "deepseek": "deepseek",
    "xai": "x-ai",
    "x-ai": "x-ai",
    "together": "together",
    "fireworks": "fireworks",
    "cohere": "cohere",
    "openrouter": "openrouter",
}


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


class TimedRates:
    """Rates of a model whose price depends on the request time (a price drop from a date,
    off-peak hours). The rates in force are picked once per minute: the catalog's date and
    time-of-day constraints are no finer than that.
    """

    __slots__ = ("_compiled", "_current", "_model")

    def __init__(self, model: Any) -> None:
        self._model = model
        self._compiled: dict[int, CostRates | TieredRates] = {}
        # (minute, rates) in one attribute: read and replaced as a unit, so a reader never
        # pairs one minute's rates with another minute's stamp (a price change at a
        # minute boundary would otherwise bill the old rates under the new minute)
        self._current: tuple[int, CostRates | TieredRates] | None = None

    def at(self, when: datetime | None = None) -> CostRates | TieredRates:
        """The rates in force now (or at ``when``)."""
        if when is not None:
            return self._select(when)
        minute = int(time.time() // 60)
        current = self._current
        if current is not None and current[0] == minute:
            return current[1]
        # concurrent callers may both select: they compute the same rates for the minute
        rates = self._select(datetime.now(tz=UTC))
        self._current = (minute, rates)
        return rates

    def _select(self, when: datetime) -> CostRates | TieredRates:
        prices = self._model.get_prices(when)
        compiled = self._compiled.get(id(prices))
        if compiled is None:
            # the ModelPrice objects live as long as the snapshot, so id() is stable
            compiled = self._compiled[id(prices)] = _compile_model_price(prices)
        return compiled

    def cost(self, usage: Usage) -> Decimal:
        """Exact cost of ``usage`` at the rates in force now."""
        return self.at().cost(usage)


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """A resolved catalog model: who serves it, its limits and its compiled prices."""

    model_id: str
    provider: str
    source: Literal["genai-prices", "override"]
    context_window: int | None
    max_output_tokens: int | None
    rates: CostRates | TieredRates | TimedRates

    def cost(self, usage: Usage, *, when: datetime | None = None) -> Decimal:
        """Exact upstream cost of ``usage`` for this model (at the rates of ``when``)."""
        if when is None:
            return self.rates.cost(usage)
        return self.current_rates(when=when).cost(usage)

    def current_rates(self, *, when: datetime | None = None) -> CostRates | TieredRates:
        """The rates in force now (or at ``when``)."""
        rates = self.rates
        return rates.at(when) if isinstance(rates, TimedRates) else rates


def _per_unit(value: Any, per: Decimal) -> Any:
    return None if value is None else value / per


def _compile_model_price(prices: Any) -> CostRates | TieredRates:
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
        return CostRates(request=request, **chosen)

    if not starts:
        return at(None)
    return TieredRates(base=at(None), tiers=tuple((s, at(s + 1)) for s in starts))


def _override_rates(override: ModelOverride) -> CostRates:
    def usd(rate: Any) -> Decimal | None:
        return None if rate is None else rate.usd

    return CostRates(
        input=usd(override.input),
        output=usd(override.output),
        cache_read=usd(override.cache_read),
        cache_write=usd(override.cache_write),
        reasoning=usd(override.reasoning),
        request=usd(override.request),
        second=usd(override.second),
    )


def _prices_chat(prices: Any) -> bool:
    """Whether a genai-prices ``ModelPrice`` can price a chat call (tokens or requests)."""
    return any(
        getattr(prices, key, None) is not None
        for key in ("input_mtok", "output_mtok", "requests_kcount")
    )


def _snapshot_entry(prov: Any, info: Any) -> CatalogEntry | None:
    """The entry of a snapshot model, ``None`` if it has no chat price (audio-hour or
    per-character models must not price a chat call at $0)."""
    from genai_prices.types import ModelPrice

    timed = not isinstance(info.prices, ModelPrice)
    if not _prices_chat(info.prices[0].prices if timed else info.prices):
        return None
    return CatalogEntry(
        model_id=info.id,
        provider=prov.id,
        source="genai-prices",
        context_window=info.context_window,
        max_output_tokens=None,
        rates=TimedRates(info) if timed else _compile_model_price(info.prices),
    )


def provider_id(name: str | None) -> str | None:
    """Map a provider name users write (``bedrock``, ``gemini``) to a catalog provider id."""
    if name is None:
        return None
    return _PROVIDER_IDS.get(name.strip().lower(), name.strip().lower())


class Catalog:
    """Upstream list prices with operator overrides; lookups are cached per (provider, model).

    Args:
        overrides: model id -> :class:`~metered.config.ModelOverride` (wins over the snapshot).
        source: ``"genai-prices"`` (the bundled snapshot) or ``"none"`` (overrides only).
    """

    def __init__(
        self,
        *,
        overrides: Mapping[str, ModelOverride] | None = None,
        source: Literal["genai-prices", "none"] = "genai-prices",
    ) -> None:
        self._overrides = {k.strip().lower(): v for k, v in (overrides or {}).items()}
        self._source = source
        self._cache: dict[tuple[str | None, str], CatalogEntry | None] = {}
        self._lock = threading.Lock()
        self._snapshot: Any = None

    @functools.cached_property
    def version(self) -> str:
        """Identifies the price data: ``genai-prices 0.2.3`` (+ overrides)."""
        base = f"genai-prices {_dist_version('genai-prices')}" if self._source != "none" else "none"
        return f"{base}+overrides" if self._overrides else base

    def _snapshot_data(self) -> Any:
        if self._snapshot is None:
            # The snapshot module is large: load it on first lookup, not on import.
            from genai_prices.data_snapshot import get_snapshot

            self._snapshot = get_snapshot()
        return self._snapshot

    def lookup(self, model: str, *, provider: str | None = None) -> CatalogEntry | None:
        """The catalog entry for ``model`` (lower-case id), or ``None`` if it has no price.

        ``provider`` narrows the search (``openai``, ``azure``, ...); a model the provider
        does not list is then searched for across all providers.
        """
        key = (provider, model)
        try:
            return self._cache[key]
        except KeyError:
            pass
        entry = self._resolve(model, provider_id(provider))
        with self._lock:
            if len(self._cache) >= _CACHE_LIMIT:  # model ids are user input: bound the cache
                self._cache.clear()
            self._cache[key] = entry
        return entry

    def _override_entry(self, model: str, provider: str | None) -> CatalogEntry | None:
        override = self._overrides.get(model)
        if override is None:
            return None
        return CatalogEntry(
            model_id=model,
            provider=provider_id(override.provider) or provider or "custom",
            source="override",
            context_window=override.context_window,
            max_output_tokens=override.max_output_tokens,
            rates=_override_rates(override),
        )

    def _resolve(self, model: str, provider: str | None) -> CatalogEntry | None:
        entry = self._override_entry(model, provider)
        if entry is not None:
            return entry
        if self._source == "none":
            return None
        snapshot = self._snapshot_data()
        found = None
        for pid in (provider, None) if provider else (None,):
            try:
                found = snapshot.find_provider_model(model, None, pid, None)
                break
            except LookupError:
                continue
        if found is None:
            return None
        prov, info = found
        # an override of "gpt-4o" also covers the dated ids the snapshot maps to it
        overridden = self._override_entry(info.id, prov.id)
        if overridden is not None:
            return overridden
        return _snapshot_entry(prov, info)

    def entries(self, pattern: str | None = None) -> Iterator[CatalogEntry]:
        """Every model (overrides first), optionally filtered by a case-insensitive regex."""
        rx = re.compile(pattern, re.IGNORECASE) if pattern else None
        for name in self._overrides:
            if rx is None or rx.search(name):
                entry = self._override_entry(name, None)
                if entry is not None:
                    yield entry
        if self._source == "none":
            return
        for prov in self._snapshot_data().providers:
            for info in prov.models:
                if info.id in self._overrides:
                    continue
                if rx is None or rx.search(info.id) or rx.search(prov.id):
                    entry = _snapshot_entry(prov, info)
                    if entry is not None:
                        yield entry
