"""Tests for the ``metered`` command (metered.cli): quote, models, check, tokens, gateway."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from metered.cli import main
from metered.config import load_yaml
from metered.errors import ConfigError
from metered.http.asgi import MeteredMiddleware

CONFIGS = Path(__file__).parent / "configs"
BAD_FILES = sorted((CONFIGS / "bad").glob("*.yaml"))
REPO = Path(__file__).parent.parent
CHAT = "POST /v1/chat/completions"
MTOK = 10**6


def quoted(path: Path) -> str:
    """A path as one shell word."""
    return shlex.quote(str(path))


def run(capsys: pytest.CaptureFixture[str], command: str) -> tuple[int, str, str]:
    """Run a shell-quoted command line through the CLI in-process: (code, stdout, stderr)."""
    code = main(shlex.split(command))
    out, err = capsys.readouterr()
    return code, out, err


# --- quote -------------------------------------------------------------------------------


def test_quote_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    """quote shows cost, price, margin and source for each model."""
    code, out, err = run(capsys, "quote gpt-4o claude-sonnet-4-5 --input 1000 --output 500")
    assert (code, err) == (0, "")
    header, rule, gpt, claude, *rest = out.splitlines()
    assert " ".join(header.split()) == "model resolved provider source mode cost price margin"
    assert set(rule) <= {"-", " "}
    assert " ".join(gpt.split()) == (
        "gpt-4o gpt-4o openai default-table token-based $0.0075 $0.0075 $0"
    )
    assert claude.split()[:3] == ["claude-sonnet-4-5", "claude-sonnet-4-5", "anthropic"]
    assert "1000 input (0 cache read, 0 cache write), 500 output" in rest[-1]


def test_quote_json_is_one_document(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints exact Decimal strings for scripts."""
    code, out, _ = run(capsys, "quote gpt-4o --input 2000 --output 300 --cache-read 1024 --json")
    assert code == 0
    data = json.loads(out)
    expected = (Decimal("2.50") * 976 + Decimal("1.25") * 1024 + Decimal(10) * 300) / MTOK
    assert Decimal(data["cost_usd"]) == expected
    assert Decimal(data["price_usd"]) == expected
    assert data["pricing_source"] == "default-table"
    assert data["usage"]["cache_read_tokens"] == 1024


def test_quote_json_lists_several_models(capsys: pytest.CaptureFixture[str]) -> None:
    """Several models give a JSON list, in the order asked."""
    code, out, _ = run(capsys, "quote gpt-4o o3 --input 1 --output 1 --json")
    assert code == 0
    assert [q["requested_model"] for q in json.loads(out)] == ["gpt-4o", "o3"]


def test_quote_with_a_config_route(capsys: pytest.CaptureFixture[str]) -> None:
    """--config and --route price with the route's rules."""
    config = quoted(CONFIGS / "seed_models.yaml")
    command = f"quote gpt-4o --input 10 --output 5 --json --config {config} --route '{CHAT}'"
    code, out, _ = run(capsys, command)
    assert code == 0
    data = json.loads(out)
    assert (data["price_usd"], data["pricing_source"]) == ("0.05", "route.models")


def test_quote_unknown_model_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A model without a price is a row saying so and an error on stderr, never $0; the
    other models of the table are still quoted."""
    code, out, err = run(capsys, "quote my-private-llm gpt-4o --input 1 --output 1")
    assert code == 1
    assert "unpriced" in out
    assert "gpt-4o" in out
    assert err.startswith("error: model 'my-private-llm' has no price")


def test_quote_fills_the_new_usage_fields(capsys: pytest.CaptureFixture[str]) -> None:
    """--cache-write-1h, --web-searches: Anthropic's 1h cache writes and searches are billed."""
    command = (
        "quote claude-sonnet-4-5 --input 1000 --output 500 --cache-write 400 "
        "--cache-write-1h 100 --web-searches 2 --json"
    )
    code, out, _ = run(capsys, command)
    assert code == 0
    data = json.loads(out)
    # 600 input at $3, 300 5-minute writes at $3.75, 100 1h writes at $6, 500 output at $15
    tokens = (600 * Decimal(3) + 300 * Decimal("3.75") + 100 * Decimal(6) + 500 * 15) / MTOK
    assert Decimal(data["cost_usd"]) == tokens + 2 * Decimal("0.01")  # $10 / 1000 searches
    assert data["usage"]["cache_write_1h_tokens"] == 100
    assert data["usage"]["web_search_requests"] == 2


