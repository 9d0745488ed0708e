"""Who is calling: API keys and resolvers that name the account a request is charged to.

Raw keys never reach spans, records or logs: configured keys are kept as SHA-256 digests,
and an unknown key becomes an HMAC-named account only when a secret is set.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from metered.context import CallerContext
from metered.errors import ConfigError

__all__ = [
    "ApiKeys",
    "AsyncIdentify",
    "Identify",
    "Identity",
    "KeyAccount",
    "bindings",
    "caller_of",
    "is_unidentified",
]


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

    Keys are read from ``Authorization: Bearer <key>``, ``x-api-key: <key>`` or
    ``x-goog-api-key: <key>`` (what google-genai sends; see ``headers``). Only SHA-256
    digests of the configured keys are stored. A key that is not configured is
    unidentified, unless a ``secret`` is given: it then becomes the account
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
        headers: Sequence[str] = ("authorization", "x-api-key", "x-goog-api-key"),
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
