"""The one place that maps a :class:`~metered.errors.MeteredError` to HTTP: a status and
OpenAI's error shape (``{"error": {"message", "type", "param", "code"}}``) plus metered's
details, for every door."""

from __future__ import annotations

import json
from typing import Any

from metered.errors import MeteredError

__all__ = ["error_parts", "http_error"]


def http_error(exc: MeteredError) -> tuple[int, dict[str, Any]]:
    """Map an error to ``(status, body)`` with OpenAI's error shape plus metered details."""
    body: dict[str, Any] = {
        "error": {
            "message": exc.message,
            "type": exc.error_type,
            "param": getattr(exc, "param", None),
            "code": exc.code,
        }
    }
    details = exc.details()
    if details:
        body["error"]["metered"] = details
    return exc.status_code, body


def error_parts(exc: MeteredError) -> tuple[int, list[tuple[str, str]], bytes]:
    """``(status, headers, body)`` of the JSON error answering a refused request."""
    status, data = http_error(exc)
    body = json.dumps(data, separators=(",", ":")).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers.append(("retry-after", str(retry_after)))
    return status, headers, body