def test_quote_batch_and_service_tier(capsys: pytest.CaptureFixture[str]) -> None:
    """--batch halves gpt-4o; --service-tier priority uses the priority rates."""
    code, out, _ = run(capsys, "quote gpt-4o --input 1000 --output 500 --batch")
    assert code == 0
    lines = out.splitlines()
    assert lines[2].split()[5] == "$0.00375"
    assert lines[-1].startswith("usage: 1000 input (0 cache read, 0 cache write), 500 output")
    assert ", batch; prices: " in lines[-1]
    code, out, _ = run(capsys, "quote gpt-4o --input 1000 --output 500 --service-tier priority")
    assert code == 0
    assert out.splitlines()[2].split()[5] == "$0.01275"
    assert ", service tier priority; " in out.splitlines()[-1]


def test_quote_keeps_the_table_when_a_route_rejects_a_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A model the route rejects is an `unpriced` row; the others are quoted; exit 1."""
    path = tmp_path / "metered.yaml"
    path.write_text('routes:\n  chat:\n    models:\n      gpt-4o: "$0.05"\n', encoding="utf-8")
    command = f"quote my-llm gpt-4o --input 10 --output 5 --config {quoted(path)} --route chat"
    code, out, err = run(capsys, command)
    assert code == 1
    rows = [line.split() for line in out.splitlines()[2:4]]
    assert rows[0] == ["my-llm", "-", "-", "unpriced", "token-based", "-", "-", "-"]
    assert rows[1][:4] == ["gpt-4o", "gpt-4o", "openai", "route.models"]
    assert err == "error: model 'my-llm' has no price (unpriced: cost unknown)\n"
    code, out, _ = run(capsys, f"{command} --json")
    assert code == 1
    assert [(q["requested_model"], q["price_usd"]) for q in json.loads(out)] == [
        ("my-llm", None),
        ("gpt-4o", "0.05"),
    ]


def test_quote_impossible_usage_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """--cache-read above --input is reported, not a traceback."""
    code, _, err = run(capsys, "quote gpt-4o --input 1 --output 1 --cache-read 5")
    assert code == 1
    assert err.startswith("error: Usage: cache_read_tokens")


def test_quote_without_tokens_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Missing required options exit 2 like any argparse CLI."""
    with pytest.raises(SystemExit) as info:
        main(["quote", "gpt-4o"])
    assert info.value.code == 2
    assert "--input" in capsys.readouterr().err


# --- models ------------------------------------------------------------------------------


def test_models_filters_by_pattern(capsys: pytest.CaptureFixture[str]) -> None:
    """models PATTERN lists matching catalog models with per-1M prices."""
    code, out, _ = run(capsys, "models ^gpt-4o-mini$")
    assert code == 0
    rows = [line.split() for line in out.splitlines()[2:]]
    assert ["gpt-4o-mini", "openai", "$0.15", "$0.6", "$0.075", "-", "128000"] in rows
    assert all(row[0].startswith("gpt-4o-mini") for row in rows)


def test_models_marks_tiered_prices(capsys: pytest.CaptureFixture[str]) -> None:
    """Long-context tiered models are flagged and show their base rates."""
    code, out, _ = run(capsys, "models ^claude-sonnet-4-5$")
    assert code == 0
    rows = [line.split() for line in out.splitlines()[2:]]
    assert ["claude-sonnet-4-5", "(tiered)", "anthropic", "$3", "$15", "$0.3", "$3.75"] in [
        row[:7] for row in rows
    ]


def test_models_json(capsys: pytest.CaptureFixture[str]) -> None:
    """--json gives one record per model with Decimal strings."""
    code, out, _ = run(capsys, "models ^gpt-4.1$ --json")
    assert code == 0
    (row,) = [r for r in json.loads(out) if r["provider"] == "openai"]
    assert (row["input_per_mtok"], row["output_per_mtok"], row["cache_read_per_mtok"]) == (
        "2",
        "8",
        "0.5",
    )


