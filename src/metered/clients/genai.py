"""google-genai: every ``generateContent`` request a client sends, metered at its HTTP
transport.

    from google import genai
    from metered.clients.genai import metered_http_options

    client = genai.Client(api_key=..., http_options=metered_http_options(meter, account="a"))

``metered_http_options`` gives the client (through google-genai's public ``HttpOptions``:
``client_args`` / ``async_client_args``) a transport that meters each
``POST .../models/{model}:generateContent`` and ``:streamGenerateContent`` request as
one call of the ``gemini`` wire format, sync and ``client.aio`` alike, and passes every
other request through. :func:`metered_transport` gives the bare transport, to wrap one of
your own.

Why a transport and not a proxy of ``client.models`` like ``MeteredOpenAI``: one
``generate_content`` may send several billed requests (automatic function calling runs
up to ten), and the SDK's keyword arguments (``contents``, a ``config`` object) are not
the wire body the budget limit must be written into. At the transport each request is
one hold, one output limit (``generationConfig.maxOutputTokens``) and one settlement,
read by the same I/O-free response core and Gemini reader as the HTTP doors
(:class:`metered.http.response.GatewayResponse`).

A refusal (budget, policy) raises the engine's exception out of the SDK call, before
anything is sent. Metered requests ask for an uncompressed answer (``accept-encoding:
identity``): the transport reads the body before the client decodes it.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from metered.clients.adapter import default_meter
from metered.http.request import forwarded_bytes, gemini_target, url_request
from metered.http.response import GatewayResponse

if TYPE_CHECKING:
    from google.genai import types

    from metered.engine.meter import Call, Meter

__all__ = ["metered_http_options", "metered_transport"]


def _body(method: str, path: str, raw: bytes) -> dict[str, Any] | None:
    """The engine's body of a generate request (the URL's model and whether it streams
    added), or ``None`` for a request not metered.

    Raises:
        InvalidRequest: not a JSON object, or naming the model or ``stream`` itself.
    """
    target = gemini_target(path) if method == "POST" else None
    return None if target is None else url_request(raw, target)


def _library() -> Any:
    # google-genai runs on httpx2 when it is installed, else on httpx: use the same
    return importlib.import_module(
        "httpx2" if importlib.util.find_spec("httpx2") is not None else "httpx"
    )


class _Exchange:
    """One metered request: the call, the request to send, the response core."""

    __slots__ = ("call", "core", "request")

    def __init__(
        self, call: Call, request: Any, raw: bytes, body: dict[str, Any], module: Any
    ) -> None:
        self.call = call
        headers = dict(request.headers)
        headers.pop("content-length", None)
        headers["accept-encoding"] = "identity"
        self.request = module.Request(
            request.method,
            request.url,
            headers=headers,
            content=forwarded_bytes(raw, body, call.body, url=True),
            extensions=request.extensions,
        )
        self.core = GatewayResponse(call, "gemini", strip_usage=False)


def _transport_class(module: Any) -> Any:
    class _Body(module.SyncByteStream, module.AsyncByteStream):  # type: ignore[misc]
        """The upstream's body as it reaches the client, read by the response core."""

        def __init__(self, stream: Any, exchange: _Exchange) -> None:
            self._stream = stream
            self._exchange = exchange
            self._done = False

        def _end(self) -> tuple[bytes, dict[str, Any]]:
            """The body's last bytes and the ``finish`` arguments of a whole response."""
            self._done = True
            return self._exchange.core.end()

        def _cut(self, error: BaseException | None) -> dict[str, Any]:
            """The ``finish`` arguments of a response that did not end: an upstream
            error, or the caller stopped reading (no error, the generator closed or its
            task cancelled), whose delivered part is settled."""
            self._done = True
            if isinstance(error, GeneratorExit | asyncio.CancelledError):
                error = None
            return self._exchange.core.cut(error, client_left=error is None)

        def __iter__(self) -> Iterator[bytes]:
            core = self._exchange.core
            try:
                for chunk in self._stream:
                    out = core.body(chunk)
                    if out:
                        yield out
            except BaseException as exc:
                if not self._done:
                    self._exchange.call.finish(**self._cut(exc))
                raise
            tail, args = self._end()
            self._exchange.call.finish(**args)
            if tail:
                yield tail

        async def __aiter__(self) -> AsyncIterator[bytes]:
            core = self._exchange.core
            try:
                async for chunk in self._stream:
                    out = core.body(chunk)
                    if out:
                        yield out
            except BaseException as exc:
                if not self._done:
                    await self._exchange.call.afinish(**self._cut(exc))
                raise
            tail, args = self._end()
            await self._exchange.call.afinish(**args)
            if tail:
                yield tail

        def close(self) -> None:
            try:
                self._stream.close()
            finally:
                if not self._done:  # the caller stopped reading: settle what was delivered
                    self._exchange.call.finish(**self._cut(None))

        async def aclose(self) -> None:
            try:
                await self._stream.aclose()
            finally:
                if not self._done:
                    await self._exchange.call.afinish(**self._cut(None))

    class MeteredTransport(module.BaseTransport, module.AsyncBaseTransport):  # type: ignore[misc]
        """Meters Gemini generate requests; passes every other request through."""

        def __init__(self, inner: Any, meter: Meter | None, identity: dict[str, Any]) -> None:
            self._inner = inner
            self._meter = meter
            self._identity = identity

        def _begin_args(self, request: Any) -> dict[str, Any]:
            return {
                "api": "gemini",
                "provider": "google",
                "server_address": request.url.host or None,
                **self._identity,
            }

        def _response(self, response: Any, exchange: _Exchange) -> Any:
            exchange.core.start(response.status_code, response.headers.get("content-type", ""))
            return module.Response(
                response.status_code,
                headers=response.headers,
                stream=_Body(response.stream, exchange),
                extensions=response.extensions,
            )

        def handle_request(self, request: Any) -> Any:
            if gemini_target(request.url.path) is None:
                return self._inner.handle_request(request)
            raw = request.read()
            body = _body(request.method, request.url.path, raw)
            if body is None:
                return self._inner.handle_request(request)
            meter = self._meter or default_meter()
            call = meter.begin(body, **self._begin_args(request))
            exchange = _Exchange(call, request, raw, body, module)
            try:
                response = self._inner.handle_request(exchange.request)
            except BaseException as exc:
                call.finish(error=exc)
                raise
            return self._response(response, exchange)

        async def handle_async_request(self, request: Any) -> Any:
            if gemini_target(request.url.path) is None:
                return await self._inner.handle_async_request(request)
            raw = await request.aread()
            body = _body(request.method, request.url.path, raw)
            if body is None:
                return await self._inner.handle_async_request(request)
            meter = self._meter or default_meter()
            call = await meter.abegin(body, **self._begin_args(request))
            exchange = _Exchange(call, request, raw, body, module)
            try:
                response = await self._inner.handle_async_request(exchange.request)
            except BaseException as exc:
                await call.afinish(error=exc)
                raise
            return self._response(response, exchange)

        def close(self) -> None:
            self._inner.close()

        async def aclose(self) -> None:
            await self._inner.aclose()

    return MeteredTransport


