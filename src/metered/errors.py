"""The one exception tree of metered.

::

    MeteredError
    ├── ConfigError            bad configuration, raised at load time (names the key)
    ├── PolicyDenied           the call is not allowed (HTTP 400)
    │   ├── UnknownModel       no price for the model and the route rejects unknown models
    │   └── ContextOverflow    the prompt cannot be made to fit the context window
    ├── BudgetExceeded         the account cannot pay for the call (HTTP 402)
    ├── RequestTooLarge        the request body is over the configured size (HTTP 413)
    ├── InvalidRequest         the request is malformed (HTTP 400)
    │   ├── UnknownTier        the caller's tier is not configured (HTTP 400)
    │   ├── DuplicateKey       a JSON request body names a key twice (HTTP 400)
    │   ├── Unauthorized       no known caller where the door requires one (HTTP 401)
    │   ├── NotFound           no route serves the method and path (HTTP 404)
    │   └── UnsupportedMediaType  a gateway route got a body that is not JSON (HTTP 415)
    ├── UpstreamError          the upstream call failed (HTTP 502)
    │   └── UpstreamTimeout    the upstream did not answer in time (HTTP 504)
    └── LedgerError            the budget store failed (HTTP 503)

Every exception carries data fields (never only a message) and maps to an HTTP status
and an OpenAI-shaped JSON error body in one place: :func:`metered.http.errors.http_error`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

__all__ = [
    "BudgetExceeded",
    "ConfigError",
    "ContextOverflow",
    "DuplicateKey",
    "InvalidRequest",
    "LedgerError",
    "MeteredError",
    "NotFound",
    "PolicyDenied",
    "RequestTooLarge",
    "Unauthorized",
    "UnknownModel",
    "UnknownTier",
    "UnsupportedMediaType",
    "UpstreamError",
    "UpstreamTimeout",
]


class MeteredError(Exception):
    """Root of every error metered raises on purpose."""

    status_code: int = 500
    error_type: str = "metered_error"
    code: str = "metered_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def details(self) -> dict[str, Any]:
        """Structured fields added to the JSON error body (never secrets)."""
        return {}


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


class ConfigError(MeteredError, ValueError):
    """The configuration is invalid.

    ``key`` is the dotted path of the bad setting, ``value`` what was written there.
    The message reads ``routes."POST /v1/chat".models.gpt-4o: '5 dollars' is not a price``.
    """

    code = "config_error"

    def __init__(self, key: str, problem: str, value: object = _UNSET) -> None:
        self.key = key
        self.value = None if value is _UNSET else value
        self.problem = problem
        shown = "" if value is _UNSET else f"{value!r} "
        where = f"{key}: " if key else ""
        super().__init__(f"{where}{shown}{problem}")

    def __repr__(self) -> str:
        return f"ConfigError(key={self.key!r}, value={self.value!r}, problem={self.problem!r})"


class PolicyDenied(MeteredError):
    """The call is refused by policy before anything is sent upstream or charged."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "model_not_allowed"

    def __init__(self, message: str, *, model: str | None = None, reason: str = "denied") -> None:
        super().__init__(message)
        self.model = model
        self.reason = reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, reason={self.reason!r})"

    def details(self) -> dict[str, Any]:
        return {"model": self.model, "reason": self.reason}


class UnknownModel(PolicyDenied):
    """No price is known for the model and the route's policy is ``reject``."""

    code = "unknown_model"

    def __init__(self, model: str, *, route: str | None = None) -> None:
        where = f" on route {route!r}" if route else ""
        super().__init__(
            f"model {model!r} has no price{where}; add it to the route's models or the catalog "
            "overrides, or set unknown_model: fallback with a fallback price",
            model=model,
            reason="unknown_model",
        )
        self.route = route


class ContextOverflow(PolicyDenied):
    """The prompt cannot fit the model's context window even after trimming."""

    code = "context_length_exceeded"

    def __init__(self, model: str, *, needed: int, limit: int) -> None:
        super().__init__(
            f"the last user message needs {needed} tokens but only {limit} fit the context "
            f"window of {model!r} after reserving output",
            model=model,
            reason="context_overflow",
        )
        self.needed = needed
        self.limit = limit

    def details(self) -> dict[str, Any]:
        return {**super().details(), "needed_tokens": self.needed, "limit_tokens": self.limit}


class BudgetExceeded(MeteredError):
    """The account's budget cannot cover the call's maximum price."""

    status_code = 402
    error_type = "insufficient_quota"
    code = "budget_exceeded"

    def __init__(
        self,
        account: str,
        *,
        limit: Decimal,
        spent: Decimal,
        required: Decimal,
        window: str = "total",
        retry_after: int | None = None,
    ) -> None:
        super().__init__(
            f"account {account!r} cannot pay ${required} for this call: "
            f"${spent} of its ${limit} {window} budget is used"
        )
        self.account = account
        self.limit = limit
        self.spent = spent
        self.required = required
        self.window = window
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"BudgetExceeded(account={self.account!r}, limit={self.limit}, spent={self.spent}, "
            f"required={self.required}, window={self.window!r})"
        )

    def details(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "limit_usd": str(self.limit),
            "spent_usd": str(self.spent),
            "required_usd": str(self.required),
            "window": self.window,
            "retry_after_seconds": self.retry_after,
        }


class RequestTooLarge(MeteredError):
    """The request body is larger than the configured maximum."""

    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"request body of {size} bytes is over the {limit}-byte limit")
        self.size = size
        self.limit = limit

    def details(self) -> dict[str, Any]:
        return {"size_bytes": self.size, "limit_bytes": self.limit}


class InvalidRequest(MeteredError):
    """The request cannot be metered as sent (malformed body, missing model, ...)."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UnknownTier(InvalidRequest):
    """The caller names a tier the config does not define (HTTP 400, ``unknown_tier``).

    Refused rather than mapped to some other tier: a typo, or a stale tier from an
    identity provider, must neither unlock more nor silently give a paying caller less.
    """

    code = "unknown_tier"

    def __init__(self, tier: str, known: tuple[str, ...]) -> None:
        super().__init__(
            f"tier {tier!r} is not configured (tiers: {', '.join(known)})", param="tier"
        )
        self.tier = tier

    def details(self) -> dict[str, Any]:
        return {"tier": self.tier}


class DuplicateKey(InvalidRequest):
    """A JSON request body names a key twice in one object (HTTP 400, ``duplicate_key``).

    Parsers disagree on which duplicate wins, so such a body could be checked as one
    request and served as another: the HTTP doors refuse it before any policy.
    """

    code = "duplicate_key"

    def __init__(self, key: str) -> None:
        super().__init__(f"the request body names {key!r} more than once", param=key)


class Unauthorized(InvalidRequest):
    """The request names no known caller and the door requires one (HTTP 401)."""

    status_code = 401
    code = "invalid_api_key"


class NotFound(InvalidRequest):
    """No route serves the request's method and path (HTTP 404)."""

    status_code = 404
    code = "not_found"


class UnsupportedMediaType(InvalidRequest):
    """A gateway route received a body that is not JSON (HTTP 415)."""

    status_code = 415
    code = "unsupported_media_type"


class UpstreamError(MeteredError):
    """The upstream call failed; carries the upstream status when there was one."""

    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time (HTTP 504)."""

    status_code = 504
    code = "upstream_timeout"


class LedgerError(MeteredError):
    """The budget store failed (unreachable, script error, ...)."""

    status_code = 503
    error_type = "server_error"
    code = "ledger_unavailable"
