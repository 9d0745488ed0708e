"""What the fake upstream's APIs share on the wire: JSON bodies and server-sent event
framing, each provider's error bodies and its ``GET /v1/models`` list.

Each API's own answers (its JSON body, its stream events) live beside its request
handling: :mod:`metered.testing.openai_chat`, :mod:`metered.testing.openai_responses`,
:mod:`metered.testing.anthropic` and :mod:`metered.testing.gemini`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from metered.testing._exchange import _Fault, _Frames, _Provider, _Reply


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _sse(data: Any, event: str | None = None) -> bytes:
    head = b"" if event is None else f"event: {event}\n".encode()
    return head + b"data: " + _dumps(data) + b"\n\n"


def _json_reply(status: int, data: Any) -> _Reply:
    body = _dumps(data)
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    return _Reply(status, headers, body=body)


def _sse_reply(events: _Frames, error_event: Callable[[_Fault, int], bytes]) -> _Reply:
    headers = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]
    return _Reply(200, headers, events=events, error_event=error_event)


_OPENAI_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", None, "You are not allowed to access this resource."),
    404: ("invalid_request_error", None, "Not found."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request."),
}
_ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Rate limited. Please try again later."),
    500: ("api_error", "Internal server error."),
    529: ("overloaded_error", "Overloaded"),
}


def _openai_error(status: int, message: str | None, param: str | None = None) -> dict[str, Any]:
    kind, code, default = (
        _OPENAI_ERRORS.get(status) or _OPENAI_ERRORS[500 if status >= 500 else 400]
    )
    if status == 404 and param == "model":
        code = "model_not_found"
    return {"message": message or default, "type": kind, "param": param, "code": code}


def _anthropic_error(status: int, message: str | None) -> dict[str, Any]:
    kind, default = (
        _ANTHROPIC_ERRORS.get(status) or _ANTHROPIC_ERRORS[500 if status >= 500 else 400]
    )
    return {"type": "error", "error": {"type": kind, "message": message or default}}


# Google's status names (google.rpc.Code) by HTTP status, and a typical message
_GOOGLE_ERRORS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "API key not valid. Please pass a valid API key."),
    403: ("PERMISSION_DENIED", "The caller does not have permission."),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    500: ("INTERNAL", "An internal error has occurred."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline exceeded."),
}


def _google_error(status: int, message: str | None) -> dict[str, Any]:
    name, default = _GOOGLE_ERRORS.get(status) or _GOOGLE_ERRORS[500 if status >= 500 else 400]
    return {"error": {"code": status, "message": message or default, "status": name}}


def _error_reply(
    provider: _Provider,
    status: int,
    message: str | None,
    *,
    body: Any = None,
    param: str | None = None,
) -> _Reply:
    if body is None:
        if provider == "anthropic":
            body = _anthropic_error(status, message)
        elif provider == "google":
            body = _google_error(status, message)
        else:
            body = {"error": _openai_error(status, message, param)}
    return _json_reply(status, body)


def _model_list(provider: _Provider, models: tuple[str, ...]) -> dict[str, Any]:
    data = [_model_entry(provider, model) for model in models]
    if provider == "anthropic":
        return {
            "data": data,
            "has_more": False,
            "first_id": models[0] if models else None,
            "last_id": models[-1] if models else None,
        }
    return {"object": "list", "data": data}


def _model_entry(provider: _Provider, model: str) -> dict[str, Any]:
    if provider == "anthropic":
        return {
            "type": "model",
            "id": model,
            "display_name": model,
            "created_at": "2025-01-01T00:00:00Z",
        }
    return {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "system"}
