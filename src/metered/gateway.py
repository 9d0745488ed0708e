"""The metered gateway: an OpenAI-compatible reverse proxy with metering in front.

``metered gateway --config metered.yaml`` serves the config's ``"METHOD /path"`` routes
(``POST /v1/chat/completions`` and ``POST /v1/responses`` when the config names none),
each metered by :class:`~metered.http.asgi.MeteredMiddleware` (allowlist, caps, trimming,
budgets → 400/402, price, settlement) and forwarded to its upstream; responses stream
back chunk by chunk. ``GET /v1/models`` is passed through unmetered; any other path is a
404 in OpenAI's error shape.

Upstreams (``--upstream``, else each route's ``upstream:``; a route with neither is a
:class:`~metered.errors.ConfigError`: the built-in fake answers only when asked for):

=============  ==============================  ==========================================
name           forwards to                     credentials
=============  ==============================  ==========================================
``openai``     ``https://api.openai.com``      ``OPENAI_API_KEY`` (required)
``anthropic``  ``https://api.anthropic.com``   ``ANTHROPIC_API_KEY`` (required)
a URL          that server (``/v1`` may end    ``METERED_UPSTREAM_API_KEY``, else
               the URL)                        ``OPENAI_API_KEY``, else none
``fake``       :class:`metered.testing.        none: answers offline, for trials
               FakeUpstream`, in process
=============  ==============================  ==========================================

Callers' own credentials are never forwarded: callers authenticate to the gateway
(``METERED_API_KEYS="sk-a=acme,..."``, see :class:`~metered.http.asgi.ApiKeys`), the gateway
to the upstream. The gateway fails closed: a caller without a known key is a 401 unless
the config names the account such callers are charged to
(``gateway: {unidentified_account: trial}``). At start it logs its routes, their
upstreams (scheme, host and port only) and this key policy.

An upstream timeout before the response answers 504, a connection failure 502 (both
release the call's hold: nothing charged); a failure mid-stream cuts the stream (the call
is settled as failed). Responses carry ``x-metered-price`` (the cost header is off: it
would tell your customers your upstream cost).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, urlencode

from metered.context import CallerContext
from metered.engine.meter import Meter
from metered.errors import ConfigError, MeteredError, NotFound, UpstreamError, UpstreamTimeout
from metered.http.asgi import ASGIApp, Message, MeteredMiddleware, Receive, Scope, Send
from metered.http.errors import error_parts
from metered.http.identity import ApiKeys, Identify, is_unidentified
from metered.http.request import CREDENTIAL_HEADERS, RouteTable, gateway_routes
from metered.http.response import TotalHeader
from metered.http.upstreams import Upstream, forwarded_headers, reduced_error, resolve_upstream

if TYPE_CHECKING:
    import httpx

__all__ = [
    "DEFAULT_ROUTES",
    "GatewayProxy",
    "Upstream",
    "create_app",
    "reduced_error",
    "resolve_upstream",
]

logger = logging.getLogger("metered.gateway")

#: Routes served when the config names no ``"METHOD /path"`` route.
DEFAULT_ROUTES = ("POST /v1/chat/completions", "POST /v1/responses")

# Hop-by-hop headers (RFC 9110 §7.6.1) and what the proxy sets itself.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
    }
)
# Request headers never forwarded: hop-by-hop ones and the caller's credentials.
_NOT_FORWARDED = _HOP | CREDENTIAL_HEADERS
_PASSTHROUGH = frozenset({("GET", "/v1/models")})
# the cost header would tell the gateway's customers its upstream cost
_PRICE_ONLY: tuple[TotalHeader, ...] = ("price",)


class GatewayProxy:
    """ASGI app forwarding requests to their upstream, streaming responses back.

    Serve it behind :class:`~metered.http.asgi.MeteredMiddleware` (as :func:`create_app`
    does): the proxy itself meters nothing.

    Args:
        upstreams: the upstream of each ``(method, path)`` served; other requests get 404
            (``GET /v1/models`` goes to ``default``).
        default: the upstream of passed-through paths.
        timeout: seconds to wait for the upstream to connect (at most 10) and between
            two bytes of its response.
        forward_query: the ``(method, path)`` whose query string is forwarded; any other
            request's query string is dropped (it may carry the caller's credentials).
        response_headers: upstream response headers the caller gets besides
            :data:`~metered.http.upstreams.FORWARDED_HEADERS` (the rest can tell the
            operator's account, limits and network).

    An upstream's error answer (HTTP 400 and above) reaches the caller reduced to OpenAI's
    error shape (:func:`reduced_error`): an upstream that echoes request headers must not
    hand the gateway's own upstream key to the caller.
    """

    def __init__(
        self,
        upstreams: Mapping[tuple[str, str], Upstream],
        *,
        default: Upstream,
        timeout: float = 600.0,
        forward_query: Collection[tuple[str, str]] = (),
        response_headers: Collection[str] = (),
    ) -> None:
        import httpx

        self._query = frozenset(forward_query)
        self._response_headers = frozenset(name.lower() for name in response_headers)
        self._upstreams = RouteTable(upstreams)
        self._default = default
        limits = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._clients: dict[int, httpx.AsyncClient] = {}
        for upstream in {*upstreams.values(), default}:
            key = id(upstream.transport)
            if key not in self._clients:
                self._clients[key] = httpx.AsyncClient(transport=upstream.transport, timeout=limits)

    async def aclose(self) -> None:
        """Close the upstream connections."""
        for client in self._clients.values():
            await client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        where = (scope["method"], scope["path"])
        found = self._upstreams.find(*where)
        upstream, templated = found if found is not None else (None, False)
        if upstream is None and where in _PASSTHROUGH:
            upstream = self._default
        if upstream is None:
            await _respond(send, NotFound(f"no route for {scope['method']} {scope['path']}"))
            return
        await self._forward(upstream, scope, receive, send, templated=templated)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(
        self, upstream: Upstream, scope: Scope, receive: Receive, send: Send, *, templated: bool
    ) -> None:
        import anyio
        import httpx

        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = [
            (name, v.decode("latin-1"))
            for k, v in scope["headers"]
            if (name := k.decode("latin-1").lower()) not in _NOT_FORWARDED
        ]
        headers += [*upstream.headers, ("accept-encoding", "identity")]
        client = self._clients[id(upstream.transport)]
        query = ""
        if (scope["method"], scope["path"]) in self._query:
            query = scope.get("query_string", b"").decode("latin-1")
        elif templated:  # Gemini's: how to answer (alt=sse), never a caller's ?key=
            query = _only_alt(scope.get("query_string", b"").decode("latin-1"))
        request = client.build_request(
            scope["method"],
            upstream.url(scope["path"], query),
            headers=headers,
            content=bytes(body),
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.TimeoutException:
            await _respond(send, UpstreamTimeout(f"{upstream.name} did not answer in time"))
            return
        except httpx.HTTPError as exc:
            logger.warning("metered gateway: %s unreachable: %s", upstream.name, exc)
            await _respond(send, UpstreamError(f"{upstream.name} could not be reached"))
            return
        if response.status_code >= 400:
            try:
                raw = await response.aread()
            except httpx.HTTPError:
                raw = b""
            finally:
                await response.aclose()
            status, error_headers, data = reduced_error(response, raw, upstream)
            await send({"type": "http.response.start", "status": status, "headers": error_headers})
            await send({"type": "http.response.body", "body": data, "more_body": False})
            return
        failure: httpx.HTTPError | None = None
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": forwarded_headers(
                        response.headers.multi_items(), self._response_headers
                    ),
                }
            )
            # Stream until done or until the client leaves, whichever comes first.
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                try:
                    async for chunk in response.aiter_bytes():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except httpx.HTTPError as exc:
                    failure = exc
                else:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()
        finally:
            await response.aclose()
        if failure is not None:
            # headers are gone: raising is the only way to tell the client the body is cut
            raise UpstreamError(f"{upstream.name} failed mid-response: {failure}") from failure


def _only_alt(query: str) -> str:
    return urlencode([(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k == "alt"])


async def _respond(send: Send, error: MeteredError) -> None:
    status, headers, body = error_parts(error)
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})


def create_app(
    meter: Meter,
    *,
    upstream: str | None = None,
    identify: ApiKeys | None = None,
    unidentified: Literal["allow", "reject"] | None = None,
    timeout: float = 600.0,
    total_headers: Collection[TotalHeader] = _PRICE_ONLY,
    environ: Mapping[str, str] | None = None,
) -> ASGIApp:
    """The gateway as an ASGI app: :class:`GatewayProxy` behind ``MeteredMiddleware``.

    Args:
        meter: the engine; its ``"METHOD /path"`` routes are served (else
            :data:`DEFAULT_ROUTES`).
        upstream: the upstream of every route (see :func:`resolve_upstream`); default:
            each route's ``upstream:`` setting. ``"fake"`` is the built-in fake upstream.
        identify: caller keys (default: :meth:`ApiKeys.from_env`).
        unidentified: callers without a known key. Default (``None``): refused (401),
            unless the config's ``gateway.unidentified_account`` names the account they
            are served and charged as. ``"allow"`` serves them as the meter's default
            account; ``"reject"`` refuses them whatever the config says.
        timeout: upstream timeout in seconds (see :class:`GatewayProxy`).
        total_headers: totals headers on JSON responses.
        environ: where upstream API keys are read (default ``os.environ``).

    Raises:
        ConfigError: a route has no upstream, or its upstream cannot be used (unknown, or
            its API key is missing).
    """
    routes = gateway_routes(meter) or gateway_routes(meter, DEFAULT_ROUTES)
    resolved: dict[str, Upstream] = {}
    upstreams: MutableMapping[tuple[str, str], Upstream] = {}
    for key, route in routes.items():
        config = meter.config.routes.get(route.name)
        name = upstream or (config.upstream if config else None)
        if name is None:
            raise ConfigError(
                "upstream",
                f"route {route.name!r} has no upstream: set its 'upstream:' or pass --upstream "
                "(openai, anthropic, gemini, a URL, or fake for the built-in fake upstream)",
            )
        if name not in resolved:  # one Upstream (connection pool, fake) per distinct name
            resolved[name] = resolve_upstream(name, environ=environ)
        upstreams[key] = resolved[name]
    proxy = GatewayProxy(
        upstreams,
        default=next(iter(upstreams.values())),
        timeout=timeout,
        forward_query=[
            key
            for key, route in routes.items()
            if (config := meter.config.routes.get(route.name)) and config.forward_query
        ],
        response_headers=meter.config.gateway.response_headers,
    )
    keys = identify if identify is not None else ApiKeys.from_env(environ=environ)
    who: Identify = keys
    account = meter.config.gateway.unidentified_account
    if unidentified is None:
        unidentified = "allow" if account is not None else "reject"
        if account is not None:
            who = _charged_to(keys, account)
    logger.info(
        "metered gateway: %s; %s",
        ", ".join(f"{route.name} -> {upstreams[key].name}" for key, route in routes.items()),
        "callers without a known key are "
        + (
            "refused (401)"
            if unidentified == "reject"
            else f"served as account {account or meter.default_account!r}"
        ),
    )
    return MeteredMiddleware(
        proxy,
        meter=meter,
        identify=who,
        unidentified=unidentified,
        routes=[route.name for route in routes.values()],
        total_headers=total_headers,
    )


def _charged_to(keys: ApiKeys, account: str) -> Identify:
    """``keys``, with callers they do not know served as ``account``."""

    def identify(scope: Mapping[str, Any]) -> CallerContext | str | None:
        caller = keys(scope)
        return account if is_unidentified(caller) else caller

    return identify
