"""The in-process ledger's records: accounts, rolling series, prepared charges, entries.

Plain state for :class:`~metered.ledger.memory.MemoryLedger`, which holds its lock around
every use of it; nothing here locks or reads a clock.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from decimal import Decimal

from metered.config.budgets import Budget, Period, Window, calendar_periods
from metered.errors import BudgetExceeded
from metered.ledger.types import Charge, EntryState, Hold, Threshold
from metered.money import from_nanos

Periods = tuple[Period, Period, Period]
# stands in for calendar_periods(now) where no calendar budget needs it
NO_PERIODS: Periods = (Period("", None), Period("", None), Period("", None))

# Position of each calendar window in calendar_periods() and in Account.periods.
_CALENDAR_INDEX = {"day": 0, "week": 1, "month": 2}
#: A ledger's alert fractions, each with its integer ratio (exact comparisons on nanos).
Fractions = Sequence[tuple[Decimal, int, int]]


class Rolling:
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


class Account:
    __slots__ = ("alerts", "held", "nanos", "periods", "rolling", "total")

    def __init__(self) -> None:
        self.held = 0
        self.total = 0
        # Current day, week and month period ids and their spend; older periods are dropped.
        self.periods: list[str | None] = [None, None, None]
        self.nanos = [0, 0, 0]
        self.rolling: dict[int, Rolling] = {}
        # budget (Watch.key) -> (period id, number of thresholds already fired in it)
        self.alerts: dict[tuple[int, str, int | None], tuple[str, int]] = {}

    def spent(self, where: Where, now: float, now_periods: Periods) -> int:
        """Spend in the current period of a window, given ``calendar_periods(now)``."""
        i = where.calendar
        if i is not None:
            # a stored period later than the caller's is the current one (see land)
            stored = self.periods[i]
            return self.nanos[i] if stored is not None and stored >= now_periods[i].id else 0
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
            stored = periods[i]
            current = period == now_periods[i].id
            if stored == period or (current and stored is not None and stored > period):
                # The stored period, or a later one: the caller's clock lags (a replica
                # behind another, a clock stepped back across midnight), and its spend
                # counts in the period the account has already moved to, never in none.
                nanos[i] += delta
            elif delta > 0 and current:
                # Period ids sort by time: the account enters the caller's later period.
                periods[i] = period
                nanos[i] = delta
            # Otherwise the spend's period has closed: a correction to it is dropped.


class Where:
    """Where an account keeps the spend of a window."""

    __slots__ = ("calendar", "rolling")

    def __init__(self, window: Window) -> None:
        self.calendar = _CALENDAR_INDEX.get(window.kind)  # None: total or rolling
        self.rolling = window.seconds if window.kind == "rolling" else None


class Watch(Where):
    """One budget of a charge, prepared: where its spend is read, its alert amounts."""

    __slots__ = ("budget", "key", "limit", "marks", "period")

    def __init__(self, budget: Budget, thresholds: Fractions) -> None:
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


class Payer:
    """One :class:`Charge`, prepared."""

    __slots__ = ("name", "rolling", "watches")

    def __init__(self, charge: Charge, thresholds: Fractions) -> None:
        self.name = charge.account
        self.watches = tuple(Watch(b, thresholds) for b in charge.budgets)
        self.rolling = tuple({b.window for b in charge.budgets if b.window.kind == "rolling"})


class Plan:
    """A validated charges tuple, prepared for the hot path."""

    __slots__ = ("accounts", "calendar", "charges", "payers", "watched")

    def __init__(self, charges: tuple[Charge, ...], thresholds: Fractions) -> None:
        self.charges = charges
        self.accounts = tuple(c.account for c in charges)
        self.payers = tuple(Payer(c, thresholds) for c in charges)
        # whether checking a budget needs the calendar periods of "now"
        self.calendar = any(w.calendar is not None for p in self.payers for w in p.watches)
        self.watched = any(p.watches for p in self.payers)  # any budget to check at all


class Entry:
    """One hold or charge, remembered by key."""

    __slots__ = ("amount", "at", "expires_at", "forget_at", "held", "is_hold", "plan", "state")

    def __init__(
        self,
        plan: Plan,
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


def crossings(
    name: str,
    account: Account,
    watch: Watch,
    before: int,
    after: int,
    now_periods: Periods,
    thresholds: Fractions,
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
        for fraction, _, _ in thresholds[fired:reached]
    )


def check_budgets(
    accounts: dict[str, Account], plan: Plan, amount: int, now: float, floor: int | None = None
) -> int:
    """The amount to reserve (see :meth:`~metered.ledger.Ledger.hold`): ``amount`` when
    every budget can pay it; with a ``floor``, else the most every budget of every account
    can still pay, if that is at least the floor.

    Raises:
        BudgetExceeded: for the first account and budget that cannot pay ``amount`` (the
            floor, when one is given).
    """
    now_periods = calendar_periods(now) if plan.calendar else NO_PERIODS
    least = amount
    for payer in plan.payers:
        if not payer.watches:
            continue
        account = accounts.get(payer.name)
        for watch in payer.watches:
            used = 0 if account is None else account.spent(watch, now, now_periods) + account.held
            left = watch.limit - used
            if left < least:
                if floor is None or left < floor:
                    need = amount if floor is None else floor
                    raise exceeded(payer.name, account, watch.budget, used, need, now)
                least = left
    return least


def least_remaining(accounts: dict[str, Account], plan: Plan, now: float) -> tuple[int | None, ...]:
    """Each account's least remaining budget (as ``Ledger.balance`` reports it)."""
    now_periods = calendar_periods(now) if plan.calendar else NO_PERIODS
    remaining: list[int | None] = []
    for payer in plan.payers:
        account = accounts.get(payer.name)
        if not payer.watches:
            remaining.append(None)
        elif account is None:
            remaining.append(min(w.limit for w in payer.watches))
        else:
            left = min([w.limit - account.spent(w, now, now_periods) for w in payer.watches])
            left -= account.held
            remaining.append(left if left > 0 else 0)
    return tuple(remaining)


def exceeded(
    name: str, account: Account | None, budget: Budget, used: int, amount: int, now: float
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


def require_kind(entry: Entry, *, hold: bool, key: str) -> None:
    if entry.is_hold != hold:
        used, wanted = ("charge", "hold") if hold else ("hold", "charge")
        raise ValueError(f"key {key!r} belongs to a {used}, not a {wanted}")


def replayed_hold(key: str, entry: Entry) -> Hold:
    """What a repeated hold of ``key`` returns: the existing entry, nothing new held."""
    return Hold(
        key=key,
        state=entry.state,
        amount_nanos=entry.held,
        accounts=entry.plan.accounts,
        expires_at=entry.expires_at,
        replayed=True,
    )
