"""Tests for metered.records: one usage record per call, and the JSONL/callback sinks."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import fields
from datetime import UTC, datetime
from decimal import Decimal
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest

from metered.engine.meter import Meter
from metered.errors import PolicyDenied
from metered.records import CallbackSink, JsonlSink, UsageRecord
from metered.usage import Usage

MeterFactory = Callable[..., Meter]
CONFIG: dict[str, Any] = {
    "routes": {
        "POST /v1/chat/completions": {
            "models": {"gpt-4o": {"input": "$3 / 1M tokens", "output": "$12 / 1M tokens"}}
        }
    },
    "default_route": "POST /v1/chat/completions",
    "accounts": {"acme": {"budgets": ["$5/day"]}},
}
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
USAGE = Usage(input_tokens=1000, output_tokens=500)


@pytest.fixture
def record(make_meter: MeterFactory, records: list[UsageRecord]) -> UsageRecord:
    """The record of one settled call by acme."""
    meter = make_meter(CONFIG)
    meter.begin(BODY, provider="openai", account="acme").finish(USAGE, status=200)
    return records[0]


def test_a_record_read_later_describes_the_call_as_it_finished(make_meter: MeterFactory) -> None:
    """With no sink the record is built when first read, yet its times, latencies and
    remaining budget are those of the moment the call finished."""
    meter = make_meter(CONFIG)
    began = time.perf_counter()
    call = meter.begin(BODY, account="acme")
    before = time.time()
    call.finish(USAGE, status=200)
    after = time.time()
    ended = time.perf_counter()
    meter.begin(BODY, account="acme").finish(USAGE)  # spends more before the read
    time.sleep(0.01)
    record = call.record
    assert record is not None
    assert before <= record.timestamp <= after
    assert record.upstream_latency_ms is not None
    assert record.upstream_latency_ms <= (ended - began) * 1000
    assert record.budget_remaining == Decimal("5") - Decimal("0.009")
    assert call.record is record


def test_an_http_status_enum_is_recorded_as_its_code(make_meter: MeterFactory) -> None:
    """finish(status=HTTPStatus.SERVICE_UNAVAILABLE) records upstream status 503."""
    meter = make_meter(CONFIG)
    call = meter.begin(BODY, account="acme")
    call.finish(error=TimeoutError(), status=HTTPStatus.SERVICE_UNAVAILABLE)
    assert call.record is not None
    assert call.record.upstream_status == 503
    assert type(call.record.upstream_status) is int


def test_record_carries_the_per_request_log_fields(
    make_meter: MeterFactory, records: list[UsageRecord]
) -> None:
    """A settled call's record has every field of the per-request log, with exact money."""
    meter = make_meter(CONFIG)
    call = meter.begin(BODY, provider="openai", account="acme")
    call.finish(USAGE, status=200, response_model="gpt-4o-2024-08-06")
    returned = call.record
    assert records == [returned]
    assert call.record is returned
    rec = records[0]
    quote = meter.quote("gpt-4o", USAGE, route="POST /v1/chat/completions")
    stamp = datetime.fromisoformat(rec.to_dict()["timestamp"])
    assert stamp.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(tz=UTC) - stamp).total_seconds()) < 60
    assert rec.call_id == call.id
    assert rec.route == "POST /v1/chat/completions"
    assert rec.provider == "openai"
    assert rec.requested_model == "gpt-4o"
    assert rec.response_model == "gpt-4o-2024-08-06"
    assert rec.resolved_model == "gpt-4o"
    assert rec.resolved_pricing_mode == "token-based"
    assert rec.pricing_source == "route.models"
    assert rec.resolved_price == Decimal("0.009")  # 1000 x $3/1M + 500 x $12/1M
    assert rec.cost == quote.cost
    assert rec.margin == quote.margin
    assert (rec.tokens_in, rec.tokens_out, rec.tokens_source) == (1000, 500, "actual")
    assert rec.payment_required == call.payment_required
    assert rec.payment_settled is True
    assert (rec.settlement_mode, rec.settlement_status) == ("after-response", "settled")
    assert rec.settlement_amount == Decimal("0.009")
    assert rec.settlement_latency_ms >= 0
    assert rec.upstream_status == 200
    assert rec.upstream_latency_ms is not None
    assert rec.upstream_latency_ms >= 0
    assert (rec.account, rec.accounts) == ("acme", ("acme",))
    assert rec.budget_remaining == Decimal(5) - Decimal("0.009")
    assert rec.policy_decision == "allowed"
    assert rec.catalog_version == quote.catalog_version


