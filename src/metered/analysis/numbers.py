"""Percentages and means as reports show them: Decimal in, Decimal out, never float."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

__all__ = ["nano", "pct"]

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
