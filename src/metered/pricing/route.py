"""Cost, price and margin of a call, and why: the :class:`Quote`.

* **cost** — what the provider charges: catalog (or operator override) rates x usage.
* **price** — what the operator charges its customer, from the route's rules, first hit
  wins: ``match`` rules → ``price.fn`` → ``route.models`` (the name the user sent, then
  the resolved names) → ``default-table`` (catalog cost x the route's markup; used when the
  route sets a markup or lists no models) → ``fallback`` (if the route's unknown-model
  policy is ``fallback``) → no price: :class:`~metered.errors.UnknownModel` when the
  route's unknown-model policy is ``reject``, else an *unpriced* quote.
  Per-model floors and ceilings bound the result. With no rules at all the price is the
  cost (an app tracking its own spend).
* **margin** — price − cost.

A model with no catalog price is never priced at $0: its cost is ``None`` (unknown), and
its price must come from a rule or the fallback. Where the route asks for neither (no
configuration at all, or ``unknown_model: unpriced``) the quote is *unpriced*:
``pricing_source`` ``"unpriced"``, ``price`` and ``margin`` ``None``; the engine lets such
a call through only when no budget is charged for it (an unknown price cannot be checked
against a budget), and a warning names the model once per :class:`Pricer`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, NamedTuple

from metered.config import Config, RouteConfig
from metered.errors import ConfigError, InvalidRequest, UnknownModel
from metered.pricing.catalog import Catalog, CatalogEntry, CostRates, provider_id
from metered.pricing.resolve import ResolvedModel, Resolver
from metered.pricing.rules import (
    MatchRule,
    PriceFunction,
    PriceRequest,
    PricingMode,
    Resale,
    first_match,
)
from metered.usage import Usage

__all__ = [
    "PriceRequest",
    "Pricer",
    "PricingMode",
    "PricingSource",
    "Quote",
    "RoutePricer",
]

PricingSource = Literal[
    "route.models", "default-table", "match", "price.fn", "fallback", "unpriced"
]
_PLAN_CACHE_LIMIT = 4096  # requested ids are user input: bound the cache
_WARNED_LIMIT = 1024  # models warned about as unpriced: user input too, bound it

logger = logging.getLogger("metered")
_EMPTY: Mapping[str, Any] = {}


class Quote(NamedTuple):
    """The priced call (immutable).

    Attributes:
        cost: upstream cost in USD, ``None`` when no catalog price is known.
        price: what the caller is charged in USD; ``None`` for an unpriced call
            (``pricing_source == "unpriced"``), never $0.
        margin: ``price - cost``, ``None`` when either is unknown.
        pricing_source: which rule produced the price.
        pricing_mode: ``token-based``, ``flat`` (per request) or ``per-second``.
        requested_model: the id as the caller sent it.
        resolved_model: the catalog model the cost came from, else the price's model key.
        provider: catalog provider id, if known.
        route: route name.
        usage: the usage that was priced.
        catalog_version: the price data version.
        cost_source: the price layer the cost came from (``override``, ``corrections``,
            ``genai-prices``, ``litellm``), ``None`` when no layer priced the model.
        cost_resolution: how the cost was found, e.g.
            ``gpt-4o-2024-08-06 > gpt-4o @openai = genai-prices openai/gpt-4o`` or
            ``groq/gpt-4o > gpt-4o @groq = no price``.
    """

    cost: Decimal | None
    price: Decimal | None
    margin: Decimal | None
    pricing_source: PricingSource
    pricing_mode: PricingMode
    requested_model: str
    resolved_model: str | None
    provider: str | None
    route: str | None
    usage: Usage
    catalog_version: str
    cost_source: str | None = None
    cost_resolution: str = ""

    def checked_price(self) -> Decimal:
        """The price, for a call a budget must check.

        Raises:
            UnknownModel: the quote is unpriced: an unknown price cannot be checked
                against a budget, so naming an unknown model never bypasses one.
        """
        if self.price is None:
            raise UnknownModel(self.requested_model, route=self.route)
        return self.price


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything about (route, model) that does not depend on the call: cached."""

    resolved: ResolvedModel
    entry: CatalogEntry | None
    resolution: str  # how the entry was found (Quote.cost_resolution)
    cost: Callable[[Usage], Decimal] | None  # the entry's cost function, bound once
    per_second: bool
    model_price: Resale | None  # from route.models
    model_key: str | None
    floor: Decimal | None
    ceiling: Decimal | None


def _is_per_second(entry: CatalogEntry) -> bool:
    rates = entry.rates
    return isinstance(rates, CostRates) and rates.second is not None and rates.input is None


