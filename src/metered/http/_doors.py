"""What the ASGI and WSGI doors share: who is calling, gateway-route request checks, and
usage read from JSON and server-sent-event responses as they pass through.

Both :mod:`metered.http.asgi` and :mod:`metered.http.wsgi` are thin shells over this module, so the
two servers identify callers, refuse bad requests and settle streams the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal

from metered.context import CallerContext, RequestTotals
from metered.errors import (
    ConfigError,
    InvalidRequest,
    MeteredError,
    UnsupportedMediaType,
    UpstreamError,
    http_error,
)
from metered.fitting.policy import MAX_OUTPUT_TOKENS
from metered.http.wire import (
    MAX_JSON_RESPONSE,
    MAX_SSE_LINE,
    Outcome,
    StreamMeter,
    finish_args,
    json_outcome,
)
from metered.telemetry import ATTR

if TYPE_CHECKING:
    from metered.engine.meter import Api, Call, Meter

__all__ = [
    "COST_HEADER",
    "CREDENTIAL_HEADERS",
    "MAX_JSON_DEPTH",
    "MAX_JSON_RESPONSE",
    "MAX_OUTPUT_TOKENS",
    "MAX_SSE_LINE",
    "PRICE_HEADER",
    "ApiKeys",
    "AsyncIdentify",
    "GatewayResponse",
    "GatewayRoute",
    "Identify",
    "Identity",
    "KeyAccount",
    "Outcome",
    "StreamMeter",
    "TotalHeader",
    "annotate_request_span",
    "bindings",
    "caller_of",
    "check_content_type",
    "check_door_options",
    "check_total_headers",
    "error_parts",
    "finish_args",
    "gateway_routes",
    "is_unidentified",
    "json_outcome",
    "parse_request",
    "prepare_stream",
    "public_headers",
    "total_headers",
    "upstream_bytes",
]

#: Response header with the upstream cost (USD) of the metered calls a request made.
COST_HEADER: Final = "x-metered-cost"
#: Response header with the price (USD) charged for the metered calls a request made.
PRICE_HEADER: Final = "x-metered-price"
#: Headers that carry credentials: never passed to pricing rules, hooks, spans or logs.
CREDENTIAL_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"}
)
#: Deepest nesting of arrays and objects in a gateway request: far beyond real requests
#: (tool schemas nest a few levels), far below the interpreter's recursion limit that
#: counting, pricing and forwarding the body rely on.
MAX_JSON_DEPTH: Final = 100
_TOO_DEEP = f"the request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"

TotalHeader = Literal["cost", "price"]
Identity = CallerContext | str | None
#: Resolves the caller of a request: receives the ASGI scope (or the WSGI environ) and
#: returns a :class:`~metered.context.CallerContext`, an account name, or ``None``
#: (unidentified).
Identify = Callable[[Any], Identity]
#: An ``async`` resolver (ASGI only).
AsyncIdentify = Callable[[Any], Awaitable[Identity]]


# -- who is calling -------------------------------------------------------------------


class KeyAccount(str):
    """An account named after an API key that is not configured (``key:<16 hex>``).

    Such a caller is *tracked*, not *authenticated*: ``unidentified="reject"`` refuses it
    like a caller with no key at all.
    """

    __slots__ = ()


def is_unidentified(caller: CallerContext | str | None) -> bool:
    """Whether a caller counts as unidentified for ``unidentified="reject"``."""
    return caller is None or isinstance(caller, KeyAccount)


class ApiKeys:
    """Maps API keys sent by callers to accounts, without keeping or revealing the keys.

    Keys are read from ``Authorization: Bearer <key>`` or ``x-api-key: <key>`` (see
    ``headers``). Only SHA-256 digests of the configured keys are stored. A key that is not
    configured is unidentified, unless a ``secret`` is given: it then becomes the account
    ``key:<16 hex>`` (HMAC-SHA256 of the key under the secret), a stable name that cannot
    be turned back into the key, so its spend is tracked. Such a key is still not
    *known*: with ``unidentified="reject"`` it is refused (401) like no key at all.
    Raw keys never reach spans, records or logs.

    Instances are resolvers for both doors: pass one as ``identify=`` to
    :class:`~metered.http.asgi.MeteredMiddleware` or
    :class:`~metered.http.wsgi.MeteredWSGIMiddleware`.

    Args:
        keys: ``{api key: account}``. Keep keys out of YAML: build this from a secret
            store, or use :meth:`from_env`.
        secret: HMAC secret that names accounts for keys not in ``keys``.
        headers: request headers to read the key from, in order.

    Example::

        identify = ApiKeys({"sk-live-acme": "acme"}, secret=os.environ["METERED_KEY_SECRET"])
        app.add_middleware(MeteredMiddleware, meter=meter, identify=identify)
    """

    __slots__ = ("_asgi", "_digests", "_secret", "_wsgi")

    def __init__(
        self,
        keys: Mapping[str, str] | None = None,
        *,
        secret: str | bytes | None = None,
        headers: Sequence[str] = ("authorization", "x-api-key"),
    ) -> None:
        digests: dict[bytes, str] = {}
        for key, account in (keys or {}).items():
            if not isinstance(key, str) or not key or not isinstance(account, str) or not account:
                # never echo the key itself
                raise ConfigError("api_keys", "keys and accounts must be non-empty strings")
            digests[_digest(key)] = account
        self._digests = digests
        self._secret = secret.encode() if isinstance(secret, str) else secret
        names = [h.lower() for h in headers]
        self._asgi = frozenset(n.encode("latin-1") for n in names)
        self._wsgi = tuple("HTTP_" + n.upper().replace("-", "_") for n in names)

    @classmethod
    def from_env(
        cls,
        var: str = "METERED_API_KEYS",
        *,
        secret_var: str = "METERED_KEY_SECRET",
        environ: Mapping[str, str] | None = None,
    ) -> ApiKeys:
        """Keys from the environment: ``METERED_API_KEYS="sk-a=acme,sk-b=globex"``.

        Pairs are separated by commas or whitespace; ``secret_var`` (optional) holds the
        HMAC secret for unlisted keys.

        Raises:
            ConfigError: a pair is not ``key=account`` (the key is not echoed).
        """
        env = os.environ if environ is None else environ
        keys: dict[str, str] = {}
        for index, pair in enumerate(re.split(r"[,\s]+", env.get(var, "").strip())):
            if not pair:
                continue
            key, sep, account = pair.rpartition("=")
            if not sep or not key or not account:
                raise ConfigError(f"{var}[{index}]", "must be written key=account")
            keys[key] = account
        return cls(keys, secret=env.get(secret_var) or None)

    def __repr__(self) -> str:
        return f"ApiKeys(keys={len(self._digests)}, secret={self._secret is not None})"

    def account(self, key: str) -> str | None:
        """The account a raw API key belongs to, or ``None``."""
        if not key:
            return None
        found = self._digests.get(_digest(key))
        if found is not None or self._secret is None:
            return found
        mac = hmac.new(self._secret, key.encode("utf-8", "surrogateescape"), hashlib.sha256)
        return KeyAccount("key:" + mac.hexdigest()[:16])

    def __call__(self, request: Mapping[str, Any]) -> str | None:
        """The account of an ASGI scope or a WSGI environ, or ``None``."""
        if "headers" in request and "type" in request:
            for name, raw in request["headers"]:
                if name in self._asgi:
                    key = _bearer(name, raw.decode("latin-1"))
                    if key:
                        return self.account(key)
            return None
        for wsgi_name in self._wsgi:
            value = request.get(wsgi_name)
            if value:
                key = _bearer(b"authorization" if wsgi_name == "HTTP_AUTHORIZATION" else b"", value)
                if key:
                    return self.account(key)
        return None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def _bearer(name: bytes, value: str) -> str:
    value = value.strip()
    if name == b"authorization":
        scheme, _, token = value.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""
    return value


def caller_of(result: object) -> CallerContext | str | None:
    """Normalise what a resolver returned: an account name, a caller, or ``None``.

    Raises:
        TypeError: the resolver returned something else.
    """
    if type(result) is str or isinstance(result, str):
        return result or None
    if isinstance(result, CallerContext):
        return result if result.account else None
    if result is None:
        return None
    raise TypeError(
        f"identify must return a CallerContext, an account name or None, not {type(result)!r}"
    )


def check_door_options(unidentified: str, max_choices: int) -> None:
    """Validate the middlewares' ``unidentified`` and ``max_choices`` options.

    Raises:
        ConfigError: naming the bad option.
    """
    if unidentified not in ("allow", "reject"):
        raise ConfigError("unidentified", "must be 'allow' or 'reject'", unidentified)
    if type(max_choices) is not int or max_choices < 1:
        raise ConfigError("max_choices", "must be a positive integer", max_choices)


def check_total_headers(names: Collection[str]) -> tuple[TotalHeader, ...]:
    """Validate the ``total_headers`` option.

    Raises:
        ConfigError: an entry is not ``"cost"`` or ``"price"``.
    """
    out: list[TotalHeader] = []
    for name in names:
        if name not in ("cost", "price"):
            raise ConfigError("total_headers", "entries must be 'cost' or 'price'", name)
        out.append("cost" if name == "cost" else "price")
    return tuple(out)


def total_headers(totals: RequestTotals, which: Collection[TotalHeader]) -> list[tuple[str, str]]:
    """The ``x-metered-cost`` / ``x-metered-price`` headers for a request's totals."""
    out: list[tuple[str, str]] = []
    if "cost" in which:
        out.append((COST_HEADER, _plain(totals.cost)))
    if "price" in which:
        out.append((PRICE_HEADER, _plain(totals.price)))
    return out


