"""``metered gateway`` throughput: requests/s through the real server vs the bare upstream.

Three processes on loopback, plus the load generator:

* **fake upstream** — a raw ASGI app under uvicorn answering ``POST /v1/chat/completions``
  with a static chat completion (JSON) or a static stream (SSE: role, two content
  deltas, finish, the ``include_usage`` usage chunk, ``[DONE]``), so it is never the
  bottleneck: it is measured directly too, as the **bare** baseline;
* **gateway** — the real CLI, ``python -m metered gateway --config ... --upstream URL``
  (a priced route and a daily budget, callers identified by ``METERED_API_KEYS``), so
  every request is identified, checked, held, forwarded, priced and settled;
* optionally a **second gateway** from another source tree (``BENCH_GATEWAY_COMPARE=
  /path/to/other/src``), measured in the same run: how a change is compared with the code
  before it. The bench only drives the CLI, so it runs against any tree that has it.

Load: ``wrk`` when installed (one thread, a Lua script for the POST body), else a keep-alive
asyncio client on raw sockets. Cells: JSON and SSE at concurrency 1 and 32, ``SECONDS``
each, best of ``ROUNDS`` rounds with every target's cells interleaved so drift hits all
alike. Reported: requests/s, the gateway / bare ratio, and each server's CPU time per
request (from ``/proc``: steadier than requests/s, since client and servers share the
machine). Target: the gateway's throughput does not get worse than before a change;
compare the ratios (and CPU per request) of one run, not absolute numbers across runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

ROUNDS = 5
SECONDS = 1  # per cell; wrk takes whole seconds
WARMUP_SECONDS = 1
CONCURRENCY = (1, 32)
KINDS = ("JSON", "SSE")
KEY = "sk-bench-0123456789"
PATH = "/v1/chat/completions"
CONFIG: dict[str, Any] = {
    "routes": {f"POST {PATH}": {"models": {"gpt-4o": "$0.05"}, "fallback": "$0.02"}},
    "default_budgets": ["$1000000000/day"],
}
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
BODIES = {
    "JSON": json.dumps({"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 64}),
    "SSE": json.dumps(
        {
            "model": "gpt-4o",
            "messages": MESSAGES,
            "max_tokens": 64,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ),
}
_BASE = {"id": "chatcmpl-bench", "created": 1_700_000_000, "model": "gpt-4o-2024-08-06"}
_USAGE = {"prompt_tokens": 27, "completion_tokens": 2, "total_tokens": 29}
COMPLETION = json.dumps(
    {
        **_BASE,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Paris."},
                "finish_reason": "stop",
            }
        ],
        "usage": _USAGE,
    }
).encode()


def _chunk(delta: dict[str, Any] | None, finish: str | None = None) -> bytes:
    """A chat.completion.chunk event: a delta, or (``None``) the final usage chunk."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    usage = _USAGE if delta is None else None  # OpenAI sends null on every chunk but the last
    data = {**_BASE, "object": "chat.completion.chunk", "choices": choices, "usage": usage}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


# One event per write, as OpenAI sends them: the gateway sees several body chunks.
STREAM = (
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Paris"}),
    _chunk({"content": "."}),
    _chunk({}, "stop"),
    _chunk(None),
    b"data: [DONE]\n\n",
)


# -- the fake upstream (its own process) ------------------------------------------------------


async def upstream_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """A static chat-completions endpoint: a fixed completion, or a fixed stream."""
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if json.loads(body or b"{}").get("stream"):
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for event in STREAM:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(COMPLETION))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": COMPLETION})


def serve_upstream() -> None:
    """Subprocess entry: serve ``upstream_app`` with uvicorn, print the port, run until killed."""
    import uvicorn

    sock = socket.socket()
    # accepted connections inherit it: no Nagle delay between a response's writes
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    # Keep idle connections for the whole run: with uvicorn's 5 s default, the gateway's pool
    # sometimes reuses a connection the upstream is closing that instant and answers 502.
    config = uvicorn.Config(
        upstream_app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=600,
    )
    uvicorn.Server(config).run(sockets=[sock])


# -- processes --------------------------------------------------------------------------------


