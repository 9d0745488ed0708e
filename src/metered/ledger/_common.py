"""What both ledgers share: argument checks and the cache of prepared charges.

Every ledger runs the same checks, in the same order (key, charges, amount, ttl, now), so
a bad argument raises the same :class:`ValueError` whichever store is configured, before
anything is read or written. Charges are checked when a tuple is first prepared
(:class:`PlanCache`): a tuple of frozen charges cannot change afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Generic, Protocol, TypeVar

from metered.config.budgets import Budget, Window
from metered.ledger.types import Charge

#: The largest amount an operation takes. Redis scripts compute in doubles, exact below
#: 2**53 (~$9M per call); the in-memory ledger refuses the same, so the stores stay
#: interchangeable.
MAX_AMOUNT_NANOS = 2**53 - 1


def check_key(key: object) -> str:
    """The idempotency key, checked.

    Raises:
        ValueError: not a non-empty ``str``.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be a non-empty str, got {key!r}")
    return key


def check_amount(amount: object) -> int:
    """An amount in nano-USD, checked.

    Raises:
        ValueError: not an ``int`` (``bool`` is not an amount), negative, or above
            :data:`MAX_AMOUNT_NANOS`.
    """
    if type(amount) is not int or amount < 0:
        raise ValueError(f"amounts are int nano-USD >= 0, got {amount!r}")
    if amount > MAX_AMOUNT_NANOS:
        raise ValueError(f"amounts are at most 2**53 - 1 nano-USD, got {amount}")
    return amount


def check_floor(floor: object, amount: int) -> int | None:
    """A reservation's ``floor_nanos``: ``None``, or an amount from 0 to ``amount``."""
    if floor is None:
        return None
    check_amount(floor)
    assert isinstance(floor, int)
    if floor > amount:
        raise ValueError(f"floor_nanos must not exceed the amount ({amount}), got {floor}")
    return floor


def check_ttl(ttl: object) -> float:
    """A hold's time to live in seconds, checked.

    Raises:
        ValueError: not a finite positive number.
    """
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < math.inf:
        raise ValueError(f"ttl_seconds must be a positive number, got {ttl!r}")
    return ttl


def check_now(now: float | None, clock: Callable[[], float]) -> float:
    """``now`` as given, or the ledger's clock.

    Raises:
        ValueError: a ``now`` that is not a finite number of epoch seconds.
    """
    if now is None:
        return clock()
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
        raise ValueError(f"now must be epoch seconds, got {now!r}")
    return now


def check_balance_args(account: object, budget: object) -> tuple[Window, int | None]:
    """The window and limit :meth:`~metered.ledger.Ledger.balance` reports on.

    Raises:
        ValueError: an account that is not a non-empty ``str``, or a budget that is not a
            :class:`Budget`, a :class:`Window` or ``None``.
    """
    if not isinstance(account, str) or not account:
        raise ValueError(f"account must be a non-empty str, got {account!r}")
    if budget is None:
        return Window("total"), None
    if isinstance(budget, Window):
        return budget, None
    if isinstance(budget, Budget):
        return budget.window, budget.limit_nanos
    raise ValueError(f"budget must be a Budget, a Window or None, got {budget!r}")


def validate_charges(charges: Sequence[Charge]) -> tuple[Charge, ...]:
    """The charges as a tuple, each account at most once.

    Raises:
        ValueError: not a sequence of :class:`Charge`, no account, or an account named
            twice.
    """
    try:
        result = tuple(charges)
    except TypeError:
        raise ValueError(f"charges must be a sequence of Charge, got {charges!r}") from None
    if not result:
        raise ValueError("charges must name at least one account")
    for charge in result:
        if not isinstance(charge, Charge):
            raise ValueError(f"charges must be a sequence of Charge, got {charge!r} in it")
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
