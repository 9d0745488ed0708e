"""Acceptance: concurrent callers never overspend a MemoryLedger budget nor leak holds.

The invariant (spend + active holds <= limit for every account) is checked inside the
ledger's critical section, after every single operation, by swapping in a lock that runs
the check just before it releases. Sampling from outside could miss a transient state;
this cannot.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType

import pytest

from metered.errors import BudgetExceeded
from metered.ledger import Budget, Charge, MemoryLedger, Window

NOW = 1_800_000_000.0
ONE_USD = 1_000_000_000
MAX_HOLD = ONE_USD // 100  # $0.01
TTL = 600.0  # far beyond the test's (fixed) clock: nothing expires mid-run


@dataclass
class Tally:
    """What the simulated callers did, to compare with what the ledger recorded."""

    captured: dict[str, int] = field(default_factory=dict)
    holds: int = 0
    rejected: int = 0
    released: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, accounts: tuple[str, ...], amount: int) -> None:
        with self.lock:
            for account in accounts:
                self.captured[account] = self.captured.get(account, 0) + amount


class InvariantLock:
    """A drop-in for the ledger's lock that checks every budget before each release."""

    def __init__(self, ledger: MemoryLedger, budgets: dict[str, Budget]) -> None:
        self._inner = threading.Lock()
        self._ledger = ledger
        self._budgets = budgets
        self.checks = 0
        self.violations: list[str] = []

    def __enter__(self) -> InvariantLock:
        self._inner.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.checks += 1
            for account, budget in self._budgets.items():
                bal = self._ledger._balance(account, budget, NOW)
                if bal.spent_nanos + bal.held_nanos > budget.limit_nanos or bal.held_nanos < 0:
                    self.violations.append(f"{account}: {bal}")
        finally:
            self._inner.release()


def checked_ledger(budgets: dict[str, Budget]) -> tuple[MemoryLedger, InvariantLock]:
    ledger = MemoryLedger(clock=lambda: NOW)
    lock = InvariantLock(ledger, budgets)
    ledger._lock = lock  # type: ignore[assignment]
    return ledger, lock


def assert_settled(ledger: MemoryLedger, lock: InvariantLock, tally: Tally, calls: int) -> None:
    """No overspend was ever seen, no hold is left and spend equals what was captured."""
    assert lock.violations == []
    assert lock.checks >= calls
    # The budget was really contended, and both settle paths ran.
    assert tally.rejected > 0
    assert tally.released > 0
    assert tally.holds - tally.released > 0
    for account, budget in lock._budgets.items():
        bal = ledger.balance(account, budget, now=NOW)
        assert bal.held_nanos == 0
        assert bal.spent_nanos == tally.captured.get(account, 0)
        assert bal.spent_nanos <= budget.limit_nanos


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Make the interpreter switch threads far more often, to provoke races."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


DAILY = Budget(ONE_USD, Window("day"))


async def test_500_concurrent_tasks_never_overspend_one_dollar() -> None:
    """500 asyncio tasks hold, then capture or release, against $1 without overspending."""
    ledger, lock = checked_ledger({"user": DAILY})
    tally = Tally()
    charges = [Charge("user", (DAILY,))]

    async def call(i: int) -> None:
        rng = random.Random(i)
        amount = rng.randint(1, MAX_HOLD)
        try:
            await ledger.ahold(f"call-{i}", charges, amount, ttl_seconds=TTL)
        except BudgetExceeded:
            tally.rejected += 1
            return
        tally.holds += 1
        await asyncio.sleep(0)  # the upstream call: every other task runs meanwhile
        if rng.random() < 0.2:
            await ledger.arelease(f"call-{i}")
            tally.released += 1
        else:
            actual = rng.randint(0, amount)
            await ledger.acapture(f"call-{i}", actual)
            tally.add(("user",), actual)

    await asyncio.gather(*(call(i) for i in range(500)))
    assert_settled(ledger, lock, tally, calls=500)


def settle_one(
    ledger: MemoryLedger,
    rng: random.Random,
    key: str,
    charges: list[Charge],
    tally: Tally,
) -> None:
    """One call: hold up to $0.01, yield, then release (~20%) or capture at most the hold."""
    amount = rng.randint(1, MAX_HOLD)
    try:
        ledger.hold(key, charges, amount, ttl_seconds=TTL)
    except BudgetExceeded:
        with tally.lock:
            tally.rejected += 1
        return
    with tally.lock:
        tally.holds += 1
    time.sleep(0)  # yield the GIL, as an upstream call would
    if rng.random() < 0.2:
        ledger.release(key)
        with tally.lock:
            tally.released += 1
    else:
        actual = rng.randint(0, amount)
        ledger.capture(key, actual)
        tally.add(tuple(c.account for c in charges), actual)


def run_threads(ledger: MemoryLedger, tally: Tally, charges_of: list[list[Charge]]) -> None:
    """One thread per entry of charges_of, 100 calls each, all starting together."""
    start = threading.Barrier(len(charges_of))
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        rng = random.Random(1000 + t)
        start.wait()
        try:
            for i in range(100):
                settle_one(ledger, rng, f"t{t}-{i}", charges_of[t], tally)
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(len(charges_of))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.mark.usefixtures("fast_switching")
def test_8_threads_never_overspend_one_dollar() -> None:
    """8 threads x 100 hold/settle calls against $1 never overspend and leave no hold."""
    ledger, lock = checked_ledger({"user": DAILY})
    tally = Tally()
    run_threads(ledger, tally, [[Charge("user", (DAILY,))]] * 8)
    assert_settled(ledger, lock, tally, calls=800)


@pytest.mark.usefixtures("fast_switching")
def test_threads_sharing_a_team_budget_hold_atomically_on_both_accounts() -> None:
    """Users with their own limits and a shared team limit: no account is ever overspent."""
    team = Budget(ONE_USD, Window("month"))
    per_user = Budget(ONE_USD * 3 // 10, Window("day"))
    users = [f"user-{u}" for u in range(4)]
    ledger, lock = checked_ledger({"team": team, **dict.fromkeys(users, per_user)})
    tally = Tally()
    charges_of = [[Charge(users[t % 4], (per_user,)), Charge("team", (team,))] for t in range(8)]
    run_threads(ledger, tally, charges_of)
    assert_settled(ledger, lock, tally, calls=800)
