"""RedisLedger: the MemoryLedger scenarios against a real Redis, and what sharing adds.

Every scenario of tests/test_ledger.py that takes the ``ledger`` fixture is collected
here again, unchanged, with ``ledger`` a RedisLedger: both ledgers must give the same
results. Below them: several processes sharing one budget, crashes, outages, the engine.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

import tests.test_ledger as memory_suite
from metered.engine.meter import Meter
from metered.errors import BudgetExceeded, LedgerError
from metered.ledger import Balance, Budget, Charge, Window
from metered.ledger.redis import RedisLedger
from metered.usage import Usage
from tests.redis_server import (  # the *_fixture imports provide redis_server, redis_cluster
    RedisServer,
    free_port,
    redis_cluster_fixture,  # noqa: F401
    redis_server_fixture,  # noqa: F401
    require_redis_server,
)
from tests.test_ledger import NOW, TTL, budget, ts, usd, user
from tests.test_ledger_concurrency import MAX_HOLD, ONE_USD, Tally

pytestmark = pytest.mark.redis

# The shared suite: each MemoryLedger scenario, run with the `ledger` fixture below.
globals().update(
    {
        name: scenario
        for name, scenario in vars(memory_suite).items()
        if name.startswith("test_") and "ledger" in inspect.signature(scenario).parameters
    }
)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's server, emptied for this test."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def make_ledger(redis_url: str) -> Iterator[Callable[..., RedisLedger]]:
    """Build RedisLedgers on the test's server (each one a separate "process")."""
    built: list[RedisLedger] = []

    def make(query: str = "", **kwargs: Any) -> RedisLedger:
        kwargs.setdefault("clock", lambda: NOW)
        ledger = RedisLedger(redis_url + query, **kwargs)
        built.append(ledger)
        return ledger

    yield make
    for ledger in built:
        ledger.close()


@pytest.fixture(params=["", "?protocol=3"], ids=["resp2", "resp3"])
async def ledger(
    make_ledger: Callable[..., RedisLedger], request: pytest.FixtureRequest
) -> AsyncIterator[RedisLedger]:
    """The ledger the shared scenarios run against, over both Redis protocols.

    Async, so that it can close the asyncio client the async scenarios open.
    """
    built = make_ledger(request.param)
    yield built
    await built.aclose()


@dataclass
class Clock:
    """A clock the test moves by hand."""

    now: float = NOW

    def __call__(self) -> float:
        return self.now


# --- what the memory suite builds itself, and Redis-only rules ---------------------------


def test_finished_keys_are_forgotten_after_retention(
    make_ledger: Callable[..., RedisLedger],
) -> None:
    """Keys are remembered for retain_seconds by the ledger's clock, then forgotten."""
    ledger = make_ledger(retain_seconds=100)
    ledger.hold("k1", [user()], 5, ttl_seconds=10, now=NOW)
    ledger.capture("k1", 5, now=NOW + 1)
    assert ledger.capture("k1", 5, now=NOW + 100).status == "unchanged"
    assert ledger.capture("k1", 5, now=NOW + 102).status == "unknown"


def test_redis_drops_finished_keys_itself(
    make_ledger: Callable[..., RedisLedger], redis_url: str
) -> None:
    """A finished key gets a Redis TTL just past retention; a live hold never expires early."""
    ledger = make_ledger(retain_seconds=100)
    ledger.hold("k1", [user()], 5, ttl_seconds=10)
    with redis.Redis.from_url(redis_url) as client:
        assert client.ttl("metered:e:k1") == -1  # only the sweep may end a hold
        ledger.capture("k1", 5)
        assert 100 < client.ttl("metered:e:k1") <= 160


def test_custom_thresholds(make_ledger: Callable[..., RedisLedger]) -> None:
    """Thresholds are configurable and compared exactly."""
    ledger = make_ledger(thresholds=[0.9])
    charges = [user("$1/day")]
    assert ledger.charge("k1", charges, usd("0.899999999"), now=NOW).crossed == ()
    assert [t.fraction for t in ledger.charge("k2", charges, 1, now=NOW).crossed] == [
        Decimal("0.9")
    ]