def _plain(amount: Decimal) -> str:
    # fixed-point: "0.00012", never "1.2E-4"
    return format(amount.normalize(), "f") if amount else "0"


# -- gateway routes -------------------------------------------------------------------

_ROUTE_NAME = re.compile(r"([A-Z]+) (/\S*)")
_DEFAULT_MAX_BODY = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class GatewayRoute:
    """One HTTP route metered as an LLM call (a ``routes:`` entry named ``METHOD /path``).

    Attributes:
        name: the route name, e.g. ``"POST /v1/chat/completions"``.
        api: the wire format, from the path: ``chat``, ``responses`` or ``anthropic``.
        provider: the upstream provider, for telemetry.
        max_body_bytes: larger request bodies are refused with 413.
        pricing_route: the config route that prices it; ``None`` for the default rules
            (a route served without a ``routes:`` entry of its own).
    """

    name: str
    method: str
    path: str
    api: Api
    provider: str
    max_body_bytes: int
    pricing_route: str | None


def _api_of(path: str) -> Api:
    if path.endswith("/responses"):
        return "responses"
    if path.endswith("/messages"):
        return "anthropic"
    return "chat"


def gateway_routes(
    meter: Meter, names: Iterable[str] | None = None
) -> dict[tuple[str, str], GatewayRoute]:
    """The gateway routes of a meter, keyed by ``(method, path)``.

    Args:
        meter: its config's routes named ``METHOD /path`` are gateway routes; routes named
            otherwise price client calls and are skipped.
        names: route names to meter instead; a name absent from the config is priced by
            the default rules.

    Raises:
        ConfigError: an explicit name is not ``METHOD /path``.
    """
    configured = meter.config.routes
    chosen = list(names) if names is not None else list(configured)
    routes: dict[tuple[str, str], GatewayRoute] = {}
    for name in chosen:
        match = _ROUTE_NAME.fullmatch(name)
        if match is None:
            if names is None:
                continue
            raise ConfigError(f"routes[{name!r}]", "a gateway route is named 'METHOD /path'")
        method, path = match.groups()
        api = _api_of(path)
        config = configured.get(name)
        upstream = config.upstream if config is not None else None
        if upstream and "://" not in upstream and upstream != "fake":
            provider = upstream
        else:
            provider = "anthropic" if api == "anthropic" else "openai"
        limit = config.max_body_bytes if config is not None else _DEFAULT_MAX_BODY
        routes[(method, path)] = GatewayRoute(
            name, method, path, api, provider, limit, name if config is not None else None
        )
    return routes


