"""``metered report`` and ``metered propose``: arguments and output over usage records.

The numbers come from :mod:`metered.analysis`; this module parses the command line and
prints them (a table, or one JSON document with ``--json``). ``propose`` never writes the
config: it prints a ``models:`` block to paste.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from metered.analysis.numbers import nano, pct
from metered.analysis.proposal import ROUNDING
from metered.analysis.propose import propose_prices
from metered.analysis.records import ReadStats
from metered.analysis.report import GROUP_FIELD, GroupStats, summarize_usage
from metered.cli.format import dump, fail, os_error, show_pct, table
from metered.config import load_yaml
from metered.errors import MeteredError
from metered.money import format_usd

__all__ = ["add_report_parsers", "propose_command", "report_command"]

_HUNDRED = Decimal(100)
_REPORT_HEADERS = [
    "calls",
    "settled",
    "tokens in",
    "tokens out",
    "cost",
    "charged",
    "margin",
    "margin %",
    "no cost",
    "fallback %",
    "unknown %",
    "402",
    "failed %",
    "released",
    "refunded",
]


def _instant(text: str) -> datetime:
    """An ISO 8601 date or time; naive means UTC (records are stamped in UTC)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date or time (e.g. 2025-06-01 or 2025-06-01T12:00Z)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _cells(stats: GroupStats) -> list[object]:
    """The table cells of one group after its name."""
    return [
        stats.calls,
        stats.settled,
        stats.tokens_in,
        stats.tokens_out,
        format_usd(stats.known_cost),
        format_usd(stats.charged),
        format_usd(stats.margin),
        show_pct(stats.margin_pct),
        stats.unknown_cost,
        show_pct(pct(stats.fallback, stats.calls)),
        show_pct(pct(stats.unknown_model, stats.calls)),
        stats.budget_exceeded,
        show_pct(pct(stats.settlement_failed, stats.allowed)),
        stats.released,
        stats.refunded,
    ]


def _warn_malformed(stats: ReadStats) -> None:
    if stats.malformed_lines:
        print(
            f"warning: skipped {stats.malformed_lines} malformed line(s); "
            f"first at {stats.first_malformed}",
            file=sys.stderr,
        )


def report_command(args: argparse.Namespace) -> int:
    """Run ``metered report``; returns the exit code."""
    try:
        report = summarize_usage(args.files, by=args.by, since=args.since, until=args.until)
    except OSError as exc:
        return fail(os_error(exc))
    _warn_malformed(report.read)
    if args.json:
        dump(report.to_dict())
        return 0
    rows: list[list[object]] = [[key, *_cells(stats)] for key, stats in report.groups.items()]
    rows.append(["total", *_cells(report.total)])
    print(table([args.by, *_REPORT_HEADERS], rows))
    read, total = report.read, report.total
    window = f" ({read.outside_window} outside the time window)" if read.outside_window else ""
    print(
        f"\n{read.records} record(s) from {len(read.files)} file(s){window}; margin covers "
        f"{total.settled - total.unknown_cost} settled call(s) with a known cost, "
        f"{total.unknown_cost} settled call(s) have no cost"
    )
    return 0


def _show_value(value: str | dict[str, str] | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return ", ".join(f"{name} {text}" for name, text in value.items())


def propose_command(args: argparse.Namespace) -> int:
    """Run ``metered propose``; returns the exit code. Never writes the config."""
    try:
        proposal = propose_prices(
            args.files,
            load_yaml(args.config),
            route=args.route,
            target_margin=args.target_margin,
            max_up=args.max_up,
            max_down=args.max_down,
            min_calls=args.min_calls,
            since=args.since,
            until=args.until,
        )
    except MeteredError as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(os_error(exc))
    _warn_malformed(proposal.read)
    if args.json:
        dump(proposal.to_dict())
        return 0
    p = proposal
    print(
        f"route {json.dumps(p.route)}: target margin {pct(p.target_margin, 1)}%, "
        f"at most +{pct(p.max_up, 1)}% / -{pct(p.max_down, 1)}% per deploy; "
        f"{p.read.records} record(s) read\n"
    )
    print(
        table(
            [
                "model",
                "calls",
                "current price",
                "mean cost",
                "p90 cost",
                "margin %",
                "proposed price",
                "change %",
                "new margin %",
                "bound",
                "reason",
            ],
            [
                [
                    m.model,
                    m.calls,
                    _show_value(m.config_value(proposed=False)),
                    format_usd(nano(m.mean_cost)),
                    format_usd(m.p90_cost),
                    show_pct(m.current_margin_pct),
                    _show_value(None if m.proposed is None else m.config_value()),
                    show_pct(m.change_pct),
                    show_pct(m.proposed_margin_pct),
                    m.bound,
                    m.reason,
                ]
                for m in p.models
            ],
        )
    )
    print(f"\nProposed models (prices {ROUNDING}); metered never writes the config:\n")
    print(proposal.yaml(), end="")
    return 0


def _percent(text: str) -> Decimal:
    """``"15%"`` → ``Decimal("0.15")``; a bare number is refused (a share or a percent?)."""
    body = text.strip()
    if not body.endswith("%"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage; write e.g. '15%'")
    try:
        value = Decimal(body[:-1].strip()) / _HUNDRED
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a percentage of 0% or more")
    return value


def _below_100(text: str) -> Decimal:
    value = _percent(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be below 100%")
    return value


def _at_most_100(text: str) -> Decimal:
    value = _percent(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most 100%")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def _window_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="USAGE.jsonl", help="usage records ('-': stdin)"
    )
    parser.add_argument("--since", type=_instant, help="records at or after this ISO 8601 time")
    parser.add_argument("--until", type=_instant, help="records before this ISO 8601 time")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def add_report_parsers(subparsers: Any) -> None:
    """Add the ``report`` and ``propose`` subcommands to the ``metered`` CLI's subparsers."""
    r: argparse.ArgumentParser = subparsers.add_parser(
        "report",
        help="margin, fallback, unknown-model, 402 and settlement rates from usage records",
        description="Summarise JSONL usage records, grouped by one field.",
    )
    _window_arguments(r)
    r.add_argument("--by", choices=list(GROUP_FIELD), default="model", help="group by (model)")
    r.set_defaults(func=report_command)

    p: argparse.ArgumentParser = subparsers.add_parser(
        "propose",
        help="propose bounded new per-model prices toward a target margin",
        description=(
            "Propose new route.models prices from observed cost per settled call, bounded "
            "per deploy and by floors/ceilings. Prints a YAML snippet; never writes the config."
        ),
    )
    _window_arguments(p)
    p.add_argument("--config", required=True, help="the metered YAML config the calls ran with")
    p.add_argument("--route", help="route name (default: default_route, or the only route)")
    p.add_argument(
        "--target-margin",
        type=_below_100,
        default=Decimal("0.40"),
        help="margin as a share of price (40%%)",
    )
    p.add_argument(
        "--max-up", type=_percent, default=Decimal("0.15"), help="largest rise per deploy (15%%)"
    )
    p.add_argument(
        "--max-down", type=_at_most_100, default=Decimal("0.10"), help="largest cut (10%%)"
    )
    p.add_argument(
        "--min-calls",
        type=_positive_int,
        default=20,
        help="leave models with fewer settled calls unchanged (20)",
    )
    p.set_defaults(func=propose_command)