def test_rolling_budget_full_of_holds_has_no_retry_hint(ledger: RedisLedger) -> None:
    """Holds are not spend that ages out of a rolling window, so no retry time is given."""
    ledger.hold("k1", [user("$1/1h")], usd("0.90"), ttl_seconds=TTL)
    with pytest.raises(BudgetExceeded) as info:
        ledger.charge("k2", [user("$1/1h")], usd("0.50"))
    assert info.value.retry_after is None


def test_a_replica_whose_clock_lags_never_resets_the_new_day(
    make_ledger: Callable[..., RedisLedger],
) -> None:
    """Spend dated just before midnight by a lagging replica cannot wipe the new day's: it
    counts in the day the account has already entered (never in none)."""
    ledger = make_ledger()
    after_midnight = ts(2026, 11, 26, 0, 0, 1)
    ledger.charge("k1", [user("$1/day")], usd("0.80"), now=after_midnight)
    ledger.charge("k2", [user("$1/day")], usd("0.10"), now=ts(2026, 11, 25, 23, 59, 59))
    with pytest.raises(BudgetExceeded):
        ledger.charge("k3", [user("$1/day")], usd("0.30"), now=after_midnight)
    assert ledger.balance("user", Window("day"), now=after_midnight).spent_nanos == usd("0.90")
    assert ledger.balance("user", now=after_midnight).spent_nanos == usd("0.90")


# --- several processes -------------------------------------------------------------------


DAILY = Budget(ONE_USD, Window("day"))
CHARGES = [Charge("user", (DAILY,))]


@dataclass
class Watch:
    """Reads every account of a call after each operation (each read: one atomic snapshot)."""

    budgets: dict[str, Budget]
    reads: int = 0
    violations: list[str] = field(default_factory=list)

    def record(self, snapshot: Balance) -> None:
        self.reads += 1
        limit = self.budgets[snapshot.account].limit_nanos
        if snapshot.spent_nanos + snapshot.held_nanos > limit or snapshot.held_nanos < 0:
            self.violations.append(str(snapshot))

    def check(self, ledger: RedisLedger, charges: list[Charge]) -> None:
        for charge in charges:
            self.record(ledger.balance(charge.account, self.budgets[charge.account]))

    async def acheck(self, ledger: RedisLedger, charges: list[Charge]) -> None:
        for charge in charges:
            self.record(await ledger.abalance(charge.account, self.budgets[charge.account]))


def assert_settled(ledger: RedisLedger, redis_url: str, tally: Tally, watch: Watch) -> None:
    """Never over budget, contended, no hold left, and spend equals the captures exactly."""
    assert watch.violations == []
    assert tally.rejected > 0
    assert tally.released > 0
    for account, budget_ in watch.budgets.items():
        bal = ledger.balance(account, budget_)
        assert (bal.held_nanos, bal.spent_nanos) == (0, tally.captured.get(account, 0))
        assert bal.spent_nanos <= budget_.limit_nanos
    with redis.Redis.from_url(redis_url) as client:
        assert client.zcard("metered:holds") == 0


def settle_one(
    ledger: RedisLedger,
    rng: random.Random,
    key: str,
    charges: list[Charge],
    tally: Tally,
    watch: Watch,
) -> None:
    """One call: hold up to $0.01, then release (~20%) or capture at most the hold."""
    amount = rng.randint(1, MAX_HOLD)
    try:
        ledger.hold(key, charges, amount, ttl_seconds=TTL)
    except BudgetExceeded:
        with tally.lock:
            tally.rejected += 1
        return
    watch.check(ledger, charges)
    if rng.random() < 0.2:
        ledger.release(key)
        with tally.lock:
            tally.released += 1
    else:
        actual = rng.randint(0, amount)
        ledger.capture(key, actual)
        tally.add(tuple(c.account for c in charges), actual)
    watch.check(ledger, charges)