def _resolution(
    tried: tuple[str, ...], provider: str | None, region: str | None, entry: CatalogEntry | None
) -> str:
    """The names tried, the provider (and region) they were priced for, and the outcome."""
    where = f" @{provider_id(provider)}" if provider else " @any"
    if region:
        where += f"/{region}"
    found = "no price" if entry is None else f"{entry.source} {entry.provider}/{entry.model_id}"
    return f"{' > '.join(tried)}{where} = {found}"


class _Warned:
    """Models already warned about as unpriced: each is logged once (bounded memory)."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def once(self, model: str, route: str | None) -> None:
        if not self._enabled or model in self._seen:
            return
        with self._lock:
            if model in self._seen:
                return
            if len(self._seen) >= _WARNED_LIMIT:
                self._seen.clear()  # a flood of made-up ids may repeat a warning, not grow
            self._seen.add(model)
        where = f" on route {route!r}" if route else ""
        logger.warning(
            "metered: model %r has no price%s; its calls pass unpriced (cost unknown, not "
            "$0) and are refused for accounts with a budget. Add it to the catalog overrides "
            "or the route's models to price it.",
            model,
            where,
        )


class RoutePricer:
    """Prices calls on one route. Build with :meth:`Pricer.route`."""

    def __init__(
        self,
        name: str | None,
        route: RouteConfig,
        *,
        catalog: Catalog,
        resolver: Resolver,
        warned: _Warned | None = None,
    ) -> None:
        self.name = name
        self.config = route
        self._catalog = catalog
        self._resolver = resolver
        # the provider a named upstream is (the built-in fake is none: priced by model)
        upstream = route.upstream
        self._provider = upstream if upstream in ("openai", "anthropic") else None
        self._models = {
            name: Resale(price) for name, price in self._normalised(route.models, "models").items()
        }
        self._fallback = (
            Resale(route.fallback)
            if route.fallback is not None and route.unknown_policy == "fallback"
            else None
        )
        self._floors = self._normalised(route.floors, "floors")
        self._ceilings = self._normalised(route.ceilings, "ceilings")
        self._match = tuple(MatchRule.compile(rule) for rule in route.match)
        self._price_fn = PriceFunction(route.price.fn, name) if route.price is not None else None
        # The catalog cost (x markup) prices calls only when the operator asked for a
        # markup or set no resale prices at all: a route with its own models, match rules
        # or fallback must never quietly charge pass-through cost for a model it did not list.
        self._use_default_table = route.markup is not None or not (
            route.models or route.match or route.fallback or route.price
        )
        self._unpriced = route.unknown_policy == "unpriced"
        self._warned = warned if warned is not None else _Warned(enabled=False)
        self._plans: dict[str, _Plan] = {}
        self._lock = threading.Lock()

    def _normalised(self, mapping: Mapping[str, Any], key: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for model, value in mapping.items():
            name = model.strip().lower()
            if name != "*":
                try:
                    name = self._resolver.resolve(model).normalized
                except (InvalidRequest, UnknownModel, ValueError) as exc:
                    raise ConfigError(f'routes."{self.name}".{key}.{model}', str(exc)) from None
            out[name] = value
        return out

    def _plan(self, model: str) -> _Plan:
        # ids come from request bodies: a list or dict must be a 400, not a TypeError
        plan = self._plans.get(model) if isinstance(model, str) else None
        if plan is not None:
            return plan
        resolved = self._resolver.resolve(model)  # raises InvalidRequest for a non-string
        provider = resolved.provider or self._provider
        tried = resolved.cost_chain
        entry = self._catalog.find(tried, provider=provider, region=resolved.region)
        model_price = model_key = None
        for name in (*resolved.chain, "*"):
            if name in self._models:
                model_price, model_key = self._models[name], name
                break
        floor = next((self._floors[n] for n in resolved.chain if n in self._floors), None)
        ceiling = next((self._ceilings[n] for n in resolved.chain if n in self._ceilings), None)
        plan = _Plan(
            resolved=resolved,
            entry=entry,
            resolution=_resolution(tried, provider, resolved.region, entry),
            cost=None if entry is None else entry.rates.cost,
            per_second=entry is not None and _is_per_second(entry),
            model_price=model_price,
            model_key=model_key,
            floor=self._floors.get("*") if floor is None else floor,
            ceiling=self._ceilings.get("*") if ceiling is None else ceiling,
        )
        with self._lock:
            if len(self._plans) >= _PLAN_CACHE_LIMIT:
                self._plans.clear()
            self._plans[model] = plan
        return plan

    def resolve(self, model: str) -> ResolvedModel:
        """Resolve a requested id as this route sees it."""
        return self._plan(model).resolved

    def entry(self, model: str) -> CatalogEntry | None:
        """The catalog entry that prices ``model``'s cost on this route, if any."""
        return self._plan(model).entry

    def is_known(self, model: str) -> bool:
        """Whether ``model`` gets a price here without the fallback."""
        plan = self._plan(model)
        return bool(
            self._match
            or self._price_fn
            or plan.model_price is not None
            or (self._use_default_table and plan.entry is not None)
        )

    def quote(
        self,
        model: str,
        usage: Usage,
        *,
        headers: Mapping[str, str] = _EMPTY,
        body: Mapping[str, Any] = _EMPTY,
        metadata: Mapping[str, Any] = _EMPTY,
    ) -> Quote:
        """Price ``usage`` of a call to ``model``.

        ``headers`` (lower-case names), ``body`` and ``metadata`` feed ``match`` rules and
        ``price.fn``.

        Raises:
            UnknownModel: no rule prices the model and the route rejects unknown models
                (a route whose policy is ``unpriced`` returns an unpriced quote instead).
            InvalidRequest / PolicyDenied: the model id is not a valid id.
        """
        plan = self._plan(model)
        entry = plan.entry
        cost = plan.cost(usage) if plan.cost is not None else None
        source: PricingSource
        price: Decimal | None = None
        mode: PricingMode = "token-based"
        rule = first_match(self._match, headers, body, metadata) if self._match else None
        if rule is not None:
            price, mode = rule.apply(usage, cost, plan.per_second)
            source = "match"
        if price is None and self._price_fn is not None:
            price = self._price_fn(
                PriceRequest(
                    model=plan.resolved,
                    usage=usage,
                    cost=cost,
                    route=self.name,
                    headers=headers,
                    body=body,
                    metadata=metadata,
                )
            )
            source = "price.fn"
        if price is None and plan.model_price is not None:
            price, mode = plan.model_price.apply(usage, cost, plan.per_second)
            source = "route.models"
        if price is None and self._use_default_table and cost is not None:
            markup = self.config.markup
            price = cost if markup is None else cost * markup
            mode = "per-second" if plan.per_second else "token-based"
            source = "default-table"
        if price is None and self._fallback is not None:
            price, mode = self._fallback.apply(usage, cost, plan.per_second)
            source = "fallback"
        if price is None:
            if not self._unpriced:
                raise UnknownModel(plan.resolved.requested, route=self.name)
            self._warned.once(plan.resolved.normalized, self.name)
            source = "unpriced"
        else:
            if plan.floor is not None and price < plan.floor:
                price = plan.floor
            if plan.ceiling is not None and price > plan.ceiling:
                price = plan.ceiling
        # positional, in field order: a quote is built on every call, twice per call
        return Quote(
            cost,
            price,
            None if cost is None or price is None else price - cost,  # margin
            source,
            mode,
            plan.resolved.requested,
            entry.model_id if entry is not None else plan.model_key,  # resolved_model
            entry.provider if entry is not None else plan.resolved.provider,
            self.name,
            usage,
            self._catalog.version,
            entry.source if entry is not None else None,
            plan.resolution,
        )


