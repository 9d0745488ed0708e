"""The in-process ledger, the embedded default.

Thread-safe and asyncio-safe: every operation is one short critical section under a
:class:`threading.Lock`. The async methods call the sync ones: nothing awaits inside
the lock, and it is held for microseconds, so an event loop is never stalled for long.

Each operation costs O(1) in the common case plus O(accounts x budgets) of the call
itself. Expired holds and forgotten keys come off a heap of deadlines lazily, at the start
of every operation; rolling spend sits in at most ~60 buckets per window with a running
total. State lives in this process only: replicas that share budgets need a shared
ledger (Redis).
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal

from metered.exceptions import BudgetExceeded
from metered.ledger import (
    DEFAULT_THRESHOLDS,
    Balance,
    Budget,
    Charge,
    EntryState,
    Hold,
    Ledger,
    Receipt,
    ReceiptStatus,
    Threshold,
    Window,
    calendar_periods,
)
from metered.money import from_nanos

__all__ = ["MemoryLedger"]

# Position of each calendar window in calendar_periods() and in _Account.periods.
_CALENDAR_INDEX = {"day": 0, "week": 1, "month": 2}
_SPENT_STATES = ("captured", "charged")


class _Rolling:
    """Spend of one account over one rolling window, bucketed, with a running total."""

    __slots__ = ("buckets", "span", "total", "width")

    def __init__(self, window: Window) -> None:
        self.width = window.granule
        self.span = window.seconds or 0
        # Insertion order is time order (oldest first) because spend lands at "now".
        self.buckets: dict[int, int] = {}
        self.total = 0

    def prune(self, now: float) -> None:
        # A bucket counts while any part of it is inside (now - span, now].
        horizon = now - self.span - self.width
        buckets = self.buckets
        while buckets:
            first = next(iter(buckets))
            if first > horizon:
                return
            self.total -= buckets.pop(first)

    def add(self, at: float, delta: int, now: float) -> None:
        start = int(at // self.width) * self.width
        current = self.buckets.get(start)
        if current is not None:
            self.buckets[start] = current + delta
            self.total += delta
        elif delta > 0 and start > now - self.span - self.width:
            self.buckets[start] = delta
            self.total += delta
        # Otherwise the bucket has aged out: the correction falls outside the window.

    def retry_after(self, need: int, now: float) -> int | None:
        """Seconds until at least ``need`` nanos of spend have aged out, if ever."""
        freed = 0
        for start, nanos in self.buckets.items():
            freed += nanos
            if freed >= need:
                return max(1, math.ceil(start + self.width + self.span - now))
        return None


class _Account:
    __slots__ = ("alerts", "held", "nanos", "periods", "rolling", "total")

    def __init__(self) -> None:
        self.held = 0
        self.total = 0
        # Current day, week and month period ids and their spend; older periods are dropped.
        self.periods: list[str | None] = [None, None, None]
        self.nanos = [0, 0, 0]
        self.rolling: dict[int, _Rolling] = {}
        # budget -> (period id, number of thresholds already fired in it)
        self.alerts: dict[Budget, tuple[str, int]] = {}

    def spent(self, window: Window, now: float) -> int:
        kind = window.kind
        if kind == "total":
            return self.total
        if kind == "rolling":
            series = self.rolling.get(window.seconds or 0)
            if series is None:
                return 0
            series.prune(now)
            return series.total
        i = _CALENDAR_INDEX[kind]
        return self.nanos[i] if self.periods[i] == calendar_periods(now)[i].id else 0


class _Entry:
    """One hold or charge, remembered by key."""

    __slots__ = ("amount", "at", "charges", "expires_at", "forget_at", "held", "is_hold", "state")

    def __init__(
        self,
        *,
        charges: tuple[Charge, ...],
        is_hold: bool,
        state: EntryState,
        held: int,
        amount: int,
        at: float,
        expires_at: float,
    ) -> None:
        self.charges = charges
        self.is_hold = is_hold
        self.state: EntryState = state
        self.held = held  # nanos held (holds only)
        self.amount = amount  # nanos spent
        self.at = at  # when the spend was first recorded: the periods it lands in
        self.expires_at = expires_at
        self.forget_at = math.inf


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
        fractions = sorted({Decimal(str(t)) for t in thresholds})
        if any(not f.is_finite() or f <= 0 for f in fractions):
            raise ValueError(f"thresholds must be positive fractions, got {fractions}")
        if not retain_seconds >= 0:
            raise ValueError(f"retain_seconds must be >= 0, got {retain_seconds!r}")
        # Integer ratios keep threshold comparisons exact on nano-USD.
        self._thresholds = tuple((f, *f.as_integer_ratio()) for f in fractions)
        self._retain = float(retain_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._accounts: dict[str, _Account] = {}
        self._deadlines: list[tuple[float, str]] = []

    # --- holds ------------------------------------------------------------------------

    def hold(
        self,
        key: str,
        charges: Sequence[Charge],
        amount_nanos: int,
        *,
        ttl_seconds: float,
        now: float | None = None,
    ) -> Hold:
        charges_ = _validate_charges(charges)
        _validate_nanos(amount_nanos)
        if not 0 < ttl_seconds < math.inf:
            raise ValueError(f"ttl_seconds must be a positive number, got {ttl_seconds!r}")
        now = self._clock() if now is None else now
        with self._lock:
            self._expire(now)
            entry = self._entries.get(key)
            if entry is not None:
                _require(entry, hold=True, key=key)
                return _hold(key, entry, replayed=True)
            self._check(charges_, amount_nanos, now)
            entry = _Entry(
                charges=charges_,
                is_hold=True,
                state="held",
                held=amount_nanos,
                amount=0,
                at=now,
                expires_at=now + ttl_seconds,
            )
            for charge in charges_:
                self._account(charge.account).held += amount_nanos
            self._entries[key] = entry
            heapq.heappush(self._deadlines, (entry.expires_at, key))
            return _hold(key, entry, replayed=False)

    async def ahold(
        self,
        key: str,
        charges: Sequence[Charge],
        amount_nanos: int,
        *,
        ttl_seconds: float,
        now: float | None = None,
    ) -> Hold:
        return self.hold(key, charges, amount_nanos, ttl_seconds=ttl_seconds, now=now)

    def capture(
        self,
        key: str,
        amount_nanos: int,
        *,
        charges: Sequence[Charge] | None = None,
        now: float | None = None,
    ) -> Receipt:
        _validate_nanos(amount_nanos)
        fallback = None if charges is None else _validate_charges(charges)
        now = self._clock() if now is None else now
        with self._lock:
            self._expire(now)
            entry = self._entries.get(key)
            status: ReceiptStatus
            if entry is None:
                if fallback is None:
                    return Receipt(key, "unknown", None)
                entry = _Entry(
                    charges=fallback,
                    is_hold=True,
                    state="captured",
                    held=0,
                    amount=0,
                    at=now,
                    expires_at=now,
                )
                self._entries[key] = entry
                status = "late"
            else:
                _require(entry, hold=True, key=key)
                if entry.state == "held":
                    self._unhold(entry)
                    status = "applied"
                elif entry.state == "expired":
                    status = "late"
                else:
                    return _unchanged(key, entry)
            entry.state = "captured"
            entry.at = now
            entry.amount = amount_nanos
            crossed = self._record(entry, amount_nanos, now)
            self._finish(key, entry, now)
            return Receipt(key, status, "captured", amount_nanos, amount_nanos, crossed)

    async def acapture(
        self,
        key: str,
        amount_nanos: int,
        *,
        charges: Sequence[Charge] | None = None,
        now: float | None = None,
    ) -> Receipt:
        return self.capture(key, amount_nanos, charges=charges, now=now)

    def release(self, key: str, *, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        with self._lock:
            self._expire(now)
            entry = self._entries.get(key)
            if entry is None:
                return
            _require(entry, hold=True, key=key)
            if entry.state == "held":
                self._unhold(entry)
                entry.state = "released"
                self._finish(key, entry, now)

    async def arelease(self, key: str, *, now: float | None = None) -> None:
        self.release(key, now=now)

    # --- charges ----------------------------------------------------------------------

    def charge(
        self,
        key: str,
        charges: Sequence[Charge],
        amount_nanos: int,
        *,
        enforce: bool = True,
        now: float | None = None,
    ) -> Receipt:
        charges_ = _validate_charges(charges)
        _validate_nanos(amount_nanos)
        now = self._clock() if now is None else now
        with self._lock:
            self._expire(now)
            entry = self._entries.get(key)
            if entry is not None:
                _require(entry, hold=False, key=key)
                return _unchanged(key, entry)
            if enforce:
                self._check(charges_, amount_nanos, now)
            entry = _Entry(
                charges=charges_,
                is_hold=False,
                state="charged",
                held=0,
                amount=amount_nanos,
                at=now,
                expires_at=now,
            )
            self._entries[key] = entry
            crossed = self._record(entry, amount_nanos, now)
            self._finish(key, entry, now)
            return Receipt(key, "applied", "charged", amount_nanos, amount_nanos, crossed)

    async def acharge(
        self,
        key: str,
        charges: Sequence[Charge],
        amount_nanos: int,
        *,
        enforce: bool = True,
        now: float | None = None,
    ) -> Receipt:
        return self.charge(key, charges, amount_nanos, enforce=enforce, now=now)

    def adjust(self, key: str, amount_nanos: int, *, now: float | None = None) -> Receipt:
        _validate_nanos(amount_nanos)
        return self._correct(key, amount_nanos, refund=False, now=now)

    async def aadjust(self, key: str, amount_nanos: int, *, now: float | None = None) -> Receipt:
        return self.adjust(key, amount_nanos, now=now)

    def refund(self, key: str, *, now: float | None = None) -> Receipt:
        return self._correct(key, 0, refund=True, now=now)

    async def arefund(self, key: str, *, now: float | None = None) -> Receipt:
        return self.refund(key, now=now)

    # --- queries and upkeep -----------------------------------------------------------

    def balance(
        self, account: str, budget: Budget | Window | None = None, *, now: float | None = None
    ) -> Balance:
        now = self._clock() if now is None else now
        with self._lock:
            self._expire(now)
            return self._balance(account, budget, now)

    async def abalance(
        self, account: str, budget: Budget | Window | None = None, *, now: float | None = None
    ) -> Balance:
        return self.balance(account, budget, now=now)

    def sweep(self, *, now: float | None = None) -> int:
        now = self._clock() if now is None else now
        with self._lock:
            return self._expire(now)

    async def asweep(self, *, now: float | None = None) -> int:
        return self.sweep(now=now)

    def close(self) -> None:
        """Nothing to release: the state is plain memory."""

    async def aclose(self) -> None:
        """Nothing to release: the state is plain memory."""

    # --- internals (call with the lock held) --------------------------------------------

    def _account(self, name: str) -> _Account:
        account = self._accounts.get(name)
        if account is None:
            account = self._accounts[name] = _Account()
        return account

    def _balance(self, name: str, budget: Budget | Window | None, now: float) -> Balance:
        if budget is None:
            window, limit = Window("total"), None
        elif isinstance(budget, Window):
            window, limit = budget, None
        else:
            window, limit = budget.window, budget.limit_nanos
        account = self._accounts.get(name)
        spent = account.spent(window, now) if account is not None else 0
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

    def _check(self, charges: tuple[Charge, ...], amount: int, now: float) -> None:
        """Raise BudgetExceeded for the first account and budget that cannot pay."""
        for charge in charges:
            if not charge.budgets:
                continue
            account = self._accounts.get(charge.account)
            if account is None:
                for budget in charge.budgets:
                    if amount > budget.limit_nanos:
                        raise _exceeded(charge.account, None, budget, 0, amount, now)
                continue
            for budget in charge.budgets:
                used = account.spent(budget.window, now) + account.held
                if used + amount > budget.limit_nanos:
                    raise _exceeded(charge.account, account, budget, used, amount, now)

    def _unhold(self, entry: _Entry) -> None:
        for charge in entry.charges:
            self._accounts[charge.account].held -= entry.held

    def _finish(self, key: str, entry: _Entry, when: float) -> None:
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

    def _correct(self, key: str, amount: int, *, refund: bool, now: float | None) -> Receipt:
        now = self._clock() if now is None else now
        with self._lock:
            self._expire(now)
            entry = self._entries.get(key)
            if entry is None:
                return Receipt(key, "unknown", None)
            if entry.state == "held":
                raise ValueError(f"hold {key!r} is still active: capture or release it first")
            if entry.state not in _SPENT_STATES:
                return _unchanged(key, entry)
            delta = amount - entry.amount
            if delta == 0 and not refund:
                return _unchanged(key, entry)
            entry.amount = amount
            if refund:
                entry.state = "refunded"
            crossed = self._record(entry, delta, now)
            self._finish(key, entry, now)
            return Receipt(key, "applied", entry.state, amount, delta, crossed)

    def _record(self, entry: _Entry, delta: int, now: float) -> tuple[Threshold, ...]:
        """Add ``delta`` spend, dated ``entry.at``, to every account of the entry."""
        if delta == 0:
            return ()
        crossed: list[Threshold] = []
        at = entry.at
        at_periods = calendar_periods(at)
        now_periods = calendar_periods(now)
        for charge in entry.charges:
            account = self._account(charge.account)
            watched = charge.budgets if delta > 0 and self._thresholds else ()
            before = [account.spent(b.window, now) for b in watched]
            account.total += delta
            for i in range(3):
                period = at_periods[i].id
                if account.periods[i] == period:
                    account.nanos[i] += delta
                elif delta > 0 and period == now_periods[i].id:
                    account.periods[i] = period
                    account.nanos[i] = delta
                # Otherwise the spend's period has closed: a correction to it is dropped.
            rolling = {b.window for b in charge.budgets if b.window.kind == "rolling"}
            for window in rolling:
                series = account.rolling.get(window.seconds or 0)
                if series is None:
                    series = account.rolling[window.seconds or 0] = _Rolling(window)
                series.add(at, delta, now)
            for budget, spent_before in zip(watched, before, strict=True):
                crossed.extend(self._crossings(charge.account, account, budget, spent_before, now))
        return tuple(crossed)

    def _crossings(
        self, name: str, account: _Account, budget: Budget, before: int, now: float
    ) -> list[Threshold]:
        period = budget.window.period(now).id
        after = account.spent(budget.window, now)
        stored = account.alerts.get(budget)
        fired = stored[1] if stored is not None and stored[0] == period else 0
        if budget.window.kind == "rolling":
            # No period ends a rolling window: a threshold re-arms once spend drops below it.
            fired = min(fired, self._level(before, budget.limit_nanos))
        reached = self._level(after, budget.limit_nanos)
        if reached <= fired:
            return []
        account.alerts[budget] = (period, reached)
        return [
            Threshold(name, budget, fraction, after, period)
            for fraction, _, _ in self._thresholds[fired:reached]
        ]

    def _level(self, spent: int, limit: int) -> int:
        """How many thresholds ``spent`` has reached."""
        if spent <= 0:
            return 0
        level = 0
        for _, numerator, denominator in self._thresholds:
            if spent * denominator < limit * numerator:
                break
            level += 1
        return level


def _exceeded(
    name: str, account: _Account | None, budget: Budget, used: int, amount: int, now: float
) -> BudgetExceeded:
    limit = budget.limit_nanos
    window = budget.window
    retry_after: int | None = None
    if amount <= limit:
        if window.kind == "rolling":
            series = account.rolling.get(window.seconds or 0) if account is not None else None
            if series is not None:
                retry_after = series.retry_after(used + amount - limit, now)
        else:
            ends_at = window.period(now).ends_at
            if ends_at is not None:
                retry_after = max(1, math.ceil(ends_at - now))
    return BudgetExceeded(
        name,
        limit=budget.limit,
        spent=from_nanos(used),
        required=from_nanos(amount),
        window=str(window),
        retry_after=retry_after,
    )


def _validate_charges(charges: Sequence[Charge]) -> tuple[Charge, ...]:
    result = tuple(charges)
    if not result:
        raise ValueError("charges must name at least one account")
    if len(result) > 1 and len({c.account for c in result}) != len(result):
        raise ValueError(f"each account may appear once in charges, got {result!r}")
    return result


def _validate_nanos(amount: int) -> None:
    if type(amount) is not int or amount < 0:
        raise ValueError(f"amounts are int nano-USD >= 0, got {amount!r}")


def _require(entry: _Entry, *, hold: bool, key: str) -> None:
    if entry.is_hold != hold:
        used, wanted = ("charge", "hold") if hold else ("hold", "charge")
        raise ValueError(f"key {key!r} belongs to a {used}, not a {wanted}")


def _hold(key: str, entry: _Entry, *, replayed: bool) -> Hold:
    return Hold(
        key=key,
        state=entry.state,
        amount_nanos=entry.held,
        accounts=tuple(c.account for c in entry.charges),
        expires_at=entry.expires_at,
        replayed=replayed,
    )


def _unchanged(key: str, entry: _Entry) -> Receipt:
    return Receipt(key, "unchanged", entry.state, entry.amount)