def test_models_includes_config_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    """--config adds the operator's overrides to the listing."""
    code, out, _ = run(capsys, f"models acme --config {quoted(CONFIGS / 'full.yaml')}")
    assert code == 0
    assert out.splitlines()[2].split()[:4] == ["acme-negotiated", "custom", "$2", "$8"]


def test_models_prints_prices_without_float_noise(capsys: pytest.CaptureFixture[str]) -> None:
    """Per-1M prices are exact and plain: `$10`, `$2.5`, never `1E+1` or `2.500000`."""
    code, out, _ = run(capsys, "models ^gpt-4o$ --json")
    assert code == 0
    (row,) = [r for r in json.loads(out) if r["model"] == "gpt-4o"]
    assert (row["input_per_mtok"], row["output_per_mtok"], row["cache_read_per_mtok"]) == (
        "2.5",
        "10",
        "1.25",
    )
    code, out, _ = run(capsys, "models ^gpt-4o$")
    assert ["gpt-4o", "openai", "$2.5", "$10", "$1.25"] in [
        line.split()[:5] for line in out.splitlines()
    ]


def test_models_lists_the_ids_quote_prices(capsys: pytest.CaptureFixture[str]) -> None:
    """Each listed id is one `metered quote` prices, with the listed prices: a model another
    provider serves is listed with its provider named."""
    code, out, _ = run(capsys, "models ^claude-sonnet-4-5$ --json")
    assert code == 0
    listed = {r["model"]: r for r in json.loads(out)}
    assert {"claude-sonnet-4-5", "vertex_ai/claude-sonnet-4-5"} <= set(listed)
    assert listed["vertex_ai/claude-sonnet-4-5"]["provider"] == "google"
    for model, row in listed.items():
        code, out, _ = run(capsys, f"quote {model} --input 1000 --output 0 --json")
        assert code == 0, model
        expected = Decimal(row["input_per_mtok"]) * 1000 / MTOK
        assert Decimal(json.loads(out)["cost_usd"]) == expected, model