def public_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Request headers for pricing rules and hooks: lower-cased, credentials removed."""
    out: dict[str, str] = {}
    for name, value in items:
        name = name.lower()
        if name not in CREDENTIAL_HEADERS:
            out[name] = value
    return out


def check_content_type(value: str | None) -> None:
    """Gateway routes take JSON only.

    Raises:
        UnsupportedMediaType: the body is declared as something else (or not declared).
    """
    media = (value or "").partition(";")[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise UnsupportedMediaType(
            f"the request body must be JSON (content-type: application/json), got "
            f"{media or 'no content-type'}"
        )


def parse_request(raw: bytes, *, max_choices: int = 1) -> dict[str, Any]:
    """Parse and check a gateway request body before it reaches the engine.

    The engine checks the rest (``stream``, output limits) as it does for every door.

    Raises:
        InvalidRequest: not a JSON object, nested too deep, no string model, a
            ``stream_options`` that is not an object, or ``n`` above ``max_choices``
            (``param`` names the field).
    """
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON") from None
    except RecursionError:
        raise InvalidRequest(_TOO_DEEP) from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    # a body that barely decoded would raise RecursionError when counted or re-encoded;
    # fewer brackets than the limit cannot nest that deep (the common case: no walk)
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _nests_deeper(body, MAX_JSON_DEPTH):
        raise InvalidRequest(_TOO_DEEP)
    model = body.get("model")
    if model is None:
        raise InvalidRequest("'model' is required", param="model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' must be a non-empty string", param="model")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object", param="stream_options")
    n = body.get("n")
    if n is not None and (type(n) is not int or not 1 <= n <= max_choices):
        raise InvalidRequest(
            f"'n' must be an integer from 1 to {max_choices} on this endpoint", param="n"
        )
    return body


def _nests_deeper(value: dict[str, Any] | list[Any], limit: int) -> bool:
    """Whether decoded JSON nests arrays and objects more than ``limit`` levels deep."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if type(child) in (dict, list))
    return False


