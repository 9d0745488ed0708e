"""The in-process ledger, and the scenarios every ledger shares (budgets: test_budgets;
concurrency: test_ledger_concurrency; argument errors: test_ledger_validation)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from metered.errors import BudgetExceeded
from metered.ledger import (
    Budget,
    Charge,
    MemoryLedger,
    Window,
    parse_budget,
)
from metered.money import to_nanos


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """Epoch seconds of a UTC date-time."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


NOW = ts(2026, 11, 25, 12)  # a Wednesday
TTL = 60.0


def usd(amount: str) -> int:
    return to_nanos(Decimal(amount))


def budget(raw: str) -> Budget:
    return parse_budget(raw, key="budgets.test")


def user(*raws: str, account: str = "user") -> Charge:
    return Charge(account, tuple(budget(raw) for raw in raws))


@pytest.fixture
def ledger() -> MemoryLedger:
    return MemoryLedger(clock=lambda: NOW)


# --- holds -------------------------------------------------------------------------------


def test_hold_counts_against_the_budget_until_settled(ledger: MemoryLedger) -> None:
    """An active hold is reported as held and reduces what remains."""
    day = budget("$1/day")
    ledger.hold("k1", [Charge("user", (day,))], usd("0.30"), ttl_seconds=TTL)
    bal = ledger.balance("user", day)
    assert (bal.spent_nanos, bal.held_nanos, bal.remaining_nanos) == (0, usd("0.30"), usd("0.70"))
    assert bal.resets_at == ts(2026, 11, 26)


def test_hold_over_budget_raises_with_retry_hint(ledger: MemoryLedger) -> None:
    """A hold that does not fit raises with spend incl. holds and the seconds to reset."""
    ledger.hold("k1", [user("$1/day")], usd("0.70"), ttl_seconds=TTL)
    with pytest.raises(BudgetExceeded) as info:
        ledger.hold("k2", [user("$1/day")], usd("0.40"), ttl_seconds=TTL)
    exc = info.value
    assert (exc.account, exc.window) == ("user", "day")
    assert (exc.limit, exc.spent, exc.required) == (Decimal(1), Decimal("0.7"), Decimal("0.4"))
    assert exc.retry_after == 12 * 3600  # NOW is noon UTC
    assert ledger.balance("user").held_nanos == usd("0.70")


def test_hold_exactly_to_the_limit_is_allowed(ledger: MemoryLedger) -> None:
    """Spend + holds may reach the limit exactly, not one nano more."""
    ledger.hold("k1", [user("$1/day")], usd("0.60"), ttl_seconds=TTL)
    ledger.hold("k2", [user("$1/day")], usd("0.40"), ttl_seconds=TTL)
    with pytest.raises(BudgetExceeded):
        ledger.hold("k3", [user("$1/day")], 1, ttl_seconds=TTL)


def test_amount_above_the_whole_limit_has_no_retry_hint(ledger: MemoryLedger) -> None:
    """A call dearer than the budget itself can never fit, so retry_after is None."""
    with pytest.raises(BudgetExceeded) as info:
        ledger.hold("k1", [user("$1/day")], usd("2"), ttl_seconds=TTL)
    assert info.value.retry_after is None


def test_multi_account_hold_is_all_or_nothing(ledger: MemoryLedger) -> None:
    """When the team cannot pay, nothing is held on the user either."""
    team = Charge("team", (budget("$1/day"),))
    ledger.charge("prior", [team], usd("0.95"))
    with pytest.raises(BudgetExceeded) as info:
        ledger.hold("k1", [user("$5/day"), team], usd("0.10"), ttl_seconds=TTL)
    assert info.value.account == "team"
    assert ledger.balance("user").held_nanos == 0
    assert ledger.balance("team").held_nanos == 0


def test_multi_account_hold_and_capture_charge_every_account(ledger: MemoryLedger) -> None:
    """A call charged to user and team holds and then spends on both."""
    team = Charge("team", (budget("$10/month"),))
    ledger.hold("k1", [user("$5/day"), team], usd("0.10"), ttl_seconds=TTL)
    assert ledger.balance("team").held_nanos == usd("0.10")
    ledger.capture("k1", usd("0.04"))
    assert ledger.balance("user").spent_nanos == usd("0.04")
    assert ledger.balance("team", budget("$10/month")).spent_nanos == usd("0.04")