class Pricer:
    """All routes of a configuration, sharing one catalog and resolver.

    Args:
        config: the configuration whose routes price calls.
        catalog: the price catalog (default: the config's catalog settings).
        warn_unpriced: log a warning the first time each model is quoted unpriced (what
            a :class:`~metered.engine.meter.Meter` asks for; the CLI's quotes do not).
    """

    DEFAULT_ROUTE = "default"

    def __init__(
        self, config: Config, *, catalog: Catalog | None = None, warn_unpriced: bool = False
    ) -> None:
        self.config = config
        self.catalog = catalog or Catalog.from_config(config.catalog)
        self.resolver = Resolver(
            aliases=config.models.aliases, deployments=config.models.deployments
        )
        warned = _Warned(warn_unpriced)  # one warning per model per pricer (per Meter)
        self._routes = {
            name: RoutePricer(
                name, route, catalog=self.catalog, resolver=self.resolver, warned=warned
            )
            for name, route in config.routes.items()
        }
        default_name = config.default_route
        self._default = (
            self._routes[default_name]
            if default_name is not None
            else RoutePricer(
                None, RouteConfig(), catalog=self.catalog, resolver=self.resolver, warned=warned
            )
        )

    @property
    def routes(self) -> Mapping[str, RoutePricer]:
        """Configured routes by name."""
        return self._routes

    def route(self, name: str | None = None) -> RoutePricer:
        """The pricer of route ``name``; the default route for ``None``.

        Raises:
            InvalidRequest: no such route.
        """
        if name is None:
            return self._default
        try:
            return self._routes[name]
        except KeyError:
            raise InvalidRequest(f"unknown route {name!r}", param="route") from None

    def quote(self, model: str, usage: Usage, *, route: str | None = None, **context: Any) -> Quote:
        """Shortcut for ``pricer.route(route).quote(model, usage, ...)``."""
        return self.route(route).quote(model, usage, **context)
