"""``MeteredMiddleware``: metering for ASGI apps (FastAPI, Starlette, any ASGI server).

Two jobs, one middleware::

    app.add_middleware(MeteredMiddleware, meter=meter, identify=ApiKeys(keys))

1. **Caller binding.** Each HTTP request's caller (from ``identify``) is bound into
   :mod:`metered.context` while the app serves it, so every ``MeteredOpenAI`` call made by
   a handler, a background task started during the request or a streaming-response
   generator is charged to that caller. When the response is not streamed (it carries a
   ``content-length``: the handler had finished), it gets the request's totals as
   ``x-metered-cost`` and ``x-metered-price`` headers (USD, plain decimals). A streamed
   response's headers leave before its body is produced, so it gets none: its totals
   are on each call's span and usage record, and on the request's server span (a
   server instrumentation's, outside or inside this middleware) as
   ``metered.request.cost.usd`` / ``metered.request.price.usd`` / ``metered.request.calls``.
   The cost header reveals your upstream cost: drop it with ``total_headers=("price",)``
   when callers are your customers.
2. **Gateway routes.** Requests to routes configured as ``"METHOD /path"`` (the
   ``routes:`` of the config, e.g. ``"POST /v1/chat/completions"``) are metered as LLM
   calls themselves: the JSON body is checked (415/413/400), the engine applies policy,
   caps, trimming and the reservation (400/402 in OpenAI's error shape, nothing sent to
   the app, nothing charged), the fitted body is passed to the app, and usage is read
   from its response. JSON responses are read whole, settled, then sent with the
   totals headers. Streams pass through chunk by chunk (never buffered, first byte not
   delayed) while usage is read from the events; a chat stream is asked for its usage
   chunk (``stream_options.include_usage``), which is removed again from what the
   client sees when it had not asked for it, like the client proxies do. The app behind
   a gateway route may forward the body with a plain HTTP client (as
   :class:`~metered.gateway.GatewayProxy` does) or with a ``MeteredOpenAI`` client: the
   forward passes through unmetered once (the route already meters it). The forward is
   the call the handler marks with :class:`metered.context.forwarding`, else the call
   that sends the route's own fitted request; never the first call by order, so side
   calls made before or after it (moderation, a summary) are metered as usual.

The middleware is pure ASGI and stateless: per-request state lives in the call.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, MutableMapping
from typing import Any, Literal

from metered.context import RequestTotals, bind, metering_by_route
from metered.engine.meter import Meter
from metered.errors import MeteredError, RequestTooLarge, Unauthorized, UpstreamError
from metered.http.errors import error_parts
from metered.http.identity import (
    ApiKeys,
    AsyncIdentify,
    Identify,
    bindings,
    caller_of,
    is_unidentified,
)
from metered.http.request import (
    GatewayRoute,
    RouteTable,
    check_content_type,
    check_door_options,
    forwarded_bytes,
    gateway_routes,
    prepare_stream,
    public_headers,
)
from metered.http.response import (
    COST_HEADER,
    PRICE_HEADER,
    GatewayResponse,
    TotalHeader,
    annotate_request_span,
    check_total_headers,
    total_headers,
)

__all__ = ["COST_HEADER", "PRICE_HEADER", "ApiKeys", "MeteredMiddleware"]

logger = logging.getLogger("metered")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_UNAUTHORIZED = Unauthorized("this endpoint needs a valid API key")


class MeteredMiddleware:
    """Meter an ASGI app: bind each request's caller, and meter gateway routes.

    Args:
        app: the ASGI app.
        meter: the engine (its config's ``"METHOD /path"`` routes are gateway routes).
        identify: who is calling: an :class:`ApiKeys`, or a callable receiving the ASGI
            scope and returning a :class:`~metered.context.CallerContext`, an account
            name or ``None`` (may be ``async``). Default: nobody is identified.
        unidentified: ``"allow"`` serves unidentified requests as the meter's default
            account; ``"reject"`` answers them 401 (JSON), except on ``public_paths``.
        public_paths: paths served without identification (health checks).
        routes: gateway route names (``"POST /v1/chat/completions"``) to meter instead of
            the config's; ``()`` meters none.
        total_headers: which totals headers non-streamed responses get.
        max_choices: the largest ``n`` a gateway request may ask for.

    Raises:
        ConfigError: a bad route name or option.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        meter: Meter,
        identify: Identify | AsyncIdentify | None = None,
        unidentified: Literal["allow", "reject"] = "allow",
        public_paths: Collection[str] = (),
        routes: Iterable[str] | None = None,
        total_headers: Collection[TotalHeader] = ("cost", "price"),
        max_choices: int = 1,
    ) -> None:
        check_door_options(unidentified, max_choices)
        self.app = app
        self.meter = meter
        self._identify = identify
        self._reject = unidentified == "reject"
        self._public = frozenset(public_paths)
        self._table = RouteTable(gateway_routes(meter, routes))
        self._totals = check_total_headers(total_headers)
        self._max_choices = max_choices

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in self._public:
            await self.app(scope, receive, send)
            return
        caller = None
        identify = self._identify
        if identify is not None:
            result = identify(scope)
            if type(result) is not str and inspect.isawaitable(result):
                result = await result
            caller = caller_of(result)
        if self._reject and is_unidentified(caller):
            await _respond(send, *error_parts(_UNAUTHORIZED))
            return
        totals = RequestTotals()
        totals.find_span()  # a server instrumentation outside this middleware
        found = self._table.find(scope["method"], scope["path"]) if self._table else None
        route = None if found is None else found[0]
        with bind(totals=totals, **bindings(caller)):
            if route is None:
                await self._handler(scope, receive, send, totals)
            else:
                await self._gateway(route, scope, receive, send, totals)
            annotate_request_span(totals)

    async def _handler(
        self, scope: Scope, receive: Receive, send: Send, totals: RequestTotals
    ) -> None:
        """Serve a request with the app's own handler. A metered refusal the handler lets
        through (``BudgetExceeded``, ``PolicyDenied``...) before its response started is
        answered as on gateway routes: JSON in OpenAI's error shape, never a 500. After
        the response started nothing can be changed: it propagates to the server."""
        which = self._totals
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                totals.find_span()  # a server instrumentation inside this middleware
                # a content-length means the body was complete before the headers went
                # out: every call the handler made is in the totals
                if totals.calls and which:
                    headers = list(message.get("headers", ()))
                    if any(name.lower() == b"content-length" for name, _ in headers):
                        headers += _encode(total_headers(totals, which))
                        message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except MeteredError as exc:
            if started:
                raise
            await _respond(send, *error_parts(exc))

    async def _gateway(
        self,
        route: GatewayRoute,
        scope: Scope,
        receive: Receive,
        send: Send,
        totals: RequestTotals,
    ) -> None:
        items = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        try:
            headers = public_headers(items)
            check_content_type(headers.get("content-type"))
            raw = await _read_body(receive, headers.get("content-length"), route.max_body_bytes)
            if raw is None:  # the client went away
                return
            body = route.request(raw, scope["path"], max_choices=self._max_choices)
            call = await self.meter.abegin(
                body,
                api=route.api,
                provider=route.provider,
                route=route.pricing_route,
                headers=headers,
            )
        except MeteredError as exc:
            await _respond(send, *error_parts(exc))
            return
        strip = prepare_stream(call.body, route.api)
        upstream_body = forwarded_bytes(raw, body, call.body, url=route.pattern is not None)
        pending = [upstream_body]

        async def replay() -> Message:
            if pending:
                return {"type": "http.request", "body": pending.pop(), "more_body": False}
            return await receive()

        relay = _Relay(
            GatewayResponse(call, route.api, strip_usage=strip), send, totals, self._totals
        )
        inner = {**scope, "headers": _with_length(scope["headers"], len(upstream_body))}
        try:
            with metering_by_route(call.body):
                await self.app(inner, replay, relay.send)
        except Exception as exc:
            await relay.fail(exc)
            if relay.started:
                raise
        except BaseException as exc:
            # cancelled (the client left): settle what was delivered, then unwind
            await _shielded(relay.finish(relay.response.cut(exc, client_left=True)))
            raise
        else:
            await relay.end()