def prepare_stream(body: dict[str, Any], api: Api) -> bool:
    """Ask a chat stream for its usage chunk; ``True`` when the client did not ask for it.

    The client then must not see that extra chunk (strip it, as the client proxies do):
    its stream stays exactly what the upstream would have sent it.
    """
    if api != "chat" or body.get("stream") is not True:
        return False
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False
    body["stream_options"] = {**(options or {}), "include_usage": True}
    return True


def upstream_bytes(raw: bytes, sent: Mapping[str, Any], fitted: Mapping[str, Any]) -> bytes:
    """The request bytes to forward upstream: the client's own when metering changed
    nothing in the body (no re-encoding, which costs most for the longest histories),
    else the fitted body as JSON.

    ``fitted`` is the engine's copy of ``sent`` (``call.body``): whatever fitting or
    :func:`prepare_stream` changed (a clamped or filled-in limit, a trimmed history,
    ``stream_options``) is a different object under its key, or a different key set.
    """
    if fitted.keys() == sent.keys() and all(fitted[key] is value for key, value in sent.items()):
        return raw
    return json.dumps(fitted, separators=(",", ":")).encode()


def error_parts(exc: MeteredError) -> tuple[int, list[tuple[str, str]], bytes]:
    """``(status, headers, body)`` of the JSON error answering a refused request."""
    status, data = http_error(exc)
    body = json.dumps(data, separators=(",", ":")).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers.append(("retry-after", str(retry_after)))
    return status, headers, body


