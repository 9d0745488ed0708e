"""Tests for metered.analysis: reading usage records, reports and price proposals as data."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from metered.analysis import (
    ModelProposal,
    PriceProposal,
    ReadStats,
    UsageReport,
    propose_prices,
    summarize_usage,
)
from metered.analysis.numbers import nano, pct, round_up
from metered.analysis.records import read_rows
from metered.config import load_config
from usage_files import CHAT, DAY, JUNE, calls, jsonl, rec

FLAT = load_config({"routes": {CHAT: {"type": "flat", "models": {"gpt-4o": "$0.01"}}}})


def usage_file(tmp_path: Path, text: str) -> str:
    """Write ``text`` as a usage file and return its path."""
    path = tmp_path / "usage.jsonl"
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- records -----------------------------------------------------------------------------


def test_read_rows_skips_malformed_lines_and_counts_them(tmp_path: Path) -> None:
    """A bad line is counted with its place; the good records around it are still read."""
    path = usage_file(tmp_path, jsonl([rec()]) + "not json\n" + jsonl([rec(call_id="2")]))
    stats = ReadStats()
    rows = list(read_rows([path], since=None, until=None, stats=stats))
    assert [row.settlement_amount for row in rows] == [Decimal("0.01"), Decimal("0.01")]
    assert (stats.records, stats.malformed_lines) == (2, 1)
    assert stats.first_malformed == f"{path}:2: not JSON"


def test_read_rows_parses_money_as_decimal(tmp_path: Path) -> None:
    """Costs come back as the exact Decimal the record wrote, never a float."""
    path = usage_file(tmp_path, jsonl([rec(cost=Decimal("0.000000001"))]))
    (row,) = read_rows([path], since=None, until=None, stats=ReadStats())
    assert row.cost == Decimal("0.000000001")
    assert isinstance(row.cost, Decimal)


# --- numbers -----------------------------------------------------------------------------


def test_pct_is_none_for_an_empty_whole() -> None:
    """A rate over zero calls is unknown, not 0%."""
    assert pct(0, 0) is None


def test_pct_rounds_half_even_to_a_tenth() -> None:
    """1/8 is 12.5%; 1/3 is 33.3%."""
    assert (pct(1, 8), pct(1, 3)) == (Decimal("12.5"), Decimal("33.3"))


def test_nano_rounds_a_mean_to_the_nano_usd() -> None:
    """A mean with 28 digits is shown to the nano-USD; an exact amount is kept."""
    assert nano(Decimal(1) / 3) == Decimal("0.333333333")
    assert nano(Decimal("0.00625")) == Decimal("0.00625")


def test_round_up_keeps_three_digits_and_never_rounds_down() -> None:
    """$0.013889 becomes $0.0139: up, so a price at or above cost stays there."""
    assert round_up(Decimal("0.013889"), digits=3, upper=Decimal(1)) == Decimal("0.0139")


def test_round_up_keeps_more_digits_rather_than_cross_the_upper_bound() -> None:
    """Where 3 digits would cross the bound, the digits needed to stay under it are kept."""
    assert round_up(Decimal("0.014145"), digits=3, upper=Decimal("0.014145")) == Decimal("0.014145")


# --- report ------------------------------------------------------------------------------


def test_summarize_usage_returns_groups_and_a_total(tmp_path: Path) -> None:
    """Groups come busiest first with Decimal money; the total spans every record."""
    mini = rec(requested_model="gpt-4o-mini", cost=Decimal("0.001"))
    report = summarize_usage([usage_file(tmp_path, jsonl([rec(), rec(), mini]))])
    assert isinstance(report, UsageReport)
    assert list(report.groups) == ["gpt-4o", "gpt-4o-mini"]
    gpt = report.groups["gpt-4o"]
    assert (gpt.calls, gpt.known_cost, gpt.charged, gpt.margin) == (
        2,
        Decimal("0.012"),
        Decimal("0.02"),
        Decimal("0.008"),
    )
    assert (report.total.calls, report.total.margin_pct) == (3, Decimal("56.7"))


def test_summarize_usage_keeps_a_time_window(tmp_path: Path) -> None:
    """``since`` is inclusive and ``until`` exclusive; the rest is counted apart."""
    records = [rec(timestamp=JUNE + day * DAY, call_id=str(day)) for day in range(5)]
    report = summarize_usage(
        [usage_file(tmp_path, jsonl(records))],
        by="account",
        since=datetime(2025, 6, 2, tzinfo=UTC),
        until=datetime(2025, 6, 4, tzinfo=UTC),
    )
    assert (report.read.records, report.read.outside_window) == (2, 3)
    assert report.groups["acme"].calls == 2


# --- propose -----------------------------------------------------------------------------


def test_propose_prices_returns_a_bounded_proposal(tmp_path: Path) -> None:
    """Mean cost $0.009 needs +50% for a 40% margin; the step is capped at +15%."""
    proposal = propose_prices([usage_file(tmp_path, jsonl(calls(20, "0.009")))], FLAT)
    assert isinstance(proposal, PriceProposal)
    assert proposal.route == CHAT
    (model,) = proposal.models
    assert isinstance(model, ModelProposal)
    assert (model.kind, model.calls, model.bound) == ("flat", 20, "up")
    assert model.proposed == {"request": Decimal("0.0115")}
    assert model.mean_cost == Decimal("0.009")


def test_propose_prices_yaml_block_lists_the_proposed_price(tmp_path: Path) -> None:
    """The YAML block names the route and writes the new price as config would."""
    proposal = propose_prices([usage_file(tmp_path, jsonl(calls(20, "0.009")))], FLAT)
    assert proposal.yaml() == f'# routes."{CHAT}".models\nmodels:\n  "gpt-4o": "$0.0115"\n'


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"target_margin": Decimal(1)}, "target margin must be from 0% to below 100%"),
        ({"max_up": Decimal("-0.1")}, "max up must be 0% or more"),
        ({"max_down": Decimal("1.5")}, "max down must be at most 100%"),
        ({"min_calls": 0}, "min calls must be at least 1"),
    ],
)
def test_propose_prices_rejects_out_of_range_options(
    tmp_path: Path, option: dict[str, Decimal | int], message: str
) -> None:
    """Shares and thresholds outside their range are a ValueError naming the option."""
    path = usage_file(tmp_path, jsonl([rec()]))
    with pytest.raises(ValueError, match=message):
        propose_prices([path], FLAT, **option)  # type: ignore[arg-type]


# --- layering ----------------------------------------------------------------------------


def test_analysis_does_not_import_the_cli() -> None:
    """The analysis functions load without argparse output code (no cli <-> analysis cycle)."""
    code = "import sys, metered.analysis; print('metered.cli' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"
