"""The call adapter the OpenAI and Anthropic proxies share: the per-client context,
turning SDK keyword arguments into an engine request, and running one metered call
(sync / async) through the engine, the SDK and the format's reader.
"""

from __future__ import annotations

import inspect
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import Token
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from pydantic import BaseModel

from metered.clients.observers import StreamObserver
from metered.clients.raw import AsyncRawResponse, RawResponse, body_read
from metered.clients.streams import AsyncMeteredStream, MeteredStream
from metered.clients.tally import Tally, error_status
from metered.context import take_route_metering
from metered.engine.meter import Api, Call, Meter

__all__ = [
    "HEADER_PREFIX",
    "SDK_OPTIONS",
    "ClientContext",
    "Endpoint",
    "Prepared",
    "abegin",
    "acall",
    "ainvoke",
    "begin",
    "call",
    "default_meter",
    "invoke",
    "prepare",
]

#: Keyword arguments every SDK method takes that are request options, not body fields.
SDK_OPTIONS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})
#: Per-call identity headers: ``x-metered-account`` ... (stripped before sending).
HEADER_PREFIX = "x-metered-"
_IDENTITY = ("account", "tier", "feature", "route", "urgent")
# body parameters the SDKs type as Iterable: counted by the engine, then sent upstream
_ITERABLE_PARAMS = ("messages", "tools", "functions", "input", "system")
_TRUE = frozenset({"1", "true", "yes", "on"})

logger = logging.getLogger("metered")

_default: Meter | None = None
_default_lock = threading.Lock()


def default_meter() -> Meter:
    """The meter of every proxy built without ``meter=``, created on first use.

    It prices every call from the catalog, emits spans through the global tracer
    provider and enforces nothing; ``default_meter().spent(account)`` sums the calls of
    all those proxies.
    """
    global _default
    meter = _default
    if meter is None:
        with _default_lock:
            if _default is None:
                _default = Meter()
            meter = _default
    return meter


class _Never:
    """Stands in for the SDK's sentinel types when none are found: nothing is one."""


def _sentinels(client: Any) -> tuple[type, ...]:
    """The SDK's "argument not given" types (``NotGiven``, ``Omit``), from its package."""
    for cls in type(client).__mro__:  # a user's subclass lives in the user's package
        package = sys.modules.get(cls.__module__.partition(".")[0])
        found = tuple(
            kind
            for name in ("NotGiven", "Omit")
            if isinstance(kind := getattr(package, name, None), type)
        )
        if found:
            return found
    return (_Never,)


def _server(client: Any) -> tuple[str | None, int | None]:
    """The upstream's host and port (``None`` for HTTPS's default, as the conventions
    and the official instrumentation leave it out)."""
    try:
        url = client.base_url
        host, port = url.host, url.port
    except Exception:
        return None, None
    if not (isinstance(host, str) and host):
        return None, None
    return host, port if type(port) is int and port != 443 else None


class ClientContext:
    """What every metered call of one proxied client shares.

    Args:
        client: the SDK client.
        meter: the engine, or ``None`` for :func:`default_meter`.
        provider: ``"openai"`` / ``"anthropic"`` (the engine's provider id).
        identity: account/tier/feature/route/urgent set on the proxy (``None`` = unset).
        options: keyword arguments that are SDK options, not body fields.
    """

    __slots__ = (
        "_meter",
        "begin_args",
        "identity",
        "omitted",
        "options",
        "provider",
        "server_address",
    )

    def __init__(
        self,
        client: Any,
        *,
        meter: Meter | None,
        provider: str,
        identity: Mapping[str, Any],
        options: frozenset[str] = SDK_OPTIONS,
    ) -> None:
        self._meter = meter
        self.provider = provider
        self.identity = {k: v for k, v in identity.items() if v is not None}
        self.options = options
        self.omitted = _sentinels(client)
        self.server_address, port = _server(client)
        #: ``Meter.begin`` keyword arguments every call of this client shares (built once)
        self.begin_args: dict[str, Any] = {
            "provider": provider,
            "server_address": self.server_address,
            "server_port": port,
            **self.identity,
        }

    @property
    def meter(self) -> Meter:
        """The engine metering this client's calls."""
        meter = self._meter
        return meter if meter is not None else default_meter()

    @property
    def settings(self) -> dict[str, Any]:
        """The proxy's keyword arguments, to build a proxy of a copied client."""
        return {"meter": self._meter, **{k: self.identity.get(k) for k in _IDENTITY}}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One kind of metered SDK method.

    Attributes:
        api: the engine's request shape (``chat`` / ``responses`` / ``anthropic``).
        observer: reads this API's responses and stream items.
        stream_usage: ask for ``stream_options.include_usage`` on streamed calls.
    """

    api: Api
    observer: type[StreamObserver]
    stream_usage: bool = False


@dataclass(slots=True)
class Prepared:
    """One call's SDK keyword arguments, split for the engine and the SDK."""

    body: dict[str, Any]
    options: dict[str, Any]
    begin: dict[str, Any]
    hide_usage: bool
    stream: bool


