"""Who is calling: ContextVars shared by the middleware (which binds them per request) and
the client proxies (which read them for every metered call).

One ContextVar per item, so binding the account does not clobber a tier bound elsewhere.
ContextVars follow asyncio tasks and ``contextvars.copy_context()``, so calls made in
background tasks started during a request, and in streaming-response generators, are
attributed to that request's caller.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from opentelemetry import trace

from metered.semconv import ATTR

__all__ = [
    "CallerContext",
    "RequestTotals",
    "bind",
    "current",
    "current_totals",
    "forwarding",
]

logger = logging.getLogger("metered")


@dataclass(frozen=True, slots=True)
class CallerContext:
    """The caller of a metered call, as bound for the current context."""

    account: str | None = None
    tier: str | None = None
    feature: str | None = None
    route: str | None = None
    urgent: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)


class RequestTotals:
    """Running cost/price of the metered calls made while serving one request.

    Only settled, priced calls count: an *unpriced* call (a model with no price, passed
    by a route that only tracks spend) adds nothing, neither to the amounts nor to
    ``calls`` — its price is unknown, and adding $0 would state otherwise. So the
    ``x-metered-cost`` / ``x-metered-price`` headers and ``metered.request.*`` attributes
    cover the priced calls only, and a request whose calls were all unpriced gets none.

    The request's server span (``span``) is the first recording span of kind SERVER
    found current: when the middleware starts (a server instrumentation outside it),
    when a call settles, or when the response starts (one inside it, whose span has
    ended by the time the middleware is done). The running totals are written onto it
    as they change, so it has them however early it ends.
    """

    __slots__ = ("_lock", "calls", "cost", "price", "span")

    def __init__(self) -> None:
        self.calls = 0
        self.cost = Decimal(0)
        self.price = Decimal(0)
        self.span: trace.Span | None = None  # the request's server span, once found
        self._lock = threading.Lock()  # handlers may fan calls out to threads

    def add(self, cost: Decimal | None, price: Decimal) -> None:
        """Add one settled, priced call."""
        with self._lock:
            self.calls += 1
            if cost is not None:
                self.cost += cost
            self.price += price
            span = self.span
            if span is None:
                span = self.span = _server_span()
            if span is not None:
                self._write(span)  # under the lock: the last write has the last totals

    def find_span(self) -> None:
        """Remember the current span if it is the request's server span (the first
        recording SERVER span seen), and put the totals so far on it."""
        if self.span is not None:
            return
        span = _server_span()
        if span is None:
            return
        with self._lock:
            if self.span is None:
                self.span = span
                self._write(span)

    def annotate(self) -> None:
        """The request is done: put its totals on the current span if no server span
        was found (one found has them already, and may have ended)."""
        if self.span is not None or not self.calls:
            return
        try:
            span = trace.get_current_span()
            if span.is_recording():
                with self._lock:
                    self._write(span)
        except Exception:  # telemetry must never break a request
            logger.exception("metered: could not annotate the request span")

    def _write(self, span: trace.Span) -> None:
        if not self.calls:
            return
        try:
            if span.is_recording():  # an ended SDK span is not
                span.set_attributes(
                    {
                        ATTR.REQUEST_COST: float(self.cost),
                        ATTR.REQUEST_PRICE: float(self.price),
                        ATTR.REQUEST_CALLS: self.calls,
                    }
                )
        except Exception:  # telemetry must never break a call
            logger.exception("metered: could not set the request totals on its span")


def _server_span() -> trace.Span | None:
    """The current span, if it is a recording SERVER span (an SDK span has a ``kind``)."""
    try:
        span = trace.get_current_span()
        if span.is_recording() and getattr(span, "kind", None) is trace.SpanKind.SERVER:
            return span
    except Exception:
        logger.exception("metered: could not read the current span")
    return None


_account: ContextVar[str | None] = ContextVar("metered.account", default=None)
_tier: ContextVar[str | None] = ContextVar("metered.tier", default=None)
_feature: ContextVar[str | None] = ContextVar("metered.feature", default=None)
_route: ContextVar[str | None] = ContextVar("metered.route", default=None)
_urgent: ContextVar[bool] = ContextVar("metered.urgent", default=False)
_metadata: ContextVar[Mapping[str, Any] | None] = ContextVar("metered.metadata", default=None)
_totals: ContextVar[RequestTotals | None] = ContextVar("metered.totals", default=None)
# the request a gateway route meters, while its app serves it: a one-item list shared by
# every task that copies the context, emptied by the client call that forwards it, so the
# caller is charged once whichever task forwards
_route_request: ContextVar[list[Mapping[str, Any]] | None] = ContextVar(
    "metered.route_request", default=None
)
# set by forwarding(): the handler's own, explicit word that this call is the forward
_forwarding: ContextVar[bool] = ContextVar("metered.forwarding", default=False)
# what makes an unmarked client call the forward of the route's request: the same model and prompt
_REQUEST_KEYS = ("model", "messages", "input", "system", "instructions", "tools")
# records of every call finished in this context, for metered.testing.capture_spend()
_captured: ContextVar[list[Any] | None] = ContextVar("metered.captured", default=None)

_UNSET: Any = object()


class _Vars:
    """The ContextVars themselves, for the engine's hot path (one ``get`` per item)."""

    account = _account
    tier = _tier
    feature = _feature
    route = _route
    urgent = _urgent
    metadata = _metadata
    totals = _totals
    captured = _captured