def test_hold_twice_with_the_same_key_holds_once(ledger: MemoryLedger) -> None:
    """A repeated hold returns the existing hold and reserves nothing more."""
    first = ledger.hold("k1", [user("$1/day")], usd("0.30"), ttl_seconds=TTL)
    again = ledger.hold("k1", [user("$1/day")], usd("0.50"), ttl_seconds=TTL)
    assert (first.replayed, again.replayed) == (False, True)
    assert again.amount_nanos == usd("0.30")
    assert ledger.balance("user").held_nanos == usd("0.30")


def test_capture_turns_the_hold_into_actual_spend(ledger: MemoryLedger) -> None:
    """Capturing less than the hold spends the actual and frees the rest."""
    ledger.hold("k1", [user("$1/day")], usd("0.30"), ttl_seconds=TTL)
    receipt = ledger.capture("k1", usd("0.12"))
    assert (receipt.status, receipt.state) == ("applied", "captured")
    assert receipt.delta_nanos == usd("0.12")
    bal = ledger.balance("user", budget("$1/day"))
    assert (bal.spent_nanos, bal.held_nanos) == (usd("0.12"), 0)


def test_capture_above_the_hold_records_the_actual(ledger: MemoryLedger) -> None:
    """The call already happened: a capture above the hold is spent even past the limit."""
    ledger.hold("k1", [user("$1/day")], usd("0.90"), ttl_seconds=TTL)
    ledger.capture("k1", usd("1.20"))
    bal = ledger.balance("user", budget("$1/day"))
    assert (bal.spent_nanos, bal.remaining_nanos) == (usd("1.20"), 0)


def test_capture_twice_spends_once(ledger: MemoryLedger) -> None:
    """A repeated capture is unchanged and adds no spend."""
    ledger.hold("k1", [user()], usd("0.30"), ttl_seconds=TTL)
    ledger.capture("k1", usd("0.10"))
    again = ledger.capture("k1", usd("0.20"))
    assert (again.status, again.amount_nanos, again.delta_nanos) == ("unchanged", usd("0.10"), 0)
    assert ledger.balance("user").spent_nanos == usd("0.10")


def test_release_after_capture_keeps_the_spend(ledger: MemoryLedger) -> None:
    """Releasing a captured hold is a no-op."""
    ledger.hold("k1", [user()], usd("0.30"), ttl_seconds=TTL)
    ledger.capture("k1", usd("0.10"))
    ledger.release("k1")
    assert ledger.balance("user").spent_nanos == usd("0.10")


def test_release_frees_the_hold_and_a_later_capture_spends_nothing(ledger: MemoryLedger) -> None:
    """Release is final: refund protection survives a stray capture."""
    ledger.hold("k1", [user("$1/day")], usd("0.30"), ttl_seconds=TTL)
    ledger.release("k1")
    ledger.release("k1")
    receipt = ledger.capture("k1", usd("0.10"))
    assert (receipt.status, receipt.state) == ("unchanged", "released")
    bal = ledger.balance("user")
    assert (bal.spent_nanos, bal.held_nanos) == (0, 0)


def test_release_of_an_unknown_key_is_a_no_op(ledger: MemoryLedger) -> None:
    """Releasing a key never held changes nothing and does not raise."""
    ledger.release("never-held")
    assert ledger.balance("user").held_nanos == 0


def test_capture_of_an_unknown_key_records_against_fallback_charges(ledger: MemoryLedger) -> None:
    """Without a hold the spend still lands when charges are given, and nowhere otherwise."""
    assert ledger.capture("lost", usd("0.10")).status == "unknown"
    receipt = ledger.capture("lost", usd("0.10"), charges=[user()])
    assert (receipt.status, receipt.delta_nanos) == ("late", usd("0.10"))
    assert ledger.capture("lost", usd("0.10"), charges=[user()]).status == "unchanged"
    assert ledger.balance("user").spent_nanos == usd("0.10")


def test_expired_hold_stops_counting(ledger: MemoryLedger) -> None:
    """Past its TTL a hold no longer blocks budget, so a crashed caller locks nothing."""
    ledger.hold("k1", [user("$1/day")], usd("0.90"), ttl_seconds=30, now=NOW)
    with pytest.raises(BudgetExceeded):
        ledger.hold("k2", [user("$1/day")], usd("0.50"), ttl_seconds=30, now=NOW + 29)
    ledger.hold("k2", [user("$1/day")], usd("0.50"), ttl_seconds=30, now=NOW + 30)
    assert ledger.balance("user", now=NOW + 30).held_nanos == usd("0.50")


