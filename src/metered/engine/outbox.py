"""Settlements the ledger could not take, kept until it can: a charge is never lost.

When the budget store fails as a call settles (Redis down, a timeout) the upstream call
has already happened: the caller got the answer, so its charge must land. The settlement
operation (a capture, an adjustment or a refund; a failed release needs nothing, the hold
expires by itself) is *parked* here and the call's record says ``pending``.

Parked operations are replayed, as they were, when the store answers again:

* by :meth:`Meter.flush_settlements` / :meth:`Meter.aflush_settlements`;
* before a later settlement, at most once per :data:`RETRY_SECONDS` while any is parked
  (an outage does not double every call's latency);
* when a :class:`~metered.engine.meter.Meter` is built on the same outbox file (the
  leftovers of a process that stopped during an outage).

Replaying is idempotent: every ledger operation is keyed by the call id, a capture carries
its charges (it lands even if the store lost the hold) and the time it was meant for, so a
replay lands once, in the period the spend belongs to, however often it is retried.

With a file (``Meter(outbox=path)``, or ``records.outbox`` in the config; by default a file
next to the JSONL records) every parked operation is one JSON line, appended and fsynced
before the record says ``pending``; a replay rewrites the file atomically (temporary file,
fsync, rename). Processes may share one file: each change holds an exclusive ``flock`` on
it. Without a file, parked operations live in memory (replayed in-process; lost if the
process exits during the outage), and a warning says so once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from metered.config import Config
from metered.config.budgets import Budget, Window
from metered.ledger import Charge

try:  # POSIX: processes sharing an outbox file take turns
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per outbox file
    fcntl = None  # type: ignore[assignment]

__all__ = ["PARKABLE", "RETRY_SECONDS", "Outbox", "outbox_path"]

logger = logging.getLogger("metered")

#: Ledger operations worth parking: the ones that move money.
PARKABLE = frozenset({"capture", "adjust", "refund"})
#: Least seconds between two automatic replays while settlements are parked.
RETRY_SECONDS = 1.0

Op = tuple[str, tuple[Any, ...], dict[str, Any]]


class Outbox:
    """The parked settlements of a meter (see the module docstring).

    Args:
        path: the outbox file; ``None`` keeps parked settlements in memory only.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        # never held across a ledger call: an async replay must not block the loop
        self._lock = threading.Lock()
        self._memory: list[dict[str, Any]] = []
        self._replaying = False
        self._last_try = 0.0
        self._warned = False

    def __len__(self) -> int:
        """How many settlements are parked."""
        with self._lock:
            return len(self._entries())

    def park(self, op: Op) -> None:
        """Keep ``op`` (a parkable ledger operation) until it can be replayed."""
        method, args, kwargs = op
        entry: dict[str, Any] = {
            "id": os.urandom(8).hex(),
            "op": method,
            "args": list(args),
            "now": kwargs.get("now") or time.time(),
        }
        if kwargs.get("charges") is not None:
            entry["charges"] = [_charge_json(charge) for charge in kwargs["charges"]]
        with self._lock:
            if self.path is None:
                if not self._warned:
                    self._warned = True
                    logger.warning(
                        "metered: a settlement is parked in memory only (set records.outbox "
                        "or Meter(outbox=...) to keep parked settlements across a restart)"
                    )
                self._memory.append(entry)
            else:
                with _locked(self.path, "a") as file:
                    file.write(json.dumps(entry, separators=(",", ":")) + "\n")
                    file.flush()
                    os.fsync(file.fileno())
        logger.warning(
            "metered: settlement of call %s parked until the budget store answers", args[0]
        )

    def due(self) -> bool:
        """Whether an automatic replay should be tried now (cheap: no file read)."""
        if self._replaying or time.monotonic() - self._last_try < RETRY_SECONDS:
            return False
        return bool(self._memory) if self.path is None else _has_entries(self.path)

    def take(self) -> list[tuple[str, Op]]:
        """The parked operations to replay, in order, with their ids; empty while another
        replay of this outbox runs. Call :meth:`done` with the ids that landed."""
        with self._lock:
            if self._replaying:
                return []
            self._last_try = time.monotonic()
            entries = self._entries()
            self._replaying = bool(entries)
            return [(entry["id"], _op(entry)) for entry in entries]

    def done(self, landed: list[str]) -> None:
        """Forget the operations that landed (the file rewritten atomically)."""
        with self._lock:
            self._replaying = False
            if not landed:
                return
            gone = set(landed)
            if self.path is None:
                self._memory[:] = [e for e in self._memory if e["id"] not in gone]
            else:
                with _locked(self.path, "r") as file:  # entries parked meanwhile stay
                    entries = _read(file)
                    _rewrite(self.path, [e for e in entries if e["id"] not in gone])
        logger.info("metered: %d parked settlement(s) left the outbox", len(landed))

    def _entries(self) -> list[dict[str, Any]]:
        if self.path is None:
            return list(self._memory)
        if not _has_entries(self.path):
            return []
        with _locked(self.path, "r") as file:
            return _read(file)


def _read(file: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in file.read().splitlines() if line.strip()]


def _rewrite(path: Path, entries: list[dict[str, Any]]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as file:
        file.writelines(json.dumps(e, separators=(",", ":")) + "\n" for e in entries)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def outbox_path(config: Config) -> str | None:
    """The outbox file of a meter built on ``config`` without an explicit one:
    ``records.outbox``, else next to JSONL records, else none (memory only)."""
    records = config.records
    if records.outbox is not None:
        return records.outbox
    if records.sink == "jsonl" and records.path:
        return records.path + ".outbox"
    return None


@contextlib.contextmanager
def _locked(path: Path, mode: str) -> Iterator[Any]:
    """``path`` open and exclusively locked. A replay replaces the file (rename): a process
    that opened the old one before it was replaced opens the new one again, so no entry is
    ever appended to a file that is gone."""
    while True:
        with path.open(mode, encoding="utf-8") as file:
            if fcntl is not None:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX)  # released when the file closes
                try:
                    current = os.stat(path).st_ino == os.fstat(file.fileno()).st_ino
                except FileNotFoundError:
                    current = False
                if not current:
                    continue
            yield file
            return


def _has_entries(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _charge_json(charge: Charge) -> list[Any]:
    return [
        charge.account,
        [[b.limit_nanos, b.window.kind, b.window.seconds] for b in charge.budgets],
    ]


def _op(entry: dict[str, Any]) -> Op:
    kwargs: dict[str, Any] = {"now": entry["now"]}
    if "charges" in entry:
        kwargs["charges"] = tuple(
            Charge(
                account,
                tuple(Budget(limit, Window(kind, seconds)) for limit, kind, seconds in budgets),
            )
            for account, budgets in entry["charges"]
        )
    return (entry["op"], tuple(entry["args"]), kwargs)