class Target:
    """A server in a subprocess, stopped (terminate, then kill) however the bench ends."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log: Path, *, pipe: bool = False
    ) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            # the gateway's access log goes to stdout: into the log, which errors quote (a
            # pipe nobody reads would fill and stall the server)
            self.process = subprocess.Popen(
                argv,
                env=env,
                stdout=subprocess.PIPE if pipe else out,
                stderr=out,
                cwd=Path(__file__).parent.parent,
            )
        self.port = 0

    def stop(self) -> None:
        """Stop the process and close its pipe."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def wait_open(self, timeout: float = 60.0) -> None:
        """Wait until the port accepts connections; raise with the log if the server died."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} did not start:\n{tail}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)

    def problems(self) -> str:
        """The log's last lines other than successful requests' access-log lines."""
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join([line for line in lines if " 200 OK" not in line][-15:])

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server (Linux /proc), ``None`` elsewhere."""
        try:
            text = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return None
        fields = text.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_upstream(stack: contextlib.ExitStack, tmp: Path) -> Target:
    root = Path(__file__).resolve().parent.parent
    code = "from benchmarks.bench_gateway import serve_upstream; serve_upstream()"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH", "")])),
    }
    target = Target("bare", [sys.executable, "-c", code], env, tmp / "upstream.log", pipe=True)
    stack.callback(target.stop)
    assert target.process.stdout is not None
    target.port = int(target.process.stdout.readline() or 0)
    target.wait_open()
    return target


def start_gateway(
    stack: contextlib.ExitStack, tmp: Path, name: str, src: str | None, upstream: Target
) -> Target:
    """``python -m metered gateway`` with ``src`` first on the path (else this process's)."""
    config = tmp / "metered.yaml"
    config.write_text(json.dumps(CONFIG))  # JSON is YAML
    port = _free_port()
    argv = [sys.executable, "-m", "metered", "gateway", "--config", str(config)]
    argv += ["--port", str(port), "--upstream", f"http://127.0.0.1:{upstream.port}"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH", "")])),
        "METERED_API_KEYS": f"{KEY}=acme",
        "METERED_UPSTREAM_API_KEY": "sk-fake-upstream",
    }
    target = Target(name, argv, env, tmp / f"{name}.log")
    stack.callback(target.stop)
    target.port = port
    target.wait_open()
    return target


# -- load ---------------------------------------------------------------------------------


def check(target: Target, kind: str) -> None:
    """One request: a 200 with the expected body (and the gateway's price header)."""
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
    try:
        headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
        conn.request("POST", PATH, body=BODIES[kind], headers=headers)
        response = conn.getresponse()
        body = response.read()
        price = response.getheader("x-metered-price")
    finally:
        conn.close()
    expected = b"data: [DONE]" if kind == "SSE" else b'"usage"'
    if response.status != 200 or expected not in body:
        raise RuntimeError(f"{target.name} {kind}: {response.status} {body[:300]!r}")
    if target.name != "bare" and kind == "JSON" and price is None:
        raise RuntimeError(f"{target.name}: no x-metered-price header: is it metering?")


def _lua(kind: str, tmp: Path) -> Path:
    script = tmp / f"{kind}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{BODIES[kind]}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {KEY}"\n'
    )
    return script


def load_wrk(
    target: Target, kind: str, connections: int, seconds: int, tmp: Path
) -> tuple[int, float]:
    """Completed requests and the load generator's CPU seconds, with wrk."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    argv += ["-s", str(_lua(kind, tmp)), f"http://127.0.0.1:{target.port}{PATH}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"{target.name} {kind}: wrk saw errors:\n{out}\n{target.problems()}")
    found = re.search(r"(\d+) requests in", out)
    if found is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return int(found.group(1)), cpu


async def _read_response(reader: asyncio.StreamReader) -> None:
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    if b" 200 " not in head[: head.index(b"\r\n")]:
        raise RuntimeError(f"unexpected response: {head[:200]!r}")
    if b"content-length:" in head:
        at = head.index(b"content-length:") + len(b"content-length:")
        await reader.readexactly(int(head[at : head.index(b"\r\n", at)]))
        return
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return


async def _load_python(port: int, kind: str, connections: int, seconds: float) -> int:
    body = BODIES[kind].encode()
    request = (
        f"POST {PATH} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {KEY}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body
    end = time.perf_counter() + seconds

    async def worker() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        done = 0
        try:
            while time.perf_counter() < end:
                writer.write(request)
                await _read_response(reader)
                done += 1
        finally:
            writer.close()
            await writer.wait_closed()
        return done

    return sum(await asyncio.gather(*(worker() for _ in range(connections))))


def load(target: Target, kind: str, connections: int, seconds: int, tmp: Path) -> tuple[int, float]:
    """Completed requests in ``seconds``, and the load generator's CPU seconds."""
    if shutil.which("wrk"):
        return load_wrk(target, kind, connections, seconds, tmp)
    started = time.process_time()
    try:
        done = asyncio.run(_load_python(target.port, kind, connections, seconds))
    except RuntimeError as exc:
        raise RuntimeError(f"{target.name} {kind}: {exc}\n{target.problems()}") from exc
    return done, time.process_time() - started