def test_sweep_reports_expired_holds(ledger: MemoryLedger) -> None:
    """sweep() expires due holds and counts them."""
    ledger.hold("k1", [user()], 5, ttl_seconds=10, now=NOW)
    ledger.hold("k2", [user()], 5, ttl_seconds=20, now=NOW)
    assert ledger.sweep(now=NOW + 15) == 1
    assert ledger.balance("user", now=NOW + 15).held_nanos == 5


def test_capture_after_expiry_still_records_the_spend(ledger: MemoryLedger) -> None:
    """A late capture records the actual (the call happened) and says it was late."""
    ledger.hold("k1", [user()], usd("0.30"), ttl_seconds=10, now=NOW)
    receipt = ledger.capture("k1", usd("0.20"), now=NOW + 11)
    assert (receipt.status, receipt.state) == ("late", "captured")
    assert ledger.balance("user", now=NOW + 11).spent_nanos == usd("0.20")


def test_finished_keys_are_forgotten_after_retention() -> None:
    """Keys are remembered for retain_seconds, then the memory is freed."""
    ledger = MemoryLedger(retain_seconds=100)
    ledger.hold("k1", [user()], 5, ttl_seconds=10, now=NOW)
    ledger.capture("k1", 5, now=NOW + 1)
    assert ledger.capture("k1", 5, now=NOW + 100).status == "unchanged"
    assert ledger.capture("k1", 5, now=NOW + 102).status == "unknown"


def test_key_of_a_charge_cannot_be_held(ledger: MemoryLedger) -> None:
    """One key names one entry: reusing a charge's key for a hold is a programming error."""
    ledger.charge("k1", [user()], 5)
    with pytest.raises(ValueError, match="belongs to a charge"):
        ledger.hold("k1", [user()], 5, ttl_seconds=TTL)


@pytest.mark.parametrize(
    ("charges", "amount", "ttl", "message"),
    [
        ([], 5, TTL, "at least one account"),
        ([Charge("a"), Charge("a")], 5, TTL, "once"),
        ([Charge("a")], -1, TTL, "nano-USD"),
        ([Charge("a")], 1.5, TTL, "nano-USD"),
        ([Charge("a")], 5, 0, "ttl_seconds"),
    ],
)
def test_hold_rejects_bad_arguments(
    ledger: MemoryLedger, charges: list[Charge], amount: int, ttl: float, message: str
) -> None:
    """Misuse raises ValueError before touching the ledger."""
    with pytest.raises(ValueError, match=message):
        ledger.hold("k", charges, amount, ttl_seconds=ttl)


# --- charges -----------------------------------------------------------------------------


def test_charge_spends_immediately_and_enforces_the_budget(ledger: MemoryLedger) -> None:
    """A prepaid charge is spend at once; one that does not fit raises and charges nothing."""
    ledger.charge("k1", [user("$1/day")], usd("0.80"))
    with pytest.raises(BudgetExceeded):
        ledger.charge("k2", [user("$1/day")], usd("0.30"))
    assert ledger.balance("user").spent_nanos == usd("0.80")


def test_charge_without_enforcement_may_go_over(ledger: MemoryLedger) -> None:
    """enforce=False records the spend even past the limit."""
    ledger.charge("k1", [user("$1/day")], usd("1.50"), enforce=False)
    assert ledger.balance("user", budget("$1/day")).spent_nanos == usd("1.50")


def test_charge_twice_spends_once(ledger: MemoryLedger) -> None:
    """A repeated charge is unchanged."""
    ledger.charge("k1", [user()], usd("0.80"))
    assert ledger.charge("k1", [user()], usd("0.80")).status == "unchanged"
    assert ledger.balance("user").spent_nanos == usd("0.80")


def test_adjust_corrects_a_prepaid_charge_both_ways(ledger: MemoryLedger) -> None:
    """adjust sets the final amount: down returns the difference, up adds it."""
    ledger.charge("k1", [user()], usd("0.50"))
    down = ledger.adjust("k1", usd("0.20"))
    assert (down.status, down.delta_nanos) == ("applied", -usd("0.30"))
    assert ledger.balance("user").spent_nanos == usd("0.20")
    ledger.adjust("k1", usd("0.70"))
    assert ledger.balance("user").spent_nanos == usd("0.70")


