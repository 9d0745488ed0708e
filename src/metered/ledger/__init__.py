"""Budgets, windows and the ledger protocol: who may spend how much, and the store of it.

Vocabulary:

* A :class:`Budget` is a limit in integer nano-USD over a :class:`Window`: a calendar
  ``day``, ``week`` (ISO, Monday to Sunday) or ``month`` in UTC, a ``rolling`` duration,
  or ``total`` (lifetime). Config writes them as ``"$5/day"``, ``"$100/month"``,
  ``"$20/week"``, ``"$50"`` (= ``"$50/total"``) or ``"$3/24h"`` (= ``"$3/rolling 24h"``);
  :func:`parse_budget` reads them.
* A :class:`Charge` names one account to charge and the budgets to enforce on it. A call
  may charge several accounts at once (a user *and* their team): either every account
  can pay or nothing is held.
* A **hold** reserves a call's maximum price before the upstream call (``after-response``
  settlement); it is later *captured* (turned into spend of the actual amount) or
  *released* (the call failed: nothing is spent). A hold expires after its TTL, so a
  crashed process never locks budget.
* A **charge** is immediate spend (``before-response`` settlement), later *adjusted* to
  the actual amount or *refunded*.

Accounting rules every :class:`Ledger` follows:

* **Check.** An account can pay ``amount`` when, for each of its budgets,
  ``spent in the current window + all of its active holds + amount <= limit``. Holds
  count against every window (they are short-lived). Several accounts are checked and
  held in one atomic step.
* **Idempotency.** Every operation names a ``key`` (one per call). Repeating an operation
  with the same key never holds or charges twice: the first call's parameters win and
  the repeat returns what the first did (``status="unchanged"``). Keys are remembered
  for ``retain_seconds`` after an entry is finished (or after a hold expires).
* **Spend is dated when it is first recorded** (capture or charge time) and lands in the
  day, week, month and total counters of every account charged (always tracked, so
  :meth:`Ledger.balance` can report any calendar window), and in the rolling series of
  the rolling budgets named in the charge. Later corrections (adjust, refund) apply to
  the periods the spend landed in; a correction to a period that has since closed is
  dropped for that window (a closed period is final, and a new period never gets credit
  for spend it did not see) but always applies to ``total``.
* **Never lose money.** A capture records the actual amount even when it is above the
  hold (the upstream call already happened; the budget may go over) and even when the
  hold has expired (``status="late"``). A capture of a key the ledger has never seen (or
  has forgotten) records the spend against ``charges`` when given.
* **Never charge twice.** Once a hold is captured, released, or a charge refunded, that
  is final: a late ``capture`` after ``release`` records nothing (refund protection).
* **Alerts.** Each spend that moves an account across a fraction of a budget (by
  default 50%, 80% and 100%) returns a :class:`Threshold` in :attr:`Receipt.crossed`.
  Each threshold fires once per calendar period (once per lifetime for ``total``); for
  rolling windows it re-arms when spend falls back below it.

Designed for a shared store too: a Redis ledger does each operation as ONE Lua script.
The caller computes every time-dependent input in Python (``now``, period ids from
:meth:`Window.period`, rolling bucket starts from :meth:`Window.bucket`, expiry times)
and passes it in. State per account: one integer counter per calendar period key
(``{account}:day:2026-11-25``, expiring after the period ends), a hash of rolling
buckets per duration, an integer of active held nanos and a sorted set of its holds by
expiry (expired holds are swept lazily at the start of every script); per key: one hash
record (state, amounts, accounts, budgets, ``at``) expiring ``retain_seconds`` after it
is finished. A call touches several accounts in one script, so on Redis Cluster every
key shares one hash tag (one slot).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol, runtime_checkable

from metered.errors import ConfigError
from metered.money import format_usd, from_nanos, parse_amount, to_nanos

if TYPE_CHECKING:
    from metered.ledger.memory import MemoryLedger
    from metered.ledger.redis import RedisLedger

__all__ = [
    "DEFAULT_THRESHOLDS",
    "Balance",
    "Budget",
    "Charge",
    "EntryState",
    "Hold",
    "Ledger",
    "MemoryLedger",
    "Period",
    "Receipt",
    "ReceiptStatus",
    "RedisLedger",
    "Threshold",
    "Window",
    "WindowKind",
    "calendar_periods",
    "parse_budget",
]

WindowKind = Literal["day", "week", "month", "rolling", "total"]

#: Where a hold or charge stands. Holds: ``held`` then ``captured``, ``released`` or
#: ``expired``; charges: ``charged``; either may end ``refunded`` once spent.
EntryState = Literal["held", "captured", "released", "expired", "charged", "refunded"]

#: What an operation did: ``applied`` (it changed the ledger), ``late`` (spend recorded
#: without a live hold: the hold had expired or was never seen), ``unchanged`` (a repeat,
#: or the entry is final) or ``unknown`` (no such key, nothing recorded).
ReceiptStatus = Literal["applied", "late", "unchanged", "unknown"]

#: Fractions of a budget at which :attr:`Receipt.crossed` reports a threshold.
DEFAULT_THRESHOLDS: tuple[Decimal, ...] = (Decimal("0.5"), Decimal("0.8"), Decimal(1))

_DAY = 86_400
_WEEK = 7 * _DAY
# 1970-01-01 was a Thursday: day index + 3 counts days since Monday 1969-12-29.
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_ROLLING_BUCKETS = 60
_KINDS = ("day", "week", "month", "rolling", "total")


@dataclass(frozen=True, slots=True)
class Period:
    """One period of a window: its id (a stable store key) and when it ends.

    Attributes:
        id: ``"day:2026-11-25"``, ``"week:2026-W48"``, ``"month:2026-11"``, ``"total"``
            or ``"rolling:86400"`` (a rolling window has one endless period).
        ends_at: epoch seconds when the next period starts; ``None`` for ``total`` and
            rolling windows.
    """

    id: str
    ends_at: int | None


@lru_cache(maxsize=64)
def _calendar(day: int) -> tuple[Period, Period, Period]:
    """Day, week and month periods of UTC day number ``day`` (days since 1970-01-01)."""
    d = date.fromordinal(_EPOCH_ORDINAL + day)
    year, week, _ = d.isocalendar()
    monday = day - d.weekday()
    next_month = date(d.year + 1, 1, 1) if d.month == 12 else date(d.year, d.month + 1, 1)
    return (
        Period(f"day:{d.isoformat()}", (day + 1) * _DAY),
        Period(f"week:{year}-W{week:02d}", (monday + 7) * _DAY),
        Period(f"month:{d.year}-{d.month:02d}", (next_month.toordinal() - _EPOCH_ORDINAL) * _DAY),
    )


def calendar_periods(now: float) -> tuple[Period, Period, Period]:
    """The UTC day, week and month periods containing epoch time ``now`` (cached per day)."""
    return _calendar(int(now // _DAY))


_TOTAL_PERIOD = Period("total", None)


@dataclass(frozen=True, slots=True)
class Window:
    """The span a budget's spend is counted over.

    ``Window("day")``, ``Window("week")`` (ISO weeks, Monday 00:00 UTC), ``Window("month")``
    and ``Window("total")`` (lifetime) count spend per calendar period in UTC.
    ``Window("rolling", 86400)`` counts the spend of the last ``seconds``. Rolling spend is
    kept in 60 buckets of ``seconds // 60`` (at least 1 s): spend leaves the window at most
    one bucket late and never early, so a rolling budget errs toward refusing.

    Attributes:
        kind: ``day``, ``week``, ``month``, ``rolling`` or ``total``.
        seconds: the rolling duration; ``None`` for the other kinds.
    """

    kind: WindowKind
    seconds: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Window.kind must be one of {', '.join(_KINDS)}, got {self.kind!r}")
        if self.kind == "rolling":
            if type(self.seconds) is not int or self.seconds < 1:
                raise ValueError(f"a rolling Window needs whole seconds >= 1, got {self.seconds!r}")
        elif self.seconds is not None:
            raise ValueError(f"a {self.kind} Window takes no seconds")

    @property
    def granule(self) -> int:
        """Width in seconds of one rolling bucket (1 for non-rolling windows)."""
        return max(1, (self.seconds or 0) // _ROLLING_BUCKETS)

    def bucket(self, at: float) -> int:
        """Start (epoch seconds) of the rolling bucket that spend at ``at`` lands in."""
        width = self.granule
        return int(at // width) * width

    def period(self, now: float) -> Period:
        """The period containing epoch time ``now``."""
        kind = self.kind
        if kind == "total":
            return _TOTAL_PERIOD
        if kind == "rolling":
            return Period(f"rolling:{self.seconds}", None)
        day, week, month = calendar_periods(now)
        return day if kind == "day" else week if kind == "week" else month

    def __str__(self) -> str:
        if self.seconds is None:
            return self.kind
        return f"rolling {_format_seconds(self.seconds)}"


def _format_seconds(seconds: int) -> str:
    # "24h" reads better than "1d"; whole days from two days up.
    if seconds % _DAY == 0 and seconds > _DAY:
        return f"{seconds // _DAY}d"
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True, slots=True)
class Budget:
    """A spending limit over a window.

    Attributes:
        limit_nanos: the limit in integer nano-USD.
        window: the span spend is counted over.
    """

    limit_nanos: int
    window: Window

    def __post_init__(self) -> None:
        if type(self.limit_nanos) is not int or self.limit_nanos < 0:
            raise ValueError(f"Budget.limit_nanos must be an int >= 0, got {self.limit_nanos!r}")

    @property
    def limit(self) -> Decimal:
        """The limit in USD."""
        return from_nanos(self.limit_nanos)

    def __str__(self) -> str:
        return f"{format_usd(self.limit)}/{self.window}"


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

    A named tuple (immutable; ~2.5x cheaper to build than a frozen dataclass): one is
    built on every metered call.

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


@runtime_checkable
class Ledger(Protocol):
    """The store of holds and charges (see the module docstring for the rules).

    Every method has an async twin (``hold``/``ahold`` ...). ``now`` (epoch seconds)
    defaults to the ledger's clock; it is explicit so a shared store computes nothing
    time-dependent itself. Amounts are integer nano-USD.

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
    ) -> Hold:
        """Reserve ``amount_nanos`` on every account in ``charges``, atomically.

        Args:
            key: idempotency key of the call; a repeat returns the existing hold.
            charges: the accounts to hold against (each at most once) and their budgets.
            amount_nanos: the call's maximum price.
            ttl_seconds: after this the hold stops counting (a crashed caller never
                locks budget); capture still records spend after expiry.
            now: epoch seconds.

        Raises:
            BudgetExceeded: the first account and budget (in order) that cannot pay;
                nothing is held on any account. ``retry_after`` is the seconds until
                the window frees enough (calendar reset, rolling spend ageing out), or
                ``None`` when waiting cannot help.
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
    ) -> Receipt:
        """Spend ``amount_nanos`` now on every account in ``charges``, atomically.

        Args:
            key: idempotency key; a repeat changes nothing.
            charges: the accounts to charge (each at most once) and their budgets.
            amount_nanos: the quoted price.
            enforce: check budgets first (like :meth:`hold`); ``False`` records the
                spend regardless.
            now: epoch seconds.

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


