"""Model id normalisation and the chain of names a price may come from.

A requested id goes through, in order:

1. normalisation: whitespace trimmed, lower case. An id that is not printable ASCII is
   refused (:class:`PolicyDenied`): a Cyrillic ``о`` in ``gpt-4о``, a fullwidth
   ``ｇｐｔ-４ｏ`` or a zero-width space could otherwise be checked as one model and read
   as another upstream. An operator who needs such a name lists it verbatim as an alias
   (``models.aliases``), which names what it stands for.
2. operator aliases (``my-chatbot -> claude-sonnet-4-5``),
3. the provider the id names, and the region or data zone it pins, kept for pricing
   (provider-true: :mod:`metered.pricing.catalog`): a prefix (``openai/``, ``groq/``,
   ``bedrock/``, ``azure/`` ...) with an optional region segment
   (``bedrock/us-gov-west-1/<id>``, ``azure/eu/<id>``, ``vertex_ai/europe-west4/<id>``),
   a bare Bedrock model id (``anthropic.claude-3-5-sonnet-20241022-v2:0``, with or
   without a cross-region prefix such as ``us.``), Azure deployments
   (``azure/prod-4o -> gpt-4o`` via ``models.deployments``) and Vertex's ``@version``
   suffix (``claude-3-5-sonnet-v2@20241022``),
4. dated snapshots (``gpt-4o-2024-08-06 -> gpt-4o``, ``claude-sonnet-4-5-20250929``,
   ``gpt-3.5-turbo-0125``),
5. fine-tunes (``ft:gpt-4o-mini-2024-07-18:acme::x``): priced as themselves (the catalog
   has fine-tune rates) and never at the base model's price, which is lower.

The resulting :class:`ResolvedModel` lists those names most specific first
(:attr:`ResolvedModel.chain`): pricing uses the first name that has an entry, so the
name the user sent wins when it has its own price.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from metered.errors import ConfigError, InvalidRequest, PolicyDenied

__all__ = [
    "MAX_MODEL_ID_LENGTH",
    "PROVIDER_PREFIXES",
    "ResolvedModel",
    "Resolver",
    "normalize_model_id",
]

PROVIDER_PREFIXES = frozenset(
    {
        "openai",
        "azure",
        "azure_openai",
        "anthropic",
        "google",
        "gemini",
        "vertex_ai",
        "vertex",
        "bedrock",
        "aws",
        "mistral",
        "groq",
        "deepseek",
        "xai",
        "x-ai",
        "together",
        "fireworks",
        "cohere",
        "openrouter",
    }
)
# a Bedrock model id: [geo.]vendor.model[-vN[:M]] (geo: a cross-region inference profile)
_BEDROCK_ID = re.compile(
    r"^(?:(?:us|eu|apac|au|ca|jp|us-gov|global)\.)?"
    r"(?:anthropic|amazon|meta|mistral|cohere|ai21|deepseek|qwen|openai|writer|twelvelabs)"
    r"\.[a-z0-9][a-z0-9.:-]*$"
)
# the region or zone segment each cloud's ids may carry after the provider prefix
_REGIONS = {
    "bedrock": re.compile(r"^[a-z]{2}(?:-gov)?-[a-z]+-\d$"),
    "aws": re.compile(r"^[a-z]{2}(?:-gov)?-[a-z]+-\d$"),
    "azure": re.compile(r"^(?:eu|us|global)$"),
    "azure_openai": re.compile(r"^(?:eu|us|global)$"),
    "vertex_ai": re.compile(r"^(?:[a-z]+-[a-z]+\d+|global)$"),
    "vertex": re.compile(r"^(?:[a-z]+-[a-z]+\d+|global)$"),
}
_DATED = re.compile(r"^(?P<base>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")
_FINE_TUNE = re.compile(r"^ft:(?P<base>[^:]+):(?P<rest>.*)$")
_CACHE_LIMIT = 4096  # requested ids are user input: bound the cache
#: The longest model id accepted (real ids are under 100 characters).
MAX_MODEL_ID_LENGTH = 256


def normalize_model_id(raw: object) -> str:
    """Normalise a requested model id, refusing ids that could impersonate another.

    Raises:
        InvalidRequest: not a string, or empty.
        PolicyDenied: characters outside printable ASCII remain after NFKC.
    """
    if not isinstance(raw, str):
        raise InvalidRequest(f"model must be a string, got {type(raw).__name__}", param="model")
    if len(raw) > MAX_MODEL_ID_LENGTH:
        # ids are user input that ends up in caches, span names and records: bound it
        raise InvalidRequest(
            f"model must be at most {MAX_MODEL_ID_LENGTH} characters, got {len(raw)}",
            param="model",
        )
    text = raw.strip().lower()
    if not text:
        raise InvalidRequest("model must not be empty", param="model")
    if not text.isascii() or not text.isprintable() or any(c.isspace() for c in text):
        # a look-alike (fullwidth, Cyrillic, zero-width) is refused, never mapped to the
        # ASCII id it resembles: the upstream would read what the caller wrote
        raise PolicyDenied(
            f"model id {raw!r} contains characters that are not plain ASCII",
            model=raw,
            reason="invalid_model_id",
        )
    return text


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A requested model id and the names its price may come from.

    Attributes:
        requested: the id exactly as the caller sent it.
        normalized: the normalised id.
        chain: names to price by, most specific first (the normalised id first).
        provider: provider the id names (a prefix, a Bedrock id, a deployment), if any.
        region: the region or data zone the id pins the call to, if any.
        fine_tune_base: the base model of a fine-tune id (for deny lists only).
        aliases: names in the chain that are operator aliases: they may carry a resale
            price, but their upstream cost is their target's (``gpt-4 -> gpt-4o`` must
            not cost what the catalog's own ``gpt-4`` costs).
    """

    requested: str
    normalized: str
    chain: tuple[str, ...]
    provider: str | None = None
    fine_tune_base: str | None = None
    aliases: frozenset[str] = frozenset()
    region: str | None = None

    @property
    def cost_chain(self) -> tuple[str, ...]:
        """Names to look the upstream cost up by: the chain without alias names."""
        if not self.aliases:
            return self.chain
        return tuple(name for name in self.chain if name not in self.aliases)

    @property
    def base(self) -> str:
        """The least specific name: what the call is routed and tokenised as."""
        return self.chain[-1]

    @property
    def is_fine_tune(self) -> bool:
        """Whether the id names a fine-tuned model."""
        return self.fine_tune_base is not None


