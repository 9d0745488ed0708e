"""Gateway routes and the checks a metered request passes before the engine sees it:
content type, size, JSON depth, the stream options the gateway adds, the bytes it forwards.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from metered.errors import (
    ConfigError,
    DuplicateKey,
    InvalidRequest,
    UnsupportedMediaType,
)
from metered.headers import CREDENTIAL_HEADERS, public_headers

if TYPE_CHECKING:
    from metered.engine.meter import Api, Meter

__all__ = [
    "CREDENTIAL_HEADERS",
    "MAX_JSON_DEPTH",
    "URL_KEYS",
    "GatewayRoute",
    "RouteTable",
    "check_content_type",
    "check_door_options",
    "forwarded_bytes",
    "gateway_routes",
    "gemini_target",
    "parse_request",
    "prepare_stream",
    "public_headers",
    "route_pattern",
    "upstream_bytes",
    "url_request",
]


V = TypeVar("V")

#: Headers that carry credentials: never passed to pricing rules, hooks, spans or logs.
#: Deepest nesting of arrays and objects in a gateway request: far beyond real requests
#: (tool schemas nest a few levels), far below the interpreter's recursion limit that
#: counting, pricing and forwarding the body rely on.
MAX_JSON_DEPTH: Final = 100
_TOO_DEEP = f"the request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"


def check_door_options(unidentified: str, max_choices: int) -> None:
    """Validate the middlewares' ``unidentified`` and ``max_choices`` options.

    Raises:
        ConfigError: naming the bad option.
    """
    if unidentified not in ("allow", "reject"):
        raise ConfigError("unidentified", "must be 'allow' or 'reject'", unidentified)
    if type(max_choices) is not int or max_choices < 1:
        raise ConfigError("max_choices", "must be a positive integer", max_choices)


# -- gateway routes -------------------------------------------------------------------

_ROUTE_NAME = re.compile(r"([A-Z]+) (/\S*)")
_PROVIDERS: dict[str, str] = {"anthropic": "anthropic", "gemini": "google"}
_DEFAULT_MAX_BODY = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class GatewayRoute:
    """One HTTP route metered as an LLM call (a ``routes:`` entry named ``METHOD /path``).

    Attributes:
        name: the route name, e.g. ``"POST /v1/chat/completions"``; a Gemini route names
            the model's place in its path: ``"POST /v1beta/models/{model}:generateContent"``.
        api: the wire format, from the path: ``chat``, ``responses``, ``anthropic`` or
            ``gemini`` (``:generateContent`` / ``:streamGenerateContent``).
        provider: the upstream provider, for telemetry.
        max_body_bytes: larger request bodies are refused with 413.
        pricing_route: the config route that prices it; ``None`` for the default rules
            (a route served without a ``routes:`` entry of its own).
        pattern: the paths of a route whose path names ``{model}`` (``None``: exactly
            ``path``).
    """

    name: str
    method: str
    path: str
    api: Api
    provider: str
    max_body_bytes: int
    pricing_route: str | None
    pattern: re.Pattern[str] | None = None

    def request(self, raw: bytes, path: str, *, max_choices: int = 1) -> dict[str, Any]:
        """The engine's body of a request to this route (see :func:`url_request`)."""
        if self.pattern is None:
            return parse_request(raw, max_choices=max_choices)
        target = gemini_target(path)
        assert target is not None  # the route's pattern matched it
        return url_request(raw, target)


#: A Gemini path names the model and whether the answer streams: ``{model}`` is the one
#: placeholder a route name may have.
_GEMINI_METHODS = "generateContent|streamGenerateContent"
_GEMINI_ACTION = re.compile(rf":({_GEMINI_METHODS})$")
# .../v1beta/models/gemini-2.5-flash:generateContent (and Vertex's publishers/... form)
_GEMINI_GENERATE = re.compile(rf"/models/(?P<model>[^/:]+):(?P<method>{_GEMINI_METHODS})$")
_MODEL = "{model}"
#: What a Gemini URL says and the engine reads from the body: never forwarded in it.
URL_KEYS = ("model", "stream")


def gemini_target(path: str) -> tuple[str, bool] | None:
    """The model a Gemini generate URL path names and whether it streams; ``None`` for
    any other path. Every door reads a Gemini URL with this."""
    match = _GEMINI_GENERATE.search(path)
    if match is None:
        return None
    return match["model"], match["method"] == "streamGenerateContent"


def url_request(raw: bytes, target: tuple[str, bool]) -> dict[str, Any]:
    """The engine's body of a Gemini request: the URL's model (and whether it streams,
    ``target`` as :func:`gemini_target` reads them) added to the JSON body, which must
    name neither.

    Raises:
        InvalidRequest: as :func:`parse_request`, or a body naming ``stream``.
    """
    model, stream = target
    body = parse_request(raw, model=model)
    if "stream" in body:
        raise InvalidRequest("the URL says whether to stream: the body must not", param="stream")
    if stream:
        body["stream"] = True
    return body


