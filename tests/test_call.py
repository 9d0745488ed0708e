"""Tests for metered.engine.call: call ids, replays, and settlement that outlives its caller."""

from __future__ import annotations

import asyncio
import json
import os
from decimal import Decimal
from typing import Any

import pytest
import redis

from metered.engine import call as call_module
from metered.engine.meter import Meter
from metered.errors import LedgerError
from metered.ledger import MemoryLedger
from metered.ledger.redis import RedisLedger
from metered.records import UsageRecord
from metered.usage import Usage
from tests.redis_server import RedisServer, redis_server_fixture  # noqa: F401

CONFIG: dict[str, Any] = {"default_budgets": ["$1/total"]}
USED = Usage(input_tokens=1000, output_tokens=100)


def chat(**extra: Any) -> dict[str, Any]:
    """A chat-completions request body."""
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's server, emptied for this test."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


def test_call_ids_differ_between_calls() -> None:
    """Every call gets its own id, the ledger's idempotency key."""
    meter = Meter()
    ids = {meter.begin(chat()).id for _ in range(1000)}
    assert len(ids) == 1000


@pytest.mark.redis
def test_forked_workers_sharing_a_redis_ledger_get_distinct_ids_and_both_pay(
    redis_url: str,
) -> None:
    """A meter built before fork() (gunicorn --preload): parent and child begin calls with
    distinct ids, and the shared ledger charges both, so the child's budget is enforced."""
    meter = Meter(CONFIG, ledger=RedisLedger(redis_url))
    meter.begin(chat(max_tokens=100)).finish(USED)  # the parent has made calls before
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its call, never return into pytest
        try:
            call = meter.begin(chat(max_tokens=100))
            call.finish(USED)
            record = call.record
            assert record is not None
            os.write(write, json.dumps([call.id, record.settlement_status]).encode())
        finally:
            os._exit(0)
    os.close(write)
    call = meter.begin(chat(max_tokens=100))
    call.finish(USED)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child_id, child_status = json.loads(pipe.read())
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_id != call.id
    assert child_status == "settled"
    price = meter.quote("gpt-4o", USED).price
    assert meter.spent("anonymous") == 3 * price
    assert meter.ledger.balance("anonymous").held_nanos == 0
    meter.close()


@pytest.mark.parametrize("mode", ["after-response", "before-response"])
def test_a_call_id_the_ledger_already_holds_is_refused(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """If the ledger reports the new call's id as another call's (a replay), the call is
    refused: it must not run on the other call's hold, unbudgeted."""
    records: list[UsageRecord] = []
    config = {**CONFIG, "routes": {"default": {"settlement": mode}}}
    meter = Meter(config, sink=records.append)
    monkeypatch.setattr(call_module, "_new_id", lambda: "same-id")
    first = meter.begin(chat(max_tokens=100))
    held = meter.ledger.balance("anonymous")
    with pytest.raises(LedgerError, match="same-id"):
        meter.begin(chat(max_tokens=100))
    assert meter.ledger.balance("anonymous") == held  # nothing more held or charged
    assert [r.policy_decision for r in records] == ["denied"]
    assert records[0].error_type == "LedgerError"
    first.finish(USED)
    assert meter.spent("anonymous") == meter.quote("gpt-4o", USED).price


class _SlowLedger:
    """Wraps a MemoryLedger; every async operation awaits first (a network round trip)."""

    def __init__(self) -> None:
        self.inner = MemoryLedger()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if not name.startswith("a") or name == "aclose":
            return method

        async def slow(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.02)
            return await method(*args, **kwargs)

        return slow


async def test_a_second_afinish_waits_for_the_first_to_settle() -> None:
    """Two tasks finishing the same call: one settles, both return with the record set."""
    meter = Meter(CONFIG, ledger=_SlowLedger())  # type: ignore[arg-type]
    call = await meter.abegin(chat(max_tokens=100))
    await asyncio.gather(call.afinish(USED), call.afinish(USED))
    assert call.record is not None
    assert call.record.settlement_status == "settled"
    assert await meter.aspent("anonymous") == meter.quote("gpt-4o", USED).price


async def test_a_cancelled_afinish_on_a_slow_ledger_settles_and_emits() -> None:
    """The caller is cancelled while its settlement awaits the ledger: the settlement still
    completes, nothing stays held and the record is emitted."""
    records: list[UsageRecord] = []
    meter = Meter(CONFIG, ledger=_SlowLedger(), sink=records.append)  # type: ignore[arg-type]
    call = await meter.abegin(chat(max_tokens=100))
    task = asyncio.ensure_future(call.afinish(USED))
    await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)
    assert [r.settlement_status for r in records] == ["settled"]
    assert (await meter.ledger.abalance("anonymous")).held_nanos == 0
    assert await meter.aspent("anonymous") == meter.quote("gpt-4o", USED).price


async def test_aspent_matches_spent() -> None:
    """The async read of spend agrees with the sync one, per window too."""
    meter = Meter(CONFIG)
    (await meter.abegin(chat(max_tokens=100))).finish(USED)
    assert await meter.aspent("anonymous") == meter.spent("anonymous") > Decimal(0)
    assert await meter.aspent("anonymous", window="day") == meter.spent("anonymous", window="day")
