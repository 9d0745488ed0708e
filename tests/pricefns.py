"""``price.fn`` callables that tests reference as ``"tests.pricefns:<name>"``."""

from __future__ import annotations

from decimal import Decimal

from metered.pricing.rules import PriceRequest

NOT_CALLABLE = "a price.fn must be callable"


def premium_plan(request: PriceRequest) -> Decimal | None:
    """$0.07 per call on the premium plan; other plans fall through to the next rule."""
    return Decimal("0.07") if request.metadata.get("plan") == "premium" else None


def twice_the_cost(request: PriceRequest) -> Decimal | None:
    """Resell at twice the upstream cost; no price when the cost is unknown."""
    return None if request.cost is None else request.cost * 2


def dollar_string(request: PriceRequest) -> str:
    """A price written the way configs write it."""
    return "$0.04"


def float_price(request: PriceRequest) -> float:
    """A bug in the operator's function: money as float."""
    return 0.5


SEEN: list[PriceRequest] = []


def record_request(request: PriceRequest) -> Decimal:
    """Keep what the function receives, for the test to inspect; charge one cent."""
    SEEN.append(request)
    return Decimal("0.01")
