"""The :class:`Ledger` protocol: the operations every store of holds and charges offers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from metered.config.budgets import Budget, Window
from metered.ledger.types import Balance, Charge, Hold, Receipt

__all__ = ["Ledger"]


@runtime_checkable
class Ledger(Protocol):
    """The store of holds and charges (see :mod:`metered.ledger` for the rules).

    Every method has an async twin (``hold``/``ahold`` ...). ``now`` (epoch seconds)
    defaults to the ledger's clock; it is explicit so a shared store computes nothing
    time-dependent itself. Amounts are integer nano-USD.

    Every ledger checks its arguments the same way, before reading or writing anything,
    and raises :class:`ValueError` for a bad one: a key that is not a non-empty ``str``;
    an amount that is not an ``int`` (``bool`` is not one) from 0 to 2**53 - 1; charges
    that are not a non-empty sequence of :class:`Charge` naming each account once
    (``capture``'s fallback charges too, whether or not the key is known); a
    ``ttl_seconds`` that is not a finite positive number; a ``floor_nanos`` that is not
    ``None`` or an amount no greater than the call's; a ``now`` that is not finite
    epoch seconds; a ``balance`` account that is not a non-empty ``str`` or a budget
    that is not a :class:`Budget`, :class:`Window` or ``None``. Using a key for the other
    kind of entry (capturing a charge, adjusting a live hold) is a :class:`ValueError`
    too.

    The engine settles async calls in a task shielded from the caller's cancellation,
    except on a :class:`MemoryLedger` whose async methods are its own (they never
    suspend, so nothing can interrupt them).
    """

    def hold(
        self,
        key: str,
        charges: Sequence[Charge],
        amount_nanos: int,
        *,
        ttl_seconds: float,
        now: float | None = None,
        floor_nanos: int | None = None,
    ) -> Hold:
        """Reserve ``amount_nanos`` on every account in ``charges``, atomically.

        Args:
            key: idempotency key of the call; a repeat returns the existing hold.
            charges: the accounts to hold against (each at most once) and their budgets.
            amount_nanos: the call's maximum price.
            ttl_seconds: after this the hold stops counting (a crashed caller never
                locks budget); capture still records spend after expiry.
            now: epoch seconds.
            floor_nanos: make the hold elastic: when the budgets cannot pay
                ``amount_nanos``, hold the most that every budget of every account can
                still pay, if that is at least ``floor_nanos`` (0 to ``amount_nanos``).
                :attr:`Hold.amount_nanos` says what was held. Decided inside the one
                atomic operation, so concurrent holds never sum above a budget.

        Raises:
            BudgetExceeded: the first account and budget (in order) that cannot pay
                (``floor_nanos``, when given); nothing is held on any account.
                ``retry_after`` is the seconds until the window frees enough (calendar
                reset, rolling spend ageing out), or ``None`` when waiting cannot help.
        """
        ...

    async def ahold(
        self,
        key: str,
        charges: Sequence[Charge],
        amount_nanos: int,
        *,
        ttl_seconds: float,
        now: float | None = None,
        floor_nanos: int | None = None,
    ) -> Hold:
        """Async :meth:`hold`."""
        ...

    def capture(
        self,
        key: str,
        amount_nanos: int,
        *,
        charges: Sequence[Charge] | None = None,
        now: float | None = None,
    ) -> Receipt:
        """Turn a hold into spend of ``amount_nanos`` (the actual price).

        The amount may exceed the hold: it is recorded anyway (the call happened) and
        the budget may go over. An expired hold is still captured (``status="late"``).
        An unknown key records the spend against ``charges`` if given (``late``),
        otherwise nothing (``unknown``). Capturing twice, or after a release, changes
        nothing (``unchanged``).
        """
        ...

    async def acapture(
        self,
        key: str,
        amount_nanos: int,
        *,
        charges: Sequence[Charge] | None = None,
        now: float | None = None,
    ) -> Receipt:
        """Async :meth:`capture`."""
        ...

    def release(self, key: str, *, now: float | None = None) -> None:
        """Drop an active hold without spending; a no-op for any other key."""
        ...

    async def arelease(self, key: str, *, now: float | None = None) -> None:
        """Async :meth:`release`."""
        ...

    def charge(
        self,
        key: str,
        charges: Sequence[Charge],
        amount_nanos: int,
        *,
        enforce: bool = True,
        now: float | None = None,
        floor_nanos: int | None = None,
    ) -> Receipt:
        """Spend ``amount_nanos`` now on every account in ``charges``, atomically.

        Args:
            key: idempotency key; a repeat changes nothing.
            charges: the accounts to charge (each at most once) and their budgets.
            amount_nanos: the quoted price.
            enforce: check budgets first (like :meth:`hold`); ``False`` records the
                spend regardless.
            now: epoch seconds.
            floor_nanos: when enforcing, charge elastically as :meth:`hold` holds
                (:attr:`Receipt.amount_nanos` says what was charged).

        Raises:
            BudgetExceeded: when enforcing and an account cannot pay; nothing is charged.
        """
        ...

    async def acharge(
        self,
        key: str,
        charges: Sequence[Charge],
        amount_nanos: int,
        *,
        enforce: bool = True,
        now: float | None = None,
        floor_nanos: int | None = None,
    ) -> Receipt:
        """Async :meth:`charge`."""
        ...

    def adjust(self, key: str, amount_nanos: int, *, now: float | None = None) -> Receipt:
        """Set a charge's (or captured hold's) final amount to ``amount_nanos``.

        Absolute, so repeating it is harmless. A refunded entry is final (``unchanged``).
        """
        ...

    async def aadjust(self, key: str, amount_nanos: int, *, now: float | None = None) -> Receipt:
        """Async :meth:`adjust`."""
        ...

    def refund(self, key: str, *, now: float | None = None) -> Receipt:
        """Return all of a charge's (or captured hold's) spend; final and idempotent."""
        ...

    async def arefund(self, key: str, *, now: float | None = None) -> Receipt:
        """Async :meth:`refund`."""
        ...

    def balance(
        self, account: str, budget: Budget | Window | None = None, *, now: float | None = None
    ) -> Balance:
        """An account's spend, holds and remaining budget in one window.

        Args:
            account: the account.
            budget: a budget (window and limit), a bare window (no limit), or ``None``
                for lifetime spend.
            now: epoch seconds.
        """
        ...

    async def abalance(
        self, account: str, budget: Budget | Window | None = None, *, now: float | None = None
    ) -> Balance:
        """Async :meth:`balance`."""
        ...

    def sweep(self, *, now: float | None = None) -> int:
        """Expire due holds and forget finished keys now; returns the holds expired.

        Every operation already does this lazily; call it to free memory when idle.
        """
        ...

    async def asweep(self, *, now: float | None = None) -> int:
        """Async :meth:`sweep`."""
        ...

    def close(self) -> None:
        """Release the store's resources (connections)."""
        ...

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        ...
