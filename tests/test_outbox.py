"""A settlement is never lost: Redis stopped between hold and capture, then restarted.

A real ``redis-server`` is killed after a call's hold and before its capture: the call's
record says ``pending`` and the charge waits in the outbox file. Once a server answers on
the same address again the charge lands exactly once (the restarted server lost the hold:
the capture's own charges carry it), however often it is replayed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

import metered.engine.outbox
from metered.engine.meter import Meter
from metered.ledger import RedisLedger
from metered.money import to_nanos
from metered.records import UsageRecord
from metered.usage import Usage
from tests.redis_server import free_port, require_redis_server

CONFIG: dict[str, Any] = {
    "routes": {
        "r": {"models": {"gpt-4o": {"input": "$1 / 1M tokens", "output": "$10 / 1M tokens"}}}
    },
    "default_route": "r",
    "accounts": {"acme": {"budgets": ["$5/day"]}},
}
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
USAGE = Usage(input_tokens=8, output_tokens=40)


class Server:
    """A redis-server on a fixed loopback port that can be stopped and started again."""

    def __init__(self, tmp: Path) -> None:
        self.binary = require_redis_server()
        self.port = free_port()
        self.dir = tmp
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        with redis.Redis(port=self.port, socket_connect_timeout=1) as probe:
            while True:  # polling for the server to come up
                try:
                    probe.ping()
                    return
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    started = Server(tmp_path)
    started.start()
    yield started
    started.stop()


def spent(server: Server) -> int:
    ledger = RedisLedger(server.url)
    try:
        return ledger.balance("acme").spent_nanos
    finally:
        ledger.close()


def test_a_charge_the_store_missed_lands_once_after_it_restarts(
    server: Server, tmp_path: Path
) -> None:
    outbox = tmp_path / "settlements.outbox"
    records: list[UsageRecord] = []
    meter = Meter(CONFIG, ledger=RedisLedger(server.url), sink=records.append, outbox=outbox)
    call = meter.begin(BODY, account="acme")  # the hold is taken
    server.stop()
    call.finish(USAGE)  # the answer was delivered: the capture fails
    (record,) = records
    assert record.settlement_status == "pending"
    price = record.settlement_amount
    assert price == Decimal(8 * 1_000 + 40 * 10_000) / 10**9
    assert [json.loads(line)["op"] for line in outbox.read_text().splitlines()] == ["capture"]
    assert meter.flush_settlements() == 0  # still down: nothing lost, nothing landed

    server.start()  # a new, empty server on the same address: the hold is gone
    assert meter.flush_settlements() == 1
    assert spent(server) == to_nanos(price)
    assert meter.flush_settlements() == 0  # replays are idempotent: nothing more lands
    assert spent(server) == to_nanos(price)
    assert outbox.read_text() == ""
    assert len(records) == 1  # the record was emitted once, when the call finished


def test_async_settlement_parks_and_replays_the_same_way(server: Server, tmp_path: Path) -> None:
    async def scenario() -> tuple[str, int, int]:
        meter = Meter(CONFIG, ledger=RedisLedger(server.url), outbox=tmp_path / "a.outbox")
        call = await meter.abegin(BODY, account="acme")
        server.stop()
        await call.afinish(USAGE)
        assert call.record is not None
        status = call.record.settlement_status
        server.start()
        landed = await meter.aflush_settlements()
        again = await meter.aflush_settlements()
        await meter.aclose()
        return status, landed, again

    assert asyncio.run(scenario()) == ("pending", 1, 0)
    assert spent(server) == 8 * 1_000 + 40 * 10_000


def test_a_later_settlement_replays_what_waits_first(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metered.engine.outbox, "RETRY_SECONDS", 0.0)
    meter = Meter(CONFIG, ledger=RedisLedger(server.url), outbox=tmp_path / "b.outbox")
    first = meter.begin(BODY, account="acme")
    server.stop()
    first.finish(USAGE)
    server.start()
    meter.begin(BODY, account="acme").finish(USAGE)  # replays the parked one, then settles
    assert meter.pending_settlements() == 0
    assert spent(server) == 2 * (8 * 1_000 + 40 * 10_000)


def test_a_new_meter_replays_what_an_earlier_process_left(server: Server, tmp_path: Path) -> None:
    outbox = tmp_path / "c.outbox"
    crashed = Meter(CONFIG, ledger=RedisLedger(server.url), outbox=outbox)
    call = crashed.begin(BODY, account="acme")
    server.stop()
    call.finish(USAGE)
    del crashed  # the process went away during the outage
    server.start()
    Meter(CONFIG, ledger=RedisLedger(server.url), outbox=outbox)  # replays at start
    assert spent(server) == 8 * 1_000 + 40 * 10_000
    assert outbox.read_text() == ""


def test_jsonl_records_get_an_outbox_next_to_them(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    meter = Meter({**CONFIG, "records": {"sink": "jsonl", "path": str(path)}})
    assert meter._runtime.outbox.path == Path(f"{path}.outbox")
