"""Tests for metered.demo: ``make demo`` runs offline, prints the table, exports spans."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

import pytest

from harness import OtlpReceiver
from metered import demo
from metered.telemetry import ATTR


def run_demo(**env: str) -> subprocess.CompletedProcess[str]:
    """``python -m metered.demo`` in a clean environment: no API key, no OTel settings."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "OPENAI_", "ANTHROPIC_", "METERED_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "metered.demo"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_demo_prints_the_session_table_and_exits_0() -> None:
    """Every scenario shows up: settled calls, a denial, trimming, the fallback and a 402."""
    result = run_demo()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "pricing source" in out
    assert "skipped: denylist" in out
    assert "msgs trimmed" in out
    assert "fallback" in out
    assert "skipped: budget_exceeded" in out
    assert " 402 " in out
    assert "x-metered-price" in out
    assert "set OTEL_EXPORTER_OTLP_ENDPOINT" in out


def test_demo_makes_no_network_connection(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole session runs in process: any socket connection would fail it."""

    def refuse(self: socket.socket, address: Any) -> None:
        raise AssertionError(f"the demo tried to connect to {address!r}")

    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    assert demo.main() == 0
    assert "budget_exceeded" in capsys.readouterr().out


def test_demo_exports_its_spans_to_the_otlp_endpoint() -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, the spans reach that endpoint over OTLP/HTTP."""
    with OtlpReceiver() as receiver:
        result = run_demo(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
        spans = receiver.wait_for(20)
    assert result.returncode == 0, result.stderr
    assert f"spans exported over OTLP/HTTP to {receiver.endpoint}" in result.stdout
    assert {span.service_name for span in spans} == {"metered-demo"}
    calls = [span for span in spans if span.name.startswith("chat ")]
    servers = {span.span_id: span for span in spans if span.name.startswith("POST ")}
    assert len(calls) == 10
    assert all(call.parent_span_id in servers for call in calls)
    settled = [c for c in calls if c.attributes[ATTR.SETTLEMENT_STATUS] == "settled"]
    assert {c.attributes[ATTR.PRICING_SOURCE] for c in settled} >= {"route.models", "fallback"}
    assert {c.attributes[ATTR.ACCOUNT] for c in calls} == {"alice", "bob", "carol"}


def test_a_silent_collector_costs_at_most_a_few_seconds_and_is_reported() -> None:
    """A collector that accepts connections and never answers: the demo still exits 0,
    says its spans were not exported (never "exported"), and exits within ~3 s of the same
    run without a collector (the acceptance bound of issue 13: measured, not assumed)."""
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # accepts into the backlog, never reads or answers
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        baseline = run_demo()
        plain = time.monotonic() - started
        started = time.monotonic()
        result = run_demo(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
        stalled = time.monotonic() - started
    assert baseline.returncode == result.returncode == 0, result.stderr
    assert "spans exported" not in result.stdout
    assert f"could not be exported to {endpoint}" in result.stdout
    assert stalled - plain <= 3.0  # the 2 s export timeout, and nothing waits beyond it