bound = _Vars


def current() -> CallerContext:
    """The caller bound in the current context (all ``None`` when nothing is bound)."""
    return CallerContext(
        account=_account.get(),
        tier=_tier.get(),
        feature=_feature.get(),
        route=_route.get(),
        urgent=_urgent.get(),
        metadata=_metadata.get() or {},
    )


def take_route_metering(request: Mapping[str, Any]) -> bool:
    """Whether a client call is the forward of the request a gateway route already meters.

    The forward is the call the handler marks with :class:`forwarding`, whatever it sends
    (it may add a system prompt or change the model). A handler that marks nothing is
    served too: then the forward is the call that sends the route's own fitted request
    (same ``model``, ``messages`` / ``input``, ``system``, ``instructions``, ``tools``).
    Never the order of calls: a side call before or after it, e.g. a moderation call, is
    metered as usual. Only one call takes the route's request, in any task started while
    the route is served; the client proxies pass it straight through, so the caller is
    charged once, by the route.
    """
    pending = _route_request.get()
    if not pending:
        return False
    try:
        routed = pending[0]
    except IndexError:  # another thread took it first
        return False
    if not _forwarding.get() and any(routed.get(key) != request.get(key) for key in _REQUEST_KEYS):
        return False
    try:
        pending.pop()
    except IndexError:
        return False
    return True


class forwarding:
    """Mark the client call made in the block as the forward of the gateway route's request.

    Example::

        @app.post("/v1/chat/completions")
        async def forward(body: dict[str, Any]) -> Any:
            await llm.chat.completions.create(model="gpt-4o-mini", ...)  # a side call: metered
            body["messages"] = [SYSTEM, *body["messages"]]
            with metered.context.forwarding():  # the route meters this one already
                return await llm.chat.completions.create(**body)

    The gateway route's door meters the request; the marked call passes through unmetered
    once, even when it sends a request the handler changed. Outside a gateway route, or
    once the route's forward was made, a marked call is metered as usual.
    """

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _forwarding.set(True)

    def __exit__(self, *exc_info: object) -> None:
        _forwarding.reset(self._token)


def mark_route_metered(request: Mapping[str, Any]) -> Token[list[Mapping[str, Any]] | None]:
    """Mark the current context as serving ``request`` (a gateway route's fitted body),
    which the route meters (see :func:`take_route_metering`); returns the token to reset
    it with."""
    return _route_request.set([request])


class metering_by_route:
    """``with metering_by_route(request):`` marks the block like :func:`mark_route_metered`."""

    __slots__ = ("_request", "_token")

    def __init__(self, request: Mapping[str, Any]) -> None:
        self._request = request

    def __enter__(self) -> None:
        self._token = mark_route_metered(self._request)

    def __exit__(self, *exc_info: object) -> None:
        _route_request.reset(self._token)


def captured_records() -> list[Any] | None:
    """The list bound by :func:`metered.testing.capture_spend`, if any."""
    return _captured.get()


def current_totals() -> RequestTotals | None:
    """The per-request totals bound by the middleware, if any."""
    return _totals.get()


class bind:
    """Bind caller items for the duration of a ``with`` block; unset items stay as they are.

    Example::

        with metered.context.bind(account="user-42", tier="pro"):
            client.chat.completions.create(...)  # charged to user-42

    A class rather than a ``@contextmanager`` generator: the middleware binds on every
    HTTP request, and this is about 3x cheaper.
    """

    __slots__ = ("_tokens", "_values")

    def __init__(
        self,
        *,
        account: str | None = _UNSET,
        tier: str | None = _UNSET,
        feature: str | None = _UNSET,
        route: str | None = _UNSET,
        urgent: bool = _UNSET,
        metadata: Mapping[str, Any] | None = _UNSET,
        totals: RequestTotals | None = _UNSET,
    ) -> None:
        self._values: tuple[tuple[ContextVar[Any], Any], ...] = tuple(
            (var, value)
            for var, value in (
                (_account, account),
                (_tier, tier),
                (_feature, feature),
                (_route, route),
                (_urgent, urgent),
                (_metadata, metadata),
                (_totals, totals),
            )
            if value is not _UNSET
        )
        self._tokens: list[tuple[ContextVar[Any], Token[Any]]] = []

    def __enter__(self) -> None:
        self._tokens = [(var, var.set(value)) for var, value in self._values]

    def __exit__(self, *exc_info: object) -> None:
        tokens, self._tokens = self._tokens, []
        for var, token in reversed(tokens):
            var.reset(token)
