"""What the ledger operations take and return: charges, holds, receipts, thresholds, balances.

Values only (immutable, cheap to build: one of each is made on every metered call); the
rules that produce them are in :mod:`metered.ledger`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, NamedTuple

from metered.config.budgets import Budget, Window
from metered.money import from_nanos

__all__ = [
    "DEFAULT_THRESHOLDS",
    "Balance",
    "Charge",
    "EntryState",
    "Hold",
    "Receipt",
    "ReceiptStatus",
    "Threshold",
]

#: Where a hold or charge stands. Holds: ``held`` then ``captured``, ``released`` or
#: ``expired``; charges: ``charged``; either may end ``refunded`` once spent.
EntryState = Literal["held", "captured", "released", "expired", "charged", "refunded"]

#: What an operation did: ``applied`` (it changed the ledger), ``late`` (spend recorded
#: without a live hold: the hold had expired or was never seen), ``unchanged`` (a repeat,
#: or the entry is final) or ``unknown`` (no such key, nothing recorded).
ReceiptStatus = Literal["applied", "late", "unchanged", "unknown"]

#: Fractions of a budget at which :attr:`Receipt.crossed` reports a threshold.
DEFAULT_THRESHOLDS: tuple[Decimal, ...] = (Decimal("0.5"), Decimal("0.8"), Decimal(1))


@dataclass(frozen=True, slots=True)
class Charge:
    """One account a call is charged to, and the budgets enforced on it.

    Attributes:
        account: who pays (a user, API key, team or feature tag).
        budgets: limits checked before holding or charging; empty means the spend is
            only tracked.
    """

    account: str
    budgets: tuple[Budget, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.account, str) or not self.account:
            raise ValueError(f"Charge.account must be a non-empty str, got {self.account!r}")
        if not isinstance(self.budgets, tuple):
            object.__setattr__(self, "budgets", tuple(self.budgets))


class Hold(NamedTuple):
    """What :meth:`Ledger.hold` holds (or held, for a repeated key).

    A named tuple, like :class:`Receipt`: one is built on every metered call.

    Attributes:
        key: the idempotency key of the call.
        state: ``held`` unless a repeated key finds the hold already finished.
        amount_nanos: the amount held.
        accounts: the accounts held against, in charge order.
        expires_at: epoch seconds after which the hold stops counting.
        replayed: ``True`` when the key was already held: nothing new was held.
    """

    key: str
    state: EntryState
    amount_nanos: int
    accounts: tuple[str, ...]
    expires_at: float
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Threshold:
    """A budget threshold a spend has just crossed (fires once per period).

    Attributes:
        account: the account whose budget it is.
        budget: the budget crossed.
        fraction: the threshold, e.g. ``Decimal("0.8")``.
        spent_nanos: spend in the window after the crossing spend.
        period: id of the window period it fired in (see :meth:`Window.period`).
    """

    account: str
    budget: Budget
    fraction: Decimal
    spent_nanos: int
    period: str


class Receipt(NamedTuple):
    """What a capture, charge, adjust or refund did.

    A named tuple (immutable, and cheaper to build than a frozen dataclass): one is built
    on every metered call.

    Attributes:
        key: the idempotency key.
        status: ``applied``, ``late``, ``unchanged`` or ``unknown`` (see
            :data:`ReceiptStatus`).
        state: the entry's state afterwards; ``None`` for an unknown key.
        amount_nanos: the entry's spend afterwards (the captured or charged amount).
        delta_nanos: spend this call added (negative for a refund); 0 when unchanged.
        crossed: thresholds this call's spend crossed, in ascending order.
        remaining_nanos: for each account of the entry, in charge order, the least
            remaining of the budgets it was charged with right after this call (what
            :meth:`Ledger.balance` reports as ``remaining_nanos``), ``None`` for an account
            without budgets. Empty when the call changed nothing, or when the ledger does
            not report it (then ask :meth:`Ledger.balance`).
    """

    key: str
    status: ReceiptStatus
    state: EntryState | None
    amount_nanos: int = 0
    delta_nanos: int = 0
    crossed: tuple[Threshold, ...] = ()
    remaining_nanos: tuple[int | None, ...] = ()


@dataclass(frozen=True, slots=True)
class Balance:
    """An account's standing in one window.

    Attributes:
        account: the account.
        window: the window reported.
        spent_nanos: spend recorded in the current period of the window.
        held_nanos: active holds (they count against every window).
        limit_nanos: the budget's limit; ``None`` when asked without a budget.
        remaining_nanos: ``limit - spent - held``, never below 0; ``None`` without a limit.
        resets_at: epoch seconds when the period ends; ``None`` for total and rolling.
    """

    account: str
    window: Window
    spent_nanos: int
    held_nanos: int
    limit_nanos: int | None
    remaining_nanos: int | None
    resets_at: int | None

    @property
    def spent(self) -> Decimal:
        """Spend in USD."""
        return from_nanos(self.spent_nanos)

    @property
    def remaining(self) -> Decimal | None:
        """Remaining budget in USD, ``None`` without a limit."""
        return None if self.remaining_nanos is None else from_nanos(self.remaining_nanos)
