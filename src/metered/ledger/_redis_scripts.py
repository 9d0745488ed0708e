"""The wire between :class:`~metered.ledger.redis.RedisLedger` and its Lua scripts.

Loading the scripts (package files in ``ledger/scripts/``), encoding a charges tuple once
for them, and reading their replies back into receipts, holds and exceptions. No I/O: the
ledger sends what this builds.

Time comes from the caller, never from Redis. Python passes ``now`` (the ledger's
clock), the UTC day, week and month period ids of ``now`` (:func:`calendar_periods`),
the hold expiry and the retention; the script only does arithmetic on them (a rolling
bucket starts at ``at - at mod width``; a key is forgotten at ``finished + retain``).
Clock skew between the app and Redis therefore cannot shift a period, and tests can
drive the clock.

Layout, all under ``prefix`` (default ``"metered:"``):

* ``{prefix}holds`` -- sorted set of the active holds' entry keys by expiry time (one
  for the ledger rather than one per account: the sweep is a single range read, and
  ``RedisLedger.sweep`` needs no index of accounts). Every script first expires the
  due ones (returning their amounts to their accounts), so an account's held total is
  exact whenever it is read and a crashed process never locks budget for longer than
  its holds' TTL.
* ``{prefix}e:{key}`` -- one msgpack string per idempotency key: kind, state, amounts,
  when the spend was dated and its periods, and the charges (accounts, budgets, threshold
  marks) as JSON, so adjust and refund know where the spend landed (~0.4 KB for a call
  charged to one account). While held it has no Redis TTL (only the sweep may end it);
  once finished it is forgotten ``retain_seconds`` later by the callers' clock, and Redis
  drops it a minute after that by its own. Redis memory for keys is therefore about
  calls per second x ``retain_seconds`` x 0.4 KB.
* ``{prefix}a:{account}`` -- hash per account, like MemoryLedger's account record: active
  held nanos, lifetime total, the current day/week/month period ids with their spend,
  and which thresholds fired in which period. It keeps only the current periods, so
  it stays small and needs no expiry (a counter key per period, as the sketch in
  :mod:`metered.ledger` has it, would cost a key per window and read).
* ``{prefix}r:{seconds}:{account}`` -- hash per account and rolling window: spend per
  bucket start with a running total and the oldest and newest bucket, expiring when its
  newest bucket has aged out.
"""

from __future__ import annotations

import importlib.resources
import json
import math
from collections.abc import Callable
from decimal import Decimal
from functools import lru_cache
from typing import Any, Generic, NamedTuple, TypeVar, cast

from metered.config.budgets import Budget, Window, WindowKind
from metered.errors import BudgetExceeded
from metered.ledger.types import Charge, EntryState, Receipt, ReceiptStatus, Threshold
from metered.money import from_nanos

T = TypeVar("T")

# Calendar index of a window kind in calendar_periods(); 0 = total, -1 = rolling.
CALENDAR = {"day": 1, "week": 2, "month": 3, "total": 0, "rolling": -1}
_KIND_OF: dict[int, WindowKind] = {1: "day", 2: "week", 3: "month", 0: "total", -1: "rolling"}

SCRIPT_NAMES = ("hold", "capture", "release", "charge", "correct", "balance", "sweep")


@lru_cache(maxsize=1)
def script_sources() -> dict[str, str]:
    """Each script's source: the shared prelude, then its own body.

    The scripts are package files (``ledger/scripts/*.lua``, shipped in the wheel), so
    they read, diff and lint as Lua.
    """
    folder = importlib.resources.files("metered.ledger") / "scripts"
    prelude = (folder / "prelude.lua").read_text(encoding="utf-8")
    return {
        name: prelude + (folder / f"{name}.lua").read_text(encoding="utf-8")
        for name in SCRIPT_NAMES
    }