class _Relay:
    """The ASGI shell of a :class:`GatewayResponse`: one per request."""

    def __init__(
        self,
        response: GatewayResponse,
        send: Send,
        totals: RequestTotals,
        which: tuple[TotalHeader, ...],
    ) -> None:
        self.response = response
        self._send = send
        self._totals = totals
        self._which = which
        self._start: Message | None = None
        self._ended = False
        self.started = False  # the response start went to the client

    async def send(self, message: Message) -> None:
        kind = message["type"]
        response = self.response
        if kind == "http.response.start":
            self._totals.find_span()  # a server instrumentation inside the middleware
            content_type = ""
            for name, value in message.get("headers", ()):
                if name.lower() == b"content-type":
                    content_type = value.decode("latin-1")
            if response.start(int(message["status"]), content_type):
                self.started = True
                await self._send(message)
            else:
                self._start = message
        elif kind == "http.response.body":
            chunk = message.get("body", b"")
            if message.get("more_body", False):
                await self._forward(response.body(chunk), more=True)
            else:
                data, args = response.end(chunk)
                await self.finish(args)
                await self._forward(data, more=False)
        else:
            await self._send(message)

    async def _forward(self, data: bytes, *, more: bool) -> None:
        start = self._start
        if start is not None and not (more and self.response.held):
            self._start = None
            if not more and self._totals.calls and self._which:
                # the call settled before the start went out: the totals are final
                extra = _encode(total_headers(self._totals, self._which))
                start = {**start, "headers": [*start.get("headers", ()), *extra]}
            self.started = True
            await self._send(start)
        if data or not more:
            await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def finish(self, args: dict[str, Any]) -> None:
        if not self._ended:
            self._ended = True
            await self.response.call.afinish(**args)

    async def fail(self, exc: Exception) -> None:
        """The app raised: settle as failed; answer 502 if the client got nothing yet."""
        await self.finish(self.response.cut(exc))
        if not self.started:
            logger.error("metered: the app failed on a gateway route", exc_info=exc)
            error = exc if isinstance(exc, UpstreamError) else UpstreamError("the upstream failed")
            await _respond(self._send, *error_parts(error))

    async def end(self) -> None:
        """The app returned: settle a response it did not finish, answer one it never sent."""
        if self._ended:
            return
        await self.finish(self.response.cut(None))
        if not self.started:
            await _respond(self._send, *error_parts(UpstreamError("the app sent no response")))


async def _shielded(step: Awaitable[object]) -> None:
    """Await ``step`` even though the task is being cancelled (settlement must happen)."""
    try:
        import anyio
    except ImportError:  # pragma: no cover - every ASGI stack we support ships anyio
        await step
        return
    with anyio.CancelScope(shield=True):
        await step


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def _with_length(headers: Iterable[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    out = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"transfer-encoding")]
    out.append((b"content-length", str(length).encode()))
    return out


async def _read_body(receive: Receive, declared: str | None, limit: int) -> bytes | None:
    """The request body, refusing more than ``limit`` bytes; ``None`` if the client left."""
    # isdigit() admits "²" (latin-1 headers), which int() refuses: ASCII digits only
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(int(declared), limit)
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(size, limit)
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _respond(send: Send, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _encode(headers)})
    await send({"type": "http.response.body", "body": body, "more_body": False})
