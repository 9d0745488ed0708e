"""Request headers as metered passes them on: credentials never.

A call's headers reach route ``match`` rules, ``on_request``/``on_response`` hooks and
``PriceRequest`` (``call.headers``) from every door: the HTTP doors' request headers and
the SDK door's ``extra_headers``. :func:`public_headers` is the one filter they all go
through (the engine applies it), so an API key given as a header is never visible there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

__all__ = ["CREDENTIAL_HEADERS", "public_headers"]

#: Headers that carry credentials: never forwarded by the gateway, never shown to hooks
#: (``x-api-key``: Anthropic; ``api-key``: Azure OpenAI; ``x-goog-api-key``: Gemini).
CREDENTIAL_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie"}
)
_EMPTY: Mapping[str, str] = {}


def public_headers(
    items: Iterable[tuple[str, str]] | Mapping[str, str] | None,
) -> Mapping[str, str]:
    """Headers for pricing rules and hooks: names lower-cased, credentials removed."""
    if not items:
        return _EMPTY
    pairs = items.items() if isinstance(items, Mapping) else items
    out: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        if name not in CREDENTIAL_HEADERS:
            out[name] = value
    return out