def test_refused_call_gets_a_record_too(
    make_meter: MeterFactory, records: list[UsageRecord]
) -> None:
    """A call refused before upstream still leaves exactly one record, unpaid."""
    meter = make_meter({**CONFIG, "models": {"deny": ["gpt-4o"]}})
    with pytest.raises(PolicyDenied):
        meter.begin(BODY, account="acme")
    [rec] = records
    assert (rec.policy_decision, rec.policy_reason) == ("denied", "denylist")
    assert (rec.settlement_status, rec.payment_settled) == ("skipped", False)
    assert rec.settlement_amount == 0
    assert rec.upstream_status is None
    assert rec.upstream_latency_ms is None


def test_to_dict_is_json_ready_and_exact(record: UsageRecord) -> None:
    """Decimals become exact strings, tuples lists; every field is present."""
    data = record.to_dict()
    assert set(data) == {f.name for f in fields(UsageRecord)}
    assert isinstance(data["resolved_price"], str)
    assert Decimal(data["resolved_price"]) == Decimal("0.009")
    assert Decimal(data["settlement_amount"]) == record.settlement_amount
    assert Decimal(data["payment_required"]) == record.payment_required
    assert data["accounts"] == ["acme"]
    assert json.loads(json.dumps(data)) == data


def test_jsonl_sink_writes_one_line_per_record(tmp_path: Path, record: UsageRecord) -> None:
    """Each record is one JSON line; money fields read back as the exact Decimals."""
    path = tmp_path / "usage.jsonl"
    sink = JsonlSink(path)
    sink(record)
    sink(record)
    sink.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    row = json.loads(lines[0])
    assert row == record.to_dict()
    assert Decimal(row["resolved_price"]) == record.resolved_price
    assert isinstance(row["cost"], str)


def test_jsonl_sink_appends_and_never_truncates(tmp_path: Path, record: UsageRecord) -> None:
    """Existing lines survive a new sink, a close and a reopen: the log is append-only."""
    path = tmp_path / "usage.jsonl"
    path.write_text('{"earlier": true}\n', encoding="utf-8")
    first = JsonlSink(path)
    first(record)
    first.close()
    first(record)  # reopened on the next record
    first.close()
    second = JsonlSink(path)
    second(record)
    second.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == '{"earlier": true}'
    assert len(lines) == 4


def test_jsonl_sink_lines_stay_whole_under_threads(tmp_path: Path, record: UsageRecord) -> None:
    """Concurrent writers never interleave inside a line."""
    path = tmp_path / "usage.jsonl"
    sink = JsonlSink(path)

    def write() -> None:
        for _ in range(50):
            sink(record)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sink.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 400
    assert all(json.loads(line)["call_id"] == record.call_id for line in lines)


def test_jsonl_sink_fsync_always_syncs_every_line(
    tmp_path: Path, record: UsageRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync="always" forces each line to disk."""
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    sink = JsonlSink(tmp_path / "usage.jsonl", fsync="always")
    sink(record)
    sink(record)
    sink.close()
    assert len(synced) == 2


def test_records_config_writes_jsonl(tmp_path: Path) -> None:
    """records: {sink: jsonl, path} in the config sends every call's record to the file."""
    path = tmp_path / "calls.jsonl"
    meter = Meter({**CONFIG, "records": {"sink": "jsonl", "path": str(path)}})
    meter.begin(BODY, account="acme").finish(USAGE)
    with pytest.raises(PolicyDenied):
        meter.begin({**BODY, "model": "gpt-4\u043e"}, account="acme")
    meter.close()
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["settlement_status"] for r in rows] == ["settled", "skipped"]


def test_callback_sink_receives_the_record(record: UsageRecord) -> None:
    """CallbackSink hands each record to the callback unchanged."""
    seen: list[UsageRecord] = []
    CallbackSink(seen.append)(record)
    assert seen == [record]


def test_raising_sink_never_breaks_a_call(make_meter: MeterFactory) -> None:
    """A sink that raises is logged and dropped: finish still settles and returns."""

    def broken(record: UsageRecord) -> None:
        raise OSError("disk full")

    meter = make_meter(CONFIG, sink=broken)
    call = meter.begin(BODY, account="acme")
    call.finish(USAGE)
    record = call.record
    assert record is not None
    assert record.settlement_status == "settled"
    assert meter.spent("acme") == Decimal("0.009")


def test_raising_sink_never_breaks_a_refusal(make_meter: MeterFactory) -> None:
    """A refused call raises its own error, not the sink's."""

    def broken(record: UsageRecord) -> None:
        raise OSError("disk full")

    meter = make_meter({**CONFIG, "models": {"deny": ["gpt-4o"]}}, sink=broken)
    with pytest.raises(PolicyDenied):
        meter.begin(BODY, account="acme")