def test_adjust_twice_to_the_same_amount_is_unchanged(ledger: MemoryLedger) -> None:
    """adjust is absolute, so a retry does nothing."""
    ledger.charge("k1", [user()], usd("0.50"))
    ledger.adjust("k1", usd("0.20"))
    assert ledger.adjust("k1", usd("0.20")).status == "unchanged"
    assert ledger.balance("user").spent_nanos == usd("0.20")


def test_refund_returns_the_spend_once(ledger: MemoryLedger) -> None:
    """refund gives back all spend; repeating it or adjusting afterwards changes nothing."""
    ledger.charge("k1", [user()], usd("0.50"))
    receipt = ledger.refund("k1")
    assert (receipt.state, receipt.delta_nanos) == ("refunded", -usd("0.50"))
    assert ledger.refund("k1").status == "unchanged"
    assert ledger.adjust("k1", usd("0.50")).status == "unchanged"
    assert ledger.balance("user").spent_nanos == 0


def test_refund_of_a_captured_hold_returns_its_spend(ledger: MemoryLedger) -> None:
    """A captured hold can be refunded like a charge."""
    ledger.hold("k1", [user()], usd("0.50"), ttl_seconds=TTL)
    ledger.capture("k1", usd("0.40"))
    ledger.refund("k1")
    assert ledger.balance("user").spent_nanos == 0


def test_adjust_of_an_active_hold_is_refused(ledger: MemoryLedger) -> None:
    """A hold must be captured or released before its amount can be corrected."""
    ledger.hold("k1", [user()], usd("0.50"), ttl_seconds=TTL)
    with pytest.raises(ValueError, match="capture or release"):
        ledger.adjust("k1", usd("0.10"))


# --- windows in the ledger ---------------------------------------------------------------


def test_day_rollover_resets_the_day_but_not_the_month(ledger: MemoryLedger) -> None:
    """Spend at 23:59 counts for its day only; the month and total keep it."""
    charges = [user("$1/day", "$10/month")]
    ledger.charge("k1", charges, usd("0.90"), now=ts(2026, 11, 25, 23, 59, 59))
    ledger.hold("k2", charges, usd("0.90"), ttl_seconds=TTL, now=ts(2026, 11, 26, 0, 0, 1))
    month = ledger.balance("user", budget("$10/month"), now=ts(2026, 11, 26, 0, 0, 1))
    assert (month.spent_nanos, month.resets_at) == (usd("0.90"), ts(2026, 12, 1))
    day = ledger.balance("user", Window("day"), now=ts(2026, 11, 26, 0, 0, 1))
    assert day.spent_nanos == 0


def test_month_rollover_resets_the_month(ledger: MemoryLedger) -> None:
    """A new UTC month starts from zero; total remembers everything."""
    ledger.charge("k1", [user("$10/month")], usd("9"), now=ts(2026, 11, 30, 23))
    with pytest.raises(BudgetExceeded):
        ledger.charge("k2", [user("$10/month")], usd("2"), now=ts(2026, 11, 30, 23, 30))
    ledger.charge("k2", [user("$10/month")], usd("2"), now=ts(2026, 12, 1))
    assert ledger.balance("user", Window("month"), now=ts(2026, 12, 1)).spent_nanos == usd("2")
    assert ledger.balance("user", now=ts(2026, 12, 1)).spent_nanos == usd("11")


def test_week_resets_on_monday_utc(ledger: MemoryLedger) -> None:
    """Sunday's spend counts for the week until Monday 00:00 UTC."""
    ledger.charge("k1", [user()], usd("1"), now=ts(2026, 11, 29, 23))  # Sunday
    week = Window("week")
    assert ledger.balance("user", week, now=ts(2026, 11, 29, 23, 59)).spent_nanos == usd("1")
    assert ledger.balance("user", week, now=ts(2026, 11, 30)).spent_nanos == 0


def test_total_budget_never_resets(ledger: MemoryLedger) -> None:
    """A lifetime budget refuses forever once used, with no retry hint."""
    ledger.charge("k1", [user("$1")], usd("1"), now=ts(2026, 1, 1))
    with pytest.raises(BudgetExceeded) as info:
        ledger.charge("k2", [user("$1")], 1, now=ts(2030, 1, 1))
    assert (info.value.window, info.value.retry_after) == ("total", None)