class GatewayResponse:
    """The I/O-free core of a gateway response on its way back to the client.

    The ASGI and WSGI shells report the response start and each body chunk; this decides
    what to forward and when, and computes the ``call.finish`` arguments:

    * error statuses pass through as they come (the call failed: nothing is charged);
    * event streams pass through chunk by chunk while :class:`StreamMeter` reads them;
    * JSON bodies are held (up to :data:`MAX_JSON_RESPONSE`) with the response start,
      so the call settles first and the start can carry the totals headers.

    Args:
        call: the call begun for the request.
        api: the route's wire format.
        strip_usage: remove the usage chunk the gateway asked for (:func:`prepare_stream`).
    """

    __slots__ = ("_buffer", "_size", "_strip", "api", "call", "held", "status", "stream")

    def __init__(self, call: Call, api: Api, *, strip_usage: bool) -> None:
        self.call = call
        self.api = api
        self._strip = strip_usage
        self.status: int | None = None
        self.stream: StreamMeter | None = None
        self.held = False
        self._buffer: list[bytes] | None = None
        self._size = 0

    def start(self, status: int, content_type: str) -> bool:
        """The response starts; ``True`` when its start goes to the client now.

        Otherwise the shell holds it until :attr:`held` turns false (the body was too
        large to hold) or :meth:`end`.
        """
        self.status = status
        if status >= 400:
            return True
        if content_type.partition(";")[0].strip().lower() == "text/event-stream":
            self.stream = StreamMeter(
                self.api, model=self.call.model or "", strip_usage=self._strip
            )
            return True
        self._buffer = []
        self.held = True
        return False

    def body(self, chunk: bytes) -> bytes:
        """A body chunk; returns the bytes to forward now."""
        stream = self.stream
        if stream is not None:
            if chunk and not stream.started:
                self.call.first_chunk()
            return stream.feed(chunk)
        buffer = self._buffer
        if buffer is None:
            return chunk
        buffer.append(chunk)
        self._size += len(chunk)
        if self._size <= MAX_JSON_RESPONSE:
            return b""
        # too big to hold: forward it all from now on, settle without a usage
        self._buffer = None
        self.held = False
        return b"".join(buffer)

    def end(self, chunk: bytes = b"") -> tuple[bytes, dict[str, Any]]:
        """The last chunk; returns the bytes to forward and the ``call.finish`` arguments."""
        out = self.body(chunk)
        stream = self.stream
        if stream is not None:
            out += stream.close()
            outcome = stream.outcome
        elif self._buffer is not None:
            out = b"".join(self._buffer)
            self._buffer = None
            self.held = False
            outcome = json_outcome(out, self.api)
        else:
            outcome = Outcome()
        return out, finish_args(self.call, stream, outcome, status=self.status)

    def cut(self, error: BaseException | None, *, client_left: bool = False) -> dict[str, Any]:
        """``call.finish`` arguments for a response that did not end.

        Args:
            error: what the app raised, if it raised.
            client_left: the client went away (the request was cancelled or closed).
        """
        stream = self.stream
        if stream is not None and stream.started:
            # settle what was delivered (estimated), unless the upstream failed
            args = finish_args(self.call, stream, stream.outcome, status=self.status)
            if error is not None and not client_left:
                args["error"] = error
            return args
        if error is None:
            error = UpstreamError("the response ended before its body was complete")
        return {"status": self.status, "error": error}


def bindings(caller: CallerContext | str | None) -> dict[str, Any]:
    """``metered.context.bind`` keywords for a caller (unset items stay unbound)."""
    if caller is None:
        return {}
    if isinstance(caller, str):
        return {"account": caller}
    out: dict[str, Any] = {"account": caller.account}
    if caller.tier is not None:
        out["tier"] = caller.tier
    if caller.feature is not None:
        out["feature"] = caller.feature
    if caller.metadata:
        out["metadata"] = caller.metadata
    if caller.urgent:
        out["urgent"] = True
    return out


def annotate_request_span(totals: RequestTotals) -> None:
    """Put a request's totals on the current (server) span, if one is recording."""
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(
            {
                ATTR.REQUEST_COST: float(totals.cost),
                ATTR.REQUEST_PRICE: float(totals.price),
                ATTR.REQUEST_CALLS: totals.calls,
            }
        )