def _split_headers(headers: Mapping[str, Any], found: dict[str, Any]) -> dict[str, Any]:
    """Move ``x-metered-*`` headers into ``found``; return the headers to send."""
    sent: dict[str, Any] = {}
    for name, value in headers.items():
        key = name.lower() if isinstance(name, str) else ""
        if key.startswith(HEADER_PREFIX):
            item = key[len(HEADER_PREFIX) :]
            if item in _IDENTITY and isinstance(value, str):
                found[item] = value.strip().lower() in _TRUE if item == "urgent" else value
        else:
            sent[name] = value
    return sent


def _without_metering_headers(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The SDK kwargs with the ``x-metered-*`` headers removed (they never go upstream)."""
    headers = kwargs.get("extra_headers")
    if not headers:
        return kwargs
    return {**kwargs, "extra_headers": _split_headers(headers, {})}


def prepare(ctx: ClientContext, endpoint: Endpoint, kwargs: Mapping[str, Any]) -> Prepared:
    """Split SDK kwargs into the body the engine meters and the SDK-only options.

    Per-call identity (``x-metered-*`` headers) overrides the proxy's, which overrides the
    bound context (the engine reads it for every item left unset here).
    """
    body: dict[str, Any] = {}
    options: dict[str, Any] = {}
    sdk_options = ctx.options
    omitted = ctx.omitted
    for key, value in kwargs.items():
        if key in sdk_options:
            options[key] = value
        elif not isinstance(value, omitted):
            body[key] = value
    for name in _ITERABLE_PARAMS:
        value = body.get(name)
        if (
            value is not None
            and type(value) is not list
            and isinstance(value, Iterable)
            and not isinstance(value, (str, bytes, Mapping))
        ):
            # the SDKs take any iterable (a generator, dict.values()): make it a list that
            # is counted and sent alike (anything else the engine refuses)
            body[name] = list(value)
    begin = ctx.begin_args  # shared, never changed: per-call identity goes in a copy
    if options:
        headers = options.get("extra_headers")
        if headers:
            begin = dict(begin)
            options["extra_headers"] = begin["headers"] = _split_headers(headers, begin)
    stream = body.get("stream") is True
    hide_usage = False
    if stream and endpoint.stream_usage:
        stream_options = body.get("stream_options")
        if stream_options is None or (
            isinstance(stream_options, Mapping) and "include_usage" not in stream_options
        ):
            body["stream_options"] = {**(stream_options or {}), "include_usage": True}
            hide_usage = True
    return Prepared(body, options, begin, hide_usage, stream)


def _attach(call_: Call) -> Token[Context] | None:
    """Make the call's span current for the upstream request (HTTP spans nest under it)."""
    ctx = call_.upstream_context()
    return None if ctx is None else otel_context.attach(ctx)


def begin(
    ctx: ClientContext, endpoint: Endpoint, kwargs: Mapping[str, Any]
) -> tuple[Call, Prepared]:
    """Steps 1-5 for SDK kwargs.

    Raises:
        PolicyDenied, BudgetExceeded, InvalidRequest: before anything is sent upstream.
    """
    prepared = prepare(ctx, endpoint, kwargs)
    return ctx.meter.begin(prepared.body, api=endpoint.api, **prepared.begin), prepared


async def abegin(
    ctx: ClientContext, endpoint: Endpoint, kwargs: Mapping[str, Any]
) -> tuple[Call, Prepared]:
    """Async :func:`begin`."""
    prepared = prepare(ctx, endpoint, kwargs)
    return await ctx.meter.abegin(prepared.body, api=endpoint.api, **prepared.begin), prepared


def invoke(call_: Call, upstream: Callable[..., Any], options: Mapping[str, Any]) -> Any:
    """Send the fitted body and the SDK ``options`` upstream under the call's span; a
    failure settles the call and is re-raised."""
    token = _attach(call_)
    try:
        return upstream(**call_.body, **options)
    except BaseException as exc:
        call_.finish(error=exc, status=error_status(exc))
        raise
    finally:
        if token is not None:
            otel_context.detach(token)


async def ainvoke(
    call_: Call, upstream: Callable[..., Awaitable[Any]], options: Mapping[str, Any]
) -> Any:
    """Async :func:`invoke`."""
    token = _attach(call_)
    try:
        return await upstream(**call_.body, **options)
    except BaseException as exc:
        await call_.afinish(error=exc, status=error_status(exc))
        raise
    finally:
        if token is not None:
            otel_context.detach(token)


def _deliver(
    call_: Call, endpoint: Endpoint, prepared: Prepared, result: Any
) -> tuple[Any, dict[str, Any] | None]:
    """What the caller gets, and the ``finish`` arguments if the response is whole."""
    outcome = endpoint.observer.finish_args
    kind = type(result)
    if hasattr(kind, "__next__"):
        observer = endpoint.observer(hide_usage=prepared.hide_usage)
        return MeteredStream(result, Tally(call_, observer, close=result.close)), None
    if hasattr(kind, "__anext__"):
        # an async stream cannot be closed from a finaliser: see metered.clients.tally
        observer = endpoint.observer(hide_usage=prepared.hide_usage)
        return AsyncMeteredStream(result, Tally(call_, observer)), None
    if hasattr(result, "http_response"):  # with_raw_response / with_streaming_response
        if prepared.stream or not body_read(result):
            # settled as the body is read
            tally = Tally(call_, endpoint.observer(hide_usage=prepared.hide_usage))
            is_async = inspect.iscoroutinefunction(result.parse)
            raw_cls = AsyncRawResponse if is_async else RawResponse
            return raw_cls(result, tally, stream=prepared.stream), None
        try:
            # parse() is cached by the SDK: the caller's own parse() costs nothing more
            parsed = result.parse()
        except Exception:  # the caller may never parse it: their call must not fail here
            logger.warning("metered: could not parse a raw response; settling the estimate")
            return result, {"response": result, "status": result.status_code}
        return result, outcome(call_, parsed, status=result.status_code)
    return result, outcome(call_, result)


def call(
    ctx: ClientContext, endpoint: Endpoint, method: Callable[..., Any], kwargs: dict[str, Any]
) -> Any:
    """Meter one sync SDK call: begin, call upstream with the fitted body, settle.

    Raises:
        PolicyDenied, BudgetExceeded, InvalidRequest: before anything is sent upstream.
    """
    if take_route_metering(kwargs):  # the forward of a gateway route's request: metered there
        return method(**_without_metering_headers(kwargs))
    prepared = prepare(ctx, endpoint, kwargs)
    call_ = ctx.meter.begin(prepared.body, api=endpoint.api, **prepared.begin)
    result = invoke(call_, method, prepared.options)
    if isinstance(result, BaseModel):  # the common case: a parsed, non-streamed response
        call_.finish(**endpoint.observer.finish_args(call_, result))
        return result
    delivered, outcome = _deliver(call_, endpoint, prepared, result)
    if outcome is not None:
        call_.finish(**outcome)
    return delivered


async def acall(
    ctx: ClientContext, endpoint: Endpoint, method: Callable[..., Any], kwargs: dict[str, Any]
) -> Any:
    """Async :func:`call`."""
    if take_route_metering(kwargs):  # the forward of a gateway route's request: metered there
        return await method(**_without_metering_headers(kwargs))
    prepared = prepare(ctx, endpoint, kwargs)
    call_ = await ctx.meter.abegin(prepared.body, api=endpoint.api, **prepared.begin)
    result = await ainvoke(call_, method, prepared.options)
    if isinstance(result, BaseModel):
        await call_.afinish(**endpoint.observer.finish_args(call_, result))
        return result
    delivered, outcome = _deliver(call_, endpoint, prepared, result)
    if outcome is not None:
        await call_.afinish(**outcome)
    return delivered
