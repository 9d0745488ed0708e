"""Budgets and their windows: how config writes a spending limit, and the periods of it.

A :class:`Budget` is a limit in integer nano-USD over a :class:`Window`: a calendar
``day``, ``week`` (ISO, Monday to Sunday) or ``month`` in UTC, a ``rolling`` duration, or
``total`` (lifetime). Config writes them as ``"$5/day"``, ``"$100/month"``, ``"$20/week"``,
``"$50"`` (= ``"$50/total"``) or ``"$3/24h"`` (= ``"$3/rolling 24h"``); :func:`parse_budget`
reads them.

Plain data and parsing: config validates budgets with it and the ledgers count spend by
its periods, so it imports neither of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from functools import lru_cache
from typing import Literal

from metered.errors import ConfigError
from metered.money import format_usd, from_nanos, parse_amount, to_nanos

__all__ = [
    "Budget",
    "Period",
    "Window",
    "WindowKind",
    "calendar_periods",
    "parse_budget",
]

WindowKind = Literal["day", "week", "month", "rolling", "total"]

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
