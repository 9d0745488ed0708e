"""The in-process ledger, the embedded default.

Thread-safe and asyncio-safe: every operation is one short critical section under a
:class:`threading.Lock`. The async methods call the sync ones: nothing awaits inside
the lock, and it is held for microseconds, so an event loop is never stalled for long.

Each operation costs O(1) in the common case plus O(accounts x budgets) of the call
itself. Expired holds and forgotten keys come off a heap of deadlines lazily, at the start
of every operation; rolling spend sits in at most ~60 buckets per window with a running
total. State lives in this process only: replicas that share budgets need a shared
ledger (Redis).

This sits on every metered call, so the per-call path avoids repeated work: a charges
tuple is validated and prepared once (its budgets' threshold amounts, alert keys and
rolling windows) and reused while the same tuple comes back, which is what the engine
does for every call of an account.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal

from metered.config.budgets import Budget, Period, Window, calendar_periods
from metered.errors import BudgetExceeded
from metered.ledger._common import PlanCache, threshold_fractions
from metered.ledger.protocol import Ledger
from metered.ledger.types import (
    DEFAULT_THRESHOLDS,
    Balance,
    Charge,
    EntryState,
    Hold,
    Receipt,
    ReceiptStatus,
    Threshold,
)
from metered.money import from_nanos

__all__ = ["MemoryLedger"]

Periods = tuple[Period, Period, Period]
# stands in for calendar_periods(now) where no calendar budget needs it
_NO_PERIODS: Periods = (Period("", None), Period("", None), Period("", None))

# Position of each calendar window in calendar_periods() and in _Account.periods.
_CALENDAR_INDEX = {"day": 0, "week": 1, "month": 2}
_SPENT_STATES = ("captured", "charged")
_ASYNC_METHODS = (
    "ahold",
    "acapture",
    "arelease",
    "acharge",
    "aadjust",
    "arefund",
    "abalance",
    "asweep",
    "aclose",
)
# Prepared charges tuples remembered per ledger (the engine reuses one tuple per account;
# ~0.6 KB each; a miss costs a few microseconds).
_PLAN_CACHE_SIZE = 4096


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
        # budget (_Watch.key) -> (period id, number of thresholds already fired in it)
        self.alerts: dict[tuple[int, str, int | None], tuple[str, int]] = {}

    def spent(self, where: _Where, now: float, now_periods: Periods) -> int:
        """Spend in the current period of a window, given ``calendar_periods(now)``."""
        i = where.calendar
        if i is not None:
            return self.nanos[i] if self.periods[i] == now_periods[i].id else 0
        if where.rolling is None:
            return self.total
        series = self.rolling.get(where.rolling)
        if series is None:
            return 0
        series.prune(now)
        return series.total

    def land(self, delta: int, at_periods: Periods, now_periods: Periods) -> None:
        """Add ``delta`` to the calendar periods spend dated ``at_periods`` landed in."""
        periods, nanos = self.periods, self.nanos
        for i in range(3):
            period = at_periods[i].id
            if periods[i] == period:
                nanos[i] += delta
            elif (
                delta > 0
                and period == now_periods[i].id
                and (
                    periods[i] is None or period > periods[i]  # type: ignore[operator]
                )
            ):
                # Period ids sort by time: a clock that stepped back across midnight must
                # not wipe the spend of the day that has already begun.
                periods[i] = period
                nanos[i] = delta
            # Otherwise the spend's period has closed: a correction to it is dropped.


class _Where:
    """Where an account keeps the spend of a window."""

    __slots__ = ("calendar", "rolling")

    def __init__(self, window: Window) -> None:
        self.calendar = _CALENDAR_INDEX.get(window.kind)  # None: total or rolling
        self.rolling = window.seconds if window.kind == "rolling" else None


class _Watch(_Where):
    """One budget of a charge, prepared: where its spend is read, its alert amounts."""

    __slots__ = ("budget", "key", "limit", "marks", "period")

    def __init__(self, budget: Budget, thresholds: Sequence[tuple[Decimal, int, int]]) -> None:
        super().__init__(budget.window)
        window = budget.window
        limit = budget.limit_nanos
        self.budget = budget
        self.limit = limit
        # The period id of a total or rolling window never changes (calendar: per call).
        self.period = "" if self.calendar is not None else window.period(0).id
        # Alert state is per budget value (what Budget equality compares), not per object.
        self.key = (limit, window.kind, window.seconds)
        # Spend reaches fraction n/d of the limit when spent * d >= limit * n, that is
        # spent >= ceil(limit * n / d): the comparison stays exact and becomes a bisect.
        self.marks = tuple(-(-limit * n // d) for _, n, d in thresholds)

    def level(self, spent: int) -> int:
        """How many thresholds ``spent`` has reached."""
        return bisect_right(self.marks, spent) if spent > 0 else 0


class _Payer:
    """One :class:`Charge`, prepared."""

    __slots__ = ("name", "rolling", "watches")

    def __init__(self, charge: Charge, thresholds: Sequence[tuple[Decimal, int, int]]) -> None:
        self.name = charge.account
        self.watches = tuple(_Watch(b, thresholds) for b in charge.budgets)
        self.rolling = tuple({b.window for b in charge.budgets if b.window.kind == "rolling"})


class _Plan:
    """A validated charges tuple, prepared for the hot path."""

    __slots__ = ("accounts", "calendar", "charges", "payers", "watched")

    def __init__(
        self, charges: tuple[Charge, ...], thresholds: Sequence[tuple[Decimal, int, int]]
    ) -> None:
        self.charges = charges
        self.accounts = tuple(c.account for c in charges)
        self.payers = tuple(_Payer(c, thresholds) for c in charges)
        # whether checking a budget needs the calendar periods of "now"
        self.calendar = any(w.calendar is not None for p in self.payers for w in p.watches)
        self.watched = any(p.watches for p in self.payers)  # any budget to check at all


class _Entry:
    """One hold or charge, remembered by key."""

    __slots__ = ("amount", "at", "expires_at", "forget_at", "held", "is_hold", "plan", "state")

    def __init__(
        self,
        plan: _Plan,
        is_hold: bool,
        state: EntryState,
        held: int,
        amount: int,
        at: float,
        expires_at: float,
    ) -> None:
        self.plan = plan
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
        fractions = threshold_fractions(thresholds, retain_seconds)
        # Integer ratios keep threshold comparisons exact on nano-USD.
        self._thresholds = tuple((f, *f.as_integer_ratio()) for f in fractions)
        self._alerting = bool(self._thresholds)
        self._retain = float(retain_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._accounts: dict[str, _Account] = {}
        self._deadlines: list[tuple[float, str]] = []
        thresholds_ = self._thresholds
        self._plan = PlanCache(lambda charges: _Plan(charges, thresholds_), size=_PLAN_CACHE_SIZE)

    @property
    def async_runs_inline(self) -> bool:
        """Whether the async methods are this class's own, which run the sync ones and
        never suspend: the engine then settles async calls inline rather than in a
        shielded task. False when a subclass or this instance replaces one of them (it
        may await); a subclass may also set it to ``False`` outright."""
        cls = type(self)
        own = vars(self)
        return all(
            name not in own and getattr(cls, name) is getattr(MemoryLedger, name)
            for name in _ASYNC_METHODS
        )

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
        plan = self._plan(charges)
        if type(amount_nanos) is not int or amount_nanos < 0:
            raise _bad_amount(amount_nanos)
        if not 0 < ttl_seconds < math.inf:
            raise ValueError(f"ttl_seconds must be a positive number, got {ttl_seconds!r}")
        now = self._clock() if now is None else now
        with self._lock:
            if self._deadlines and self._deadlines[0][0] <= now:
                self._expire(now)
            entry = self._entries.get(key)
            if entry is not None:
                _require(entry, hold=True, key=key)
                return _hold(key, entry, replayed=True)
            if plan.watched:
                self._check(plan, amount_nanos, now)
            expires_at = now + ttl_seconds
            entry = _Entry(plan, True, "held", amount_nanos, 0, now, expires_at)
            accounts = self._accounts
            for name in plan.accounts:
                account = accounts.get(name)
                if account is None:
                    account = accounts[name] = _Account()
                account.held += amount_nanos
            self._entries[key] = entry
            heapq.heappush(self._deadlines, (expires_at, key))
            return Hold(key, "held", amount_nanos, plan.accounts, expires_at)

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
        if type(amount_nanos) is not int or amount_nanos < 0:
            raise _bad_amount(amount_nanos)
        now = self._clock() if now is None else now
        with self._lock:
            if self._deadlines and self._deadlines[0][0] <= now:
                self._expire(now)
            entry = self._entries.get(key)
            status: ReceiptStatus
            if entry is None:
                if charges is None:
                    return Receipt(key, "unknown", None)
                # a hold this ledger forgot (expired long ago, or held elsewhere): the
                # charges are only needed, and checked, on this path
                entry = _Entry(self._plan(charges), True, "captured", 0, 0, now, now)
                self._entries[key] = entry
                status = "late"
            else:
                if not entry.is_hold:
                    _require(entry, hold=True, key=key)  # raises
                if entry.state == "held":
                    held = entry.held
                    accounts = self._accounts
                    for name in entry.plan.accounts:
                        accounts[name].held -= held
                    status = "applied"
                elif entry.state == "expired":
                    status = "late"
                else:
                    return self._unchanged(key, entry, now)
            entry.state = "captured"
            entry.at = now
            entry.amount = amount_nanos
            crossed, remaining = self._record(entry, amount_nanos, now)
            entry.forget_at = forget_at = now + self._retain  # self._finish(), inlined
            heapq.heappush(self._deadlines, (forget_at, key))
            return Receipt(key, status, "captured", amount_nanos, amount_nanos, crossed, remaining)

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
        plan = self._plan(charges)
        _validate_nanos(amount_nanos)
        now = self._clock() if now is None else now
        with self._lock:
            if self._deadlines and self._deadlines[0][0] <= now:
                self._expire(now)
            entry = self._entries.get(key)
            if entry is not None:
                _require(entry, hold=False, key=key)
                return self._unchanged(key, entry, now)
            if enforce and plan.watched:
                self._check(plan, amount_nanos, now)
            entry = _Entry(plan, False, "charged", 0, amount_nanos, now, now)
            self._entries[key] = entry
            crossed, remaining = self._record(entry, amount_nanos, now)
            self._finish(key, entry, now)
            return Receipt(
                key, "applied", "charged", amount_nanos, amount_nanos, crossed, remaining
            )

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

    # --- internals --------------------------------------------------------------------

    # the methods below run with the lock held

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
        spent = (
            account.spent(_Where(window), now, calendar_periods(now)) if account is not None else 0
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

    def _check(self, plan: _Plan, amount: int, now: float) -> None:
        """Raise BudgetExceeded for the first account and budget that cannot pay."""
        now_periods = calendar_periods(now) if plan.calendar else _NO_PERIODS
        for payer in plan.payers:
            if not payer.watches:
                continue
            account = self._accounts.get(payer.name)
            if account is None:
                for watch in payer.watches:
                    if amount > watch.limit:
                        raise _exceeded(payer.name, None, watch.budget, 0, amount, now)
                continue
            for watch in payer.watches:
                used = account.spent(watch, now, now_periods) + account.held
                if used + amount > watch.limit:
                    raise _exceeded(payer.name, account, watch.budget, used, amount, now)

    def _unhold(self, entry: _Entry) -> None:
        accounts = self._accounts
        for name in entry.plan.accounts:
            accounts[name].held -= entry.held

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
        self, entry: _Entry, delta: int, now: float
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
                account = accounts[payer.name] = _Account()
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
                        series = account.rolling[window.seconds or 0] = _Rolling(window)
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
                    self._crossings(
                        payer.name, account, watch, spent_before, after, now_periods, crossed
                    )
            assert least is not None
            least -= account.held
            remaining.append(least if least > 0 else 0)
        return (tuple(crossed) if crossed else ()), tuple(remaining)

    def _remaining(self, plan: _Plan, now: float) -> tuple[int | None, ...]:
        """Each account's least remaining budget (as :meth:`balance` reports it)."""
        now_periods = calendar_periods(now) if plan.calendar else _NO_PERIODS
        remaining: list[int | None] = []
        for payer in plan.payers:
            account = self._accounts.get(payer.name)
            if not payer.watches:
                remaining.append(None)
            elif account is None:
                remaining.append(min(w.limit for w in payer.watches))
            else:
                left = min([w.limit - account.spent(w, now, now_periods) for w in payer.watches])
                left -= account.held
                remaining.append(left if left > 0 else 0)
        return tuple(remaining)

    def _unchanged(self, key: str, entry: _Entry, now: float) -> Receipt:
        remaining = self._remaining(entry.plan, now)
        return Receipt(key, "unchanged", entry.state, entry.amount, 0, (), remaining)

    def _crossings(
        self,
        name: str,
        account: _Account,
        watch: _Watch,
        before: int,
        after: int,
        now_periods: Periods,
        out: list[Threshold],
    ) -> None:
        """Append to ``out`` the thresholds of ``watch`` that spend ``after`` newly reached."""
        i = watch.calendar
        period = now_periods[i].id if i is not None else watch.period
        stored = account.alerts.get(watch.key)
        fired = stored[1] if stored is not None and stored[0] == period else 0
        if watch.rolling is not None:
            # No period ends a rolling window: a threshold re-arms once spend drops below it.
            fired = min(fired, watch.level(before))
        reached = watch.level(after)
        if reached <= fired:
            return
        account.alerts[watch.key] = (period, reached)
        out.extend(
            Threshold(name, watch.budget, fraction, after, period)
            for fraction, _, _ in self._thresholds[fired:reached]
        )


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


def _validate_nanos(amount: int) -> None:
    if type(amount) is not int or amount < 0:
        raise _bad_amount(amount)


def _bad_amount(amount: object) -> ValueError:
    return ValueError(f"amounts are int nano-USD >= 0, got {amount!r}")


def _require(entry: _Entry, *, hold: bool, key: str) -> None:
    if entry.is_hold != hold:
        used, wanted = ("charge", "hold") if hold else ("hold", "charge")
        raise ValueError(f"key {key!r} belongs to a {used}, not a {wanted}")


def _hold(key: str, entry: _Entry, *, replayed: bool) -> Hold:
    return Hold(
        key=key,
        state=entry.state,
        amount_nanos=entry.held,
        accounts=entry.plan.accounts,
        expires_at=entry.expires_at,
        replayed=replayed,
    )
