"""``MeteredWSGIMiddleware``: the ASGI middleware's twin for Flask and other WSGI apps::

    app.wsgi_app = MeteredWSGIMiddleware(app.wsgi_app, meter=meter, identify=ApiKeys(keys))

Same options, same behaviour (see :mod:`metered.http.asgi`): each request's caller is bound
into :mod:`metered.context` while the app runs *and* while its response body is
iterated, so calls made by streamed responses (generators) are attributed too;
non-streamed responses get the ``x-metered-cost`` / ``x-metered-price`` headers; routes
configured as ``"METHOD /path"`` are metered as LLM calls, streams passing through
unbuffered. Threads a handler starts do not inherit the caller: start them with
``contextvars.copy_context().run``.
"""

from __future__ import annotations

import contextvars
import io
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Protocol

from metered.context import RequestTotals, bind, mark_route_metered
from metered.engine.meter import Meter
from metered.errors import MeteredError, RequestTooLarge, Unauthorized, UpstreamError
from metered.http.errors import error_parts
from metered.http.handlers import add_exception_handlers, is_flask_app
from metered.http.identity import ApiKeys, Identify, bindings, caller_of, is_unidentified
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

__all__ = ["COST_HEADER", "PRICE_HEADER", "ApiKeys", "MeteredWSGIMiddleware"]

logger = logging.getLogger("metered")

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
Headers = list[tuple[str, str]]
Write = Callable[[bytes], object]


class StartResponse(Protocol):
    def __call__(
        self, status: str, headers: Headers, exc_info: ExcInfo | None = None, /
    ) -> Write: ...


WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_UNAUTHORIZED = Unauthorized("this endpoint needs a valid API key")


class MeteredWSGIMiddleware:
    """Meter a WSGI app: bind each request's caller, and meter gateway routes.

    Args:
        app: the WSGI app (for Flask, ``app.wsgi_app``).
        meter: the engine (its config's ``"METHOD /path"`` routes are gateway routes).
        identify: who is calling: an :class:`ApiKeys`, or a callable receiving the WSGI
            environ and returning a :class:`~metered.context.CallerContext`, an account
            name or ``None``. Default: nobody is identified.
        unidentified: ``"allow"`` serves unidentified requests as the meter's default
            account; ``"reject"`` answers them 401 (JSON), except on ``public_paths``.
        public_paths: paths served without identification (health checks).
        routes: gateway route names to meter instead of the config's; ``()`` meters none.
        total_headers: which totals headers non-streamed responses get.
        max_choices: the largest ``n`` a gateway request may ask for.

    Raises:
        ConfigError: a bad route name or option.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        meter: Meter,
        identify: Identify | None = None,
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
        # Flask answers a view's exception with its own 500 before this middleware sees
        # it: wrapping ``flask_app.wsgi_app`` registers metered's handlers on the app
        owner = getattr(app, "__self__", None)
        if is_flask_app(owner):
            add_exception_handlers(owner)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in self._public:
            return self.app(environ, start_response)
        caller = caller_of(self._identify(environ)) if self._identify is not None else None
        if self._reject and is_unidentified(caller):
            return _respond(start_response, *error_parts(_UNAUTHORIZED))
        totals = RequestTotals()
        totals.find_span()  # a server instrumentation outside this middleware
        method = environ.get("REQUEST_METHOD", "")
        found = self._table.find(method, path) if self._table else None
        route = None if found is None else found[0]
        # One context per request, holding the caller; the app call and every step of
        # the body iteration run in it, since WSGI servers iterate after the app returns.
        with bind(totals=totals, **bindings(caller)):
            context = contextvars.copy_context()
        if route is None:
            start = _Start(start_response, totals, self._totals)
            try:
                body = context.run(self.app, environ, start)
            except MeteredError as exc:
                # a refusal the handler let through, before its response started: answered
                # as on gateway routes (see metered.http.handlers)
                if start.started:
                    raise
                body = _respond(start_response, *error_parts(exc))
        else:
            # the app call and a lazily built body both run in this context, which
            # _gateway marks with the route's request once begun
            body = context.run(self._gateway, route, environ, start_response, totals)
        return _InContext(body, context, totals)

    def _gateway(
        self,
        route: GatewayRoute,
        environ: Environ,
        start_response: StartResponse,
        totals: RequestTotals,
    ) -> Iterable[bytes]:
        try:
            headers = public_headers(_request_headers(environ))
            check_content_type(environ.get("CONTENT_TYPE"))
            raw = _read_body(environ, route.max_body_bytes)
            body = route.request(raw, environ.get("PATH_INFO", ""), max_choices=self._max_choices)
            call = self.meter.begin(
                body,
                api=route.api,
                provider=route.provider,
                route=route.pricing_route,
                headers=headers,
            )
        except MeteredError as exc:
            return _respond(start_response, *error_parts(exc))
        # a metered client forwarding this request must not charge the caller again
        mark_route_metered(call.body)
        strip = prepare_stream(call.body, route.api)
        data = forwarded_bytes(raw, body, call.body, url=route.pattern is not None)
        inner = {**environ, "wsgi.input": io.BytesIO(data), "CONTENT_LENGTH": str(len(data))}
        response = GatewayResponse(call, route.api, strip_usage=strip)
        return _Relay(response, start_response, totals, self._totals).run(self.app, inner)


class _Relay:
    """The WSGI shell of a :class:`GatewayResponse`, and the body the server iterates.

    A class rather than a generator: a server may close the body before iterating it
    (the client left at once), and the call must be settled and the app's iterable
    closed then too.
    """

    def __init__(
        self,
        response: GatewayResponse,
        start_response: StartResponse,
        totals: RequestTotals,
        which: tuple[TotalHeader, ...],
    ) -> None:
        self.response = response
        self._start_response = start_response
        self._totals = totals
        self._which = which
        self._held: tuple[str, Headers, ExcInfo | None] | None = None
        self._pending: list[bytes] = []  # bytes given to write(), sent ahead of the next chunk
        self._result: Iterable[bytes] = ()
        self._iterator: Iterator[bytes] | None = None
        self._tail: list[bytes] | None = None  # what is left to send once the app is done
        self._settled = False
        self.started = False  # the response start went to the server

    def run(self, app: WSGIApp, environ: Environ) -> Iterable[bytes]:
        """Call the app; the returned body relays its answer."""
        try:
            self._result = app(environ, self.start_response)
        except Exception as exc:
            self._tail = [self._failed(exc)]
        return self

    def start_response(
        self, status: str, headers: Headers, exc_info: ExcInfo | None = None
    ) -> Write:
        self._totals.find_span()  # a server instrumentation inside the middleware
        code = int(status.split(" ", 1)[0])
        content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
        if self.response.start(code, content_type):
            self.started = True
            self._start_response(status, headers, exc_info)
        else:
            self._held = (status, headers, exc_info)
        return self._pending.append  # the legacy write() callable

    def _release(self, extra: Headers) -> None:
        held = self._held
        if held is not None:
            self._held = None
            status, headers, exc_info = held
            self.started = True
            self._start_response(status, [*headers, *extra], exc_info)

    def _settle(self, args: dict[str, Any]) -> None:
        if not self._settled:
            self._settled = True
            self.response.call.finish(**args)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        response = self.response
        while self._tail is None:
            try:
                if self._iterator is None:
                    self._iterator = iter(self._result)
                chunk = next(self._iterator)
            except StopIteration:
                self._tail = self._end()
                break
            except Exception as exc:
                self._tail = [self._failed(exc)]
                break
            if self._pending:
                chunk = b"".join(self._pending) + chunk
                self._pending.clear()
            out = response.body(chunk)
            if not response.held:
                self._release([])
            if out:
                return out
        if not self._tail:
            raise StopIteration
        return self._tail.pop(0)

    def _end(self) -> list[bytes]:
        response = self.response
        if response.status is None:
            return [self._failed(UpstreamError("the app sent no response"))]
        out, args = response.end(b"".join(self._pending))
        self._settle(args)
        totals = self._totals
        self._release(total_headers(totals, self._which) if totals.calls and self._which else [])
        return [out]

    def _failed(self, exc: Exception) -> bytes:
        """Settle as failed; the 502 body to send, if the client got nothing yet."""
        self._settle(self.response.cut(exc))
        if self.started:
            raise exc
        logger.error("metered: the app failed on a gateway route", exc_info=exc)
        error = exc if isinstance(exc, UpstreamError) else UpstreamError("the upstream failed")
        status, headers, body = error_parts(error)
        self._held = None
        self.started = True
        self._start_response(_status_line(status), headers)
        return body

    def close(self) -> None:
        """The server is done: close the app's body; settle if it never ended (client left)."""
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._settle(self.response.cut(None, client_left=True))