def run_threads(
    processes: list[RedisLedger], charges_of: list[list[Charge]], tally: Tally, watch: Watch
) -> None:
    """One thread per entry of charges_of, 100 calls each, alternating the processes."""
    start = threading.Barrier(len(charges_of))
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        rng = random.Random(1000 + t)
        start.wait()
        try:
            for i in range(100):
                ledger = processes[t % len(processes)]
                settle_one(ledger, rng, f"t{t}-{i}", charges_of[t], tally, watch)
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(len(charges_of))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_8_threads_in_two_processes_never_overspend_one_dollar(
    make_ledger: Callable[..., RedisLedger], redis_url: str
) -> None:
    """8 threads x 100 calls through two ledgers on one Redis never overspend $1."""
    processes = [make_ledger(), make_ledger()]
    tally, watch = Tally(), Watch({"user": DAILY})
    run_threads(processes, [CHARGES] * 8, tally, watch)
    assert watch.reads >= 2 * (800 - tally.rejected)
    assert_settled(processes[0], redis_url, tally, watch)


def test_two_processes_sharing_a_team_budget_hold_atomically_on_both_accounts(
    make_ledger: Callable[..., RedisLedger], redis_url: str
) -> None:
    """Users with their own limits and a shared team limit: no account is ever overspent."""
    team = Budget(ONE_USD, Window("month"))
    per_user = Budget(ONE_USD * 3 // 10, Window("day"))
    users = [f"user-{u}" for u in range(4)]
    processes = [make_ledger(), make_ledger()]
    tally, watch = Tally(), Watch({"team": team, **dict.fromkeys(users, per_user)})
    charges_of = [[Charge(users[t % 4], (per_user,)), Charge("team", (team,))] for t in range(8)]
    run_threads(processes, charges_of, tally, watch)
    assert_settled(processes[0], redis_url, tally, watch)


async def test_500_tasks_in_two_processes_never_overspend_one_dollar(
    make_ledger: Callable[..., RedisLedger], redis_url: str
) -> None:
    """500 asyncio tasks through two ledgers on one Redis never overspend $1."""
    processes = [make_ledger(), make_ledger()]
    tally, watch = Tally(), Watch({"user": DAILY})

    async def call(i: int) -> None:
        ledger = processes[i % 2]
        rng = random.Random(i)
        amount = rng.randint(1, MAX_HOLD)
        try:
            await ledger.ahold(f"call-{i}", CHARGES, amount, ttl_seconds=TTL)
        except BudgetExceeded:
            tally.rejected += 1
            return
        await watch.acheck(ledger, CHARGES)
        await asyncio.sleep(0)  # the upstream call: every other task runs meanwhile
        if rng.random() < 0.2:
            await ledger.arelease(f"call-{i}")
            tally.released += 1
        else:
            actual = rng.randint(0, amount)
            await ledger.acapture(f"call-{i}", actual)
            tally.add(("user",), actual)
        await watch.acheck(ledger, CHARGES)

    try:
        await asyncio.gather(*(call(i) for i in range(500)))
        assert watch.reads >= 2 * (500 - tally.rejected)
        assert_settled(processes[0], redis_url, tally, watch)
    finally:
        for ledger in processes:
            await ledger.aclose()


def test_a_crashed_processes_holds_expire_for_the_others(
    make_ledger: Callable[..., RedisLedger],
) -> None:
    """A process that dies holding budget blocks others only until its holds' TTL."""
    clock = Clock()
    crashed, survivor = make_ledger(clock=clock), make_ledger(clock=clock)
    crashed.hold("k1", [user("$1/day")], usd("0.90"), ttl_seconds=30)
    crashed.close()  # never captures nor releases
    clock.now += 29
    with pytest.raises(BudgetExceeded):
        survivor.hold("k2", [user("$1/day")], usd("0.50"), ttl_seconds=30)
    clock.now += 1
    survivor.hold("k2", [user("$1/day")], usd("0.50"), ttl_seconds=30)
    assert survivor.balance("user").held_nanos == usd("0.50")
    assert survivor.capture("k1", usd("0.10")).status == "late"  # its spend still lands


def test_processes_see_each_others_spend_and_idempotency_keys(
    make_ledger: Callable[..., RedisLedger],
) -> None:
    """A key settled by one process is a repeat for another; spend is visible to both."""
    first, second = make_ledger(), make_ledger()
    first.hold("k1", [user("$1/day")], usd("0.30"), ttl_seconds=TTL)
    assert second.hold("k1", [user("$1/day")], usd("0.50"), ttl_seconds=TTL).replayed
    assert second.capture("k1", usd("0.20")).status == "applied"
    assert first.capture("k1", usd("0.20")).status == "unchanged"
    assert first.balance("user", budget("$1/day")).remaining_nanos == usd("0.80")


# --- deployment --------------------------------------------------------------------------


def test_every_key_shares_the_prefix_hash_tag(
    make_ledger: Callable[..., RedisLedger], redis_url: str
) -> None:
    """With prefix "{metered}:" every key is in one Cluster slot, so scripts stay atomic."""
    ledger = make_ledger(prefix="{metered}:")
    team = Charge("team", (budget("$5/month"), budget("$1/1h")))
    ledger.hold("k1", [user("$1/day"), team], usd("0.30"), ttl_seconds=TTL)
    ledger.capture("k1", usd("0.20"))
    ledger.hold("k2", [user("$1/day")], usd("0.30"), ttl_seconds=TTL)
    with redis.Redis.from_url(redis_url) as client:
        keys = client.keys("*")
    assert len(keys) >= 5  # holds, two entries, two accounts, a rolling series
    assert all(key.startswith(b"{metered}:") for key in keys)


def test_redis_cluster_needs_and_works_with_a_hash_tagged_prefix(
    redis_cluster: RedisServer,
) -> None:
    """On Redis Cluster a prefix without a hash tag is refused; with one, calls are atomic."""
    with redis.cluster.RedisCluster.from_url(redis_cluster.url) as client:
        client.flushall()
        with pytest.raises(ValueError, match="hash tag"):
            RedisLedger(client=client, prefix="metered:")
        ledger = RedisLedger(client=client, prefix="{metered}:", clock=lambda: NOW)
        team = Charge("team", (budget("$1/month"),))
        ledger.hold("k1", [user("$1/day"), team], usd("0.90"), ttl_seconds=TTL)
        with pytest.raises(BudgetExceeded) as info:
            ledger.hold("k2", [user("$5/day"), team], usd("0.20"), ttl_seconds=TTL)
        assert info.value.account == "team"
        assert ledger.capture("k1", usd("0.50")).remaining_nanos == (usd("0.50"), usd("0.50"))


async def test_redis_cluster_async_client(redis_cluster: RedisServer) -> None:
    """An asyncio cluster client serves the async methods the same way."""
    client = redis.asyncio.cluster.RedisCluster.from_url(redis_cluster.url)
    try:
        await client.flushall()
        ledger = RedisLedger(aclient=client, prefix="{metered}:", clock=lambda: NOW)
        await ledger.acharge("k1", [user("$1/day"), Charge("team")], usd("0.30"))
        assert (await ledger.abalance("team")).spent_nanos == usd("0.30")
    finally:
        await client.aclose()


def test_ledgers_with_different_prefixes_do_not_share(
    make_ledger: Callable[..., RedisLedger],
) -> None:
    """The prefix namespaces a ledger: two apps on one Redis keep separate budgets."""
    one, other = make_ledger(prefix="app1:"), make_ledger(prefix="app2:")
    one.charge("k1", [user()], usd("0.50"))
    assert other.balance("user").spent_nanos == 0
    assert other.charge("k1", [user()], usd("0.10")).status == "applied"


async def test_given_clients_are_used_and_left_open(redis_url: str) -> None:
    """Given clients work whatever their options and are not closed by the ledger."""
    client = redis.Redis.from_url(redis_url, decode_responses=True, protocol=3)
    aclient = redis.asyncio.Redis.from_url(redis_url, decode_responses=True, protocol=3)
    try:
        ledger = RedisLedger(client=client, aclient=aclient, clock=lambda: NOW)
        charges = [user("$1/day"), Charge("team")]
        await ledger.ahold("k1", charges, usd("0.30"), ttl_seconds=TTL)
        receipt = ledger.capture("k1", usd("0.60"))
        assert (receipt.status, receipt.remaining_nanos) == ("applied", (usd("0.40"), None))
        assert [t.period for t in receipt.crossed] == ["day:2026-11-25"]
        await ledger.aclose()
        assert client.ping()
        assert await aclient.ping()
    finally:
        client.close()
        await aclient.aclose()


def test_a_ledger_without_an_async_client_says_so(redis_url: str) -> None:
    """client= alone serves the sync methods; the async ones explain what is missing."""
    with redis.Redis.from_url(redis_url) as client:
        ledger = RedisLedger(client=client)
        assert ledger.sweep() == 0
        with pytest.raises(RuntimeError, match="aclient="):
            asyncio.run(ledger.asweep())


def test_url_and_clients_exclude_each_other() -> None:
    """A ledger is built from a URL or from clients, not both."""
    with redis.Redis() as client, pytest.raises(TypeError, match="either url"):
        RedisLedger("redis://localhost", client=client)  # type: ignore[call-overload]


def test_amounts_beyond_exact_double_range_are_refused(
    make_ledger: Callable[..., RedisLedger],
) -> None:
    """Lua computes in doubles, so amounts above 2**53 nano-USD are refused up front."""
    with pytest.raises(ValueError, match="2\\*\\*53"):
        make_ledger().charge("k1", [user()], 2**53)


def test_missing_redis_server_skips_locally_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CI must not pass by skipping the Redis tests; a laptop without Redis may."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_redis_server()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the Redis tests"):
        require_redis_server()


