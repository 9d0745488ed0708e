"""OS processes sharing one budget on a real ``redis-server``: the harness of the
no-overspend acceptance tests (workers append their usage records to one JSONL file)."""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from metered.config.budgets import parse_budget
from metered.ledger import Balance, RedisLedger
from metered.money import to_nanos
from metered.records import UsageRecord


def jsonl_sink(path: str) -> Callable[[UsageRecord], None]:
    """A record sink appending to ``path``, safe from the threads of one process (each
    record is one ``write`` of one line: the processes' lines do not interleave)."""
    lock = threading.Lock()

    def sink(record: UsageRecord) -> None:
        line = json.dumps(record.to_dict()) + "\n"
        with lock, Path(path).open("a") as out:
            out.write(line)

    return sink


def run_workers(
    worker: Callable[[str, str, int], None], redis_url: str, records: Path, count: int
) -> None:
    """Run ``worker(redis_url, records, seed)`` in ``count`` spawned processes, to the end."""
    records.touch()
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=worker, args=(redis_url, str(records), seed))
        for seed in range(count)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
        assert process.exitcode == 0


def checked_budget(
    redis_url: str, prefix: str, account: str, budget: str, records: Path
) -> tuple[Balance, list[dict[str, Any]]]:
    """The account's balance on ``budget`` and the workers' records, once the budget is
    checked: used and exhausted, never overspent (to the nano-USD), no hold left, and the
    records' settled amounts adding up to the ledger's spend exactly."""
    ledger = RedisLedger(redis_url, prefix=prefix)
    try:
        balance = ledger.balance(account, parse_budget(budget, key="budget"))
    finally:
        ledger.close()
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    settled = [r for r in rows if r["settlement_status"] == "settled"]
    assert settled  # the budget was used
    assert any(r["policy_decision"] != "allowed" for r in rows)  # and exhausted
    assert balance.spent_nanos <= balance.limit_nanos  # no overspend, to the nano
    assert balance.held_nanos == 0  # no hold leaked
    assert sum(to_nanos(Decimal(r["settlement_amount"])) for r in settled) == balance.spent_nanos
    return balance, rows
