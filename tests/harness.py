"""Test harness for the HTTP doors: serve ASGI/WSGI apps on a loopback socket in a
background thread (for the real ``openai`` SDK over HTTP, client disconnects, first-byte
timing), and wait for usage records settled on server threads."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from metered.records import UsageRecord
from metered.testing import serve_asgi

__all__ = ["OtlpReceiver", "ReceivedSpan", "Recorder", "run_json", "serve_asgi", "serve_wsgi"]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logging.getLogger("tests.wsgi").debug(format, *args)


class _ThreadingWSGIServer(WSGIServer):
    # one thread per request, so a slow stream does not block the next request
    daemon_threads = True

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_one, args=(request, client_address), daemon=True
        )
        thread.start()

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


@contextlib.contextmanager
def serve_wsgi(app: Any) -> Iterator[str]:
    """Run ``app`` with the standard library's wsgiref server on 127.0.0.1."""
    server = make_server(
        "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


class Recorder:
    """A usage-record sink tests can wait on (records arrive on server threads)."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []
        self._changed = threading.Condition()

    def __call__(self, record: UsageRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[UsageRecord]:
        """The records once there are ``count`` of them (fails after ``timeout`` seconds)."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.records) >= count, timeout)
            return list(self.records)


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as decoded from an OTLP/HTTP protobuf export."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    service_name: str | None


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver on 127.0.0.1 decoding ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    data = gzip.decompress(data)
                if self.path == "/v1/traces":
                    receiver._store(data)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"

    def _store(self, data: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(data)
        spans: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        ReceivedSpan(
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            service_name=resource.get("service.name"),
                        )
                    )
        with self._changed:
            self.spans.extend(spans)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedSpan]:
        """The spans received once there are ``count`` of them."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.spans) >= count, timeout)
            return list(self.spans)

    def __enter__(self) -> OtlpReceiver:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()


def run_json(script: str, argument: Any, *, env: dict[str, str] | None = None) -> Any:
    """Run ``script`` in a fresh interpreter with ``argument`` (as JSON) in ``sys.argv[1]``
    and return the JSON its last output line holds: for what patches a process for good
    (the official instrumentations) or needs a clean one."""
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(argument)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])
