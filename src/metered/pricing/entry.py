"""What every price layer shares: :class:`CatalogEntry` (one model's compiled prices and
where they come from), the :class:`Layer` protocol, provider ids and the region rule.
See :mod:`metered.pricing.catalog` for how layers are ordered and asked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from metered.pricing.rates import CostRates, Rates, TieredRates, TimedRates, VariantRates
from metered.usage import Usage

__all__ = ["CatalogEntry", "Layer", "provider_id", "region_is_default"]

# provider names users write (prefixes, route upstreams) -> catalog provider ids
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
    "together_ai": "together",
    "fireworks": "fireworks",
    "fireworks_ai": "fireworks",
    "cohere": "cohere",
    "openrouter": "openrouter",
}


# the regions and zones whose price is the snapshot's: US commercial, global endpoints
_DEFAULT_REGION = re.compile(r"^(?:us-(?:east|west)-\d|us-central\d|global)$")


def region_is_default(region: str | None) -> bool:
    """Whether a call pinned to ``region`` is billed at a catalog's region-less price."""
    return region is None or bool(_DEFAULT_REGION.match(region))


def provider_id(name: str | None) -> str | None:
    """Map a provider name users write (``bedrock``, ``gemini``) to a catalog provider id."""
    if name is None:
        return None
    return _PROVIDER_IDS.get(name.strip().lower(), name.strip().lower())


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """A resolved catalog model: who serves it, its limits and its compiled prices.

    Attributes:
        source: the layer that priced it (``override``, ``corrections``,
            ``genai-prices``, ``litellm``): the call's ``cost_source``.
        region: the region or data zone the price is for, when it is specific to one.
        deprecated: the catalog marks the model deprecated.
        reference: where the price comes from (a provider page), when the layer says.
    """

    model_id: str
    provider: str
    source: str
    context_window: int | None
    max_output_tokens: int | None
    rates: Rates
    region: str | None = None
    deprecated: bool = False
    reference: str | None = None

    def cost(self, usage: Usage, *, when: datetime | None = None) -> Decimal:
        """Exact upstream cost of ``usage`` for this model (at the rates of ``when``)."""
        if when is None:
            return self.rates.cost(usage)
        return self.current_rates(when=when).cost(usage)

    def current_rates(self, *, when: datetime | None = None) -> CostRates | TieredRates:
        """The rates in force now (or at ``when``), for a standard-tier call."""
        rates = self.rates
        if isinstance(rates, VariantRates):
            return rates.standard
        return rates.at(when) if isinstance(rates, TimedRates) else rates


class Layer(Protocol):
    """One source of list prices (see the module doc for the order and the rules)."""

    #: the entries' ``source``
    name: str

    @property
    def version(self) -> str:
        """Identifies the data (``genai-prices 0.2.3``, ``corrections 2026-12-04``)."""
        ...

    def find(self, model: str, provider: str | None, region: str | None) -> CatalogEntry | None:
        """``model``'s entry for ``provider`` (a catalog provider id; ``None``: any) in
        ``region`` (``None``: the provider's default), or ``None``."""
        ...

    def entries(self) -> Iterator[CatalogEntry]:
        """Every entry that prices a chat call."""
        ...
