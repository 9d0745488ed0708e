"""Resale price rules: per-model prices or markups, ``match`` conditions and ``price.fn``.

Each rule is compiled once, when its route is built: a :class:`Resale` holds a model's
resale rates (or its markup over cost), a :class:`MatchRule` the conditions that pick its
price, and a :class:`PriceFunction` the operator's callable with its result checked.
:mod:`metered.pricing.route` decides in which order they apply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from metered.config import MatchRule as MatchRuleConfig
from metered.config import ModelPrice, resolve_callable
from metered.errors import ConfigError
from metered.money import parse_amount
from metered.pricing.catalog import CostRates
from metered.pricing.resolve import ResolvedModel
from metered.usage import Usage

__all__ = [
    "Condition",
    "MatchRule",
    "PriceFunction",
    "PriceRequest",
    "PricingMode",
    "Resale",
    "first_match",
]

PricingMode = Literal["token-based", "flat", "per-second"]


@dataclass(frozen=True, slots=True)
class PriceRequest:
    """What a ``price.fn`` callable receives."""

    model: ResolvedModel
    usage: Usage
    cost: Decimal | None
    route: str | None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)


class Resale:
    """A resale price compiled once: per-token/per-request rates, or a markup over cost."""

    __slots__ = ("flat", "markup", "rates")

    def __init__(self, price: ModelPrice) -> None:
        def usd(rate: Any) -> Decimal | None:
            return None if rate is None else rate.usd

        self.markup = price.markup
        self.flat = price.request is not None and price.input is None
        self.rates = CostRates(
            input=usd(price.input),
            output=usd(price.output),
            cache_read=usd(price.cache_read),
            cache_write=usd(price.cache_write),
            reasoning=usd(price.reasoning),
            request=usd(price.request),
        )

    def apply(
        self, usage: Usage, cost: Decimal | None, per_second: bool
    ) -> tuple[Decimal | None, PricingMode]:
        """The price of ``usage``; ``None`` for a markup without a cost (the next rule decides).

        Args:
            usage: the usage to price.
            cost: the upstream cost, ``None`` when unknown.
            per_second: whether the cost is billed per second (for the reported mode).
        """
        if self.markup is not None:
            return (None if cost is None else cost * self.markup), (
                "per-second" if per_second else "token-based"
            )
        return self.rates.cost(usage), "flat" if self.flat else "token-based"


class Condition:
    """One ``where`` entry of a match rule: ``headers.x``, ``body.a.b`` or ``metadata.x``.

    Values compare as strings (booleans as ``true``/``false``); a list of expected values
    matches any of them; header names are case-insensitive.
    """

    __slots__ = ("expected", "path", "scope")

    def __init__(self, key: str, expected: object) -> None:
        self.scope, _, dotted = key.partition(".")
        self.path = tuple(dotted.split("."))
        if self.scope == "headers":
            self.path = (dotted.lower(),)  # header names are case-insensitive
        values = expected if isinstance(expected, list) else [expected]
        self.expected = frozenset(_text(v) for v in values)

    def holds(
        self, headers: Mapping[str, str], body: Mapping[str, Any], meta: Mapping[str, Any]
    ) -> bool:
        """Whether the call's headers, body or metadata carry an expected value."""
        value: Any = {"headers": headers, "body": body, "metadata": meta}[self.scope]
        for part in self.path:
            if not isinstance(value, Mapping):
                return False
            value = value.get(part)
            if value is None:
                return False
        return _text(value) in self.expected


def _text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True, slots=True)
class MatchRule:
    """A compiled ``match`` rule: every condition must hold for its price to apply."""

    conditions: tuple[Condition, ...]
    price: Resale

    @classmethod
    def compile(cls, rule: MatchRuleConfig) -> MatchRule:
        """Compile a configured rule."""
        return cls(tuple(Condition(k, v) for k, v in rule.where.items()), Resale(rule.price))


def first_match(
    rules: Sequence[MatchRule],
    headers: Mapping[str, str],
    body: Mapping[str, Any],
    meta: Mapping[str, Any],
) -> Resale | None:
    """The price of the first rule whose conditions all hold, else ``None``."""
    for rule in rules:
        if all(c.holds(headers, body, meta) for c in rule.conditions):
            return rule.price
    return None


class PriceFunction:
    """A route's ``price.fn``: the operator's callable, its result checked on every call.

    Args:
        path: the ``module:function`` path from the configuration.
        route: the route's name, for error messages.
    """

    __slots__ = ("_fn", "_route")

    def __init__(self, path: str, route: str | None) -> None:
        self._fn: Callable[[PriceRequest], Any] = resolve_callable(path)
        self._route = route

    def __call__(self, request: PriceRequest) -> Decimal | None:
        """The price the callable returns; ``None`` lets the next rule decide.

        Raises:
            ConfigError: the result is not a non-negative Decimal, a ``$`` amount string
                or ``None``.
        """
        result = self._fn(request)
        if result is None:
            return None
        if isinstance(result, Decimal) and result.is_finite() and result >= 0:
            return result
        if isinstance(result, str):
            return parse_amount(result, key=f'routes."{self._route}".price.fn result')
        raise ConfigError(
            f'routes."{self._route}".price.fn',
            "must return a non-negative Decimal, a '$' amount string or None",
            result,
        )
