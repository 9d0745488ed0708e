"""The Jaeger set-up starts: what ``examples/jaeger/docker-compose.yml`` runs, run here.

Docker does not run on these machines, so each Python service is rebuilt the way the
compose file builds it: a fresh virtual environment, the service's own ``pip install``
command (the repository in place of the ``/src`` mount), then its own command, with its
environment. Spans go to a real collector installed from PyPI (``rotel``) standing where
Jaeger's OTLP/HTTP port stands, which forwards them to a receiver the test reads.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness import OtlpReceiver, ReceivedSpan
from tests.redis_server import free_port

ROOT = Path(__file__).parent.parent
COMPOSE = ROOT / "examples" / "jaeger" / "docker-compose.yml"
SERVICES: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]


def rotel_agent() -> str:
    """The rotel collector's binary (from the ``rotel`` wheel); skips without it (fails
    when ``CI=true``)."""
    try:
        import rotel
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("rotel is not installed: CI must run the compose test", pytrace=False)
        pytest.skip("rotel is not installed (pip install rotel)")
    return str(Path(rotel.__file__).parent / "rotel-agent")


def service(name: str) -> tuple[str, str, dict[str, str]]:
    """A service's pip install spec, its command after the install, and its environment."""
    spec = SERVICES[name]
    command = " ".join(spec["command"].split())
    found = re.fullmatch(r"""sh -c "pip install [^']*'(/src[^']*)' && (.*)\"""", command)
    assert found is not None, f"{name}: unexpected command {command!r}"
    # compose's ${VAR:-default}, in a shell that sets none of them: the default
    environment = {
        k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v))
        for k, v in (spec.get("environment") or {}).items()
    }
    return found.group(1).replace("/src", str(ROOT), 1), found.group(2), environment


def fresh_venv(path: Path, requirement: str) -> Path:
    """A new virtual environment with ``pip install <requirement>``, as the service does."""
    venv.EnvBuilder(with_pip=True).create(path)
    python = path / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", requirement],
        check=True,
        timeout=600,
    )
    return python


@pytest.fixture
def collector() -> Iterator[tuple[str, OtlpReceiver]]:
    """rotel listening for OTLP/HTTP, exporting what it receives to a test receiver."""
    agent = rotel_agent()
    port = free_port()
    with OtlpReceiver() as receiver:
        process = subprocess.Popen(
            [agent, "start", "--otlp-http-endpoint", f"127.0.0.1:{port}",
             "--otlp-grpc-endpoint", f"127.0.0.1:{free_port()}",
             "--exporter", "otlp", "--otlp-exporter-protocol", "http",
             "--otlp-exporter-endpoint", receiver.endpoint, "--batch-timeout", "100ms"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            yield f"http://127.0.0.1:{port}", receiver
        finally:
            process.terminate()
            process.wait(timeout=10)


def environment(service_env: dict[str, str], endpoint: str) -> dict[str, str]:
    """The service's environment, with the collector where Jaeger would be."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OPENAI_"))}
    env = {**base, **service_env, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    env["OPENAI_API_KEY"] = ""  # compose's default: the fake upstream answers
    env.pop("PYTHONPATH", None)  # the fresh environment's own install, not this checkout
    return env


def chat_spans(receiver: OtlpReceiver, service_name: str, count: int) -> list[ReceivedSpan]:
    spans = receiver.wait_for(count, timeout=30.0)
    return [s for s in spans if s.service_name == service_name and s.name.startswith("chat ")]


def test_the_app_service_starts_and_exports_its_spans(
    tmp_path: Path, collector: tuple[str, OtlpReceiver]
) -> None:
    endpoint, receiver = collector
    requirement, command, service_env = service("app")
    python = fresh_venv(tmp_path / "app", requirement)
    port = free_port()
    # the compose port and host, moved to a free loopback port
    command = command.replace("--port 8000", f"--port {port}").replace("0.0.0.0", "127.0.0.1")
    args = shlex.split(command)
    assert args[0] == "uvicorn"
    server = subprocess.Popen(
        [str(python), "-m", *args[:1], *args[1:]],
        cwd=ROOT / SERVICES["app"]["working_dir"].replace("/src/", ""),
        env=environment(service_env, endpoint),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # polling for the server to come up
            try:
                httpx.get(f"{url}/health")
                break
            except httpx.ConnectError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the app did not start:\n{server.communicate()[0]}")
                time.sleep(0.2)
        answer = httpx.post(
            f"{url}/support/answer",
            json={"question": "Where is my refund?"},
            headers={"authorization": "Bearer sk-demo-alice"},
        )
        assert answer.status_code == 200, answer.text
        spans = chat_spans(receiver, service_env["OTEL_SERVICE_NAME"], 2)
    finally:
        server.terminate()
        server.communicate(timeout=20)  # reads and closes its output
    assert spans, "no chat span reached the collector"
    assert spans[0].attributes["metered.account"] == "alice"


def test_the_demo_service_runs_and_exports_its_spans(
    tmp_path: Path, collector: tuple[str, OtlpReceiver]
) -> None:
    endpoint, receiver = collector
    requirement, command, service_env = service("demo")
    python = fresh_venv(tmp_path / "demo", requirement)
    assert command == "python -m metered.demo"
    result = subprocess.run(
        [str(python), "-m", "metered.demo"],
        env=environment(service_env, endpoint),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"spans exported over OTLP/HTTP to {endpoint}" in result.stdout
    assert len(chat_spans(receiver, "metered-demo", 20)) == 10


def test_the_compose_file_has_no_top_level_name() -> None:
    """Compose v1 refuses a top-level ``name:`` key."""
    assert "name" not in yaml.safe_load(COMPOSE.read_text())
