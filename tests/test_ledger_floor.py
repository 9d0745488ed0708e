"""Elastic reservations (``floor_nanos``) and skewed clocks, run against BOTH ledgers.

An elastic hold or charge takes the whole amount when every budget can pay it, else the
most that every budget of every account can still pay, down to the floor; below the floor
it is refused exactly as a plain reservation of the floor would be.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
import redis

from metered.errors import BudgetExceeded
from metered.ledger import Budget, Charge, Ledger, MemoryLedger, Window
from metered.ledger.redis import RedisLedger
from tests.redis_server import RedisServer, redis_server_fixture  # noqa: F401
from tests.test_ledger import NOW, TTL, ts, usd, user
from tests.test_ledger_validation import both_ledgers  # noqa: F401 (the "ledger" fixture)


def test_an_affordable_amount_is_held_whole(ledger: Ledger) -> None:
    hold = ledger.hold("k1", (user("$1/day"),), 700, ttl_seconds=TTL, floor_nanos=100)
    assert hold.amount_nanos == 700


def test_what_is_left_is_held_when_the_amount_does_not_fit(ledger: Ledger) -> None:
    charges = (user("$0.000001/day"),)  # 1,000 nanos
    ledger.charge("spent", charges, 300)
    hold = ledger.hold("k1", charges, 5_000, ttl_seconds=TTL, floor_nanos=100)
    assert hold.amount_nanos == 700
    assert ledger.balance("user", Budget(1_000, Window("day"))).remaining_nanos == 0
    # the next caller finds nothing left above its floor
    with pytest.raises(BudgetExceeded) as refused:
        ledger.hold("k2", charges, 5_000, ttl_seconds=TTL, floor_nanos=1)
    assert refused.value.required == Decimal("0.000000001")  # the floor, not the whole amount
    # capturing the partial hold at its amount spends the budget exactly
    ledger.capture("k1", 700)
    assert ledger.balance("user", Budget(1_000, Window("day"))).spent_nanos == 1_000


def test_below_the_floor_nothing_is_held(ledger: Ledger) -> None:
    charges = (user("$0.000001/day"),)
    with pytest.raises(BudgetExceeded):
        ledger.hold("k1", charges, 5_000, ttl_seconds=TTL, floor_nanos=1_001)
    assert ledger.balance("user", Budget(1_000, Window("day"))).held_nanos == 0


def test_a_replayed_elastic_hold_returns_what_was_held(ledger: Ledger) -> None:
    charges = (user("$0.000001/day"),)
    first = ledger.hold("k1", charges, 5_000, ttl_seconds=TTL, floor_nanos=10)
    again = ledger.hold("k1", charges, 5_000, ttl_seconds=TTL, floor_nanos=10)
    assert (first.amount_nanos, again.amount_nanos, again.replayed) == (1_000, 1_000, True)


def test_the_tightest_budget_of_every_account_decides(ledger: Ledger) -> None:
    team = Charge("team", (Budget(2_000, Window("day")), Budget(5_000, Window("total"))))
    member = Charge("alice", (Budget(900, Window("day")),))
    free = Charge("feature:chat")  # no budget: never limits
    ledger.charge("earlier", (team,), 1_500)  # the team has 500 left today
    hold = ledger.hold("k1", (member, team, free), 4_000, ttl_seconds=TTL, floor_nanos=50)
    assert hold.amount_nanos == 500


def test_rolling_windows_limit_elastic_holds_too(ledger: Ledger) -> None:
    charges = (Charge("user", (Budget(1_000, Window("rolling", 3600)),)),)
    ledger.charge("c1", charges, 600, now=NOW - 60)
    hold = ledger.hold("k1", charges, 2_000, ttl_seconds=TTL, floor_nanos=10)
    assert hold.amount_nanos == 400


def test_an_elastic_charge_spends_what_is_left(ledger: Ledger) -> None:
    charges = (user("$0.000001/day"),)
    ledger.charge("c1", charges, 250)
    receipt = ledger.charge("c2", charges, 10_000, floor_nanos=100)
    assert receipt.amount_nanos == 750
    with pytest.raises(BudgetExceeded):
        ledger.charge("c3", charges, 10_000, floor_nanos=100)


@pytest.mark.parametrize("floor", [-1, 6, 1.5, True])
def test_a_bad_floor_is_refused_before_anything_happens(ledger: Ledger, floor: object) -> None:
    with pytest.raises(ValueError, match=r"floor|amount"):
        ledger.hold("k1", (user(),), 5, ttl_seconds=TTL, floor_nanos=floor)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"floor|amount"):
        ledger.charge("k2", (user(),), 5, floor_nanos=floor)  # type: ignore[arg-type]
    assert ledger.balance("user").spent_nanos == 0
    assert ledger.balance("user").held_nanos == 0


# --- skewed clocks ------------------------------------------------------------------------


def test_a_lagging_replica_never_sees_a_spent_day_as_empty(
    redis_server: RedisServer,
) -> None:
    """Two RedisLedgers on one prefix, one clock 2 s behind, across midnight UTC: once the
    ahead replica has spent the new day's budget, the lagging one (still in the old day
    by its clock) is refused, and the day's spend never exceeds its limit."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    day = (Charge("user", (Budget(usd("0.05"), Window("day")),)),)
    ahead = RedisLedger(redis_server.url)
    behind = RedisLedger(redis_server.url)
    midnight = ts(2026, 11, 27, 0, 0, 0)
    try:
        price = usd("0.012")
        spent_calls = 0
        for i in range(30):
            now = midnight + 0.5 + i * 0.01  # the ahead replica is already in day D+1
            for name, ledger, at in (("a", ahead, now), ("b", behind, now - 2.0)):
                try:
                    ledger.hold(f"{name}{i}", day, price, ttl_seconds=TTL, now=at)
                except BudgetExceeded:
                    continue
                ledger.capture(f"{name}{i}", price, now=at)
                spent_calls += 1
        today = ahead.balance("user", Window("day"), now=midnight + 1)
        assert spent_calls == 4  # 4 x $0.012 fit in $0.05, whichever replica took them
        assert today.spent_nanos == 4 * price <= usd("0.05")
    finally:
        ahead.close()
        behind.close()


def test_a_lagging_caller_of_one_memory_ledger_is_refused_too() -> None:
    """The same rule in the in-process ledger (callers passing their own ``now``)."""
    ledger = MemoryLedger()
    day = (Charge("user", (Budget(usd("0.05"), Window("day")),)),)
    midnight = ts(2026, 11, 27, 0, 0, 0)
    ledger.charge("a", day, usd("0.05"), now=midnight + 1)
    with pytest.raises(BudgetExceeded):
        ledger.charge("b", day, usd("0.01"), now=midnight - 1)