# --- parsing ------------------------------------------------------------------------------

_CALENDAR_WORDS: dict[str, WindowKind] = {
    "day": "day",
    "daily": "day",
    "week": "week",
    "weekly": "week",
    "month": "month",
    "monthly": "month",
    "total": "total",
    "lifetime": "total",
}
_DURATION_UNITS: dict[str, int] = {}
for _words, _size in (
    (("s", "sec", "secs", "second", "seconds"), 1),
    (("min", "mins", "minute", "minutes"), 60),
    (("h", "hr", "hrs", "hour", "hours"), 3600),
    (("d", "day", "days"), _DAY),
    (("w", "week", "weeks"), _WEEK),
):
    for _word in _words:
        _DURATION_UNITS[_word] = _size

_SEPARATOR_RE = re.compile(r"/|\bper\b", re.IGNORECASE)
_WINDOW_RE = re.compile(r"^(?:(?P<rolling>rolling)\s*)?(?P<n>\d+)?\s*(?P<unit>[a-z]+)$")
_HELP = "write '$5/day', '$20/week', '$100/month', '$50/total' or '$3/24h' (rolling)"


def parse_budget(raw: object, *, key: str) -> Budget:
    """Parse a budget as config writes it.

    ``"$5/day"``, ``"$20/week"`` (ISO, Monday) and ``"$100/month"`` are calendar windows in
    UTC; ``"$50"`` and ``"$50/total"`` are lifetime; ``"$3/24h"``, ``"$3/rolling 24h"``,
    ``"$1/90min"``, ``"$10/7d"`` are rolling. ``per`` works like ``/``.

    Args:
        raw: what the user wrote.
        key: dotted config path, named in errors.

    Raises:
        ConfigError: not a string, a bad amount, or an unknown or ambiguous window.
    """
    if not isinstance(raw, str):
        raise ConfigError(key, f"must be a budget string; {_HELP}", raw)
    parts = _SEPARATOR_RE.split(raw, maxsplit=1)
    try:
        limit = parse_amount(parts[0].strip(), key=key)
    except ConfigError as exc:
        raise ConfigError(key, exc.problem, raw) from None
    window = Window("total") if len(parts) == 1 else _parse_window(parts[1], key, raw)
    return Budget(to_nanos(limit), window)


