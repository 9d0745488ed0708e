"""The ``genai-prices`` layer: the bundled snapshot, or a newer data file.

``GenaiPricesLayer()`` reads the snapshot bundled with the installed ``genai-prices``
package; ``GenaiPricesLayer(path)`` reads a ``data.json`` of the same project (what
``metered catalog update`` fetches), so prices can be refreshed without upgrading a
package. The package's auto-updater is never started.

Provider-true lookups (see :mod:`metered.pricing.catalog`): a named provider is searched
alone (with the providers genai-prices declares it resells, e.g. Azure -> OpenAI,
Google -> Anthropic on Vertex); an id that names none is searched by genai-prices' own
provider matching. Regions: the snapshot has one price per model and provider, which is
the price of the provider's US commercial regions and global endpoints; a call pinned to
any other region or data zone (``bedrock/us-gov-west-1/...``, ``bedrock/eu-west-3/...``,
``azure/eu/...``) gets no price from this layer, since several of them are billed
differently (GovCloud, Azure data zones +10%) and the snapshot cannot say which.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from functools import cached_property
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

from metered.pricing.entry import CatalogEntry, region_is_default
from metered.pricing.rates import Rates, TimedRates, VariantRates, compile_model_price

__all__ = ["GenaiPricesLayer", "entry_of", "prices_chat"]


def prices_chat(prices: Any) -> bool:
    """Whether a genai-prices ``ModelPrice`` prices every part of a chat call: input *and*
    output tokens, or the request (an input price alone would bill output at $0)."""
    if getattr(prices, "requests_kcount", None) is not None:
        return True
    return (
        getattr(prices, "input_mtok", None) is not None
        and getattr(prices, "output_mtok", None) is not None
    )


class GenaiPricesLayer:
    """List prices from genai-prices (bundled snapshot, or the data file at ``path``)."""

    name = "genai-prices"

    def __init__(self, path: str | Path | None = None) -> None:
        self._path = None if path is None else Path(path)
        self._snapshot: Any = None
        self._lock = threading.Lock()

    @cached_property
    def version(self) -> str:
        if self._path is not None:
            return f"genai-prices data {self._path.name}"
        return f"genai-prices {dist_version('genai-prices')}"

    def _data(self) -> Any:
        if self._snapshot is None:
            with self._lock:
                if self._snapshot is None:
                    self._snapshot = self._load()
        return self._snapshot

    def _load(self) -> Any:
        # the snapshot module is large: loaded on the first lookup, not on import
        if self._path is None:
            from genai_prices.data_snapshot import get_snapshot

            return get_snapshot()
        from genai_prices.data_snapshot import DataSnapshot
        from genai_prices.types import _providers_from_raw

        raw = json.loads(self._path.read_text(encoding="utf-8"))
        if not isinstance(raw, list):
            raise ValueError(f"{self._path}: a genai-prices data file is a list of providers")
        return DataSnapshot(_providers_from_raw(raw), from_auto_update=False)

    def find(self, model: str, provider: str | None, region: str | None) -> CatalogEntry | None:
        if not region_is_default(region):
            return None
        try:
            prov, info = self._data().find_provider_model(model, None, provider, None)
        except LookupError:
            return None
        if provider is not None and prov.id != provider:
            return None  # genai-prices guessed another provider: not this one's price
        return entry_of(prov, info)

    def entries(self) -> Iterator[CatalogEntry]:
        for prov in self._data().providers:
            for info in prov.models:
                entry = entry_of(prov, info)
                if entry is not None:
                    yield entry


def entry_of(prov: Any, info: Any) -> CatalogEntry | None:
    """The entry of a snapshot model; ``None`` if it does not price a whole chat call
    (audio-hour or per-character models, input-only prices)."""
    from genai_prices.types import ModelPrice

    constant = isinstance(info.prices, ModelPrice)
    if not prices_chat(info.prices if constant else info.prices[0].prices):
        return None
    rates: Rates
    if not constant:
        rates = TimedRates(info)
    elif info.price_variants:
        rates = VariantRates(compile_model_price(info.prices), info)
    else:
        rates = compile_model_price(info.prices)
    return CatalogEntry(
        model_id=info.id,
        provider=prov.id,
        source=GenaiPricesLayer.name,
        context_window=info.context_window,
        max_output_tokens=None,
        rates=rates,
        deprecated=bool(getattr(info, "deprecated", False)),
        reference=(prov.pricing_urls or [None])[0],
    )
