"""One usage record per metered call, and where records go.

The record carries the per-request log fields of the pricing-operations playbook
(timestamp, route, provider, requested_model, resolved_pricing_mode, resolved_price,
pricing_source, tokens_in/out, payment_required, payment_settled and settlement latency,
upstream status and latency) plus cost, margin, account and the token-fit facts. The
same record feeds the span attributes (:mod:`metered.telemetry`), so logs and traces
never disagree.

Sinks: a callback, a JSONL file, or none. :class:`JsonlSink` appends one line per record
under a lock and flushes it; with ``fsync="always"`` it also fsyncs every line (durable
across power loss, ~100x slower), with ``fsync="never"`` (default) the OS decides when
bytes reach the disk (a process crash loses nothing, a machine crash may lose the last
seconds).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import IO, Any, Literal, Protocol

__all__ = ["CallbackSink", "JsonlSink", "RecordSink", "UsageRecord"]

logger = logging.getLogger("metered")


@dataclass(slots=True)
class UsageRecord:
    """Everything known about one metered call once it is settled (or rejected).

    Treat it as read-only: it is not frozen only because one is built on every call and a
    frozen 45-field dataclass costs three times as much to construct. ``timestamp`` is
    epoch seconds (UTC); :meth:`to_dict` renders it as ISO 8601.
    """

    timestamp: float
    call_id: str
    route: str | None
    provider: str | None
    operation: str
    requested_model: str | None
    response_model: str | None
    resolved_model: str | None
    resolved_pricing_mode: str | None
    pricing_source: str | None
    resolved_price: Decimal | None
    cost: Decimal | None
    margin: Decimal | None
    tokens_in: int
    tokens_out: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    tokens_source: str
    payment_required: Decimal
    payment_settled: bool
    settlement_mode: str
    settlement_status: str
    settlement_amount: Decimal
    settlement_latency_ms: float
    upstream_status: int | None
    upstream_latency_ms: float | None
    account: str | None
    accounts: tuple[str, ...]
    tier: str | None
    feature: str | None
    policy_decision: str
    policy_reason: str | None
    error_type: str | None
    stream: bool
    request_max_tokens: int | None
    time_to_first_chunk_ms: float | None
    trimmed_messages: int
    max_tokens_clamped_from: int | None
    budget_remaining: Decimal | None
    finish_reasons: tuple[str, ...]
    response_id: str | None
    server_address: str | None
    catalog_version: str | None
    # who set the output limit sent upstream (caller, tier, model, budget); None: no limit
    max_tokens_source: str | None = None
    # the price layer the cost came from, and how the model was resolved to it
    cost_source: str | None = None
    cost_resolution: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: Decimals as strings (exact), tuples as lists."""
        out = asdict(self)
        out["timestamp"] = datetime.fromtimestamp(self.timestamp, tz=UTC).isoformat(
            timespec="milliseconds"
        )
        for key, value in out.items():
            if isinstance(value, Decimal):
                out[key] = str(value)
            elif isinstance(value, tuple):
                out[key] = list(value)
        return out


class RecordSink(Protocol):
    """Receives every usage record. Must not raise (errors are logged and dropped)."""

    def __call__(self, record: UsageRecord) -> None: ...


class CallbackSink:
    """Calls ``callback(record)`` for each record."""

    def __init__(self, callback: Callable[[UsageRecord], object]) -> None:
        self._callback = callback

    def __call__(self, record: UsageRecord) -> None:
        self._callback(record)


class JsonlSink:
    """Appends each record as one JSON line to ``path`` (see the module docstring)."""

    def __init__(
        self, path: str | os.PathLike[str], *, fsync: Literal["never", "always"] = "never"
    ) -> None:
        self.path = os.fspath(path)
        self._fsync = fsync == "always"
        self._lock = threading.Lock()
        self._file: IO[str] | None = None

    def __call__(self, record: UsageRecord) -> None:
        line = json.dumps(record.to_dict(), separators=(",", ":"), ensure_ascii=False) + "\n"
        with self._lock:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
            self._file.write(line)
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file (reopened on the next record)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