# --- outages -----------------------------------------------------------------------------


def unreachable() -> RedisLedger:
    """A ledger pointed at a loopback port nothing listens on."""
    return RedisLedger(f"redis://127.0.0.1:{free_port()}/0")


def test_connection_refused_raises_ledger_error() -> None:
    """An unreachable Redis is a LedgerError (HTTP 503), never a raw redis exception, and
    its message (what a 503 body says) does not name the server's address."""
    ledger = unreachable()
    with pytest.raises(
        LedgerError, match=r"budget store unavailable \(hold: ConnectionError\)"
    ) as info:
        ledger.hold("k1", [user("$1/day")], 5, ttl_seconds=TTL)
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    assert "127.0.0.1" not in str(info.value)
    with pytest.raises(LedgerError):
        ledger.balance("user")
    ledger.close()


async def test_connection_refused_raises_ledger_error_async() -> None:
    """The async methods map an unreachable Redis to LedgerError too."""
    ledger = unreachable()
    with pytest.raises(LedgerError, match="unavailable \\(capture"):
        await ledger.acapture("k1", 5, charges=[user()])
    await ledger.aclose()


def test_a_server_lost_mid_call_raises_ledger_error() -> None:
    """A hold taken before Redis went away settles with LedgerError, not a crash."""
    with RedisServer(require_redis_server()) as server:
        ledger = RedisLedger(server.url)
        ledger.hold("k1", [user()], 5, ttl_seconds=TTL)
    with pytest.raises(LedgerError):
        ledger.capture("k1", 5)
    ledger.close()


