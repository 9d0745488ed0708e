"""RedisLedger cost per call, as a ratio to the least a Redis-backed hold/settle can cost.

Baseline: two round trips of a trivial Lua script (``return 1`` by EVALSHA), one to
reserve and one to settle, on the same local server. Each scenario is one full call.
Needs a ``redis-server`` binary (started on a free loopback port); skipped without one.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable

import redis

from metered.ledger import Budget, Charge, Window
from metered.ledger.redis import RedisLedger
from tests.redis_server import RedisServer

ROUNDS = 3
CALLS = 2_000
ONE_USD = 1_000_000_000
NOW = 1_800_000_000.0


def _best_per_call(run: Callable[[int], None]) -> float:
    """Best of ROUNDS, in microseconds per call (each round uses fresh keys)."""
    best = float("inf")
    for r in range(ROUNDS):
        start = time.perf_counter()
        run(r)
        best = min(best, time.perf_counter() - start)
    return best / CALLS * 1e6


def _baseline(client: redis.Redis) -> Callable[[int], None]:
    noop = client.register_script("return 1")

    def run(_: int) -> None:
        for _i in range(CALLS):
            noop(keys=["k"], args=[1])
            noop(keys=["k"], args=[1])

    return run


def _hold_capture(ledger: RedisLedger, charges: tuple[Charge, ...]) -> Callable[[int], None]:
    def run(r: int) -> None:
        for i in range(CALLS):
            key = f"hc{len(charges)}-{r}-{i}"
            ledger.hold(key, charges, 5_000, ttl_seconds=600)
            ledger.capture(key, 4_000)

    return run


def _ahold_capture(ledger: RedisLedger, charges: tuple[Charge, ...]) -> Callable[[int], None]:
    async def calls(r: int) -> None:
        for i in range(CALLS):
            key = f"ahc-{r}-{i}"
            await ledger.ahold(key, charges, 5_000, ttl_seconds=600)
            await ledger.acapture(key, 4_000)
        await ledger.aclose()  # the async client belongs to this round's event loop

    return lambda r: asyncio.run(calls(r))


def _charge_adjust(ledger: RedisLedger, charges: tuple[Charge, ...]) -> Callable[[int], None]:
    def run(r: int) -> None:
        for i in range(CALLS):
            key = f"ca-{r}-{i}"
            ledger.charge(key, charges, 5_000)
            ledger.adjust(key, 4_000)

    return run


def _balance(ledger: RedisLedger, budget: Budget) -> Callable[[int], None]:
    def run(_: int) -> None:
        for _i in range(CALLS):
            ledger.balance("user", budget)

    return run


def main() -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        print("ledger_redis: skipped (no redis-server binary)")
        return
    day = Budget(10_000 * ONE_USD, Window("day"))
    month = Budget(100_000 * ONE_USD, Window("month"))
    rolling = Budget(10_000 * ONE_USD, Window("rolling", 86_400))
    one = (Charge("user", (day,)),)
    two = (Charge("user", (day, rolling)), Charge("team", (month,)))
    with RedisServer(binary) as server, redis.Redis.from_url(server.url) as client:
        ledger = RedisLedger(server.url, clock=lambda: NOW)
        base = _best_per_call(_baseline(client))
        print(f"ledger_redis: baseline (2 EVALSHA round trips) {base:.1f} us/call")
        scenarios = {
            "hold+capture, 1 account, $/day": _hold_capture(ledger, one),
            "hold+capture, user (day+rolling) + team (month)": _hold_capture(ledger, two),
            "hold+capture, async, 1 account": _ahold_capture(ledger, one),
            "charge+adjust, 1 account, $/day": _charge_adjust(ledger, one),
            "balance, $/day (1 round trip)": _balance(ledger, day),
        }
        for name, run in scenarios.items():
            cost = _best_per_call(run)
            print(f"ledger_redis: {name:50s} {cost:7.1f} us/call  {cost / base:5.2f}x baseline")
        ledger.close()


if __name__ == "__main__":
    main()
