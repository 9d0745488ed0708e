"""The ledger: who may spend how much, and the store of holds and charges.

Modules: :mod:`~metered.ledger.types` (what operations take and return),
:mod:`~metered.ledger.protocol` (the :class:`Ledger` protocol), and the two stores,
:mod:`~metered.ledger.memory` and :mod:`~metered.ledger.redis` (its Lua scripts in
``ledger/scripts/``), which share their argument checks (``_common``).

Vocabulary:

* A :class:`Budget` is a limit in integer nano-USD over a :class:`Window`: a calendar
  ``day``, ``week`` (ISO, Monday to Sunday) or ``month`` in UTC, a ``rolling`` duration,
  or ``total`` (lifetime). Config writes them as ``"$5/day"``, ``"$100/month"``,
  ``"$20/week"``, ``"$50"`` (= ``"$50/total"``) or ``"$3/24h"`` (= ``"$3/rolling 24h"``);
  :func:`parse_budget` reads them (they live in :mod:`metered.config.budgets` and are
  re-exported here).
* A :class:`Charge` names one account to charge and the budgets to enforce on it. A call
  may charge several accounts at once (a user *and* their team): either every account
  can pay or nothing is held.
* A **hold** reserves a call's maximum price before the upstream call (``after-response``
  settlement); it is later *captured* (turned into spend of the actual amount) or
  *released* (the call failed: nothing is spent). A hold expires after its TTL, so a
  crashed process never locks budget.
* A **charge** is immediate spend (``before-response`` settlement), later *adjusted* to
  the actual amount or *refunded*.

Accounting rules every :class:`Ledger` follows:

* **Check.** An account can pay ``amount`` when, for each of its budgets,
  ``spent in the current window + all of its active holds + amount <= limit``. Holds
  count against every window (they are short-lived). Several accounts are checked and
  held in one atomic step.
* **Idempotency.** Every operation names a ``key`` (one per call). Repeating an operation
  with the same key never holds or charges twice: the first call's parameters win and
  the repeat returns what the first did (``status="unchanged"``). Keys are remembered
  for ``retain_seconds`` after an entry is finished (or after a hold expires).
* **Spend is dated when it is first recorded** (capture or charge time) and lands in the
  day, week, month and total counters of every account charged (always tracked, so
  :meth:`Ledger.balance` can report any calendar window), and in the rolling series of
  the rolling budgets named in the charge. Later corrections (adjust, refund) apply to
  the periods the spend landed in; a correction to a period that has since closed is
  dropped for that window (a closed period is final, and a new period never gets credit
  for spend it did not see) but always applies to ``total``.
* **Never lose money.** A capture records the actual amount even when it is above the
  hold (the upstream call already happened; the budget may go over) and even when the
  hold has expired (``status="late"``). A capture of a key the ledger has never seen (or
  has forgotten) records the spend against ``charges`` when given.
* **Never charge twice.** Once a hold is captured, released, or a charge refunded, that
  is final: a late ``capture`` after ``release`` records nothing (refund protection).
* **Alerts.** Each spend that moves an account across a fraction of a budget (by
  default 50%, 80% and 100%) returns a :class:`Threshold` in :attr:`Receipt.crossed`.
  Each threshold fires once per calendar period (once per lifetime for ``total``); for
  rolling windows it re-arms when spend falls back below it.

Designed for a shared store too: a Redis ledger does each operation as ONE Lua script.
The caller computes every time-dependent input in Python (``now``, period ids from
:meth:`Window.period`, rolling bucket starts from :meth:`Window.bucket`, expiry times)
and passes it in. State per account: one integer counter per calendar period key
(``{account}:day:2026-11-25``, expiring after the period ends), a hash of rolling
buckets per duration, an integer of active held nanos and a sorted set of its holds by
expiry (expired holds are swept lazily at the start of every script); per key: one hash
record (state, amounts, accounts, budgets, ``at``) expiring ``retain_seconds`` after it
is finished. A call touches several accounts in one script, so on Redis Cluster every
key shares one hash tag (one slot).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# Budgets and windows live with the config that writes them; they are re-exported here
# because ledger users name them in every charge.
from metered.config.budgets import (
    Budget,
    Period,
    Window,
    WindowKind,
    calendar_periods,
    parse_budget,
)
from metered.ledger.protocol import Ledger
from metered.ledger.types import (
    DEFAULT_THRESHOLDS,
    Balance,
    Charge,
    EntryState,
    Hold,
    Receipt,
    ReceiptStatus,
    Threshold,
)

if TYPE_CHECKING:
    from metered.ledger.memory import MemoryLedger
    from metered.ledger.redis import RedisLedger

__all__ = [
    "DEFAULT_THRESHOLDS",
    "Balance",
    "Budget",
    "Charge",
    "EntryState",
    "Hold",
    "Ledger",
    "MemoryLedger",
    "Period",
    "Receipt",
    "ReceiptStatus",
    "RedisLedger",
    "Threshold",
    "Window",
    "WindowKind",
    "calendar_periods",
    "parse_budget",
]


def __getattr__(name: str) -> object:
    # The stores load on first use: naming a Charge or a Budget never costs the import of
    # a store, and never imports redis-py.
    if name == "MemoryLedger":
        from metered.ledger.memory import MemoryLedger

        return MemoryLedger
    if name == "RedisLedger":  # imports redis only when used
        from metered.ledger.redis import RedisLedger

        return RedisLedger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
