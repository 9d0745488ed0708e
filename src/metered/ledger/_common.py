"""What both ledgers share: argument checks and the cache of prepared charges."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Generic, Protocol, TypeVar

from metered.ledger.types import Charge


def validate_charges(charges: Sequence[Charge]) -> tuple[Charge, ...]:
    """The charges as a tuple, each account at most once.

    Raises:
        ValueError: no account, or an account named twice.
    """
    result = tuple(charges)
    if not result:
        raise ValueError("charges must name at least one account")
    if len(result) > 1 and len({c.account for c in result}) != len(result):
        raise ValueError(f"each account may appear once in charges, got {result!r}")
    return result


def threshold_fractions(
    thresholds: Iterable[Decimal | float | str], retain_seconds: float
) -> tuple[Decimal, ...]:
    """Sorted, distinct alert fractions, after checking the ledger's settings.

    Raises:
        ValueError: a fraction that is not a positive finite number, or a negative
            ``retain_seconds``.
    """
    fractions = sorted({Decimal(str(t)) for t in thresholds})
    if any(not f.is_finite() or f <= 0 for f in fractions):
        raise ValueError(f"thresholds must be positive fractions, got {fractions}")
    if not retain_seconds >= 0:
        raise ValueError(f"retain_seconds must be >= 0, got {retain_seconds!r}")
    return tuple(fractions)


class _Prepared(Protocol):
    @property
    def charges(self) -> tuple[Charge, ...]: ...


P = TypeVar("P", bound=_Prepared)


class PlanCache(Generic[P]):
    """Charges prepared once (validated, budgets indexed) and reused while the same tuple
    comes back, which is what the engine does for every call of an account.

    Only tuples are remembered: a tuple of frozen charges cannot change, a list can. The
    plan keeps its tuple alive, so an ``id()`` stays unique while it is cached. Safe
    without a lock: concurrent misses just prepare the same plan twice.
    """

    __slots__ = ("_last", "_plans", "_prepare", "_size")

    def __init__(self, prepare: Callable[[tuple[Charge, ...]], P], *, size: int) -> None:
        self._prepare = prepare
        self._size = size
        self._plans: dict[int, P] = {}
        self._last: P | None = None

    def __call__(self, charges: Sequence[Charge]) -> P:
        plan = self._last  # hold and capture of one call pass the same tuple
        if plan is not None and plan.charges is charges:
            return plan
        plans = self._plans
        if type(charges) is tuple:
            plan = plans.get(id(charges))
            if plan is not None and plan.charges is charges:
                self._last = plan
                return plan
        plan = self._prepare(validate_charges(charges))
        if type(charges) is tuple:
            if len(plans) >= self._size:
                plans.clear()
            plans[id(charges)] = self._last = plan
        return plan
