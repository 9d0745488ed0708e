"""`metered gateway` as an operator starts it: a real process on a loopback port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.redis_server import free_port

CONFIG = 'routes:\n  "POST /v1/chat/completions":\n    models:\n      gpt-4o: "$0.05"\n'


def gateway(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    config = tmp_path / "gw.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "METERED"))}
    env["METERED_API_KEYS"] = "sk-known=acme"
    return subprocess.Popen(
        [sys.executable, "-m", "metered", "gateway", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def test_without_an_upstream_the_gateway_refuses_to_start(tmp_path: Path) -> None:
    process = gateway(tmp_path, "--port", str(free_port()))
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "no upstream" in out
    assert "fake" in out  # says how to ask for the built-in fake


def test_the_gateway_logs_its_policy_and_refuses_unknown_keys(tmp_path: Path) -> None:
    port = free_port()
    process = gateway(tmp_path, "--upstream", "fake", "--port", str(port))
    try:
        url = f"http://127.0.0.1:{port}"
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        deadline = time.monotonic() + 60
        while True:  # polling for the server to come up, not for a result
            try:
                anonymous = httpx.post(f"{url}/v1/chat/completions", json=body)
                break
            except httpx.ConnectError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail("the gateway did not start")
                time.sleep(0.1)
        known = httpx.post(
            f"{url}/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-known"}
        )
        assert anonymous.status_code == 401
        assert known.status_code == 200
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
    assert "POST /v1/chat/completions -> fake" in out
    assert "callers without a known key are refused (401)" in out
    assert "sk-known" not in out
