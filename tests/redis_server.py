"""A real ``redis-server`` for tests: throwaway, loopback only, nothing written to disk.

Use the session fixture by importing it into a test module (pytest finds it by the name
``redis_server``)::

    from tests.redis_server import redis_server_fixture  # noqa: F401

(``redis_cluster_fixture`` likewise gives ``redis_cluster``, a one-node Redis Cluster.)
Without a ``redis-server`` binary the tests that use it skip, except in CI
(``CI=true``), where a missing server is a failure: CI must not pass by skipping.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest
import redis

__all__ = [
    "RedisServer",
    "free_port",
    "redis_cluster_fixture",
    "redis_server_fixture",
    "require_redis_server",
]

_START_TIMEOUT = 10.0


def require_redis_server() -> str:
    """Path of ``redis-server``; skips the test when absent (fails it when ``CI=true``)."""
    path = shutil.which("redis-server")
    if path is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: CI must run the Redis tests", pytrace=False)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on a free loopback port, in a temp dir.

    Persistence is off (``--save "" --appendonly no``); :meth:`stop` kills the process
    and removes the directory. Use as a context manager. ``cluster=True`` starts a
    one-node Redis Cluster owning every slot.
    """

    def __init__(self, binary: str, *, cluster: bool = False) -> None:
        self.binary = binary
        self.cluster = cluster
        self.port = 0
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        self._dir = tempfile.TemporaryDirectory(prefix="metered-redis-")
        # Another process may take the port between probe and bind: try a few.
        for _ in range(5):
            self.port = free_port()
            options = {
                "--port": str(self.port),
                "--bind": "127.0.0.1",
                "--dir": self._dir.name,
                "--save": "",
                "--appendonly": "no",
                "--logfile": str(Path(self._dir.name) / "redis.log"),
            }
            if self.cluster:
                options["--cluster-enabled"] = "yes"
                options["--cluster-config-file"] = str(Path(self._dir.name) / "nodes.conf")
            self._process = subprocess.Popen(
                [self.binary, *itertools.chain.from_iterable(options.items())],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_ready():
                return
            self._kill()
        log = Path(self._dir.name) / "redis.log"
        detail = log.read_text() if log.exists() else ""
        self.stop()
        raise RuntimeError(f"redis-server did not start:\n{detail}")

    def _wait_ready(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + _START_TIMEOUT
        with redis.Redis(port=self.port, socket_connect_timeout=1) as probe:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    return False  # exited: most likely the port was taken
                with contextlib.suppress(redis.ConnectionError):
                    if probe.ping() and (not self.cluster or self._cluster_ready(probe)):
                        return True
                time.sleep(0.02)  # polling for startup, not waiting for a result
        return False

    @staticmethod
    def _cluster_ready(probe: redis.Redis) -> bool:
        # A new cluster master reports "ok" about 2 s after it owns the slots.
        if probe.cluster("info")["cluster_slots_assigned"] == "0":
            probe.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
        return bool(probe.cluster("info")["cluster_state"] == "ok")

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def stop(self) -> None:
        """Kill the server and delete its directory."""
        self._kill()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture(name="redis_server", scope="session")
def redis_server_fixture() -> Iterator[RedisServer]:
    """A redis-server shared by the session (tests flush it as they need)."""
    with RedisServer(require_redis_server()) as server:
        yield server


@pytest.fixture(name="redis_cluster", scope="session")
def redis_cluster_fixture() -> Iterator[RedisServer]:
    """A one-node Redis Cluster shared by the session."""
    with RedisServer(require_redis_server(), cluster=True) as server:
        yield server