# --- the engine on Redis -----------------------------------------------------------------

FLAT = {
    "routes": {"r": {"models": {"gpt-4o": "$0.60"}}},
    "default_route": "r",
    "default_budgets": ["$1/total"],
}


def chat() -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_meter_settles_through_redis_and_two_meters_share_the_budget(
    make_ledger: Callable[..., RedisLedger],
) -> None:
    """Two app replicas (Meters) on one Redis: one's spend is the other's budget."""
    replica_a = Meter(FLAT, ledger=make_ledger())
    replica_b = Meter(FLAT, ledger=make_ledger())
    call = replica_a.begin(chat(), account="u1")
    assert replica_b.ledger.balance("u1").held_nanos == usd("0.60")
    call.finish(Usage(input_tokens=1, output_tokens=1))
    record = call.record
    assert record is not None
    assert (record.settlement_status, record.settlement_amount) == ("settled", Decimal("0.60"))
    assert replica_b.spent("u1") == Decimal("0.60")
    with pytest.raises(BudgetExceeded):
        replica_b.begin(chat(), account="u1")
    assert replica_a.remaining("u1") == Decimal("0.40")


async def test_async_meter_settles_through_redis(
    make_ledger: Callable[..., RedisLedger],
) -> None:
    """abegin/afinish hold and capture through the async client."""
    ledger = make_ledger()
    meter = Meter(FLAT, ledger=ledger)
    try:
        call = await meter.abegin(chat(), account="u1")
        await call.afinish(Usage(input_tokens=1, output_tokens=1))
        record = call.record
        assert record is not None
        assert record.settlement_status == "settled"
        assert (await ledger.abalance("u1")).spent_nanos == usd("0.60")
    finally:
        await ledger.aclose()
