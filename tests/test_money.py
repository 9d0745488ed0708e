"""Tests for metered.money: price strings, amounts, nano-USD rounding, display."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metered.errors import ConfigError
from metered.money import (
    MAX_PER_TOKEN,
    NANOS_PER_USD,
    Rate,
    format_usd,
    from_nanos,
    parse_amount,
    parse_rate,
    to_nanos,
)

PER_MTOK = Decimal(10**6)
DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=200)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$0.05", Rate(Decimal("0.05"), "request")),
        ("$0.05/request", Rate(Decimal("0.05"), "request")),
        ("$0.05 per call", Rate(Decimal("0.05"), "request")),
        (" $0.05 ", Rate(Decimal("0.05"), "request")),
        ("$.5", Rate(Decimal("0.5"), "request")),
        ("$3 / 1M tokens", Rate(Decimal(3) / PER_MTOK, "token")),
        ("$3 / 1m tokens", Rate(Decimal(3) / PER_MTOK, "token")),
        ("$3/1M", Rate(Decimal(3) / PER_MTOK, "token")),
        ("$3/MTok", Rate(Decimal(3) / PER_MTOK, "token")),
        ("$3 per 1M tokens", Rate(Decimal(3) / PER_MTOK, "token")),
        ("USD 3 / 1M tokens", Rate(Decimal(3) / PER_MTOK, "token")),
        ("$2.50 / 1,000,000 tokens", Rate(Decimal("2.50") / PER_MTOK, "token")),
        ("$1_000 / 1M tokens", Rate(Decimal(1000) / PER_MTOK, "token")),
        ("$0.003/1K", Rate(Decimal("0.003") / 1000, "token")),
        ("$0.000003/token", Rate(Decimal("0.000003"), "token")),
        ("$1e-6/token", Rate(Decimal("0.000001"), "token")),
        ("$0.002/s", Rate(Decimal("0.002"), "second")),
        ("$0.06/min", Rate(Decimal("0.001"), "second")),
        ("$3.6/hour", Rate(Decimal("0.001"), "second")),
    ],
)
def test_parse_rate_accepts_every_documented_form(text: str, expected: Rate) -> None:
    """Each price form users write parses to the exact per-unit Decimal rate."""
    assert parse_rate(text, default_unit="request") == expected


def test_parse_rate_keeps_exact_decimal_per_token() -> None:
    """'$3 / 1M tokens' is exactly 0.000003 per token, with no float rounding."""
    rate = parse_rate("$3 / 1M tokens")
    assert rate.usd == Decimal("0.000003")
    assert isinstance(rate.usd, Decimal)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (3, "bare number"),
        (3.0, "bare number"),
        (Decimal(3), "bare number"),
        (True, "bare number"),
        (None, "must be a price string"),
        (["$1"], "must be a price string"),
        ("0.05", "needs a currency"),
        ("$-0.05", "negative"),
        ("$nan", "not a price"),
        ("$inf", "not a price"),
        ("5 dollars", "not a price"),
        ("$", "not a price"),
        ("$0.05 / banana", "unknown unit 'banana'"),
        ("$3 / token", "did you mean '/ 1M tokens'?"),
        ("$101", "over $100 per request"),
        ("$101/s", "over $100 per second"),
    ],
)
def test_parse_rate_rejects_ambiguous_or_absurd_prices(raw: object, problem: str) -> None:
    """Bare numbers, missing currency, negatives, unknown units and absurd magnitudes fail."""
    with pytest.raises(ConfigError) as info:
        parse_rate(raw, key="routes.r.models.m", default_unit="request")
    assert problem in info.value.problem
    assert str(info.value).startswith("routes.r.models.m: ")


def test_parse_rate_requires_a_unit_when_there_is_no_default() -> None:
    """Where no default unit applies, '$3' is refused rather than guessed."""
    with pytest.raises(ConfigError, match="has no unit"):
        parse_rate("$3")


def test_parse_rate_refuses_a_unit_the_setting_does_not_take() -> None:
    """A per-request price at a per-token setting names both units."""
    with pytest.raises(ConfigError, match="per-request price but this setting takes per-token"):
        parse_rate("$0.05", default_unit="request", allowed=frozenset({"token"}))


def test_parse_rate_allows_large_prices_when_asked() -> None:
    """allow_large accepts a per-token price above the sanity limit."""
    rate = parse_rate("$3 / token", allow_large=True)
    assert rate == Rate(Decimal(3), "token")
    assert rate.usd > MAX_PER_TOKEN


def test_parse_rate_accepts_the_limit_itself() -> None:
    """The sanity limit is inclusive: $10,000 / 1M tokens is still accepted."""
    assert parse_rate("$10000 / 1M tokens").usd == MAX_PER_TOKEN


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$5", Decimal(5)),
        ("$0.25", Decimal("0.25")),
        ("USD 5", Decimal(5)),
        ("$1,000.50", Decimal("1000.50")),
        (" $0 ", Decimal(0)),
    ],
)
def test_parse_amount_accepts_dollar_amounts(text: str, expected: Decimal) -> None:
    """Budgets, floors and ceilings are plain dollar amounts."""
    assert parse_amount(text) == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("5", "needs a currency"),
        (5, "must be a dollar amount string"),
        (True, "must be a dollar amount string"),
        ("$5/day", "is not a dollar amount"),
        ("$3 / 1M tokens", "is not a dollar amount"),
        ("$", "is not a dollar amount"),
        ("$-1", "negative"),
    ],
)
def test_parse_amount_rejects_non_amounts(raw: object, problem: str) -> None:
    """A unit, a missing '$', a non-string or a negative is not an amount."""
    with pytest.raises(ConfigError) as info:
        parse_amount(raw, key="floors.gpt-4o")
    assert problem in info.value.problem
    assert info.value.key == "floors.gpt-4o"


@pytest.mark.parametrize(
    ("usd", "nanos"),
    [
        (Decimal("1"), NANOS_PER_USD),
        (Decimal("0.000000001"), 1),
        (Decimal("0.0000000004"), 0),
        (Decimal("0.0000000006"), 1),
        (Decimal("0.0000000005"), 0),
        (Decimal("0.0000000015"), 2),
        (Decimal("0.0000000025"), 2),
        (Decimal("0.0000000035"), 4),
        (Decimal("12.3456789125"), 12_345_678_912),
        (Decimal("0.00725"), 7_250_000),
    ],
)
def test_to_nanos_rounds_half_even(usd: Decimal, nanos: int) -> None:
    """Sub-nano amounts round to the nearest nano-USD, ties to even."""
    assert to_nanos(usd) == nanos


def test_from_nanos_is_exact() -> None:
    """One nano-USD is exactly 1e-9 USD."""
    assert from_nanos(1) == Decimal("0.000000001")
    assert from_nanos(7_250_000) == Decimal("0.00725")


@DETERMINISTIC
@given(st.integers(min_value=0, max_value=10**18))
def test_nanos_round_trip(nanos: int) -> None:
    """Any ledger amount survives nanos -> USD -> nanos unchanged."""
    assert to_nanos(from_nanos(nanos)) == nanos


@DETERMINISTIC
@given(
    st.decimals(min_value=0, max_value=10**6, places=12, allow_nan=False, allow_infinity=False),
    st.decimals(min_value=0, max_value=10**6, places=12, allow_nan=False, allow_infinity=False),
)
def test_to_nanos_is_monotone_and_within_half_a_nano(a: Decimal, b: Decimal) -> None:
    """Rounding never reorders amounts (a capture cannot exceed its hold) and is nearest."""
    low, high = min(a, b), max(a, b)
    assert to_nanos(low) <= to_nanos(high)
    assert abs(from_nanos(to_nanos(a)) - a) <= Decimal("0.0000000005")


@pytest.mark.parametrize(
    ("usd", "places", "text"),
    [
        (Decimal("0.000125"), None, "$0.000125"),
        (Decimal("1E-7"), None, "$0.0000001"),
        (Decimal("0.0500"), None, "$0.05"),
        (Decimal("0E-8"), None, "$0"),
        (Decimal("1234.5"), 2, "$1,234.50"),
        (Decimal("0.125"), 2, "$0.12"),
        (None, None, "-"),
    ],
)
def test_format_usd_never_uses_exponents(
    usd: Decimal | None, places: int | None, text: str
) -> None:
    """Amounts render for humans: no exponent, trailing zeros trimmed unless places is set."""
    assert format_usd(usd, places=places) == text


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        (Rate(Decimal("0.000003"), "token"), "$3 / 1M tokens"),
        (Rate(Decimal("0.05"), "request"), "$0.05 / request"),
        (Rate(Decimal("0.002"), "second"), "$0.002 / second"),
    ],
)
def test_rate_str_round_trips_through_parse(rate: Rate, text: str) -> None:
    """A Rate prints in the form users write, and that text parses back to the same Rate."""
    assert str(rate) == text
    assert parse_rate(text) == rate
