"""The ``corrections`` layer: list prices metered corrects in the snapshot it bundles.

``metered/_data/corrections.json`` holds a few entries, each with the provider page it
comes from (``source``) and why the snapshot is wrong (``note``); the file's ``checked``
date says when they were last compared. An entry prices one provider's model and names
the ids it covers exactly (``match``), by prefix (``prefix``, for fine-tune ids) or by
substring (``contains``, for Bedrock ids with their cross-region prefixes); a reseller's
entry (``named_only``: Bedrock, Vertex) prices only calls that name that provider. Prices are
USD per 1M tokens; ``tiers`` switch every token to the tier's rates once the prompt is
over ``above`` tokens. ``metered catalog diff`` shows every entry next to the snapshot's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from importlib.resources import files
from pathlib import Path
from typing import Any

from metered.pricing.entry import CatalogEntry, region_is_default
from metered.pricing.rates import CostRates, Rates, TieredRates

__all__ = ["CorrectionsLayer"]

_PER_MTOK = Decimal(1_000_000)
_FIELDS = ("input", "output", "cache_read", "cache_write", "cache_write_1h")


def _rates(spec: Mapping[str, Any]) -> CostRates:
    values = {k: Decimal(str(spec[k])) / _PER_MTOK for k in _FIELDS if k in spec}
    return CostRates(**values)


@dataclass(frozen=True, slots=True)
class _Correction:
    entry: CatalogEntry
    exact: frozenset[str]
    prefixes: tuple[str, ...]
    contains: tuple[str, ...]
    named_only: bool  # a reseller's price: only for calls that name the reseller

    def covers(self, model: str) -> bool:
        return (
            model in self.exact
            or model.startswith(self.prefixes)
            or any(part in model for part in self.contains)
        )


def _correction(spec: Mapping[str, Any]) -> _Correction:
    base = _rates(spec)
    rates: Rates = base
    tiers = spec.get("tiers")
    if tiers:
        rates = TieredRates(base, tuple((int(t["above"]), _rates(t)) for t in tiers))
    entry = CatalogEntry(
        model_id=str(spec["model"]),
        provider=str(spec["provider"]),
        source=CorrectionsLayer.name,
        context_window=spec.get("context_window"),
        max_output_tokens=spec.get("max_output_tokens"),
        rates=rates,
        reference=str(spec["source"]),
    )
    return _Correction(
        entry,
        frozenset(spec.get("match", ())),
        tuple(spec.get("prefix", ())),
        tuple(spec.get("contains", ())),
        bool(spec.get("named_only", False)),
    )


class CorrectionsLayer:
    """metered's corrections (the bundled file, or another at ``path``)."""

    name = "corrections"

    def __init__(self, path: str | Path | None = None) -> None:
        text = (
            Path(path).read_text(encoding="utf-8")
            if path is not None
            else files("metered").joinpath("_data/corrections.json").read_text(encoding="utf-8")
        )
        data = json.loads(text)
        self.checked: str = data["checked"]
        self._items = tuple(_correction(spec) for spec in data["entries"])

    @property
    def version(self) -> str:
        return f"corrections {self.checked}"

    def find(self, model: str, provider: str | None, region: str | None) -> CatalogEntry | None:
        if not region_is_default(region):
            return None
        for item in self._items:
            named = item.entry.provider == provider
            if (named or (provider is None and not item.named_only)) and item.covers(model):
                return item.entry
        return None

    def entries(self) -> Iterator[CatalogEntry]:
        for item in self._items:
            yield item.entry
