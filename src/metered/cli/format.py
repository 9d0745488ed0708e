"""Output for every command: plain tables for people, one JSON document for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from decimal import Decimal

__all__ = ["dump", "fail", "os_error", "show_pct", "table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns under a rule; ``None`` cells show as ``-``.

    Args:
        headers: the column names.
        rows: one sequence of cells per row, as many as ``headers``.
    """
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _json_default(value: object) -> object:
    # exact decimal strings: a JSON number would go through a float in most readers
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dump(data: object) -> None:
    """Print ``data`` as one indented JSON document, Decimals as exact strings."""
    print(json.dumps(data, indent=2, default=_json_default))


def show_pct(value: Decimal | None) -> str | None:
    """A percentage cell: ``"40.0%"``, or ``None`` (shown as ``-``)."""
    return None if value is None else f"{value}%"


def fail(message: str) -> int:
    """Print ``error: message`` on stderr; returns the exit code 1."""
    print(f"error: {message}", file=sys.stderr)
    return 1


def os_error(exc: OSError) -> str:
    """``path: reason`` of a file that cannot be read."""
    return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
