"""Reading usage records: the JSONL lines :class:`~metered.records.JsonlSink` writes.

Files are read line by line, so their size is bounded by disk, not memory. Money is parsed
from the records' strings into :class:`~decimal.Decimal`; a line that is not a well-formed
record is counted and skipped, never fatal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from metered.usage import Usage

__all__ = ["ReadStats", "Row", "parse_row", "read_rows"]


class Row(NamedTuple):
    """The fields of one usage record that reports read, parsed (money as Decimal)."""

    timestamp: datetime
    route: str | None
    provider: str | None
    requested_model: str | None
    account: str | None
    pricing_source: str | None
    cost: Decimal | None
    settlement_amount: Decimal
    settlement_status: str
    policy_decision: str
    policy_reason: str | None
    error_type: str | None
    usage: Usage


@dataclass(slots=True)
class ReadStats:
    """What reading the usage files found.

    Attributes:
        files: the files read, in order.
        records: records inside the time window (the ones reported on).
        outside_window: well-formed records left out by ``since`` / ``until``.
        malformed_lines: lines that are not a usage record (skipped).
        first_malformed: ``path:line: problem`` of the first malformed line.
    """

    files: list[str] = field(default_factory=list)
    records: int = 0
    outside_window: int = 0
    malformed_lines: int = 0
    first_malformed: str | None = None

    def malformed(self, where: str, exc: Exception) -> None:
        """Count a line that is not a usage record; remember the first problem."""
        self.malformed_lines += 1
        if self.first_malformed is None:
            if isinstance(exc, json.JSONDecodeError):
                problem = "not JSON"
            elif isinstance(exc, UnicodeDecodeError):
                problem = "not UTF-8"
            elif isinstance(exc, KeyError):
                problem = f"missing field {exc}"
            else:
                problem = str(exc)
            self.first_malformed = f"{where}: {problem}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "files": self.files,
            "records": self.records,
            "outside_window": self.outside_window,
            "malformed_lines": self.malformed_lines,
            "first_malformed": self.first_malformed,
        }


def _str(obj: dict[str, Any], name: str) -> str:
    value = obj[name]
    if not isinstance(value, str):
        raise TypeError(f"{name} is not a string")
    return value


def _opt_str(obj: dict[str, Any], name: str) -> str | None:
    value = obj[name]
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} is not a string")
    return value


def _money(obj: dict[str, Any], name: str) -> Decimal:
    value = obj[name]
    # records write money as strings; a JSON number went through a float somewhere
    if not isinstance(value, str):
        raise TypeError(f"{name} is not a decimal string")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{name} {value!r} is not a decimal") from None
    if not amount.is_finite():
        raise ValueError(f"{name} {value!r} is not finite")
    return amount


def parse_row(obj: object) -> Row:
    """One decoded JSON line → :class:`Row`.

    Raises:
        TypeError: ``obj`` is not an object, or a field has the wrong type.
        KeyError: a field is missing.
        ValueError: a timestamp, an amount or the token counts are invalid.
    """
    if not isinstance(obj, dict):
        raise TypeError("not a JSON object")
    stamp = datetime.fromisoformat(_str(obj, "timestamp"))
    return Row(
        timestamp=stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC),
        route=_opt_str(obj, "route"),
        provider=_opt_str(obj, "provider"),
        requested_model=_opt_str(obj, "requested_model"),
        account=_opt_str(obj, "account"),
        pricing_source=_opt_str(obj, "pricing_source"),
        cost=None if obj["cost"] is None else _money(obj, "cost"),
        settlement_amount=_money(obj, "settlement_amount"),
        settlement_status=_str(obj, "settlement_status"),
        policy_decision=_str(obj, "policy_decision"),
        policy_reason=_opt_str(obj, "policy_reason"),
        error_type=_opt_str(obj, "error_type"),
        # Usage checks the counts (non-negative ints, cached <= input, reasoning <= output)
        usage=Usage(
            input_tokens=obj["tokens_in"],
            output_tokens=obj["tokens_out"],
            cache_read_tokens=obj["cache_read_tokens"],
            cache_write_tokens=obj["cache_write_tokens"],
            reasoning_tokens=obj["reasoning_tokens"],
        ),
    )


def read_rows(
    paths: Iterable[str], *, since: datetime | None, until: datetime | None, stats: ReadStats
) -> Iterator[Row]:
    """Yield the records of ``paths`` in ``[since, until)``, one line at a time.

    Malformed lines (not JSON, not an object, a missing or mistyped field) are counted in
    ``stats`` and skipped: a crash mid-write leaves a partial last line, and one bad line
    must not hide a month of good ones.

    Args:
        paths: JSONL files (``-``: stdin).
        since: keep records stamped at or after this instant.
        until: keep records stamped before this instant.
        stats: filled with what reading found.

    Raises:
        OSError: a file cannot be opened or read.
    """
    for path in paths:
        stats.files.append(path)
        # bytes in, so an invalid UTF-8 sequence is one malformed line, not a crash
        source = nullcontext(sys.stdin.buffer) if path == "-" else open(path, "rb")  # noqa: SIM115
        with source as lines:
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    row = parse_row(json.loads(line))
                except (ValueError, TypeError, KeyError) as exc:
                    stats.malformed(f"{path}:{lineno}", exc)
                    continue
                if (since is not None and row.timestamp < since) or (
                    until is not None and row.timestamp >= until
                ):
                    stats.outside_window += 1
                    continue
                stats.records += 1
                yield row