def _undated(name: str) -> str | None:
    m = _DATED.match(name)
    return m.group("base") if m else None


class Resolver:
    """Resolves requested ids with the operator's aliases and Azure deployments.

    Args:
        aliases: requested name -> model it stands for.
        deployments: Azure deployment name -> base model.
    """

    def __init__(
        self,
        *,
        aliases: Mapping[str, str] | None = None,
        deployments: Mapping[str, str] | None = None,
    ) -> None:
        self._aliases = self._normalised_map(aliases or {}, "models.aliases")
        self._deployments = self._normalised_map(deployments or {}, "models.deployments")
        for name in self._aliases:
            self._alias_target(name)  # raises on cycles at construction time
        self._cache: dict[str, ResolvedModel] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _normalised_map(mapping: Mapping[str, str], key: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, target in mapping.items():
            try:
                # a name that is not plain ASCII is the operator's own: kept verbatim
                plain = isinstance(name, str) and name.isascii()
                out[normalize_model_id(name) if plain else name] = normalize_model_id(target)
            except (InvalidRequest, PolicyDenied) as exc:
                raise ConfigError(f"{key}.{name}", exc.message, target) from None
        return out

    def _alias_target(self, name: str) -> str:
        seen = [name]
        while name in self._aliases:
            name = self._aliases[name]
            if name in seen:
                raise ConfigError(
                    f"models.aliases.{seen[0]}",
                    "aliases form a cycle: " + " -> ".join([*seen, name]),
                )
            seen.append(name)
        return name

    def resolve(self, requested: str) -> ResolvedModel:
        """Resolve a requested id (cached).

        Raises:
            InvalidRequest: not a string or empty.
            PolicyDenied: non-ASCII look-alike characters.
        """
        # ids come from request bodies: a list or dict must be a 400, not a TypeError
        hit = self._cache.get(requested) if type(requested) is str else None
        if hit is not None:
            return hit
        resolved = self._resolve(requested)
        with self._lock:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[requested] = resolved
        return resolved

    def _resource_name(self, name: str, add: Callable[[str | None], None]) -> str:
        """``name`` without a Google resource prefix (``models/gemini-2.5-flash``, the form
        the Gemini REST API and SDK use; Vertex's ``publishers/google/models/...``)."""
        for resource in ("models/", "publishers/google/models/"):
            if name.startswith(resource) and len(name) > len(resource):
                name = self._alias_target(name.removeprefix(resource))
                add(name)
        return name

    def _resolve(self, requested: str) -> ResolvedModel:
        # an id the operator listed verbatim as an alias is taken as written
        verbatim = type(requested) is str and requested in self._aliases
        name = requested if verbatim else normalize_model_id(requested)
        chain: list[str] = []
        provider: str | None = None
        fine_tune_base: str | None = None

        def add(candidate: str | None) -> None:
            if candidate and candidate not in chain:
                chain.append(candidate)

        add(name)
        current = self._alias_target(name)
        add(current)
        current = self._resource_name(current, add)
        region: str | None = None
        prefix, slash, rest = current.partition("/")
        if slash and prefix in PROVIDER_PREFIXES and rest:
            provider = prefix
            head, slash, tail = rest.partition("/")
            zone = _REGIONS.get(prefix)
            if slash and tail and zone is not None and zone.match(head):
                region, rest = head, tail
            current = self._alias_target(rest)
            add(rest)
            add(current)
        current = self._resource_name(current, add)
        if provider is None and _BEDROCK_ID.match(current):
            provider = "bedrock"
        if "@" in current and provider in (None, "vertex_ai", "vertex", "google"):
            provider = provider or "vertex_ai"  # model@version is Vertex's naming
            current = current.partition("@")[0]
            add(current)
        deployment = self._deployments.get(current)
        if deployment is not None:
            provider = provider or "azure"
            current = self._alias_target(deployment)
            add(current)
        ft = _FINE_TUNE.match(current)
        if ft is not None:
            provider = provider or "openai"  # "ft:" ids are OpenAI's fine-tune naming
            fine_tune_base = ft.group("base")
            # the same fine-tune written with an undated base: ft:gpt-4o:acme::x
            undated_base = _undated(fine_tune_base)
            if undated_base is not None:
                add(f"ft:{undated_base}:{ft.group('rest')}")
            fine_tune_base = undated_base or fine_tune_base
        else:
            add(_undated(current))
        return ResolvedModel(
            requested=requested,
            normalized=name,
            chain=tuple(chain),
            provider=provider,
            fine_tune_base=fine_tune_base,
            aliases=frozenset(n for n in chain if n in self._aliases),
            region=region,
        )
