"""Upstream list prices: what the provider charges you for a call, from ordered layers.

A :class:`Catalog` asks its layers in order and the first that prices a model wins; the
entry names its layer (``CatalogEntry.source``, the call's ``cost_source``):

1. ``override`` — the operator's ``catalog.overrides`` (negotiated rates, self-hosted
   models, per-second billing);
2. ``corrections`` — a small file metered maintains (:mod:`metered.pricing.corrections`),
   each entry with the provider page it comes from and the date it was checked;
3. ``genai-prices`` — the bundled snapshot of the ``genai-prices`` package, or a newer
   data file the operator points at (``catalog.genai_prices_data``); its auto-updater is
   never started;
4. optionally ``litellm`` — LiteLLM's cost map read as a JSON data file
   (:mod:`metered.pricing.litellm`).

**Provider-true.** A lookup names the provider the id named (``groq/``, a Bedrock id, an
Azure deployment) and the region or data zone it named, if any. A layer answers only with
that provider's own price (or the price of a provider the catalog says it resells at:
genai-prices' declared fallbacks, e.g. Azure's OpenAI models), never another provider's;
a region the layer has no price for is unpriced, never the default region's rate. Only
an id that names no provider is searched across providers.

**Complete prices.** An entry prices a chat call only if it prices input *and* output
tokens (or the request): an entry with an input price alone would bill output at $0, so
it is left out (the model is then unpriced).

Each (provider, region, model) is looked up once and cached, with its prices compiled
(:mod:`metered.pricing.rates`), so the hot path is a dict lookup and a few Decimal
multiplications.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from metered.errors import ConfigError
from metered.pricing.corrections import CorrectionsLayer
from metered.pricing.entry import CatalogEntry, Layer, provider_id, region_is_default
from metered.pricing.genai_prices import GenaiPricesLayer
from metered.pricing.litellm import LiteLLMLayer
from metered.pricing.rates import CostRates, TieredRates, TimedRates

if TYPE_CHECKING:
    from metered.config import CatalogConfig, ModelOverride

__all__ = [
    "Catalog",
    "CatalogEntry",
    "CostRates",
    "Layer",
    "OverridesLayer",
    "TieredRates",
    "TimedRates",
    "config_layers",
    "provider_id",
    "region_is_default",
]

_CACHE_LIMIT = 4096


def _override_rates(override: ModelOverride) -> CostRates:
    def usd(rate: object) -> Decimal | None:
        return None if rate is None else rate.usd  # type: ignore[attr-defined]

    return CostRates(
        input=usd(override.input),
        output=usd(override.output),
        cache_read=usd(override.cache_read),
        cache_write=usd(override.cache_write),
        reasoning=usd(override.reasoning),
        request=usd(override.request),
        second=usd(override.second),
    )


class OverridesLayer:
    """The operator's ``catalog.overrides``: a name -> rates table.

    An override that names its ``provider`` prices that provider's calls only (and calls
    that name none); one without a provider prices the name whoever serves it. Keys may
    carry a provider prefix and a region (``bedrock/us-gov-west-1/anthropic.claude-...``):
    the full id is looked up first.
    """

    name = "override"

    def __init__(self, overrides: Mapping[str, ModelOverride]) -> None:
        self._overrides = {k.strip().lower(): v for k, v in overrides.items()}

    @cached_property
    def version(self) -> str:
        return "overrides"

    def __bool__(self) -> bool:
        return bool(self._overrides)

    def __contains__(self, model: str) -> bool:
        return model in self._overrides

    def _entry(self, model: str, provider: str | None) -> CatalogEntry:
        override = self._overrides[model]
        return CatalogEntry(
            model_id=model,
            provider=provider_id(override.provider) or provider or "custom",
            source=self.name,
            context_window=override.context_window,
            max_output_tokens=override.max_output_tokens,
            rates=_override_rates(override),
        )

    def find(self, model: str, provider: str | None, region: str | None) -> CatalogEntry | None:
        override = self._overrides.get(model)
        if override is None:
            return None
        own = provider_id(override.provider)
        if own is not None and provider is not None and own != provider:
            return None
        return self._entry(model, provider)

    def entries(self) -> Iterator[CatalogEntry]:
        for name in self._overrides:
            yield self._entry(name, None)


class Catalog:
    """Upstream list prices from ordered layers; lookups are cached per
    (provider, region, model).

    Args:
        overrides: model id -> :class:`~metered.config.ModelOverride` (the first layer).
        source: ``"genai-prices"`` (the bundled snapshot, with metered's corrections) or
            ``"none"`` (overrides only).
        layers: the layers after the overrides, in order; default from ``source``.
    """

    def __init__(
        self,
        *,
        overrides: Mapping[str, ModelOverride] | None = None,
        source: str = "genai-prices",
        layers: Sequence[Layer] | None = None,
    ) -> None:
        self.overrides = OverridesLayer(overrides or {})
        if layers is None:
            layers = default_layers() if source != "none" else ()
        self.layers: tuple[Layer, ...] = (self.overrides, *layers)
        self._cache: dict[tuple[str | None, str | None, tuple[str, ...]], CatalogEntry | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: CatalogConfig) -> Catalog:
        """The catalog a config's ``catalog`` section describes: its overrides, then
        (unless ``source: none``) metered's corrections and genai-prices (the bundled
        snapshot, or ``genai_prices_data``), then LiteLLM's cost map when ``litellm`` is
        set.

        Raises:
            ConfigError: a data file that does not exist, or ``litellm: installed``
                without an installed litellm package.
        """
        return cls(overrides=config.overrides, layers=config_layers(config))

    @cached_property
    def version(self) -> str:
        """Identifies the price data: ``genai-prices 0.2.3`` (+ corrections, overrides)."""
        # the base data first: "genai-prices 0.2.3+corrections 2026-12-04+overrides"
        parts = [layer.version for layer in reversed(self.layers[1:])] or ["none"]
        if self.overrides:
            parts.append("overrides")
        return "+".join(parts)

    def lookup(
        self, model: str, *, provider: str | None = None, region: str | None = None
    ) -> CatalogEntry | None:
        """The entry for ``model`` (lower-case id) from the first layer that prices it for
        ``provider`` in ``region``, or ``None`` (see the module doc: provider-true)."""
        return self.find((model,), provider=provider, region=region)

    def find(
        self, names: tuple[str, ...], *, provider: str | None = None, region: str | None = None
    ) -> CatalogEntry | None:
        """The entry of the first layer that prices any of ``names`` (most specific first)
        for ``provider`` in ``region``: layers are asked in order, and each with every
        name, so a curated layer wins over a later one whatever name it knows the model by."""
        key = (provider, region, names)
        try:
            return self._cache[key]
        except KeyError:
            pass
        pid = provider_id(provider)
        entry = None
        for layer in self.layers:
            for name in names:
                entry = layer.find(name, pid, region)
                if entry is not None:
                    break
            if entry is not None:
                break
        if entry is not None and entry.source != "override" and entry.model_id in self.overrides:
            # an override of "gpt-4o" also covers the dated ids a layer maps to it
            entry = self.overrides.find(entry.model_id, pid, region) or entry
        with self._lock:
            if len(self._cache) >= _CACHE_LIMIT:  # model ids are user input: bound the cache
                self._cache.clear()
            self._cache[key] = entry
        return entry

    def entries(self, pattern: str | None = None) -> Iterator[CatalogEntry]:
        """Every model the first layer to list it prices (overrides first), optionally
        filtered by a case-insensitive regex on the model or provider id."""
        rx = re.compile(pattern, re.IGNORECASE) if pattern else None
        seen: set[tuple[str, str, str | None]] = set()
        for layer in self.layers:
            for entry in layer.entries():
                key = (entry.provider, entry.model_id, entry.region)
                if key in seen or (entry.source != "override" and entry.model_id in self.overrides):
                    continue
                seen.add(key)
                if rx is None or rx.search(entry.model_id) or rx.search(entry.provider):
                    yield entry


def default_layers() -> tuple[Layer, ...]:
    """metered's corrections, then the bundled genai-prices snapshot."""
    return (CorrectionsLayer(), GenaiPricesLayer())


