"""The one place that maps a :class:`~metered.errors.MeteredError` to HTTP: a status and
OpenAI's error shape (``{"error": {"message", "type", "param", "code"}}``) plus metered's
details, for every door.

::

    MeteredError               500  metered_error
    ├── PolicyDenied           400  invalid_request_error   (UnknownModel, ContextOverflow)
    ├── BudgetExceeded         402  insufficient_quota      (+ retry-after when known)
    ├── RequestTooLarge        413  invalid_request_error
    ├── InvalidRequest         400  invalid_request_error
    │   ├── Unauthorized       401
    │   ├── NotFound           404
    │   └── UnsupportedMediaType  415
    ├── UpstreamError          502  upstream_error
    │   └── UpstreamTimeout    504
    └── LedgerError            503  server_error

``code`` is the error's own (``budget_exceeded``, ``invalid_api_key``, ...). A subclass not
listed answers as its nearest listed base.
"""

from __future__ import annotations

import json
from typing import Any, Final

from metered.errors import (
    BudgetExceeded,
    InvalidRequest,
    LedgerError,
    MeteredError,
    NotFound,
    PolicyDenied,
    RequestTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    UpstreamError,
    UpstreamTimeout,
)

__all__ = ["error_parts", "http_error", "http_status"]

# (status, OpenAI error type) per class; subclasses inherit through the MRO walk below
_ANSWERS: Final[dict[type[MeteredError], tuple[int, str]]] = {
    MeteredError: (500, "metered_error"),
    PolicyDenied: (400, "invalid_request_error"),
    BudgetExceeded: (402, "insufficient_quota"),
    RequestTooLarge: (413, "invalid_request_error"),
    InvalidRequest: (400, "invalid_request_error"),
    Unauthorized: (401, "invalid_request_error"),
    NotFound: (404, "invalid_request_error"),
    UnsupportedMediaType: (415, "invalid_request_error"),
    UpstreamError: (502, "upstream_error"),
    UpstreamTimeout: (504, "upstream_error"),
    LedgerError: (503, "server_error"),
}


def _answer(exc: MeteredError) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        found = _ANSWERS.get(cls)
        if found is not None:
            return found
    return _ANSWERS[MeteredError]  # pragma: no cover - every MeteredError has it in its MRO


def http_status(exc: MeteredError) -> int:
    """The HTTP status a door answers ``exc`` with (e.g. 402 for
    :class:`~metered.errors.BudgetExceeded`)."""
    return _answer(exc)[0]


def http_error(exc: MeteredError) -> tuple[int, dict[str, Any]]:
    """Map an error to ``(status, body)``: OpenAI's error shape plus metered's details.

    The body carries the error's message, ``param`` and ``code``, and under ``metered``
    the structured fields of :meth:`~metered.errors.MeteredError.details` (never secrets).
    """
    status, error_type = _answer(exc)
    body: dict[str, Any] = {
        "error": {
            "message": exc.message,
            "type": error_type,
            "param": getattr(exc, "param", None),
            "code": exc.code,
        }
    }
    details = exc.details()
    if details:
        body["error"]["metered"] = details
    return status, body


def error_parts(exc: MeteredError) -> tuple[int, list[tuple[str, str]], bytes]:
    """``(status, headers, body)`` of the JSON error answering a refused request."""
    status, data = http_error(exc)
    body = json.dumps(data, separators=(",", ":")).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers.append(("retry-after", str(retry_after)))
    return status, headers, body
