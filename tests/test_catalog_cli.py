"""``metered catalog diff`` and ``metered catalog update`` (metered.cli.catalog)."""

from __future__ import annotations

import http.server
import json
import shlex
import threading
import zipfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from metered.cli import main
from metered.pricing.catalog import default_layers
from metered.pricing.compare import disagreements, per_mtok
from metered.pricing.litellm import LITELLM_DATA_FILE, LiteLLMLayer

DATA = Path(__file__).parent / "data"
LITELLM = DATA / "litellm_prices.json"
GENAI = DATA / "genai_prices_data.json"
#: a developer's downloaded litellm wheel (`pip download litellm --no-deps -d /tmp/ll`)
WHEELS = sorted(Path("/tmp/ll").glob("litellm-*.whl"))


@pytest.fixture
def real_cost_map(tmp_path: Path) -> Path:
    """LiteLLM's real cost map, copied out of a downloaded wheel (skips without one)."""
    if not WHEELS:
        pytest.skip("no litellm wheel in /tmp/ll")
    target = tmp_path / "model_prices_and_context_window.json"
    with zipfile.ZipFile(WHEELS[-1]) as wheel:
        target.write_bytes(wheel.read(f"litellm/{LITELLM_DATA_FILE}"))
    return target


def run(capsys: pytest.CaptureFixture[str], command: str) -> tuple[int, str, str]:
    code = main(shlex.split(command))
    out, err = capsys.readouterr()
    return code, out, err


def rows(out: str) -> list[list[str]]:
    """The table's rows as cells (cells never hold two spaces in a row)."""
    lines = out.split("\n\n")[0].splitlines()[2:]
    return [[cell.strip() for cell in line.split("  ") if cell.strip()] for line in lines]


# --- diff --------------------------------------------------------------------------------


def test_diff_lists_every_disagreement_per_1m_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    """gpt-4o against LiteLLM: a cached-input price differs. (LiteLLM's Azure US data-zone
    prices are no disagreement: no other layer prices that zone, so it is unpriced unless
    LiteLLM's layer is on.)"""
    code, out, err = run(capsys, f"catalog diff gpt-4o --litellm {LITELLM}")
    assert (code, err) == (0, "")
    header = out.splitlines()[0].split()
    assert header == [
        "provider",
        "model",
        "region",
        "price/1M",
        "corrections",
        "genai-prices",
        "litellm",
    ]
    assert rows(out) == [
        ["openai", "gpt-4o-search-preview", "-", "cache_read", "-", "$2.5 (input)", "$1.25"],
    ]
    assert out.splitlines()[-1].startswith("1 disagreement(s) in 1 model(s); layers: corrections")
    assert out.splitlines()[-1].endswith("litellm litellm_prices.json")


def test_diff_against_the_real_cost_map(
    capsys: pytest.CaptureFixture[str], real_cost_map: Path
) -> None:
    """The acceptance run: `metered catalog diff gpt-4o --litellm <LiteLLM's file>`."""
    code, out, err = run(capsys, f"catalog diff gpt-4o --litellm {real_cost_map}")
    assert (code, err) == (0, "")
    assert rows(out)
    assert all(row[0] in ("azure", "openai") for row in rows(out))
    assert out.splitlines()[-1].endswith(f"litellm {real_cost_map.name}")


def test_diff_shows_long_context_tiers(capsys: pytest.CaptureFixture[str]) -> None:
    """A tier one layer has and another lacks bills differently above its threshold."""
    code, out, _ = run(capsys, f"catalog diff ^gemini-2.5-pro$ --litellm {LITELLM}")
    assert code == 0
    assert ["google", "gemini-2.5-pro", "-", "cache_write >200k", "-", "$2.5 (input)", "$0.25"] in (
        rows(out)
    )


def test_diff_compares_corrections_with_the_snapshot(capsys: pytest.CaptureFixture[str]) -> None:
    """Without LiteLLM, metered's corrections are compared with genai-prices."""
    code, out, _ = run(capsys, "catalog diff ^deepseek-chat$")
    assert code == 0
    assert rows(out)[:2] == [
        ["deepseek", "deepseek-chat", "-", "input", "$0.28", "$0.27"],
        ["deepseek", "deepseek-chat", "-", "output", "$0.42", "$1.1"],
    ]