def test_models_marks_deprecated_models(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models ^gemini-2.0-flash$")
    assert code == 0
    assert out.splitlines()[2].split()[:3] == ["gemini-2.0-flash", "(deprecated)", "google"]


def test_models_without_match_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """An empty search says so on stderr."""
    code, out, err = run(capsys, "models no-such-model-xyz")
    assert (code, out) == (1, "")
    assert "no model matches" in err


# --- check -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["seed_models.yaml", "seed_match.yaml", "full.yaml"])
def test_check_passes_good_configs(capsys: pytest.CaptureFixture[str], name: str) -> None:
    """Valid configs where every model has a price exit 0 with a summary line."""
    code, out, err = run(capsys, f"check {quoted(CONFIGS / name)}")
    assert (code, err) == (0, "")
    assert "0 error(s)" in out.splitlines()[-1]


def test_check_warns_about_models_without_catalog_cost(capsys: pytest.CaptureFixture[str]) -> None:
    """seed_finetunes: fine-tunes priced by the route but unknown to the catalog are warnings."""
    code, out, _ = run(capsys, f"check {quoted(CONFIGS / 'seed_finetunes.yaml')}")
    assert code == 0
    warnings = [line for line in out.splitlines() if line.startswith("warning")]
    assert len(warnings) == 2
    assert all("no catalog cost" in line for line in warnings)


def test_check_fails_when_an_allowed_model_has_no_price(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An allowed model that the route cannot price is an error: every call would fail."""
    path = tmp_path / "metered.yaml"
    path.write_text(
        'models:\n  allow: ["claude-sonnet-4-5"]\n'
        'routes:\n  chat:\n    models:\n      gpt-4o: "$0.05"\n',
        encoding="utf-8",
    )
    code, out, _ = run(capsys, f"check {quoted(path)} --json")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert report["findings"] == [
        {
            "level": "error",
            "route": "chat",
            "model": "claude-sonnet-4-5",
            "from": "allow",
            "problem": "has no price: every call would be rejected",
        }
    ]


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_check_prints_the_config_error(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    """A bad config exits 1 with the one ConfigError line on stderr."""
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    code, out, err = run(capsys, f"check {quoted(path)}")
    assert (code, out) == (1, "")
    assert err == f"error: {info.value}\n"


def test_check_catches_alias_cycles(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A cycle of aliases is reported by check, naming models.aliases."""
    path = tmp_path / "metered.yaml"
    path.write_text("models:\n  aliases:\n    a: b\n    b: a\n", encoding="utf-8")
    code, _, err = run(capsys, f"check {quoted(path)}")
    assert code == 1
    assert err.startswith("error: models.aliases.a: aliases form a cycle")


def test_check_reports_every_problem_in_one_run(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad upstream, a price below cost and a deprecated model: all three, one line each."""
    code, out, err = run(capsys, f"check {quoted(CONFIGS / 'check_three_problems.yaml')}")
    assert (code, err) == (1, "")
    lines = out.splitlines()
    findings = [line for line in lines if line.startswith(("error", "warning"))]
    assert [" ".join(line.split()) for line in findings] == [
        "error chat - upstream upstream 'openia' does not exist: one of openai, anthropic, "
        "gemini, fake or an http(s) URL",
        "warning chat gpt-4o route.models route chat prices gpt-4o at $0.001, below its cost "
        "$0.0075 (1000 input + 500 output tokens)",
        "warning chat gemini-2.0-flash route.models is deprecated "
        "(genai-prices google/gemini-2.0-flash)",
    ]
    assert len(lines) == 2 + len(findings) + 1  # header, rule, findings, summary
    assert lines[-1].endswith("check_three_problems.yaml: 1 route(s), 1 error(s), 2 warning(s)")


def test_check_reports_a_bad_upstream_beside_another_config_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A bad upstream and a config that still does not load: both errors, no traceback."""
    path = tmp_path / "metered.yaml"
    path.write_text("routes:\n  chat:\n    upstream: nope\n    markup: 0.2\n", encoding="utf-8")
    code, out, err = run(capsys, f"check {quoted(path)}")
    assert (code, out) == (1, "")
    first, second = err.splitlines()
    assert first.startswith("error: routes.chat.upstream: upstream 'nope' does not exist")
    assert second.startswith("error: routes.chat.markup: ")


def test_check_warns_when_price_layers_disagree(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A model whose corrections and genai-prices (or LiteLLM) prices differ is a warning."""
    litellm = Path(__file__).parent / "data" / "litellm_prices.json"
    path = tmp_path / "metered.yaml"
    path.write_text(
        f"catalog:\n  litellm: {litellm}\n"
        'models:\n  allow: ["deepseek-chat", "gpt-4o-search-preview", "gpt-4o"]\n',
        encoding="utf-8",
    )
    code, out, _ = run(capsys, f"check {quoted(path)} --json")
    assert code == 0
    problems = {f["model"]: f["problem"] for f in json.loads(out)["findings"]}
    assert problems["deepseek-chat"] == (
        "price layers disagree ("
        "input: corrections $0.28, genai-prices $0.27, litellm $0.28; "
        "output: corrections $0.42, genai-prices $1.1, litellm $0.42; "
        "cache_read: corrections $0.028, genai-prices $0.07, litellm $0.028; "
        "cache_write: corrections $0.28 (input), genai-prices $0.27 (input), litellm $0); "
        "priced by corrections"
    )
    assert problems["gpt-4o-search-preview"] == (
        "price layers disagree (cache_read: genai-prices $2.5 (input), litellm $1.25); "
        "priced by genai-prices"
    )
    assert "gpt-4o" not in problems  # the layers agree


def test_check_compares_corrections_without_a_second_layer(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Corrections cover deepseek-chat: the snapshot's figure is shown beside them."""
    path = tmp_path / "metered.yaml"
    path.write_text('models:\n  allow: ["deepseek-chat", "gpt-4o"]\n', encoding="utf-8")
    code, out, _ = run(capsys, f"check {quoted(path)}")
    assert code == 0
    warnings = [line for line in out.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1
    assert "deepseek-chat" in warnings[0]
    assert "(input: corrections $0.28, genai-prices $0.27; " in warnings[0]


def test_check_warns_about_a_model_id_naming_an_unknown_provider(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "metered.yaml"
    path.write_text('routes:\n  chat:\n    models:\n      groqq/llama-3: "$0.01"\n')
    code, out, _ = run(capsys, f"check {quoted(path)} --json")
    assert code == 0
    assert [f["problem"] for f in json.loads(out)["findings"]] == [
        "no catalog cost: margin unknown",
        "names provider 'groqq', which metered does not know",
    ]


def test_check_reports_a_missing_price_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "metered.yaml"
    path.write_text("catalog:\n  litellm: /no/such/prices.json\n", encoding="utf-8")
    code, out, err = run(capsys, f"check {quoted(path)}")
    assert (code, out) == (1, "")
    assert err == "error: catalog.litellm: '/no/such/prices.json' is not a readable file\n"


def test_check_entry_point_runs_as_a_module() -> None:
    """`python -m metered check` is wired to the same CLI, exit code and stderr included."""
    bad = CONFIGS / "bad" / "typo_key.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "metered", "check", str(bad)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f'error: routes."{CHAT}".modles: is not a known setting (check the spelling)\n'
    )


# --- tokens ----------------------------------------------------------------------------


def test_tokens_counts_a_text_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`metered tokens FILE` prints the exact o200k count and the input cost for gpt-4o."""
    text = tmp_path / "prompt.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.", encoding="utf-8")
    code, out, _ = run(capsys, f"tokens {quoted(text)} --model gpt-4o --json")
    assert code == 0
    result = json.loads(out)
    assert result["tokens"] == 10
    assert result["encoding"] == "o200k_base"
    assert result["exact"] is True
    assert Decimal(result["input_cost_usd"]) == Decimal("2.50") * 10 / 10**6


def test_tokens_counts_a_chat_request_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--chat reads a JSON request from stdin and counts it the way the API bills it."""
    import io

    body = {"messages": [{"role": "user", "content": "Hello"}]}
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(body)))
    code, out, _ = run(capsys, "tokens - --model gpt-4o --chat --json")
    assert code == 0
    # 3 per message + 1 for the role "user" + 1 for "Hello" + 3 reply priming
    assert json.loads(out)["tokens"] == 8


def test_tokens_marks_models_without_a_public_tokenizer_estimated(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A Claude count is an o200k estimate and says so."""
    text = tmp_path / "prompt.txt"
    text.write_text("hello world", encoding="utf-8")
    code, out, _ = run(capsys, f"tokens {quoted(text)} --model claude-haiku-4-5 --json")
    assert code == 0
    assert json.loads(out)["exact"] is False


def test_tokens_rejects_malformed_chat_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--chat with a file that is not JSON exits 1 with one error line."""
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    code, _, err = run(capsys, f"tokens {quoted(bad)} --model gpt-4o --chat")
    assert code == 1
    assert err.startswith("error: --chat input is not JSON")


def test_tokens_missing_file_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A missing file is one error line, not a traceback."""
    code, _, err = run(capsys, f"tokens {quoted(tmp_path / 'nope.txt')} --model gpt-4o")
    assert code == 1
    assert "No such file" in err


# --- gateway ---------------------------------------------------------------------------


def test_gateway_serves_the_metered_app_with_uvicorn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`metered gateway --config ... --upstream fake --port N` serves the metered app there."""
    import uvicorn

    config = tmp_path / "metered.yaml"
    config.write_text('routes:\n  chat:\n    models:\n      gpt-4o: "$0.05"\n', encoding="utf-8")
    served: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    code = main(["gateway", "--config", str(config), "--upstream", "fake", "--port", "9999"])
    assert code == 0
    assert isinstance(served["app"], MeteredMiddleware)
    assert (served["host"], served["port"]) == ("127.0.0.1", 9999)
    assert served["access_log"] is True
    assert main(["gateway", "--config", str(config), "--upstream", "fake", "--no-access-log"]) == 0
    assert served["access_log"] is False


def test_gateway_bad_config_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A config that does not load exits 1 with the key path, before anything is served."""
    config = tmp_path / "metered.yaml"
    config.write_text(
        'routes:\n  chat:\n    models:\n      gpt-4o: "5 dollars"\n', encoding="utf-8"
    )
    code, out, err = run(capsys, f"gateway --config {quoted(config)}")
    assert (code, out) == (1, "")
    assert err.startswith("error: routes.chat.models.gpt-4o: ")