class RouteTable(Generic[V]):
    """What serves each ``(method, path)``: an exact path first, else a path that names
    ``{model}`` (a Gemini route) and matches. The doors and the gateway's proxy all look
    their routes up here."""

    __slots__ = ("_exact", "_templated")

    def __init__(self, table: Mapping[tuple[str, str], V]) -> None:
        self._exact = dict(table)
        self._templated = tuple(
            (method, pattern, value)
            for (method, path), value in self._exact.items()
            if (pattern := route_pattern(path)) is not None
        )

    def __bool__(self) -> bool:
        return bool(self._exact)

    def find(self, method: str, path: str) -> tuple[V, bool] | None:
        """What serves ``method path`` and whether its path names the model; ``None``."""
        value = self._exact.get((method, path))
        if value is not None:
            return value, False
        for wanted, pattern, value in self._templated:
            if wanted == method and pattern.fullmatch(path):
                return value, True
        return None


def route_pattern(path: str) -> re.Pattern[str] | None:
    """The paths a route path with ``{model}`` matches (a model id: no ``/`` or ``:``);
    ``None`` for a plain path."""
    if _MODEL not in path:
        return None
    before, _, after = path.partition(_MODEL)
    return re.compile(re.escape(before) + r"(?P<model>[^/:]+)" + re.escape(after))


def _api_of(path: str) -> Api:
    if _GEMINI_ACTION.search(path):
        return "gemini"
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
        pattern = route_pattern(path)
        if (pattern is None) != (api != "gemini") or path.count(_MODEL) > 1:
            raise ConfigError(
                f"routes[{name!r}]",
                "a Gemini route names the model once in its path, as '{model}', and only "
                "a Gemini route (':generateContent', ':streamGenerateContent') does",
            )
        config = configured.get(name)
        upstream = config.upstream if config is not None else None
        if upstream and "://" not in upstream and upstream != "fake":
            provider = upstream
        else:
            provider = _PROVIDERS.get(api, "openai")
        limit = config.max_body_bytes if config is not None else _DEFAULT_MAX_BODY
        routes[(method, path)] = GatewayRoute(
            name, method, path, api, provider, limit, name if config is not None else None, pattern
        )
    return routes


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


def parse_request(raw: bytes, *, max_choices: int = 1, model: str | None = None) -> dict[str, Any]:
    """Parse and check a gateway request body before it reaches the engine.

    ``model``: the model a request names outside its body (Gemini's URL); the body must
    then name none (two names could disagree) and gets it for the engine.

    The engine checks the rest (``stream``, output limits) as it does for every door.

    One reading of the body, the one the upstream will make: UTF-8 JSON only (no BOM,
    UTF-16 or ``NaN``/``Infinity``), and no key twice in any object — parsers disagree on
    which duplicate wins, so ``{"model": "denied", "model": "allowed"}`` could be checked
    as one model and served as the other.

    Raises:
        InvalidRequest: not UTF-8 JSON, a duplicate key (``duplicate_key``), not a JSON
            object, nested too deep, no string model, a ``stream_options`` that is not an
            object, or ``n`` above ``max_choices`` (``param`` names the field).
    """
    try:
        body = json.loads(raw.decode(), object_pairs_hook=_unique, parse_constant=_no_constant)
    except DuplicateKey as exc:
        raise exc from None  # not the parser's frames
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid UTF-8 JSON") from None
    except RecursionError:
        raise InvalidRequest(_TOO_DEEP) from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    # a body that barely decoded would raise RecursionError when counted or re-encoded;
    # fewer brackets than the limit cannot nest that deep (the common case: no walk)
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _nests_deeper(body, MAX_JSON_DEPTH):
        raise InvalidRequest(_TOO_DEEP)
    if model is not None:
        if "model" in body:
            raise InvalidRequest("the URL names the model: the body must not", param="model")
        body["model"] = model
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


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # the rare case: find the key to name it
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


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


def forwarded_bytes(
    raw: bytes, sent: Mapping[str, Any], fitted: Mapping[str, Any], *, url: bool = False
) -> bytes:
    """:func:`upstream_bytes` of a request; ``url``: a Gemini request, whose model and
    stream flag the URL carries (:data:`URL_KEYS` go in neither body)."""
    if url:
        sent = {k: v for k, v in sent.items() if k not in URL_KEYS}
        fitted = {k: v for k, v in fitted.items() if k not in URL_KEYS}
    return upstream_bytes(raw, sent, fitted)


def upstream_bytes(raw: bytes, sent: Mapping[str, Any], fitted: Mapping[str, Any]) -> bytes:
    """The request bytes to forward upstream: the client's own when metering changed
    nothing in the body (no re-encoding, which costs most for the longest histories),
    the client's own with the new members appended when metering only added some (a
    budgeted call's output limit, ``stream_options``), else the fitted body as JSON.

    ``fitted`` is the engine's copy of ``sent`` (``call.body``): whatever fitting or
    :func:`prepare_stream` changed (a clamped or filled-in limit, a trimmed history,
    ``stream_options``) is a different object under its key, or a different key set.
    """
    if not all(fitted.get(key, _MISSING) is value for key, value in sent.items()):
        return json.dumps(fitted, separators=(",", ":")).encode()
    if len(fitted) == len(sent):
        return raw
    # only added: the parser refused duplicate names, so none of these is in raw
    added = json.dumps({k: v for k, v in fitted.items() if k not in sent}, separators=(",", ":"))
    end = raw.rstrip().rfind(b"}")
    if end < 0:  # pragma: no cover - raw parsed as a JSON object
        return json.dumps(fitted, separators=(",", ":")).encode()
    joint = b"," if sent else b""
    return b"".join((raw[:end], joint, added[1:].encode(), raw[end + 1 :]))


_MISSING = object()