class Plan:
    """A validated charges tuple, encoded once for the scripts."""

    __slots__ = ("accounts", "budgets", "charges", "spec")

    def __init__(self, charges: tuple[Charge, ...], marks: Callable[[int], list[int]]) -> None:
        self.charges = charges
        self.accounts = tuple(c.account for c in charges)
        self.budgets = tuple(c.budgets for c in charges)
        self.spec = json.dumps(
            [[c.account, [encode_budget(b, marks) for b in c.budgets]] for c in charges],
            separators=(",", ":"),
            ensure_ascii=False,
        )


def encode_budget(budget: Budget, marks: Callable[[int], list[int]]) -> list[object]:
    window = budget.window
    limit = budget.limit_nanos
    ci = CALENDAR[window.kind]
    seconds = window.seconds or 0
    return [
        str(limit),  # a string, so a limit above 2**53 comes back to Python exact
        ci,
        seconds,
        window.granule,
        window.period(0).id if ci <= 0 else "",
        marks(limit),
    ]


class Op(NamedTuple, Generic[T]):
    """One script call: what to run and how to read its reply."""

    script: str
    keys: tuple[str, str]
    args: tuple[str | int | float, ...]
    parse: Callable[[Any], T]


def receipt_parser(
    key: str,
    wanted: str,
    fractions: tuple[Decimal, ...],
    plan: Plan | None = None,
    amount: int = 0,
    now: float = 0.0,
) -> Callable[[Any], Receipt]:
    """A parser of a receipt reply (``plan``/``amount``/``now``: for budget failures)."""

    def parse(reply: Any) -> Receipt:
        status = text(reply[0])
        if status == "unknown":
            return Receipt(key, "unknown", None)
        if status == "!":
            if plan is None:
                raise wrong_kind(key, text(reply[1]), wanted)
            raise failure(key, reply, plan, amount, now, wanted=wanted)
        crossed = tuple(
            Threshold(
                text(name),
                budget_of(text(limit), ci, seconds),
                fractions[level - 1],
                spent,
                text(period),
            )
            for name, limit, ci, seconds, level, spent, period in reply[5]
            if level <= len(fractions)  # a process with other thresholds wrote it
        )
        return Receipt(
            key,
            cast(ReceiptStatus, status),
            cast(EntryState, text(reply[1])),
            reply[2],
            reply[3],
            crossed,
            tuple(None if left < 0 else left for left in reply[4]),
        )

    return parse


def failure(key: str, reply: Any, plan: Plan, amount: int, now: float, *, wanted: str) -> Exception:
    """The exception a script's failure reply stands for."""
    reason = text(reply[1])
    if reason != "exceeded":
        return wrong_kind(key, reason, wanted)
    payer, index, used, rolling_retry = reply[2:6]
    budget = plan.budgets[payer - 1][index - 1]
    window = budget.window
    retry_after: int | None = None
    if window.kind == "rolling":
        retry_after = None if rolling_retry < 0 else rolling_retry
    else:  # calendar windows reset when their period ends; total never does
        ends_at = window.period(now).ends_at
        if ends_at is not None and amount <= budget.limit_nanos:
            retry_after = max(1, math.ceil(ends_at - now))
    return BudgetExceeded(
        plan.accounts[payer - 1],
        limit=budget.limit,
        spent=from_nanos(used),
        required=from_nanos(amount),
        window=str(window),
        retry_after=retry_after,
    )


def text(value: bytes | str) -> str:
    # replies are bytes unless the caller's client was built with decode_responses=True
    return value.decode() if isinstance(value, bytes) else value


@lru_cache(maxsize=256)
def budget_of(limit: str, ci: int, seconds: int) -> Budget:
    kind = _KIND_OF[ci]
    return Budget(int(limit), Window(kind, seconds if kind == "rolling" else None))


def wrong_kind(key: str, reason: str, wanted: str) -> ValueError:
    if reason == "active":
        return ValueError(f"hold {key!r} is still active: capture or release it first")
    return ValueError(f"key {key!r} belongs to a {reason}, not a {wanted}")


def has_hash_tag(prefix: str) -> bool:
    # Redis hashes only the part between the first "{" and the next "}" when non-empty.
    start = prefix.find("{")
    return start >= 0 and prefix.find("}", start + 1) > start + 1