def test_rolling_window_slides(ledger: MemoryLedger) -> None:
    """Rolling spend blocks until it ages out, with retry_after pointing at that moment."""
    hourly = [user("$1/1h")]  # 60 s buckets: spend leaves at most a minute late
    ledger.charge("k1", hourly, usd("0.60"), now=NOW)
    ledger.charge("k2", hourly, usd("0.30"), now=NOW + 1800)
    with pytest.raises(BudgetExceeded) as info:
        ledger.charge("k3", hourly, usd("0.50"), now=NOW + 3000)
    assert info.value.retry_after == 3600 + 60 - 3000
    ledger.charge("k3", hourly, usd("0.50"), now=NOW + 3660)
    bal = ledger.balance("user", budget("$1/1h"), now=NOW + 3660)
    assert (bal.spent_nanos, bal.resets_at) == (usd("0.80"), None)


def test_rolling_spend_never_leaves_early(ledger: MemoryLedger) -> None:
    """Spend stays in a rolling window for at least its full length."""
    ledger.charge("k1", [user("$1/1h")], usd("0.60"), now=NOW + 59)
    window = Window("rolling", 3600)
    assert ledger.balance("user", window, now=NOW + 59 + 3600).spent_nanos == usd("0.60")


def test_refund_after_the_day_closed_credits_total_only(ledger: MemoryLedger) -> None:
    """A closed day is final: a late refund does not give the new day extra room."""
    later = ts(2026, 11, 26, 0, 2)
    ledger.charge("k1", [user("$1/day")], usd("0.80"), now=ts(2026, 11, 25, 23, 59))
    ledger.charge("k2", [user("$1/day")], usd("0.50"), now=ts(2026, 11, 26, 0, 1))
    assert ledger.refund("k1", now=later).status == "applied"
    assert ledger.balance("user", Window("day"), now=later).spent_nanos == usd("0.50")
    assert ledger.balance("user", now=later).spent_nanos == usd("0.50")


def test_balance_without_budget_reports_lifetime_spend(ledger: MemoryLedger) -> None:
    """balance(account) is lifetime spend with no limit; unknown accounts are empty."""
    ledger.charge("k1", [user()], usd("0.25"))
    bal = ledger.balance("user")
    assert (bal.window, bal.spent, bal.limit_nanos, bal.remaining) == (
        Window("total"),
        Decimal("0.25"),
        None,
        None,
    )
    assert ledger.balance("nobody", budget("$1/day")).remaining == Decimal(1)


def test_receipts_report_each_accounts_least_remaining_budget(ledger: MemoryLedger) -> None:
    """A receipt carries what balance() would report as remaining, per account charged."""
    user_ = user("$1/day", "$5/month")
    team = Charge("team", (budget("$2/month"),))
    charges = (user_, team, Charge("feature:chat"))
    ledger.hold("other", [user_], usd("0.10"), ttl_seconds=TTL)  # holds count too
    ledger.hold("k1", charges, usd("0.50"), ttl_seconds=TTL)
    receipt = ledger.capture("k1", usd("0.30"))
    expected = (
        min(ledger.balance("user", b).remaining_nanos or 0 for b in user_.budgets),
        ledger.balance("team", team.budgets[0]).remaining_nanos,
        None,
    )
    assert receipt.remaining_nanos == expected == (usd("0.60"), usd("1.70"), None)
    assert ledger.capture("k1", usd("0.30")).remaining_nanos == expected  # unchanged repeat
    assert ledger.capture("nope", 1).remaining_nanos == ()


def test_a_charges_list_changed_between_calls_is_validated_again(ledger: MemoryLedger) -> None:
    """Prepared charges are reused only for the same tuple: a mutated list is re-checked."""
    charges = [user()]
    ledger.charge("k1", charges, 1)
    charges.append(user())
    with pytest.raises(ValueError, match="once"):
        ledger.charge("k2", charges, 1)


# --- threshold alerts --------------------------------------------------------------------


def test_thresholds_fire_once_per_period(ledger: MemoryLedger) -> None:
    """50%, 80% and 100% each fire once a day, at the spend that crosses them."""
    charges = [user("$1/day")]
    fired = [
        [t.fraction for t in ledger.charge(f"k{i}", charges, usd(a), enforce=False).crossed]
        for i, a in enumerate(["0.40", "0.20", "0.10", "0.15", "0.30", "0.10"])
    ]
    assert fired == [[], [Decimal("0.5")], [], [Decimal("0.8")], [Decimal(1)], []]


