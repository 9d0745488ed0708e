"""The in-process ledger, the embedded default.

Thread-safe and asyncio-safe: every operation is one short critical section under a
:class:`threading.Lock`. The async methods call the sync ones: nothing awaits inside
the lock, and no I/O happens under it, so an event loop is never stalled for long.

Each operation costs O(1) in the common case plus O(accounts x budgets) of the call
itself. Expired holds and forgotten keys come off a heap of deadlines lazily, at the start
of every operation; rolling spend sits in at most ~60 buckets per window with a running
total. State lives in this process only: replicas that share budgets need a shared
ledger (Redis).

This sits on every metered call, so a charges tuple is validated and prepared once (its
budgets' threshold amounts, alert keys and rolling windows) and reused while the same
tuple comes back, as the engine does for every call of an account.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from decimal import Decimal
from typing import Any, Concatenate, ParamSpec, TypeVar

from metered.config.budgets import Budget, Window, calendar_periods
from metered.ledger._common import (
    PlanCache,
    check_amount,
    check_balance_args,
    check_floor,
    check_key,
    check_now,
    check_ttl,
    threshold_fractions,
)
from metered.ledger._memory_state import (
    Account,
    Entry,
    Plan,
    Rolling,
    Where,
    check_budgets,
    crossings,
    least_remaining,
    replayed_hold,
    require_kind,
)
from metered.ledger.protocol import Ledger
from metered.ledger.types import (
    DEFAULT_THRESHOLDS,
    Balance,
    Charge,
    Hold,
    Receipt,
    ReceiptStatus,
    Threshold,
)

__all__ = ["MemoryLedger"]

_SPENT_STATES = ("captured", "charged")
# Prepared charges tuples remembered per ledger: the engine reuses one tuple per account,
# and each costs ~0.6 KB.
_PLAN_CACHE_SIZE = 4096

S = TypeVar("S", bound="MemoryLedger")
P = ParamSpec("P")
R = TypeVar("R")


def _inline(
    method: Callable[Concatenate[S, P], R],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """The async twin of a sync method: it runs ``self.<method>`` and never suspends.

    Dispatch is by name, so a subclass that overrides the sync method changes its twin too.
    """
    name = method.__name__

    async def twin(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = getattr(self, name)(*args, **kwargs)
        return result

    twin.__name__ = twin.__qualname__ = "a" + name
    twin.__doc__ = f"Async :meth:`{name}`."
    return twin


class MemoryLedger(Ledger):
    """In-process :class:`~metered.ledger.Ledger`: exact, atomic, per process.

    Args:
        thresholds: budget fractions reported in :attr:`Receipt.crossed` when spend
            crosses them (e.g. ``0.8`` = 80%). Floats are read as written (``0.8`` is
            exactly 4/5).
        retain_seconds: how long a finished (or expired) key is remembered so repeats
            stay idempotent and a late capture still finds its accounts.
        clock: the default ``now`` (epoch seconds), injectable for tests.
    """

    def __init__(
        self,
        *,
        thresholds: Iterable[Decimal | float | str] = DEFAULT_THRESHOLDS,
        retain_seconds: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        fractions = threshold_fractions(thresholds, retain_seconds)
        # Integer ratios keep threshold comparisons exact on nano-USD.
        self._thresholds = tuple((f, *f.as_integer_ratio()) for f in fractions)
        self._alerting = bool(self._thresholds)
        self._retain = float(retain_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._accounts: dict[str, Account] = {}
        self._deadlines: list[tuple[float, str]] = []
        thresholds_ = self._thresholds
        self._plan = PlanCache(lambda charges: Plan(charges, thresholds_), size=_PLAN_CACHE_SIZE)

    # --- holds ------------------------------------------------------------------------

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
        check_key(key)
        plan = self._plan(charges)
        check_amount(amount_nanos)
        check_floor(floor_nanos, amount_nanos)
        check_ttl(ttl_seconds)
        now = check_now(now, self._clock)
        with self._lock:
            if self._deadlines and self._deadlines[0][0] <= now:
                self._expire(now)
            entry = self._entries.get(key)
            if entry is not None:
                require_kind(entry, hold=True, key=key)
                return replayed_hold(key, entry)
            if plan.watched:
                amount_nanos = check_budgets(self._accounts, plan, amount_nanos, now, floor_nanos)
            expires_at = now + ttl_seconds
            entry = Entry(plan, True, "held", amount_nanos, 0, now, expires_at)
            accounts = self._accounts
            for name in plan.accounts:
                account = accounts.get(name)
                if account is None:
                    account = accounts[name] = Account()
                account.held += amount_nanos
            self._entries[key] = entry
            heapq.heappush(self._deadlines, (expires_at, key))
            return Hold(key, "held", amount_nanos, plan.accounts, expires_at)

    def capture(
        self,
        key: str,
        amount_nanos: int,
        *,
        charges: Sequence[Charge] | None = None,
        now: float | None = None,
    ) -> Receipt:
        check_key(key)
        # Checked even when the key is known and they go unused: the same call must not
        # pass or fail depending on what the ledger happens to remember.
        plan = None if charges is None else self._plan(charges)
        check_amount(amount_nanos)
        now = check_now(now, self._clock)
        with self._lock:
            if self._deadlines and self._deadlines[0][0] <= now:
                self._expire(now)
            entry = self._entries.get(key)
            status: ReceiptStatus
            if entry is None:
                if plan is None:
                    return Receipt(key, "unknown", None)
                # a hold this ledger forgot (expired long ago, or held elsewhere)
                entry = Entry(plan, True, "captured", 0, 0, now, now)
                self._entries[key] = entry
                status = "late"
            else:
                require_kind(entry, hold=True, key=key)
                if entry.state == "held":
                    self._unhold(entry)
                    status = "applied"
                elif entry.state == "expired":
                    status = "late"
                else:
                    return self._unchanged(key, entry, now)
            entry.state = "captured"
            entry.at = now
            entry.amount = amount_nanos
            crossed, remaining = self._record(entry, amount_nanos, now)
            self._finish(key, entry, now)
            return Receipt(key, status, "captured", amount_nanos, amount_nanos, crossed, remaining)

    def release(self, key: str, *, now: float | None = None) -> None:
        check_key(key)
        now = check_now(now, self._clock)
        with self._lock:
            self._expire(now)
            entry = self._entries.get(key)
            if entry is None:
                return
            require_kind(entry, hold=True, key=key)
            if entry.state == "held":
                self._unhold(entry)
                entry.state = "released"
                self._finish(key, entry, now)

    # --- charges ----------------------------------------------------------------------

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
        check_key(key)
        plan = self._plan(charges)
        check_amount(amount_nanos)
        check_floor(floor_nanos, amount_nanos)
        now = check_now(now, self._clock)
        with self._lock:
            if self._deadlines and self._deadlines[0][0] <= now:
                self._expire(now)
            entry = self._entries.get(key)
            if entry is not None:
                require_kind(entry, hold=False, key=key)
                return self._unchanged(key, entry, now)
            if enforce and plan.watched:
                amount_nanos = check_budgets(self._accounts, plan, amount_nanos, now, floor_nanos)
            entry = Entry(plan, False, "charged", 0, amount_nanos, now, now)
            self._entries[key] = entry
            crossed, remaining = self._record(entry, amount_nanos, now)
            self._finish(key, entry, now)
            return Receipt(
                key, "applied", "charged", amount_nanos, amount_nanos, crossed, remaining
            )

    def adjust(self, key: str, amount_nanos: int, *, now: float | None = None) -> Receipt:
        check_key(key)
        check_amount(amount_nanos)
        return self._correct(key, amount_nanos, refund=False, now=check_now(now, self._clock))

    def refund(self, key: str, *, now: float | None = None) -> Receipt:
        check_key(key)
        return self._correct(key, 0, refund=True, now=check_now(now, self._clock))

    # --- queries and upkeep -----------------------------------------------------------

    def balance(
        self, account: str, budget: Budget | Window | None = None, *, now: float | None = None
    ) -> Balance:
        check_balance_args(account, budget)
        now = check_now(now, self._clock)
        with self._lock:
            self._expire(now)
            return self._balance(account, budget, now)

    def sweep(self, *, now: float | None = None) -> int:
        now = check_now(now, self._clock)
        with self._lock:
            return self._expire(now)

    def close(self) -> None:
        """Nothing to release: the state is plain memory."""

    # The async twins run the sync methods inline (the module docstring says why that is safe).
    ahold = _inline(hold)
    acapture = _inline(capture)
    arelease = _inline(release)
    acharge = _inline(charge)
    aadjust = _inline(adjust)
    arefund = _inline(refund)
    abalance = _inline(balance)
    asweep = _inline(sweep)
    aclose = _inline(close)

    # --- internals --------------------------------------------------------------------

    # the methods below run with the lock held, except _correct, which takes it

    def _balance(self, name: str, budget: Budget | Window | None, now: float) -> Balance:
        window, limit = check_balance_args(name, budget)
        account = self._accounts.get(name)
        spent = (
            account.spent(Where(window), now, calendar_periods(now)) if account is not None else 0
        )
        held = account.held if account is not None else 0
        return Balance(
            account=name,
            window=window,
            spent_nanos=spent,
            held_nanos=held,
            limit_nanos=limit,
            remaining_nanos=None if limit is None else max(0, limit - spent - held),
            resets_at=window.period(now).ends_at,
        )

    def _unhold(self, entry: Entry) -> None:
        accounts = self._accounts
        for name in entry.plan.accounts:
            accounts[name].held -= entry.held

    def _finish(self, key: str, entry: Entry, when: float) -> None:
        entry.forget_at = when + self._retain
        heapq.heappush(self._deadlines, (entry.forget_at, key))

    def _expire(self, now: float) -> int:
        """Expire due holds and forget due keys; returns the number of holds expired."""
        deadlines = self._deadlines
        expired = 0
        while deadlines and deadlines[0][0] <= now:
            _, key = heapq.heappop(deadlines)
            entry = self._entries.get(key)
            if entry is None:
                continue
            # A key has a stale deadline left over after each state change: skip those.
            if entry.state == "held":
                if entry.expires_at <= now:
                    self._unhold(entry)
                    entry.state = "expired"
                    self._finish(key, entry, entry.expires_at)
                    expired += 1
            elif entry.forget_at <= now:
                del self._entries[key]
        return expired

    def _correct(self, key: str, amount: int, *, refund: bool, now: float) -> Receipt:
        with self._lock:
            self._expire(now)
            entry = self._entries.get(key)
            if entry is None:
                return Receipt(key, "unknown", None)
            if entry.state == "held":
                raise ValueError(f"hold {key!r} is still active: capture or release it first")
            if entry.state not in _SPENT_STATES:
                return self._unchanged(key, entry, now)
            delta = amount - entry.amount
            if delta == 0 and not refund:
                return self._unchanged(key, entry, now)
            entry.amount = amount
            if refund:
                entry.state = "refunded"
            crossed, remaining = self._record(entry, delta, now)
            self._finish(key, entry, now)
            return Receipt(key, "applied", entry.state, amount, delta, crossed, remaining)

    def _record(
        self, entry: Entry, delta: int, now: float
    ) -> tuple[tuple[Threshold, ...], tuple[int | None, ...]]:
        """Add ``delta`` spend, dated ``entry.at``, to every account of the entry.

        Returns the thresholds crossed and each account's least remaining budget (as
        :meth:`_remaining` reports it), read in the same pass over the budgets.
        """
        at = entry.at
        at_periods = calendar_periods(at)
        now_periods = at_periods if at == now else calendar_periods(now)
        alerting = delta > 0 and self._alerting
        crossed: list[Threshold] = []
        remaining: list[int | None] = []
        accounts = self._accounts
        for payer in entry.plan.payers:
            account = accounts.get(payer.name)
            if account is None:
                account = accounts[payer.name] = Account()
            watches = payer.watches
            if delta:
                # Only rolling windows need the spend before (their thresholds re-arm).
                before = (
                    [account.spent(w, now, now_periods) for w in watches]
                    if alerting and payer.rolling
                    else None
                )
                account.total += delta
                periods = account.periods
                day, week, month = at_periods
                if periods[0] == day.id and periods[1] == week.id and periods[2] == month.id:
                    nanos = account.nanos  # the common case: spend lands in the current periods
                    nanos[0] += delta
                    nanos[1] += delta
                    nanos[2] += delta
                else:
                    account.land(delta, at_periods, now_periods)
                for window in payer.rolling:
                    series = account.rolling.get(window.seconds or 0)
                    if series is None:
                        series = account.rolling[window.seconds or 0] = Rolling(window)
                    series.add(at, delta, now)
            if not watches:
                remaining.append(None)
                continue
            least = None
            for i, watch in enumerate(watches):
                after = account.spent(watch, now, now_periods)
                left = watch.limit - after
                if least is None or left < least:
                    least = left
                if alerting and watch.marks and after >= watch.marks[0]:
                    spent_before = before[i] if before is not None else 0
                    crossings(
                        payer.name,
                        account,
                        watch,
                        spent_before,
                        after,
                        now_periods,
                        self._thresholds,
                        crossed,
                    )
            assert least is not None
            least -= account.held
            remaining.append(least if least > 0 else 0)
        return (tuple(crossed) if crossed else ()), tuple(remaining)

    def _unchanged(self, key: str, entry: Entry, now: float) -> Receipt:
        remaining = least_remaining(self._accounts, entry.plan, now)
        return Receipt(key, "unchanged", entry.state, entry.amount, 0, (), remaining)