def metered_transport(
    meter: Meter | None = None,
    *,
    inner: Any = None,
    account: str | None = None,
    tier: str | None = None,
    feature: str | None = None,
    route: str | None = None,
) -> Any:
    """An ``httpx2`` (else ``httpx``) transport that meters Gemini generate requests.

    Args:
        meter: the engine; default :func:`~metered.clients.default_meter`.
        inner: the transport that sends; default a new ``HTTPTransport`` (for the async
            client, give an ``AsyncHTTPTransport``-compatible one: the default serves both
            only through :func:`metered_http_options`).
        account / tier / feature / route: who pays, as for ``MeteredOpenAI``; unset: the
            caller bound to the context (:func:`metered.bind`).
    """
    module = _library()
    identity = {
        k: v
        for k, v in (("account", account), ("tier", tier), ("feature", feature), ("route", route))
        if v is not None
    }
    return _transport_class(module)(inner or module.HTTPTransport(), meter, identity)


def metered_http_options(
    meter: Meter | None = None, *, base: types.HttpOptions | None = None, **identity: Any
) -> types.HttpOptions:
    """google-genai ``HttpOptions`` whose sync and async transports meter Gemini generate
    requests (``base``'s other options kept). ``identity``: ``account``, ``tier``,
    ``feature``, ``route``."""
    from google.genai import types

    module = _library()
    options = base.model_dump(exclude_none=True) if base is not None else {}
    options["client_args"] = {
        **options.get("client_args", {}),
        "transport": metered_transport(meter, inner=module.HTTPTransport(), **identity),
    }
    options["async_client_args"] = {
        **options.get("async_client_args", {}),
        "transport": metered_transport(meter, inner=module.AsyncHTTPTransport(), **identity),
    }
    return types.HttpOptions(**options)
