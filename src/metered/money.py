"""Money: prices as users write them, Decimal arithmetic, integer nano-USD for ledgers.

Rules written down once:

* Prices and costs are :class:`decimal.Decimal` in USD, never ``float``.
* Ledgers store integer **nano-USD** (1 USD = 10**9). :func:`to_nanos` rounds to the
  nearest nano-USD, ties to even (``ROUND_HALF_EVEN``), exactly once, where an amount
  enters a ledger. Rounding is monotone, so a capture never exceeds the hold it came from
  when the actual price is at most the quoted maximum.
* A price string names its unit: ``"$0.05"`` (per request), ``"$3 / 1M tokens"``,
  ``"$0.003/1K"``, ``"$0.000003/token"``, ``"$0.002/s"``. Bare numbers are refused where
  a unit is needed: ``3`` could mean per token, per 1K or per 1M, and guessing wrong is a
  1,000,000x billing error.
* Magnitudes that are almost certainly unit mistakes (a per-token price above
  :data:`MAX_PER_TOKEN`, ...) are refused unless the caller allows large prices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Literal

from metered.errors import ConfigError

__all__ = [
    "MAX_PER_REQUEST",
    "MAX_PER_SECOND",
    "MAX_PER_TOKEN",
    "NANOS_PER_USD",
    "PriceUnit",
    "Rate",
    "format_usd",
    "from_nanos",
    "parse_amount",
    "parse_rate",
    "to_nanos",
]

PriceUnit = Literal["request", "token", "second"]

NANOS_PER_USD = 1_000_000_000
_NANOS = Decimal(NANOS_PER_USD)

#: Above these a price is taken as a unit mistake unless large prices are allowed.
MAX_PER_TOKEN = Decimal("0.01")  # $10,000 per 1M tokens
MAX_PER_REQUEST = Decimal(100)
MAX_PER_SECOND = Decimal(100)
_MAX = {"token": MAX_PER_TOKEN, "request": MAX_PER_REQUEST, "second": MAX_PER_SECOND}

# unit word (lower case, spaces removed) -> (unit, how many units the written price is for)
_UNITS: dict[str, tuple[PriceUnit, int]] = {}


def _units(unit: PriceUnit, per: int, *words: str) -> None:
    for word in words:
        _UNITS[word] = (unit, per)


_units("token", 1, "token", "tokens", "tok", "1token")
_units("token", 1000, "1k", "k", "ktok", "1ktokens", "1ktoken", "1000", "1000tokens")
_units("token", 10**6, "1m", "m", "mtok", "1mtok", "1mtokens", "1mtoken", "milliontokens")
_units("token", 10**6, "1000000", "1000000tokens", "1,000,000tokens", "1,000,000")
_units("request", 1, "request", "requests", "req", "call", "calls", "1request")
_units("second", 1, "s", "sec", "second", "seconds", "1s")
_units("second", 60, "min", "minute", "1minute")
_units("second", 3600, "h", "hr", "hour", "1hour")

_PRICE_RE = re.compile(
    r"""^\s*
    (?:(?P<cur>USD)\s*)?\$?\s*(?P<num>[+-]?(?:\d[\d_,]*)?(?:\.\d+)?(?:[eE][+-]?\d+)?)\s*
    (?:(?:/|\bper\b)\s*(?P<unit>[\w ,]+?)\s*)?$""",
    re.VERBOSE | re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Rate:
    """A price for one unit: ``usd`` per ``unit`` (request, token or second)."""

    usd: Decimal
    unit: PriceUnit

    def __str__(self) -> str:
        if self.unit == "token":
            return f"{format_usd(self.usd * 10**6)} / 1M tokens"
        if self.unit == "second":
            return f"{format_usd(self.usd)} / second"
        return f"{format_usd(self.usd)} / request"


def _decimal(text: str, key: str, raw: object) -> Decimal:
    try:
        value = Decimal(text.replace("_", "").replace(",", ""))
    except InvalidOperation:
        raise ConfigError(key, "is not a price (write '$0.05' or '$3 / 1M tokens')", raw) from None
    if not value.is_finite():
        raise ConfigError(key, "is not a finite amount", raw)
    if value < 0:
        raise ConfigError(key, "is negative; prices cannot be negative", raw)
    return value


def parse_amount(raw: object, *, key: str = "") -> Decimal:
    """Parse a plain USD amount such as ``"$5"`` or ``"$0.25"`` (budgets, floors, ceilings).

    Raises:
        ConfigError: not a finite, non-negative dollar amount with a ``$``.
    """
    if isinstance(raw, bool) or not isinstance(raw, str):
        raise ConfigError(key, "must be a dollar amount string such as '$5'", raw)
    m = _PRICE_RE.match(raw)
    if m is None or not m.group("num") or m.group("unit"):
        raise ConfigError(key, "is not a dollar amount (write '$5' or '$0.25')", raw)
    if "$" not in raw and not m.group("cur"):
        raise ConfigError(key, "needs a currency: write '$' before the amount", raw)
    return _decimal(m.group("num"), key, raw)


def parse_rate(
    raw: object,
    *,
    key: str = "",
    default_unit: PriceUnit | None = None,
    allowed: frozenset[PriceUnit] | None = None,
    allow_large: bool = False,
) -> Rate:
    """Parse a price string into a :class:`Rate`.

    Args:
        raw: what the user wrote, e.g. ``"$3 / 1M tokens"``.
        key: dotted config path, named in errors.
        default_unit: unit of a price written without one (``"$0.05"``); ``None`` means
            the unit is required.
        allowed: units accepted at this key (all when ``None``).
        allow_large: accept magnitudes above the sanity limits.

    Raises:
        ConfigError: ambiguous, negative, non-finite, wrong unit or absurd magnitude.
    """
    if isinstance(raw, (bool, int, float, Decimal)):
        raise ConfigError(
            key,
            "is a bare number; write the unit, e.g. '$0.05' (per request) or '$3 / 1M tokens'",
            raw,
        )
    if not isinstance(raw, str):
        raise ConfigError(key, "must be a price string such as '$3 / 1M tokens'", raw)
    m = _PRICE_RE.match(raw)
    if m is None or not m.group("num"):
        raise ConfigError(key, "is not a price (write '$0.05' or '$3 / 1M tokens')", raw)
    if "$" not in raw and not m.group("cur"):
        raise ConfigError(key, "needs a currency: write '$' before the amount", raw)
    amount = _decimal(m.group("num"), key, raw)
    unit_text = m.group("unit")
    if unit_text is None:
        if default_unit is None:
            raise ConfigError(
                key,
                "has no unit; write '/ 1M tokens', '/ 1K tokens', '/ token' or '/ request'",
                raw,
            )
        unit, per = default_unit, 1
    else:
        found = _UNITS.get(unit_text.lower().replace(" ", ""))
        if found is None:
            raise ConfigError(key, f"has an unknown unit {unit_text!r}", raw)
        unit, per = found
    if allowed is not None and unit not in allowed:
        names = ", ".join(sorted(allowed))
        raise ConfigError(key, f"is a per-{unit} price but this setting takes per-{names}", raw)
    usd = amount / per if per != 1 else amount
    if not allow_large and usd > _MAX[unit]:
        hint = " (did you mean '/ 1M tokens'?)" if unit == "token" else ""
        raise ConfigError(
            key,
            f"is over ${_MAX[unit]} per {unit}{hint}; set allow_large_prices: true if intended",
            raw,
        )
    return Rate(usd=usd, unit=unit)


def to_nanos(usd: Decimal) -> int:
    """USD to integer nano-USD, rounded half-even (the one rounding rule)."""
    # round() of a Decimal rounds half-even whatever the context says, and returns an int
    return round(usd * _NANOS)


def from_nanos(nanos: int) -> Decimal:
    """Integer nano-USD to exact USD."""
    return Decimal(nanos) / _NANOS


def format_usd(usd: Decimal | None, *, places: int | None = None) -> str:
    """Render USD for humans without exponent notation: ``$0.000125``."""
    if usd is None:
        return "-"
    if places is not None:
        usd = usd.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
        return f"${usd:,f}"
    return f"${usd.normalize():f}"