def _parse_window(text: str, key: str, raw: str) -> Window:
    text = text.strip().lower()
    if not text:
        raise ConfigError(key, f"has no window after the amount; {_HELP}", raw)
    m = _WINDOW_RE.match(text)
    if m is None:
        raise ConfigError(key, f"has an unknown window {text!r}; {_HELP}", raw)
    rolling, n, unit = m.group("rolling"), m.group("n"), m.group("unit")
    if not rolling and n is None and unit in _CALENDAR_WORDS:
        return Window(_CALENDAR_WORDS[unit])
    if unit in ("m", "mo", "month", "months", "monthly"):
        raise ConfigError(
            key,
            "is ambiguous: a month has no fixed length; write '/month' for the calendar "
            "month, '/30d' for a rolling 30 days or '/90min' for minutes",
            raw,
        )
    if unit in ("total", "lifetime"):
        raise ConfigError(key, "mixes a lifetime budget with a duration; write '$50/total'", raw)
    size = _DURATION_UNITS.get(unit)
    if size is None:
        raise ConfigError(key, f"has an unknown window {text!r}; {_HELP}", raw)
    count = 1 if n is None else int(n)
    if count == 0:
        raise ConfigError(key, "has a zero-length rolling window", raw)
    return Window("rolling", count * size)


def __getattr__(name: str) -> object:
    # MemoryLedger lives in a submodule that imports this one; load it on first use.
    if name == "MemoryLedger":
        from metered.ledger.memory import MemoryLedger

        return MemoryLedger
    if name == "RedisLedger":  # imports redis only when used
        from metered.ledger.redis import RedisLedger

        return RedisLedger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
