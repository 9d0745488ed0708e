"""Where price layers disagree: the same (provider, region, model) priced by each layer.

:func:`disagreements` compares one model across layers; :func:`diff_layers` every model
a pattern matches (``metered catalog diff``, ``metered check``). Each price compared is
what the layer *bills*, per 1M tokens: input, output, cache read and cache write (an
unpriced cache rate bills those tokens at the input rate, so that is its value), at the
base rates and at each long-context tier any layer has (a layer without that tier bills
the base rate there). A layer that does not price the model takes no part.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal

from metered.pricing.entry import CatalogEntry, Layer
from metered.pricing.rates import CostRates, TieredRates

__all__ = ["PriceDiff", "diff_layers", "disagreements", "per_mtok", "tier_label"]

_PER_MTOK = Decimal(1_000_000)
_KINDS = ("input", "output", "cache_read", "cache_write")


@dataclass(frozen=True, slots=True)
class PriceDiff:
    """One price the layers disagree on.

    Attributes:
        provider: the catalog provider id.
        model: the model id.
        region: the region or data zone, when the price is specific to one.
        price: ``input``, ``output``, ``cache_read`` or ``cache_write``.
        above: the long-context tier (the rate once the prompt is over this many
            tokens), ``None`` for the base rate.
        values: layer name -> USD per 1M tokens (``None``: the layer does not price the
            model), in the layers' order.
        as_input: layers that do not price this kind of token separately: they bill it
            at their input rate, which is their value.
    """

    provider: str
    model: str
    region: str | None
    price: str
    above: int | None
    values: dict[str, Decimal | None]
    as_input: frozenset[str] = frozenset()

    @property
    def label(self) -> str:
        """``input``, ``cache_read``, ``input >200k``."""
        return self.price if self.above is None else f"{self.price} >{tier_label(self.above)}"


def tier_label(tokens: int) -> str:
    """``200k`` for 200000, ``1m`` for 1000000, else the number."""
    if tokens % 1_000_000 == 0:
        return f"{tokens // 1_000_000}m"
    if tokens % 1000 == 0:
        return f"{tokens // 1000}k"
    return str(tokens)


def _starts(rates: CostRates | TieredRates) -> list[int]:
    return [start for start, _ in rates.tiers] if isinstance(rates, TieredRates) else []


def _at(rates: CostRates | TieredRates, above: int | None) -> CostRates:
    if isinstance(rates, CostRates):
        return rates
    return rates.base if above is None else rates.rates_for(above + 1)


def _billed(rates: CostRates, kind: str) -> tuple[Decimal | None, bool]:
    """(USD per 1M tokens billed for ``kind``, whether that is the input rate)."""
    value = getattr(rates, kind)
    inherited = value is None and kind.startswith("cache")
    if inherited:
        value = rates.input
    return (None if value is None else per_mtok(value)), inherited


def per_mtok(rate: Decimal) -> Decimal:
    """A per-token rate as USD per 1M tokens, exact and without exponent or trailing
    zeros (``0.0000025`` -> ``2.5``, ``0.00001`` -> ``10``)."""
    value = (rate * _PER_MTOK).normalize()
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value


def _find(
    layer: Layer, names: Sequence[str], provider: str, region: str | None
) -> CatalogEntry | None:
    for name in names:
        entry = layer.find(name, provider, region)
        if entry is not None:
            return entry
    return None


def disagreements(
    layers: Sequence[Layer], model: str | Sequence[str], provider: str, region: str | None = None
) -> list[PriceDiff]:
    """Every price of ``model`` (served by ``provider`` in ``region``) on which the
    layers that price it disagree; empty when fewer than two price it.

    ``model`` may be a chain of names, most specific first (a resolved id's
    ``cost_chain``): each layer answers with the first name it prices.
    """
    names = (model,) if isinstance(model, str) else tuple(model)
    found: dict[str, CatalogEntry | None] = {}
    for layer in layers:
        found.setdefault(layer.name, _find(layer, names, provider, region))
    model = names[0]
    rates = {name: e.current_rates() for name, e in found.items() if e is not None}
    if len(rates) < 2:
        return []
    tiers = sorted({start for r in rates.values() for start in _starts(r)})
    diffs: list[PriceDiff] = []
    for above in [None, *tiers]:
        for kind in _KINDS:
            values: dict[str, Decimal | None] = dict.fromkeys(found)
            as_input: set[str] = set()
            for name, r in rates.items():
                values[name], inherited = _billed(_at(r, above), kind)
                if inherited:
                    as_input.add(name)
            priced = {v for v in values.values() if v is not None}
            if len(priced) > 1:
                diffs.append(
                    PriceDiff(provider, model, region, kind, above, values, frozenset(as_input))
                )
    return diffs


def diff_layers(layers: Sequence[Layer], pattern: str | None = None) -> Iterator[PriceDiff]:
    """The disagreements of every (provider, region, model) a layer lists whose model or
    provider id matches ``pattern`` (a case-insensitive regex; ``None``: all), sorted."""
    rx = re.compile(pattern, re.IGNORECASE) if pattern else None
    keys: set[tuple[str, str, str]] = set()
    for layer in layers:
        for entry in layer.entries():
            if rx is None or rx.search(entry.model_id) or rx.search(entry.provider):
                keys.add((entry.provider, entry.model_id, entry.region or ""))
    for provider, model, region in sorted(keys):
        yield from disagreements(layers, model, provider, region or None)