def test_diff_fail_on_diff_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(capsys, f"catalog diff gpt-4o --litellm {LITELLM} --fail-on-diff")
    assert code == 1
    code, out, _ = run(capsys, f"catalog diff ^gpt-4o-mini$ --litellm {LITELLM} --fail-on-diff")
    assert code == 0
    assert out.startswith("0 disagreement(s) in 0 model(s)")


def test_diff_json_has_exact_decimals(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, f"catalog diff gpt-4o --litellm {LITELLM} --json")
    assert code == 0
    data = json.loads(out)
    assert data["layers"][-1] == "litellm litellm_prices.json"
    first = data["disagreements"][0]
    assert first == {
        "provider": "openai",
        "model": "gpt-4o-search-preview",
        "region": None,
        "price": "cache_read",
        "above_tokens": None,
        "per_mtok": {"corrections": None, "genai-prices": "2.5", "litellm": "1.25"},
        "billed_as_input": ["genai-prices"],
    }


def test_diff_reads_the_layers_of_a_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "metered.yaml"
    config.write_text(f"catalog:\n  litellm: {LITELLM}\n", encoding="utf-8")
    code, out, _ = run(capsys, f"catalog diff ^gpt-4o-search-preview$ --config {config}")
    assert code == 0
    assert rows(out)[0] == [
        "openai",
        "gpt-4o-search-preview",
        "-",
        "cache_read",
        "-",
        "$2.5 (input)",
        "$1.25",
    ]


def test_disagreements_of_one_model() -> None:
    layers = (*default_layers(), LiteLLMLayer(LITELLM))
    assert disagreements(layers, "gpt-4o", "openai") == []
    (diff,) = disagreements(layers, "gpt-4o-search-preview", "openai")
    assert (diff.label, diff.values["litellm"], diff.as_input) == (
        "cache_read",
        Decimal("1.25"),
        frozenset({"genai-prices"}),
    )


def test_per_mtok_has_no_float_noise_or_exponent() -> None:
    assert [str(per_mtok(Decimal(x))) for x in ("0.00001", "2.5E-7", "0.0000025")] == [
        "10",
        "0.25",
        "2.5",
    ]


# --- update ------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A loopback HTTP server serving ``files`` (path -> body): no internet in tests."""
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"not found")

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_update_fetches_checks_and_writes_both_files(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    server: tuple[str, dict[str, bytes]],
) -> None:
    url, files = server
    files["/genai.json"] = GENAI.read_bytes()
    files["/litellm.json"] = LITELLM.read_bytes()
    genai_out, litellm_out = tmp_path / "prices" / "genai.json", tmp_path / "litellm.json"
    code, out, err = run(
        capsys,
        f"catalog update --genai-prices-url {url}/genai.json --litellm-url {url}/litellm.json "
        f"--genai-prices-out {genai_out} --litellm-out {litellm_out}",
    )
    assert (code, err) == (0, "")
    assert genai_out.read_bytes() == GENAI.read_bytes()
    assert litellm_out.read_bytes() == LITELLM.read_bytes()
    lines = out.splitlines()
    assert lines[0] == f"{genai_out}: 1 chat models from {url}/genai.json"
    assert lines[1] == f"{litellm_out}: 9 chat models from {url}/litellm.json"
    assert lines[-3:] == [
        "catalog:",
        f"  genai_prices_data: {genai_out.resolve()}",
        f"  litellm: {litellm_out.resolve()}",
    ]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["genai.json", "litellm.json", "prices"]


def test_update_keeps_the_old_file_when_the_new_one_does_not_load(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    server: tuple[str, dict[str, bytes]],
) -> None:
    url, files = server
    files["/litellm.json"] = b'{"truncated": '
    out_path = tmp_path / "litellm.json"
    out_path.write_text("{}", encoding="utf-8")
    code, out, err = run(
        capsys,
        f"catalog update --only litellm --litellm-url {url}/litellm.json --litellm-out {out_path}",
    )
    assert code == 1
    assert out == ""
    assert err.startswith(f"error: {url}/litellm.json: ")
    assert err.endswith(f"; {out_path} is unchanged\n")
    assert out_path.read_text(encoding="utf-8") == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["litellm.json"]  # no temporary file left


def test_update_reports_an_unreachable_url(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    server: tuple[str, dict[str, bytes]],
) -> None:
    url, _ = server
    out_path = tmp_path / "genai.json"
    code, _, err = run(
        capsys,
        f"catalog update --only genai-prices --genai-prices-url {url}/missing.json "
        f"--genai-prices-out {out_path}",
    )
    assert code == 1
    assert "HTTP Error 404" in err
    assert not out_path.exists()
