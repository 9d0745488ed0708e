"""Percentages, means and rounded prices as analysis shows them: Decimal only, never float."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal

__all__ = ["nano", "pct", "round_up"]

_ONE = Decimal(1)
_HUNDRED = Decimal(100)
_TENTH = Decimal("0.1")
_NANO = Decimal("1e-9")


def pct(part: Decimal | int, whole: Decimal | int) -> Decimal | None:
    """``part / whole`` as a percentage to 0.1, ``None`` when ``whole`` is zero.

    Args:
        part: the numerator.
        whole: the denominator.
    """
    if not whole:
        return None
    return (Decimal(part) * _HUNDRED / Decimal(whole)).quantize(_TENTH, ROUND_HALF_EVEN)


def nano(value: Decimal | None) -> Decimal | None:
    """A divided amount (a mean) to the nano-USD, so it does not show 28 digits.

    Args:
        value: a USD amount, or ``None`` (returned as is).
    """
    if value is None:
        return None
    rounded = value.quantize(_NANO, ROUND_HALF_EVEN)
    return (value if rounded == value else rounded).normalize()


def _sig_up(value: Decimal, digits: int) -> Decimal:
    """``value`` rounded toward +infinity to ``digits`` significant digits."""
    quantum = _ONE.scaleb(value.adjusted() - digits + 1)
    return value.quantize(quantum, rounding=ROUND_CEILING)


def round_up(value: Decimal, *, digits: int, upper: Decimal) -> Decimal:
    """Round a proposed price up to ``digits`` significant digits, more if that exceeds ``upper``.

    Only ever rounds up, so a price at or above cost stays there; ``value`` itself is at
    most ``upper``, so some number of digits always fits.

    Args:
        value: the price to round (zero or less is returned as is).
        digits: significant digits to keep when they fit under ``upper``.
        upper: the bound the rounded price must not cross.
    """
    if value <= 0:
        return value
    for kept in range(digits, 29):
        rounded = _sig_up(value, kept)
        if rounded <= upper:
            return rounded.normalize()
    return value
