"""Budgets and their windows (config/budgets.py): parsing, periods, validation."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metered.config.budgets import Budget, Window, calendar_periods, parse_budget
from metered.errors import ConfigError
from tests.test_ledger import budget, ts

# --- parse_budget ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("$5/day", "day"),
        ("$5 / Daily", "day"),
        ("$5 per day", "day"),
        ("$5/week", "week"),
        ("$5/month", "month"),
        ("$5/monthly", "month"),
        ("$5", "total"),
        ("$5/total", "total"),
        ("$5/lifetime", "total"),
    ],
)
def test_parse_budget_calendar_and_lifetime(raw: str, kind: str) -> None:
    """Calendar and lifetime budgets parse to their window and an exact nano-USD limit."""
    assert parse_budget(raw, key="k") == Budget(5_000_000_000, Window(kind))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("$3/24h", 86_400),
        ("$3/rolling 24h", 86_400),
        ("$3/rolling day", 86_400),
        ("$3/90min", 5_400),
        ("$3 / 30 s", 30),
        ("$3/7d", 604_800),
        ("$3/2 weeks", 1_209_600),
        ("$3/hour", 3_600),
    ],
)
def test_parse_budget_rolling(raw: str, seconds: int) -> None:
    """A duration (optionally prefixed 'rolling') makes a rolling window."""
    assert parse_budget(raw, key="k") == Budget(3_000_000_000, Window("rolling", seconds))


def test_parse_budget_keeps_sub_cent_limits_exact() -> None:
    """The limit is converted to nano-USD without float rounding."""
    assert parse_budget("$0.000000123/day", key="k").limit_nanos == 123


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (5, "must be a budget string"),
        (None, "must be a budget string"),
        ("5/day", "needs a currency"),
        ("$-5/day", "negative"),
        ("$five/day", "not a dollar amount"),
        ("$5/", "has no window"),
        ("$5/fortnight", "unknown window"),
        ("$5/1.5h", "unknown window"),
        ("$5/1m", "ambiguous"),
        ("$5/3 months", "ambiguous"),
        ("$5/rolling month", "ambiguous"),
        ("$5/0h", "zero-length"),
        ("$5/2 total", "lifetime"),
    ],
)
def test_parse_budget_rejects_with_one_clear_error(raw: object, problem: str) -> None:
    """Each bad budget raises one ConfigError naming the key and the whole value."""
    with pytest.raises(ConfigError) as info:
        parse_budget(raw, key="accounts.team-a.budget")
    assert info.value.key == "accounts.team-a.budget"
    assert info.value.value == raw
    assert problem in info.value.problem
    assert str(info.value).startswith("accounts.team-a.budget: ")


@pytest.mark.parametrize(
    "raw", ["$5/day", "$20/week", "$100/month", "$50/total", "$3/24h", "$1/90s"]
)
def test_budget_str_parses_back_to_itself(raw: str) -> None:
    """str(Budget) is config syntax that parses to the same budget."""
    parsed = budget(raw)
    assert budget(str(parsed)) == parsed


def test_budget_limit_is_decimal_usd() -> None:
    """Budget.limit gives the limit in exact USD."""
    assert budget("$0.25/day").limit == Decimal("0.25")


# --- windows -----------------------------------------------------------------------------


def test_calendar_periods_are_utc_ids_with_their_end() -> None:
    """Day, ISO week and month periods are named by UTC date and end at the next boundary."""
    day, week, month = calendar_periods(ts(2026, 11, 25, 23, 59, 59))
    assert (day.id, day.ends_at) == ("day:2026-11-25", ts(2026, 11, 26))
    assert (week.id, week.ends_at) == ("week:2026-W48", ts(2026, 11, 30))  # next Monday
    assert (month.id, month.ends_at) == ("month:2026-11", ts(2026, 12, 1))


def test_iso_week_and_month_cross_the_year_boundary() -> None:
    """1 Jan 2027 (a Friday) is in ISO week 2026-W53, and December ends at 1 January."""
    _, week, _ = calendar_periods(ts(2027, 1, 1))
    assert week.id == "week:2026-W53"
    assert calendar_periods(ts(2026, 12, 31, 23))[2].ends_at == ts(2027, 1, 1)


def test_window_rejects_inconsistent_fields() -> None:
    """A rolling window needs seconds; calendar windows take none."""
    with pytest.raises(ValueError, match="rolling"):
        Window("rolling")
    with pytest.raises(ValueError, match="takes no seconds"):
        Window("day", 5)
    with pytest.raises(ValueError, match="kind"):
        Window("year")  # type: ignore[arg-type]
