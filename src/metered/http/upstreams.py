"""Where the gateway's routes go: an :class:`Upstream` (resolved from a name or URL by
:func:`resolve_upstream`), how it is named in error bodies and logs (scheme, host and port:
never credentials), and what of its answers reaches the caller: the headers of a
successful one (:func:`forwarded_headers`), the shape of an error (:func:`reduced_error`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from metered.errors import ConfigError
from metered.headers import CREDENTIAL_HEADERS

if TYPE_CHECKING:
    import httpx

__all__ = [
    "FORWARDED_HEADERS",
    "KNOWN",
    "Upstream",
    "forwarded_headers",
    "reduced_error",
    "resolve_upstream",
]

#: The upstreams known by name: base URL, the API key variable, the header it goes in.
KNOWN = {
    "openai": ("https://api.openai.com", "OPENAI_API_KEY", "authorization"),
    "anthropic": ("https://api.anthropic.com", "ANTHROPIC_API_KEY", "x-api-key"),
    "gemini": ("https://generativelanguage.googleapis.com", "GEMINI_API_KEY", "x-goog-api-key"),
}


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a route's requests go.

    Attributes:
        name: ``openai``, ``anthropic``, ``fake`` or the URL's scheme, host and port: what
            error bodies and logs show (never credentials).
        base_url: scheme, host and optional path prefix.
        headers: credentials added to every upstream request.
        transport: an in-process transport (the fake upstream), else ``None``.
    """

    name: str
    base_url: str
    headers: tuple[tuple[str, str], ...] = ()
    transport: httpx.AsyncBaseTransport | None = None

    def url(self, path: str, query: str) -> str:
        """The upstream URL of a request path; a ``/v1`` ending the base is not doubled."""
        prefix = urlsplit(self.base_url).path.rstrip("/")
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            path = path[len(prefix) :]
        return self.base_url.rstrip("/") + path + (f"?{query}" if query else "")


def resolve_upstream(name: str | None, *, environ: Mapping[str, str] | None = None) -> Upstream:
    """An :class:`Upstream` from a name or URL (see the module docstring).

    Raises:
        ConfigError: a known provider without its API key in the environment, or a
            name that is neither known nor an ``http(s)`` URL.
    """
    env = os.environ if environ is None else environ
    if name is None or name == "fake":
        from metered.testing import FakeUpstream

        return Upstream(
            "fake", "http://fake-upstream.test", (), FakeUpstream().async_httpx_transport()
        )
    known = KNOWN.get(name)
    if known is not None:
        base_url, key_var, header = known
        key = env.get(key_var)
        if not key:
            raise ConfigError(
                "upstream",
                f"needs {key_var} in the environment (or use --upstream fake to try the "
                "gateway offline)",
                name,
            )
        value = f"Bearer {key}" if header == "authorization" else key
        return Upstream(name, base_url, ((header, value),))
    if urlsplit(name).scheme not in ("http", "https"):
        raise ConfigError(
            "upstream", "must be openai, anthropic, gemini, fake or an http(s) URL", _shown(name)
        )
    key = env.get("METERED_UPSTREAM_API_KEY") or env.get("OPENAI_API_KEY")
    return Upstream(_shown(name), name, (("authorization", f"Bearer {key}"),) if key else ())


def _shown(url: str) -> str:
    """A URL as error bodies, logs and spans may show it: scheme, host and port only.

    User info (``https://user:password@host``), a path or a query may carry credentials.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:  # not a number: show no port rather than the raw text
        port = ""
    return f"{parts.scheme}://{host}{port}"


#: Response headers an upstream error keeps (rate-limit hints a client acts on).
_ERROR_HEADERS = ("retry-after", "x-request-id", "x-ratelimit-reset-requests")

#: The headers of an upstream's successful answer a caller gets (besides what the gateway
#: sets itself). Everything else stays: the operator's organisation and project ids
#: (``openai-organization``, ``anthropic-organization-id``), the rate limits of the
#: operator's account, the CDN's cookies, internal hops and regions (``via``,
#: ``x-envoy-*``, ``x-ms-region``). ``gateway.response_headers`` adds names.
FORWARDED_HEADERS = frozenset({"content-type", "cache-control", "x-request-id"})
# never passed, whatever the config adds: hop-by-hop headers, and the encoding the body
# loses on its way (the proxy decodes it)
_NEVER = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
     "upgrade", "content-encoding", "content-length"}
)  # fmt: skip


def forwarded_headers(
    items: Iterable[tuple[str, str]], extra: Collection[str] = ()
) -> list[tuple[bytes, bytes]]:
    """The headers of a successful upstream answer the caller gets: those of
    :data:`FORWARDED_HEADERS` and ``extra`` (lower-case names), and the length unless the
    body is decoded on its way (the length would no longer match)."""
    items = list(items)
    encoded = any(k.lower() == "content-encoding" for k, _ in items)
    kept = FORWARDED_HEADERS.union(name.lower() for name in extra) - _NEVER
    if not encoded:
        kept |= {"content-length"}
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in items if k.lower() in kept]


_MAX_ERROR_MESSAGE = 1000


def reduced_error(
    response: httpx.Response, raw: bytes, upstream: Upstream
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An upstream error answer as the caller gets it: the status, OpenAI's error shape
    (``message``, ``type``, ``param``, ``code``) and nothing else of the body.

    The message is kept only when it cannot be carrying the request's headers: short, and
    free of the gateway's upstream credentials and of any credential header's name. An
    upstream that echoes its request (a debugging proxy, a misconfigured server) would
    otherwise hand the gateway's own key to the caller.
    """
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    fields = error if isinstance(error, dict) else {}
    secrets = [value for _, value in upstream.headers if value]
    secrets += [value.split(" ", 1)[-1] for value in secrets]

    def safe(value: object, limit: int) -> str | None:
        if not isinstance(value, str) or not value or len(value) > limit:
            return None
        lowered = value.lower()
        if any(secret in value for secret in secrets):
            return None
        if any(name in lowered for name in CREDENTIAL_HEADERS) or "bearer " in lowered:
            return None
        return value

    status = response.status_code
    message = safe(fields.get("message"), _MAX_ERROR_MESSAGE)
    body = {
        "error": {
            "message": message or f"the upstream answered HTTP {status}",
            "type": safe(fields.get("type"), 100) or "upstream_error",
            "param": safe(fields.get("param"), 100),
            "code": safe(fields.get("code"), 100),
        }
    }
    out = json.dumps(body, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]
    for name in _ERROR_HEADERS:
        value = response.headers.get(name)
        if value is not None and safe(value, 200):
            headers.append((name.encode(), value.encode("latin-1")))
    return status, headers, out
