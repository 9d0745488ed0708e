"""Tests for metered.cli.reports: ``metered report`` and ``metered propose`` over usage records."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from metered.cli.reports import add_report_parsers
from metered.config import load_config
from metered.engine.meter import Meter
from metered.errors import BudgetExceeded, PolicyDenied
from metered.records import JsonlSink, UsageRecord
from metered.usage import Usage
from usage_files import CHAT, DAY, JUNE, UNSETTLED, calls, jsonl, rec

Run = Callable[..., tuple[int, str, str]]
Write = Callable[..., str]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    """Write a usage file (records, then raw extra text) and return its path."""
    count = 0

    def make(records: Iterable[UsageRecord] = (), extra: str = "") -> str:
        nonlocal count
        count += 1
        path = tmp_path / f"usage{count}.jsonl"
        path.write_text(jsonl(records) + extra, encoding="utf-8")
        return str(path)

    return make


@pytest.fixture
def config_file(tmp_path: Path) -> Callable[[dict[str, Any]], str]:
    """Write a YAML config and return its path."""

    def make(data: dict[str, Any]) -> str:
        path = tmp_path / "metered.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return str(path)

    return make


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Parse a command line with the report parsers and run it: (exit code, stdout, stderr)."""

    def invoke(*argv: str) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser(prog="metered")
        add_report_parsers(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(argv)
        code = args.func(args)
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def report_json(run: Run, *argv: str) -> dict[str, Any]:
    """``metered report ... --json`` as a dict (asserting exit 0 and a quiet stderr)."""
    code, out, err = run("report", *argv, "--json")
    assert (code, err) == (0, "")
    data: dict[str, Any] = json.loads(out)
    return data


def flat_config(**route: Any) -> dict[str, Any]:
    """A config whose one route sells gpt-4o at $0.01 a call."""
    return {"routes": {CHAT: {"type": "flat", "models": {"gpt-4o": "$0.01"}, **route}}}


def propose(
    run: Run, usage: str, config: str, *options: str
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``metered propose --json``: the document and its models by name."""
    code, out, err = run("propose", usage, "--config", config, *options, "--json")
    assert (code, err) == (0, "")
    data: dict[str, Any] = json.loads(out)
    return data, {m["model"]: m for m in data["models"]}


# --- report ------------------------------------------------------------------------------


def test_report_table_groups_by_model_with_a_total(run: Run, write: Write) -> None:
    """One row per model, busiest first, then a total row."""
    mini = {"requested_model": "gpt-4o-mini", "cost": Decimal("0.001")}
    path = write([rec(), rec(), rec(**mini)])
    code, out, err = run("report", path)
    assert (code, err) == (0, "")
    header, rule, first, second, total, blank, footer = out.splitlines()
    assert header.split()[:3] == ["model", "calls", "settled"]
    assert set(rule) <= {"-", " "}
    assert first.split()[:9] == [
        "gpt-4o",
        "2",
        "2",
        "2000",
        "400",
        "$0.012",
        "$0.02",
        "$0.008",
        "40.0%",
    ]
    assert second.split()[:2] == ["gpt-4o-mini", "1"]
    assert total.split()[:9] == [
        "total",
        "3",
        "3",
        "3000",
        "600",
        "$0.013",
        "$0.03",
        "$0.017",
        "56.7%",
    ]
    assert blank == ""
    assert footer.startswith("3 record(s) from 1 file(s)")


def test_report_json_totals_are_exact_decimals(run: Run, write: Write) -> None:
    """Money is summed as Decimal from the record strings: 0.1 + 0.2 is exactly 0.3."""
    path = write(
        [
            rec(cost=Decimal("0.1"), settlement_amount=Decimal("0.2")),
            rec(cost=Decimal("0.2"), settlement_amount=Decimal("0.1")),
            rec(cost=Decimal("0.000000001"), settlement_amount=Decimal("0.000000003")),
        ]
    )
    total = report_json(run, path)["total"]
    assert total["cost_usd"] == "0.300000001"
    assert total["charged_usd"] == "0.300000003"
    assert total["margin_usd"] == "0.000000002"


def test_report_reads_what_a_meter_wrote(tmp_path: Path, run: Run) -> None:
    """Records written by Meter + JsonlSink report the meter's own money and refusals."""
    path = tmp_path / "usage.jsonl"
    sink = JsonlSink(path)
    config = {
        "routes": {CHAT: {"models": {"gpt-4o": "$0.05"}}},
        "default_route": CHAT,
        "accounts": {"broke": {"budgets": ["$0.0001/day"]}},
    }
    meter = Meter(config, sink=sink)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    written = []
    for n in (1000, 1500, 2500):
        call = meter.begin(body, account="acme")
        call.finish(Usage(input_tokens=n, output_tokens=40))
        written.append(call.record)
    with pytest.raises(BudgetExceeded):
        meter.begin(body, account="broke")
    with pytest.raises(PolicyDenied):
        meter.begin({**body, "model": "no-such-model"}, account="acme")
    meter.close()

    data = report_json(run, str(path))
    assert data["records"] == 5
    total = data["total"]
    settled = [r for r in written if r is not None]
    assert Decimal(total["cost_usd"]) == sum(r.cost or 0 for r in settled)
    assert Decimal(total["charged_usd"]) == Decimal("0.15")
    assert (total["calls"], total["settled"], total["budget_exceeded_402"]) == (5, 3, 1)
    assert (total["unknown_model_denied"], total["unknown_model_rate_pct"]) == (1, "20.0")


def test_report_skips_malformed_lines_with_one_warning(run: Run, write: Write) -> None:
    """Bad lines are counted and named once on stderr; the good records still count."""
    good = jsonl([rec()])
    float_money = good.replace('"cost":"0.006"', '"cost":0.006')
    missing = json.dumps({k: v for k, v in rec().to_dict().items() if k != "settlement_amount"})
    bad_tokens = good.replace('"tokens_out":200', '"tokens_out":-1')
    extra = (
        "not json\n"
        "[1, 2]\n"
        f"{float_money}{missing}\n{bad_tokens}"
        "\n"  # blank lines are not records and not errors
        '{"timestamp": "2025-06-01T00:00:00+00:00", "rou'  # cut mid-write
    )
    path = write([rec()], extra)
    code, out, err = run("report", path, "--json")
    assert code == 0
    assert err == f"warning: skipped 6 malformed line(s); first at {path}:2: not JSON\n"
    data = json.loads(out)
    assert (data["records"], data["malformed_lines"]) == (1, 6)


def test_report_counts_invalid_utf8_as_malformed(run: Run, tmp_path: Path) -> None:
    """A line with bytes that are not UTF-8 is one malformed line, not a crash."""
    path = tmp_path / "usage.jsonl"
    path.write_bytes(jsonl([rec()]).encode() + b'{"timestamp": "\xff"}\n')
    code, out, err = run("report", str(path))
    assert code == 0
    assert err.strip().endswith(f"{path}:2: not UTF-8")
    assert "1 record(s)" in out


def test_report_since_and_until_select_a_window(run: Run, write: Write) -> None:
    """--since is inclusive, --until exclusive; records outside are counted apart."""
    path = write([rec(timestamp=JUNE + day * DAY, call_id=str(day)) for day in range(5)])
    data = report_json(run, path, "--since", "2025-06-02", "--until", "2025-06-04T00:00:00Z")
    assert (data["records"], data["outside_window"]) == (2, 3)
    assert data["total"]["calls"] == 2


def test_report_margin_leaves_out_calls_with_unknown_cost(run: Run, write: Write) -> None:
    """A settled call without a cost is charged but kept out of the margin, and counted."""
    path = write([rec(), rec(cost=None, margin=None), rec(requested_model="mystery", cost=None)])
    data = report_json(run, path)
    known, mystery = data["groups"]
    assert known["model"] == "gpt-4o"
    assert (known["charged_usd"], known["cost_usd"], known["margin_usd"]) == (
        "0.02",
        "0.006",
        "0.004",
    )
    assert (known["margin_pct"], known["unknown_cost_calls"]) == ("40.0", 1)
    assert mystery["model"] == "mystery"
    assert (mystery["cost_usd"], mystery["margin_usd"], mystery["margin_pct"]) == (None, None, None)
    assert data["total"]["unknown_cost_calls"] == 2


def test_report_rates_for_fallback_unknown_models_402_and_settlement(
    run: Run, write: Write
) -> None:
    """The dashboard rates: fallback hits, unknown-model denials, 402s, failed settlements."""
    denied = {**UNSETTLED, "settlement_status": "skipped", "policy_decision": "denied"}
    path = write(
        [
            rec(pricing_source="fallback"),
            rec(),
            rec(**UNSETTLED, settlement_status="failed"),
            rec(**UNSETTLED, settlement_status="released", error_type="UpstreamError"),
            rec(**UNSETTLED, settlement_status="refunded"),
            rec(**denied, policy_reason="unknown_model", error_type="UnknownModel"),
            rec(**denied, policy_reason="budget", error_type="BudgetExceeded"),
            rec(**denied, policy_reason="not_allowed", error_type="PolicyDenied"),
        ]
    )
    total = report_json(run, path)["total"]
    assert (total["calls"], total["settled"]) == (8, 2)
    assert (total["fallback_calls"], total["fallback_rate_pct"]) == (1, "12.5")
    assert (total["unknown_model_denied"], total["unknown_model_rate_pct"]) == (1, "12.5")
    assert total["budget_exceeded_402"] == 1
    # failures count against the calls that reached settlement (5 passed policy)
    assert (total["settlement_failed"], total["settlement_failure_rate_pct"]) == (1, "20.0")
    assert (total["released"], total["refunded"]) == (1, 1)


def test_report_groups_by_another_field_with_missing_values_last(run: Run, write: Write) -> None:
    """--by account groups on the record's account; records without one come last."""
    path = write([rec(account="a"), rec(account=None), rec(account="b"), rec(account="b")])
    data = report_json(run, path, "--by", "account")
    assert [(g["account"], g["calls"]) for g in data["groups"]] == [("b", 2), ("a", 1), (None, 1)]


def test_report_reads_several_files_in_one_total(run: Run, write: Write) -> None:
    """Every file given is read; the totals span them all."""
    data = report_json(run, write([rec()]), write([rec(), rec()]))
    assert (len(data["files"]), data["total"]["calls"]) == (2, 3)


def test_report_missing_file_is_one_error_line(run: Run, tmp_path: Path) -> None:
    """An unreadable file exits 1 with one line on stderr and nothing on stdout."""
    missing = tmp_path / "nope.jsonl"
    code, out, err = run("report", str(missing))
    assert (code, out) == (1, "")
    assert err == f"error: {missing}: No such file or directory\n"


def test_report_rejects_a_time_that_is_not_iso(run: Run, write: Write) -> None:
    """A bad --since is a usage error (exit 2), not a traceback."""
    with pytest.raises(SystemExit) as exc:
        run("report", write([rec()]), "--since", "yesterday")
    assert exc.value.code == 2


# --- propose -----------------------------------------------------------------------------


def test_propose_raises_a_flat_price_at_most_max_up(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """Mean cost $0.009 needs $0.015 for 40% margin; one deploy moves $0.01 by +15% only."""
    usage = write(calls(20, "0.009"))
    _, models = propose(run, usage, config_file(flat_config()))
    m = models["gpt-4o"]
    assert (m["current"], m["proposed"], m["bound"], m["change_pct"]) == (
        "$0.01",
        "$0.0115",
        "up",
        "15.0",
    )
    assert (m["mean_cost_usd"], m["current_margin_pct"], m["proposed_margin_pct"]) == (
        "0.009",
        "10.0",
        "21.7",
    )


def test_propose_lowers_a_flat_price_at_most_max_down(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """A price far above target drops by --max-down per deploy, not all the way."""
    usage = write(calls(20, "0.001"))
    _, models = propose(run, usage, config_file(flat_config()), "--max-down", "5%")
    m = models["gpt-4o"]
    assert (m["proposed"], m["bound"], m["change_pct"]) == ("$0.0095", "down", "-5.0")


def test_propose_within_bounds_rounds_up_to_three_significant_digits(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """$0.00625 / (1 - 40%) = $0.0104166…: proposed $0.0105, so the margin is at least 40%."""
    usage = write(calls(20, "0.006", "0.0065"))
    _, models = propose(run, usage, config_file(flat_config()))
    m = models["gpt-4o"]
    assert (m["mean_cost_usd"], m["proposed"], m["bound"]) == ("0.00625", "$0.0105", "none")
    assert Decimal(m["proposed_margin_pct"]) >= 40
    assert m["reason"] == "raised to the 40.0% target margin"


def test_propose_rounding_never_crosses_the_step_bound(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """A price capped at +15% keeps the digits it needs rather than round past the cap."""
    config = config_file(flat_config(models={"gpt-4o": "$0.0123"}))
    _, models = propose(run, write(calls(20, "0.05")), config)
    assert (models["gpt-4o"]["proposed"], models["gpt-4o"]["bound"]) == ("$0.014145", "up")


def test_propose_holds_a_flat_price_at_the_models_floor(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """A floor wins over the per-deploy step: the cut stops at the floor."""
    config = config_file(flat_config(floors={"gpt-4o": "$0.0095"}))
    _, models = propose(run, write(calls(20, "0.001")), config)
    m = models["gpt-4o"]
    assert (m["proposed"], m["bound"], m["reason"]) == (
        "$0.0095",
        "floor",
        "held at the floor $0.0095",
    )


def test_propose_holds_a_flat_price_at_the_star_ceiling(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """A ``"*"`` ceiling bounds every model; below mean cost, the reason says so."""
    config = config_file(flat_config(ceilings={"*": "$0.0105"}))
    _, models = propose(run, write(calls(20, "0.011")), config)
    m = models["gpt-4o"]
    assert (m["proposed"], m["bound"]) == ("$0.0105", "ceiling")
    assert m["reason"] == "held at the ceiling $0.0105; still below mean cost: calls lose money"


def test_propose_leaves_models_under_min_calls_unchanged(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """Too few settled calls: no proposal, a reason, and the current price in the YAML."""
    config = config_file(flat_config(models={"gpt-4o": "$0.01", "gpt-4o-mini": "$0.002"}))
    usage = write(calls(20, "0.009") + calls(4, "0.001", requested_model="gpt-4o-mini"))
    data, models = propose(run, usage, config)
    mini = models["gpt-4o-mini"]
    assert (mini["proposed"], mini["bound"], mini["calls"]) == (None, None, 4)
    assert mini["reason"] == "4 settled call(s) with a known cost, under --min-calls 20"
    assert '"gpt-4o-mini": "$0.002"  # unchanged: 4 settled call(s)' in data["yaml"]


def test_propose_min_calls_option_lowers_the_threshold(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """--min-calls 3 proposes from three calls."""
    _, models = propose(
        run, write(calls(3, "0.009")), config_file(flat_config()), "--min-calls", "3"
    )
    assert models["gpt-4o"]["proposed"] == "$0.0115"


def test_propose_scales_token_rates_by_one_bounded_factor(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """Both rates move by the same +15% (capped) and are written per 1M tokens."""
    rates = {"input": "$2.5 / 1M tokens", "output": "$10 / 1M tokens"}
    config = config_file({"routes": {CHAT: {"models": {"gpt-4o": rates}}}})
    # each call: 1000 x $2.5/1M + 200 x $10/1M = $0.0045 at today's rates, costing $0.004
    usage = write(calls(20, "0.004", resolved_pricing_mode="token-based"))
    _, models = propose(run, usage, config)
    m = models["gpt-4o"]
    assert m["kind"] == "token"
    assert m["proposed"] == {"input": "$2.875 / 1M tokens", "output": "$11.5 / 1M tokens"}
    assert (m["current_price_usd"], m["proposed_price_usd"]) == ("0.0045", "0.005175")
    assert (m["change_pct"], m["bound"]) == ("15.0", "up")


def test_propose_token_rates_round_each_rate_up(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """Inside the bounds each rate per 1M is rounded up to 3 significant digits."""
    rates = {"input": "$2.5 / 1M tokens", "output": "$10 / 1M tokens"}
    config = config_file({"routes": {CHAT: {"models": {"gpt-4o": rates}}}})
    # wanted $0.0028/(1-40%) = $0.004666…: factor 1.0370…, so $2.5925… and $10.370…
    _, models = propose(run, write(calls(20, "0.0028")), config)
    m = models["gpt-4o"]
    assert m["proposed"] == {"input": "$2.6 / 1M tokens", "output": "$10.4 / 1M tokens"}
    assert Decimal(m["proposed_margin_pct"]) >= 40


def test_propose_token_rates_report_calls_the_floor_holds(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """A floor that prices every call keeps the projected price; the reason says why."""
    rates = {"input": "$2.5 / 1M tokens", "output": "$10 / 1M tokens"}
    route = {"models": {"gpt-4o": rates}, "floors": {"*": "$0.02"}}
    config = config_file({"routes": {CHAT: route}})
    _, models = propose(run, write(calls(20, "0.004")), config)
    m = models["gpt-4o"]
    assert (m["current_price_usd"], m["proposed_price_usd"], m["change_pct"]) == (
        "0.02",
        "0.02",
        "0.0",
    )
    assert m["proposed"] == {"input": "$2.25 / 1M tokens", "output": "$9 / 1M tokens"}
    assert "the floor holds 20 of 20 calls" in m["reason"]


def test_propose_samples_only_settled_calls_this_entry_priced(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """Other routes, other pricing sources and unsettled calls are not in the sample."""
    usage = write(
        calls(20, "0.009")
        + calls(5, "0.5", route="other")
        + calls(5, "0.5", pricing_source="match")
        + [rec(**UNSETTLED, settlement_status="released")] * 5
    )
    _, models = propose(run, usage, config_file(flat_config()))
    assert (models["gpt-4o"]["calls"], models["gpt-4o"]["mean_cost_usd"]) == (20, "0.009")


def test_propose_counts_dated_ids_toward_their_entry(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """A dated snapshot id is priced by the undated entry, so it is sampled there."""
    usage = write(calls(20, "0.009", requested_model="gpt-4o-2024-08-06"))
    _, models = propose(run, usage, config_file(flat_config()))
    assert models["gpt-4o"]["calls"] == 20


def test_propose_leaves_unknown_costs_out_and_says_so(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """Settled calls without a cost do not count toward the mean or --min-calls."""
    usage = write(calls(20, "0.009") + [rec(cost=None, margin=None)] * 3)
    _, models = propose(run, usage, config_file(flat_config()))
    m = models["gpt-4o"]
    assert (m["calls"], m["unknown_cost_calls"]) == (20, 3)
    assert m["reason"].endswith("; 3 settled call(s) with unknown cost left out")


def test_propose_p90_is_the_nearest_rank(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """Of 20 calls costing $0.001 … $0.020, the p90 is the 18th: $0.018."""
    usage = write([rec(cost=Decimal(n) / 1000) for n in range(20, 0, -1)])
    _, models = propose(run, usage, config_file(flat_config()))
    assert (models["gpt-4o"]["p90_cost_usd"], models["gpt-4o"]["mean_cost_usd"]) == (
        "0.018",
        "0.0105",
    )


def test_propose_leaves_markup_entries_alone(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """A markup already tracks cost: it is listed unchanged, written back as it was."""
    config = config_file({"routes": {CHAT: {"models": {"gpt-4o": {"markup": "25%"}}}}})
    data, models = propose(run, write(calls(20, "0.009")), config)
    assert models["gpt-4o"]["proposed"] is None
    assert models["gpt-4o"]["current"] == {"markup": "1.25x"}
    assert '    markup: "1.25x"' in data["yaml"]


def test_propose_yaml_snippet_loads_as_the_routes_models(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """The printed snippet is valid config: pasted in, it prices as proposed."""
    models_in = {
        "gpt-4o": "$0.01",
        "*": "$0.02",
        "ft:gpt-4o-mini:acme::x1": {"input": "$1 / 1M tokens", "output": "$4 / 1M tokens"},
    }
    config = config_file({"routes": {CHAT: {"models": models_in}}})
    usage = write(
        calls(20, "0.009")
        + calls(20, "0.0001", requested_model="ft:gpt-4o-mini:acme::x1")
        + calls(20, "0.019", requested_model="some-other-model")
    )
    data, models = propose(run, usage, config)
    assert (models["*"]["calls"], models["*"]["proposed"]) == (20, "$0.023")
    snippet = yaml.safe_load(data["yaml"])
    loaded = load_config({"routes": {CHAT: snippet}})
    route = loaded.routes[CHAT].models
    assert list(route) == list(models_in)
    assert route["gpt-4o"].request is not None
    assert route["gpt-4o"].request.usd == Decimal("0.0115")


def test_propose_table_and_snippet_for_humans(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """Without --json: a header line, the table, the rounding rule and the YAML block."""
    code, out, err = run(
        "propose", write(calls(20, "0.009")), "--config", config_file(flat_config())
    )
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f'route "{CHAT}": target margin 40.0%, at most +15.0% / -10.0%')
    assert lines[2].split()[:2] == ["model", "calls"]
    assert lines[4].split()[:8] == [
        "gpt-4o",
        "20",
        "$0.01",
        "$0.009",
        "$0.009",
        "10.0%",
        "$0.0115",
        "15.0%",
    ]
    assert "rounded up to 3 significant digits" in out
    assert out.endswith('models:\n  "gpt-4o": "$0.0115"\n')


def test_propose_never_writes_the_config(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """The config file is only read."""
    config = config_file(flat_config())
    before = Path(config).read_bytes()
    propose(run, write(calls(20, "0.009")), config)
    assert Path(config).read_bytes() == before


def test_propose_bad_config_is_one_error_line(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """A config that does not load exits 1 with the key path on one line."""
    config = config_file(flat_config(models={"gpt-4o": "5 dollars"}))
    code, out, err = run("propose", write([rec()]), "--config", config)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith(f'error: routes."{CHAT}".models.gpt-4o: ')


def test_propose_missing_usage_file_is_one_error_line(
    run: Run, tmp_path: Path, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """An unreadable usage file exits 1 with one line."""
    missing = tmp_path / "missing.jsonl"
    code, out, err = run("propose", str(missing), "--config", config_file(flat_config()))
    assert (code, out, err) == (1, "", f"error: {missing}: No such file or directory\n")


def test_propose_missing_config_is_one_error_line(run: Run, write: Write, tmp_path: Path) -> None:
    """A config path that does not exist exits 1 with one line."""
    code, out, err = run("propose", write([rec()]), "--config", str(tmp_path / "nope.yaml"))
    assert (code, out) == (1, "")
    assert err.startswith(f"error: {tmp_path / 'nope.yaml'}: cannot be read")
    assert err.count("\n") == 1


def test_propose_needs_a_route_when_the_config_has_several(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """Two routes and no default_route: exit 1 asking for --route; --route picks one."""
    routes = {"a": {"models": {"gpt-4o": "$0.01"}}, "b": {"models": {"gpt-4o": "$0.02"}}}
    config = config_file({"routes": routes})
    usage = write(calls(20, "0.009", route="b"))
    code, _, err = run("propose", usage, "--config", config)
    assert code == 1
    assert (
        err
        == 'error: routes: has 2 routes ("a", "b") and no default_route; choose one with --route\n'
    )
    _, models = propose(run, usage, config, "--route", "b")
    assert (models["gpt-4o"]["calls"], models["gpt-4o"]["current"]) == (20, "$0.02")


def test_propose_unknown_route_is_one_error_line(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """--route naming no route of the config exits 1."""
    code, _, err = run(
        "propose", write([rec()]), "--config", config_file(flat_config()), "--route", "nope"
    )
    assert (code, err) == (1, 'error: routes."nope": is not a route of this config\n')


def test_propose_route_without_models_is_one_error_line(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str]
) -> None:
    """A route that lists no per-model prices has nothing to tune: exit 1."""
    config = config_file({"routes": {CHAT: {"markup": "20%"}}})
    code, out, err = run("propose", write([rec()]), "--config", config)
    assert (code, out) == (1, "")
    assert err == (
        f'error: routes."{CHAT}".models: is empty: '
        "propose tunes the per-model prices listed there\n"
    )


@pytest.mark.parametrize(
    "option",
    [["--max-up", "15"], ["--target-margin", "100%"], ["--max-down", "150%"], ["--min-calls", "0"]],
)
def test_propose_rejects_bad_bounds_as_usage_errors(
    run: Run, write: Write, config_file: Callable[[dict[str, Any]], str], option: list[str]
) -> None:
    """Bare numbers and out-of-range shares exit 2 before anything is read."""
    with pytest.raises(SystemExit) as exc:
        run("propose", write([rec()]), "--config", config_file(flat_config()), *option)
    assert exc.value.code == 2