def test_thresholds_fire_again_in_the_next_period(ledger: MemoryLedger) -> None:
    """A new day re-arms every threshold; one spend may cross several."""
    charges = [user("$1/day")]
    ledger.charge("k1", charges, usd("0.90"), now=ts(2026, 11, 25, 10))
    crossed = ledger.charge("k2", charges, usd("0.90"), now=ts(2026, 11, 26, 10)).crossed
    assert [(t.fraction, t.spent_nanos, t.period) for t in crossed] == [
        (Decimal("0.5"), usd("0.90"), "day:2026-11-26"),
        (Decimal("0.8"), usd("0.90"), "day:2026-11-26"),
    ]


def test_refund_does_not_refire_a_threshold_in_the_same_period(ledger: MemoryLedger) -> None:
    """Dipping below a threshold and crossing it again the same day is silent."""
    charges = [user("$1/day")]
    ledger.charge("k1", charges, usd("0.60"))
    ledger.refund("k1")
    assert ledger.charge("k2", charges, usd("0.60")).crossed == ()


def test_rolling_threshold_rearms_after_spend_ages_out(ledger: MemoryLedger) -> None:
    """A rolling window has no period: a threshold fires again once spend fell below it."""
    charges = [user("$1/1h")]
    assert len(ledger.charge("k1", charges, usd("0.60"), now=NOW).crossed) == 1
    assert ledger.charge("k2", charges, usd("0.01"), now=NOW + 60).crossed == ()
    again = ledger.charge("k3", charges, usd("0.60"), now=NOW + 2 * 3600)
    assert [t.fraction for t in again.crossed] == [Decimal("0.5")]


def test_capture_reports_crossed_thresholds_for_every_account(ledger: MemoryLedger) -> None:
    """A capture charged to user and team reports each account's crossings."""
    team = Charge("team", (budget("$2/month"),))
    ledger.hold("k1", [user("$1/day"), team], usd("1"), ttl_seconds=TTL)
    crossed = ledger.capture("k1", usd("1")).crossed
    assert [(t.account, t.fraction) for t in crossed] == [
        ("user", Decimal("0.5")),
        ("user", Decimal("0.8")),
        ("user", Decimal(1)),
        ("team", Decimal("0.5")),
    ]


def test_custom_thresholds() -> None:
    """Thresholds are configurable and compared exactly."""
    ledger = MemoryLedger(thresholds=[0.9])
    charges = [user("$1/day")]
    assert ledger.charge("k1", charges, usd("0.899999999"), now=NOW).crossed == ()
    assert [t.fraction for t in ledger.charge("k2", charges, 1, now=NOW).crossed] == [
        Decimal("0.9")
    ]


# --- async twins -------------------------------------------------------------------------


async def test_async_methods_share_the_sync_state(ledger: MemoryLedger) -> None:
    """Each async twin does what its sync method does."""
    await ledger.ahold("k1", [user("$1/day")], usd("0.50"), ttl_seconds=TTL)
    assert (await ledger.acapture("k1", usd("0.20"))).status == "applied"
    await ledger.ahold("k2", [user()], usd("0.50"), ttl_seconds=TTL)
    await ledger.arelease("k2")
    await ledger.acharge("k3", [user()], usd("0.30"))
    await ledger.aadjust("k3", usd("0.10"))
    await ledger.acharge("k4", [user()], usd("0.30"))
    await ledger.arefund("k4")
    assert await ledger.asweep() == 0
    bal = await ledger.abalance("user")
    assert (bal.spent_nanos, bal.held_nanos) == (usd("0.30"), 0)
    await ledger.aclose()


def test_clock_stepping_back_across_midnight_keeps_the_new_days_spend(
    ledger: MemoryLedger,
) -> None:
    """A spend dated before midnight (a lagging clock) never wipes the new day's counter:
    it counts in the day the account has already entered."""
    charge = (user("$5/day"),)
    after_midnight = ts(2026, 11, 26, 0, 0, 10)
    ledger.charge("k1", charge, usd("1"), now=after_midnight)
    ledger.charge("k2", charge, usd("2"), now=ts(2026, 11, 25, 23, 59, 59))  # clock lagged
    today = ledger.balance("user", budget("$5/day"), now=ts(2026, 11, 26, 0, 0, 20))
    assert today.spent_nanos == usd("3")
    assert ledger.balance("user", now=after_midnight).spent_nanos == usd("3")  # total keeps both
