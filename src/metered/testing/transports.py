"""How the fake upstream is reached: httpx/httpx2 transports (no sockets) and uvicorn on a
loopback socket."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from metered.testing._exchange import (
    _FaultKind,
    _InjectedDisconnect,
    _Interrupted,
    _Receive,
    _Reply,
    _Scope,
    _Send,
)

if TYPE_CHECKING:
    from metered.testing.upstream import FakeUpstream


# -- adapter helpers ------------------------------------------------------------------


async def _asleep(seconds: float) -> None:
    if seconds <= 0:
        return
    try:
        import anyio
    except ImportError:  # pragma: no cover - anyio comes with httpx, httpx2 and starlette
        await asyncio.sleep(seconds)
    else:
        # anyio also runs under trio, which httpx clients support
        await anyio.sleep(seconds)


def _not_injected(record: logging.LogRecord) -> bool:
    return record.exc_info is None or not isinstance(record.exc_info[1], _InjectedDisconnect)


async def _until_disconnect(receive: _Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _lifespan(receive: _Receive, send: _Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _http_library(client_class: type) -> str:
    """``"httpx2"`` or ``"httpx"``: the library an SDK's default HTTP client comes from."""
    for base in client_class.__mro__:
        library = base.__module__.partition(".")[0]
        if library in ("httpx", "httpx2"):
            return library
    return "httpx2"


@functools.cache
def _transport_class(module_name: str) -> Any:
    """The transport class for ``httpx`` or ``httpx2`` (same API, separate classes)."""
    module: Any = importlib.import_module(module_name)

    def interrupted(kind: _FaultKind, request: Any, *, started: bool) -> Exception:
        if kind == "timeout":
            error: Exception = module.ReadTimeout("timed out", request=request)
        elif started:
            error = module.RemoteProtocolError(
                "peer closed connection without sending complete message body", request=request
            )
        else:
            error = module.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        return error

    class Body(module.SyncByteStream, module.AsyncByteStream):  # type: ignore[misc]
        # Frames are produced one at a time as the client reads: a real stream.
        def __init__(self, reply: _Reply, request: Any) -> None:
            self._frames = reply.frames()
            self._request = request

        def __iter__(self) -> Iterator[bytes]:
            try:
                for delay, frame in self._frames:
                    if delay:
                        time.sleep(delay)
                    yield frame
            except _Interrupted as exc:
                raise interrupted(exc.kind, self._request, started=True) from None

        async def __aiter__(self) -> AsyncIterator[bytes]:
            try:
                for delay, frame in self._frames:
                    await _asleep(delay)
                    yield frame
            except _Interrupted as exc:
                raise interrupted(exc.kind, self._request, started=True) from None

        def close(self) -> None:
            self._frames.close()

        async def aclose(self) -> None:
            self._frames.close()

    class Transport(module.BaseTransport, module.AsyncBaseTransport):  # type: ignore[misc]
        def __init__(self, upstream: FakeUpstream) -> None:
            self._upstream = upstream

        def _exchange(self, request: Any) -> _Reply:
            return self._upstream._exchange(
                request.method,
                request.url.path,
                request.url.query.decode("ascii"),
                request.headers.multi_items(),
                request.content,
            )

        def _response(self, reply: _Reply, request: Any) -> Any:
            cut = reply.cut_before_response
            if cut is not None:
                raise interrupted(cut.kind, request, started=False)
            return module.Response(
                reply.status, headers=reply.headers, stream=Body(reply, request), request=request
            )

        def handle_request(self, request: Any) -> Any:
            request.read()
            reply = self._exchange(request)
            if reply.latency:
                time.sleep(reply.latency)
            return self._response(reply, request)

        async def handle_async_request(self, request: Any) -> Any:
            await request.aread()
            reply = self._exchange(request)
            await _asleep(reply.latency)
            return self._response(reply, request)

    return Transport


def client_defaults(
    upstream: FakeUpstream,
    sdk: Any,
    kwargs: dict[str, Any],
    api_key: str,
    base_url: str,
    *,
    async_: bool,
) -> dict[str, Any]:
    """Constructor arguments of an OpenAI or Anthropic SDK client wired to ``upstream``."""
    options = {"api_key": api_key, "max_retries": 0, **kwargs}
    if "base_url" not in kwargs:
        options["base_url"] = base_url
        if "http_client" not in kwargs:
            # Older SDK lines are built on httpx, newer ones on httpx2: use theirs.
            default = sdk.DefaultAsyncHttpxClient if async_ else sdk.DefaultHttpxClient
            library = _http_library(default)
            module = importlib.import_module(library)
            client_class = module.AsyncClient if async_ else module.Client
            options["http_client"] = client_class(transport=_transport_class(library)(upstream))
    return options


@contextlib.contextmanager
def serve_asgi(app: Any, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a loopback socket in a background thread.

    For tests that need real HTTP (an SDK over sockets, client disconnects, first-byte
    timing). Needs ``uvicorn`` (the ``fastapi``/``gateway`` extras).

    Args:
        app: the ASGI application.
        host: IPv4 address to listen on.
        port: TCP port; ``0`` picks a free one.

    Yields:
        The base URL, e.g. ``http://127.0.0.1:54321``.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # accepted connections inherit it: no 40 ms Nagle/delayed-ACK stall between writes
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    config = uvicorn.Config(
        app,
        log_config=None,  # leave the host application's logging alone
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="metered-asgi-server", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the ASGI server did not start")
            time.sleep(0.001)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


async def serve_scope(
    exchange: Callable[..., _Reply], scope: _Scope, receive: _Receive, send: _Send
) -> None:
    """Serve one ASGI connection scope through ``exchange`` (the upstream's one handler)."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    content = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        content += message.get("body", b"")
        if not message.get("more_body", False):
            break
    reply = exchange(
        scope["method"],
        scope["path"],
        scope.get("query_string", b"").decode("latin-1"),
        [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
        bytes(content),
    )
    await _asleep(reply.latency)
    cut = reply.cut_before_response
    if cut is not None and cut.kind == "timeout":
        await _until_disconnect(receive)
        return
    await send(
        {
            "type": "http.response.start",
            "status": reply.status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers],
        }
    )
    frames = reply.frames()
    try:
        for delay, frame in frames:
            await _asleep(delay)
            await send({"type": "http.response.body", "body": frame, "more_body": True})
    except _Interrupted as exc:
        if exc.kind == "timeout":
            await _until_disconnect(receive)
            return
        raise _InjectedDisconnect("metered.testing: injected disconnect") from None
    finally:
        frames.close()
    await send({"type": "http.response.body", "body": b"", "more_body": False})
