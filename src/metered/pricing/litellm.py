"""The ``litellm`` layer: LiteLLM's cost map, read as a JSON data file.

``LiteLLMLayer(path)`` reads a ``model_prices_and_context_window.json`` (what
``metered catalog update`` fetches); :meth:`LiteLLMLayer.installed` finds the copy inside
an installed ``litellm`` package from its distribution metadata, without importing it.
litellm is never a dependency of metered.

Each entry is read exactly: per-token floats become ``Decimal(str(value))``, never float
arithmetic. Only entries of mode ``chat``, ``completion`` or ``responses`` that price input
*and* output tokens are kept. A key's provider prefix (``bedrock/``, ``azure_ai/``,
``vertex_ai/``) is dropped from the model id and ``litellm_provider`` mapped to a catalog
provider id (``bedrock_converse`` -> ``aws``, ``vertex_ai-anthropic_models`` ->
``google``); a region or data zone segment (``bedrock/eu-west-3/...``, ``azure/eu/...``)
makes the entry that region's price. ``..._above_200k_tokens`` rates (any ``NNNk``) are a
long-context tier: every token at the tier's rates once the prompt is over the threshold.

Provider-true lookups, like the other layers: a named provider gets only its own entries;
a region gets the entry for that region, or (for a region billed at the default price,
:func:`~metered.pricing.entry.region_is_default`) the region-less one; an id that names
no provider gets the entry LiteLLM keys without a prefix (its own provider's).
Service-tier (``_priority``, ``_flex``) and batch (``_batches``) rates price the calls
of that tier or batch (a rate the variant lacks is the standard one); other variants
(``_ultrafast``...) are not read.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

from metered.pricing.entry import CatalogEntry, provider_id, region_is_default
from metered.pricing.rates import CostRates, Rates, TieredRates, TimedRates

__all__ = ["LITELLM_DATA_FILE", "LiteLLMLayer", "litellm_provider"]

#: The cost map's file name inside the ``litellm`` package.
LITELLM_DATA_FILE = "model_prices_and_context_window_backup.json"

_MODES = frozenset({"chat", "completion", "responses"})
# litellm_provider -> catalog provider id (anything else: provider_id() of the name)
_PROVIDERS = {
    "text-completion-openai": "openai",
    "azure_text": "azure",
    "azure_ai": "azure",
    "bedrock_converse": "aws",
    "bedrock_mantle": "aws",
    "cohere_chat": "cohere",
    "codestral": "mistral",
    "text-completion-codestral": "mistral",
    "meta_llama": "meta",
    "moonshot": "moonshotai",
}
# the region or data-zone segment a key may carry after its provider prefix
_REGION = {
    "aws": re.compile(r"^[a-z]{2}(?:-gov)?-[a-z]+-\d$"),
    "azure": re.compile(r"^(?:eu|us|global)$"),
    "google": re.compile(r"^(?:[a-z]+-[a-z]+\d+|global)$"),
}
# litellm field -> CostRates field
_FIELDS = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cache_read",
    "cache_creation_input_token_cost": "cache_write",
    "cache_creation_input_token_cost_above_1hr": "cache_write_1h",
    "output_cost_per_reasoning_token": "reasoning",
}
_TIER = re.compile(
    r"^(?P<field>" + "|".join(_FIELDS) + r")_above_(?P<k>\d+)k_tokens"
    r"(?:_(?P<variant>batches|priority|flex))?$"
)
# a rate's suffix -> the request context it applies to (rates.price_context)
_VARIANTS: dict[str, tuple[tuple[str, str], ...]] = {
    "batches": (("processing", "batch"),),
    "priority": (("service_tier", "priority"),),
    "flex": (("service_tier", "flex"),),
}


def litellm_provider(name: str) -> str:
    """The catalog provider id of a ``litellm_provider`` value."""
    name = name.strip().lower()
    if name in _PROVIDERS:
        return _PROVIDERS[name]
    if name.startswith("vertex_ai"):
        return "google"
    if name.startswith("fireworks_ai"):
        return "fireworks"
    return provider_id(name) or name


def _decimal(value: Any) -> Decimal | None:
    """An exact price from a JSON number or string (``2.5e-06`` -> ``0.0000025``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() and number >= 0 else None


class _ContextRates(TimedRates):
    """LiteLLM's service-tier and batch rates (``_priority``, ``_flex``, ``_batches``),
    chosen by the request's context like genai-prices' price variants."""

    __slots__ = ("_standard", "_variants")

    def __init__(
        self,
        standard: CostRates | TieredRates,
        variants: dict[tuple[tuple[str, str], ...], CostRates | TieredRates],
    ) -> None:
        super().__init__(None)
        self._standard = standard
        self._variants = variants

    def _select(
        self, when: datetime, context: tuple[tuple[str, str], ...]
    ) -> CostRates | TieredRates:
        return self._variants.get(context, self._standard)


def _compile(spec: Mapping[str, Any], variant: str | None) -> CostRates | TieredRates | None:
    """The rates of the standard tier (``variant`` ``None``) or of a variant; ``None`` if
    they do not price input and output. A variant's missing rates are the standard's."""
    base = {name: _decimal(spec.get(key)) for key, name in _FIELDS.items()}
    if variant is not None:
        own = {name: _decimal(spec.get(f"{key}_{variant}")) for key, name in _FIELDS.items()}
        if own["input"] is None or own["output"] is None:
            return None
        base.update({name: value for name, value in own.items() if value is not None})
    if base["input"] is None or base["output"] is None:
        return None  # an input price alone would bill output at $0
    search = spec.get("search_context_cost_per_query")
    web_search = (
        _decimal(search.get("search_context_size_medium")) if isinstance(search, dict) else None
    )
    by_start: dict[int, dict[str, Decimal]] = {}
    for wanted in (None, variant) if variant is not None else (None,):
        for key, value in spec.items():
            m = _TIER.match(key)
            price = _decimal(value) if m is not None and m["variant"] == wanted else None
            if m is not None and price is not None:
                by_start.setdefault(int(m["k"]) * 1000, {})[_FIELDS[m["field"]]] = price
    rates = CostRates(web_search=web_search, **base)
    if not by_start:
        return rates
    tiers: list[tuple[int, CostRates]] = []
    current = dict(base)
    for start in sorted(by_start):
        current.update(by_start[start])
        tiers.append((start, CostRates(web_search=web_search, **current)))
    return TieredRates(rates, tuple(tiers))


def _rates(spec: Mapping[str, Any]) -> Rates | None:
    standard = _compile(spec, None)
    if standard is None:
        return None
    variants = {
        context: rates
        for variant, context in _VARIANTS.items()
        if (rates := _compile(spec, variant)) is not None
    }
    return _ContextRates(standard, variants) if variants else standard


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _deprecated(spec: Mapping[str, Any], today: date) -> bool:
    text = spec.get("deprecation_date")
    if not isinstance(text, str):
        return False
    try:
        return date.fromisoformat(text) <= today
    except ValueError:
        return False


def _split_key(key: str, provider_name: str, provider: str) -> tuple[str, str | None, bool]:
    """(model id, region, whether the key carried a provider prefix) of a cost-map key."""
    head, slash, rest = key.partition("/")
    prefixes = {provider_name, provider_name.split("-")[0], provider}
    if not slash or not rest or (head not in prefixes and provider_id(head) != provider):
        return key, None, False
    zone = _REGION.get(provider)
    first, slash, tail = rest.partition("/")
    if slash and tail and zone is not None and zone.match(first):
        return tail, first, True
    return rest, None, True


class LiteLLMLayer:
    """List prices from a LiteLLM cost map (``model_prices_and_context_window.json``).

    Args:
        path: the JSON file.
        version: the data's version (default: the file name), shown as ``litellm VERSION``.
    """

    name = "litellm"

    def __init__(self, path: str | Path, *, version: str | None = None) -> None:
        self.path = Path(path)
        self._version = version or self.path.name
        self._index: dict[tuple[str, str | None, str], CatalogEntry] | None = None
        self._bare: dict[str, CatalogEntry] = {}
        self._lock = threading.Lock()

    @classmethod
    def installed(cls) -> LiteLLMLayer | None:
        """The cost map inside the installed ``litellm`` package (not imported), or
        ``None`` when litellm is not installed or ships no cost map."""
        try:
            dist = distribution("litellm")
        except PackageNotFoundError:
            return None
        path = Path(str(dist.locate_file(f"litellm/{LITELLM_DATA_FILE}")))
        if not path.is_file():
            return None
        return cls(path, version=dist.version)

    @property
    def version(self) -> str:
        return f"litellm {self._version}"

    def _entries(self) -> dict[tuple[str, str | None, str], CatalogEntry]:
        index = self._index
        if index is None:
            with self._lock:
                if self._index is None:
                    self._index = self._load()
                index = self._index
        return index

    def _load(self) -> dict[tuple[str, str | None, str], CatalogEntry]:
        raw = json.loads(self.path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError(f"{self.path}: a LiteLLM cost map is an object of models")
        today = datetime.now(tz=UTC).date()
        index: dict[tuple[str, str | None, str], CatalogEntry] = {}
        bare: dict[str, CatalogEntry] = {}
        from_prefix: set[tuple[str, str | None, str]] = set()
        for key, spec in raw.items():
            entry, prefixed = self._entry(str(key), spec, today)
            if entry is None:
                continue
            slot = (entry.provider, entry.region, entry.model_id)
            # the key without a prefix is the provider's own: it wins over a prefixed twin
            if slot not in index or (not prefixed and slot in from_prefix):
                index[slot] = entry
                if prefixed:
                    from_prefix.add(slot)
                else:
                    from_prefix.discard(slot)
            if not prefixed and entry.region is None:
                bare.setdefault(entry.model_id, entry)
        self._bare = bare
        return index

    def _entry(self, key: str, spec: Any, today: date) -> tuple[CatalogEntry | None, bool]:
        if not isinstance(spec, dict) or spec.get("mode") not in _MODES:
            return None, False
        name = spec.get("litellm_provider")
        if not isinstance(name, str) or "*" in key or "commitment" in key:
            return None, False  # provisioned-throughput keys are not per-token prices
        rates = _rates(spec)
        if rates is None:
            return None, False
        provider = litellm_provider(name)
        model, region, prefixed = _split_key(key.strip().lower(), name.strip().lower(), provider)
        source = spec.get("source")
        entry = CatalogEntry(
            model_id=model,
            provider=provider,
            source=self.name,
            context_window=_int(spec.get("max_input_tokens")),
            max_output_tokens=_int(spec.get("max_output_tokens")),
            rates=rates,
            region=region,
            deprecated=_deprecated(spec, today),
            reference=source if isinstance(source, str) and source.startswith("http") else None,
        )
        return entry, prefixed

    def find(self, model: str, provider: str | None, region: str | None) -> CatalogEntry | None:
        index = self._entries()
        if provider is None:
            return self._bare.get(model) if region_is_default(region) else None
        if region is not None:
            entry = index.get((provider, region, model))
            if entry is not None or not region_is_default(region):
                return entry
        return index.get((provider, None, model))

    def entries(self) -> Iterator[CatalogEntry]:
        yield from self._entries().values()