def _data_file(key: str, value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"catalog.{key}", "is not a readable file", value)
    return path


def _loaded(key: str, value: str, layer: Layer) -> Layer:
    """``layer``, its data file read now: a file that does not load is a config error at
    start-up, not a failure of the first call it would price."""
    try:
        next(iter(layer.entries()), None)
    except (OSError, ValueError, TypeError, LookupError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        problem = f"does not load as a price file ({reason})"
        raise ConfigError(f"catalog.{key}", problem, value) from None
    return layer


def config_layers(config: CatalogConfig) -> tuple[Layer, ...]:
    """The layers after the overrides that a config's ``catalog`` section asks for; the
    data files it names are read (and checked) here.

    Raises:
        ConfigError: a data file that does not exist or does not load, or
            ``litellm: installed`` without an installed litellm package.
    """
    layers: list[Layer] = []
    if config.source != "none":
        data = config.genai_prices_data
        genai: Layer = GenaiPricesLayer()
        if data is not None:
            key = "genai_prices_data"
            genai = _loaded(key, data, GenaiPricesLayer(_data_file(key, data)))
        layers += [CorrectionsLayer(), genai]
    if config.litellm == "installed":
        installed = LiteLLMLayer.installed()
        if installed is None:
            problem = "needs an installed litellm package with its cost map"
            raise ConfigError("catalog.litellm", problem, config.litellm)
        layers.append(_loaded("litellm", config.litellm, installed))
    elif config.litellm is not None:
        path = _data_file("litellm", config.litellm)
        layers.append(_loaded("litellm", config.litellm, LiteLLMLayer(path)))
    return tuple(layers)