class _InContext:
    """A response body iterated (and closed) inside the request's context."""

    def __init__(
        self, body: Iterable[bytes], context: contextvars.Context, totals: RequestTotals
    ) -> None:
        self._body = body
        self._context = context
        self._totals = totals
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        iterator = self._iterator
        if iterator is None:
            iterator = self._iterator = self._context.run(iter, self._body)
        return self._context.run(next, iterator)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                self._context.run(close)
        finally:
            self._context.run(annotate_request_span, self._totals)


class _Start:
    """The app's ``start_response``: notes that the response started, and adds the totals
    headers to a response whose body was complete before its headers (a content-length:
    every call the handler made is in the totals)."""

    __slots__ = ("_start", "_totals", "_which", "started")

    def __init__(
        self, start_response: StartResponse, totals: RequestTotals, which: tuple[TotalHeader, ...]
    ) -> None:
        self._start = start_response
        self._totals = totals
        self._which = which
        self.started = False

    def __call__(self, status: str, headers: Headers, exc_info: ExcInfo | None = None, /) -> Write:
        self.started = True
        self._totals.find_span()  # a server instrumentation inside this middleware
        which = self._which
        if (
            which
            and self._totals.calls
            and any(name.lower() == "content-length" for name, _ in headers)
        ):
            headers = [*headers, *total_headers(self._totals, which)]
        return self._start(status, headers, exc_info)


def _request_headers(environ: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            yield key[5:].replace("_", "-").lower(), value
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            yield key.replace("_", "-").lower(), value


def _read_body(environ: Mapping[str, Any], limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes."""
    stream = environ["wsgi.input"]
    declared = environ.get("CONTENT_LENGTH") or ""
    if declared.isascii() and declared.isdigit():  # isdigit() admits "²", int() does not
        size = int(declared)
        if size > limit:
            raise RequestTooLarge(size, limit)
        data: bytes = stream.read(size) if size else b""
        return data
    if not environ.get("wsgi.input_terminated"):
        return b""  # no length and no end marker: PEP 3333 says the body is empty
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise RequestTooLarge(len(data), limit)
    return data


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


def _respond(
    start_response: StartResponse, status: int, headers: Headers, body: bytes
) -> list[bytes]:
    start_response(_status_line(status), headers)
    return [body]
