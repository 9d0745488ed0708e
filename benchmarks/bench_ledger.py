"""MemoryLedger cost per call, as a ratio to the least a thread-safe hold/settle can cost.

Baseline: two lock-protected dict operations (insert on hold, pop on settle), the
bookkeeping any thread-safe ledger needs at minimum. Each scenario is one full call:
reserve before the upstream call, settle after it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from metered.ledger import Budget, Charge, MemoryLedger, Window

ROUNDS = 5
CALLS = 20_000
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


def _baseline(_: int) -> None:
    lock = threading.Lock()
    table: dict[str, int] = {}
    for i in range(CALLS):
        key = f"k{i}"
        with lock:
            table[key] = 5
        with lock:
            table.pop(key)


def _hold_capture(charges: tuple[Charge, ...]) -> Callable[[int], None]:
    def run(r: int) -> None:
        ledger = MemoryLedger(clock=lambda: NOW)
        for i in range(CALLS):
            key = f"{r}-{i}"
            ledger.hold(key, charges, 5_000, ttl_seconds=600)
            ledger.capture(key, 4_000)

    return run


def _charge_adjust(charges: tuple[Charge, ...]) -> Callable[[int], None]:
    def run(r: int) -> None:
        ledger = MemoryLedger(clock=lambda: NOW)
        for i in range(CALLS):
            key = f"{r}-{i}"
            ledger.charge(key, charges, 5_000)
            ledger.adjust(key, 4_000)

    return run


def _balance(charges: tuple[Charge, ...]) -> Callable[[int], None]:
    ledger = MemoryLedger(clock=lambda: NOW)
    ledger.charge("seed", charges, 5_000)
    budget = charges[0].budgets[0]

    def run(_: int) -> None:
        for _i in range(CALLS):
            ledger.balance("user", budget)

    return run


def main() -> None:
    day = Budget(5 * ONE_USD, Window("day"))
    month = Budget(100 * ONE_USD, Window("month"))
    rolling = Budget(3 * ONE_USD, Window("rolling", 86_400))
    # tuples, reused across calls: what the engine passes (its per-account charges are
    # cached), so the ledger's prepared-charges cache hits as it does in production
    one = (Charge("user", (day,)),)
    two = (Charge("user", (day, rolling)), Charge("team", (month,)))
    untracked = (Charge("user"),)

    base = _best_per_call(_baseline)
    print(f"ledger: baseline (2 locked dict ops) {base:.2f} us/call")
    scenarios = {
        "hold+capture, 1 account, $/day": _hold_capture(one),
        "hold+capture, user (day+rolling) + team (month)": _hold_capture(two),
        "hold+capture, no budgets (track only)": _hold_capture(untracked),
        "charge+adjust, 1 account, $/day": _charge_adjust(one),
        "balance, $/day": _balance(one),
    }
    for name, run in scenarios.items():
        cost = _best_per_call(run)
        print(f"ledger: {name:50s} {cost:6.2f} us/call  {cost / base:5.1f}x baseline")


if __name__ == "__main__":
    main()