# -- the run ------------------------------------------------------------------------------


Cell = tuple[str, str, int]  # target, kind, concurrency


def measure(targets: list[Target], tmp: Path) -> tuple[dict[Cell, float], dict[Cell, float], float]:
    """Best requests/s and least server CPU us per request of every cell; generator CPU."""
    rps: dict[Cell, float] = {}
    cpu: dict[Cell, float] = {}
    generator = 0.0
    for target in targets:
        for kind in KINDS:
            check(target, kind)
            load(target, kind, max(CONCURRENCY), WARMUP_SECONDS, tmp)
    for round_ in range(ROUNDS):
        turn = round_ % len(targets)  # each target goes first in turn: no order bias
        for kind in KINDS:
            for connections in CONCURRENCY:
                for target in targets[turn:] + targets[:turn]:
                    cell = (target.name, kind, connections)
                    before = target.cpu_seconds()
                    done, used = load(target, kind, connections, SECONDS, tmp)
                    after = target.cpu_seconds()
                    rps[cell] = max(rps.get(cell, 0.0), done / SECONDS)
                    generator = max(generator, used / SECONDS)
                    if before is not None and after is not None and done:
                        per = (after - before) / done * 1e6
                        cpu[cell] = min(cpu.get(cell, per), per)
    return rps, cpu, generator


def _where(src: str | None) -> str:
    if src:
        return src
    spec = importlib.util.find_spec("metered")  # locates the package without importing it
    origin = spec.origin if spec is not None else None
    return str(Path(origin).parent.parent) if origin else "?"


@contextlib.contextmanager
def _servers(compare: str | None) -> Iterator[tuple[list[Target], Path]]:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-gateway-")))
        upstream = start_upstream(stack, tmp)
        targets = [upstream, start_gateway(stack, tmp, "gateway", None, upstream)]
        if compare:
            targets.append(start_gateway(stack, tmp, "compare", compare, upstream))
        yield targets, tmp


def main() -> int:
    """Print the table (requests/s, ratio to bare, server CPU per request); always 0."""
    compare = os.environ.get("BENCH_GATEWAY_COMPARE") or None
    generator = "wrk -t1" if shutil.which("wrk") else "asyncio raw-socket client"
    print(f"gateway: metered from {_where(None)}")
    if compare:
        print(f"compare: metered from {_where(compare)}")
    print(f"load: {generator}; best of {ROUNDS} rounds x {SECONDS} s per cell, interleaved")
    # a SIGTERM (a CI timeout, `kill`) stops the servers too, as Ctrl-C does
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with _servers(compare) as (targets, tmp):
            rps, cpu, busiest = measure(targets, tmp)
    finally:
        signal.signal(signal.SIGTERM, previous)
    names = [t.name for t in targets]
    head = f"{'workload':<10}{'conc':>5}{'bare r/s':>10}{'CPU/req':>9}"
    for name in names[1:]:
        head += f"{name + ' r/s':>14}{'ratio':>7}{'CPU/req':>9}"
    print(head)
    for kind in KINDS:
        for connections in CONCURRENCY:
            bare = rps[("bare", kind, connections)]
            line = f"{kind:<10}{connections:>5}{bare:>10.0f}{_us(cpu, ('bare', kind, connections))}"
            for name in names[1:]:
                value = rps[(name, kind, connections)]
                line += f"{value:>14.0f}{value / bare:>6.2f}x{_us(cpu, (name, kind, connections))}"
            print(line)
    print(
        f"load generator: at most {busiest:.0%} of one core (bare r/s is the generator's floor); "
        "CPU/req = the server process's CPU us per request. Absolute r/s move with the "
        "machine's load: compare ratios and CPU/req within one run."
    )
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _us(cpu: dict[Cell, float], cell: Cell) -> str:
    return f"{cpu[cell]:>6.0f} us" if cell in cpu else f"{'n/a':>9}"


if __name__ == "__main__":
    raise SystemExit(main())
