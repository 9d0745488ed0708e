"""Tests for metered.http.errors: the one mapping of every error to an HTTP status and
OpenAI's error shape, as the doors answer it."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from metered.errors import (
    BudgetExceeded,
    ConfigError,
    ContextOverflow,
    InvalidRequest,
    LedgerError,
    MeteredError,
    NotFound,
    PolicyDenied,
    RequestTooLarge,
    Unauthorized,
    UnknownModel,
    UnsupportedMediaType,
    UpstreamError,
    UpstreamTimeout,
)
from metered.http.errors import error_parts, http_error


@pytest.mark.parametrize(
    ("error", "status", "type_", "code"),
    [
        (MeteredError("boom"), 500, "metered_error", "metered_error"),
        (ConfigError("k", "is bad"), 500, "metered_error", "config_error"),
        (PolicyDenied("no", model="gpt-4o"), 400, "invalid_request_error", "model_not_allowed"),
        (UnknownModel("m"), 400, "invalid_request_error", "unknown_model"),
        (
            ContextOverflow("m", needed=9000, limit=8000),
            400,
            "invalid_request_error",
            "context_length_exceeded",
        ),
        (
            BudgetExceeded("a", limit=Decimal(1), spent=Decimal(1), required=Decimal("0.1")),
            402,
            "insufficient_quota",
            "budget_exceeded",
        ),
        (RequestTooLarge(5_000_000, 4_194_304), 413, "invalid_request_error", "request_too_large"),
        (
            InvalidRequest("model is required", param="model"),
            400,
            "invalid_request_error",
            "invalid_request",
        ),
        (UpstreamError("bad gateway", status=502), 502, "upstream_error", "upstream_error"),
        (LedgerError("redis down"), 503, "server_error", "ledger_unavailable"),
    ],
)
def test_http_error_maps_status_and_openai_shape(
    error: MeteredError, status: int, type_: str, code: str
) -> None:
    """Each error maps to one status and an OpenAI-shaped error body."""
    got_status, body = http_error(error)
    assert got_status == status
    assert body["error"]["message"] == error.message
    assert (body["error"]["type"], body["error"]["code"]) == (type_, code)


def test_http_error_body_names_the_param() -> None:
    """InvalidRequest tells the client which parameter was wrong."""
    _, body = http_error(InvalidRequest("model must be a string", param="model"))
    assert body["error"]["param"] == "model"
    assert "metered" not in body["error"]


def test_http_error_adds_budget_details_as_strings() -> None:
    """Budget details are JSON-safe strings, never floats."""
    _, body = http_error(
        BudgetExceeded(
            "team-a",
            limit=Decimal(5),
            spent=Decimal("4.99"),
            required=Decimal("0.02"),
            window="day",
            retry_after=60,
        )
    )
    assert body["error"]["metered"] == {
        "account": "team-a",
        "limit_usd": "5",
        "spent_usd": "4.99",
        "required_usd": "0.02",
        "window": "day",
        "retry_after_seconds": 60,
    }


def test_http_error_adds_context_overflow_details() -> None:
    """ContextOverflow tells the client how many tokens were needed and allowed."""
    _, body = http_error(ContextOverflow("gpt-4o", needed=130_000, limit=128_000))
    assert body["error"]["metered"] == {
        "model": "gpt-4o",
        "reason": "context_overflow",
        "needed_tokens": 130_000,
        "limit_tokens": 128_000,
    }


def test_http_error_adds_request_size_details() -> None:
    """RequestTooLarge reports the size and the limit in bytes."""
    _, body = http_error(RequestTooLarge(5_000_000, 4_194_304))
    assert body["error"]["metered"] == {"size_bytes": 5_000_000, "limit_bytes": 4_194_304}


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (Unauthorized("this endpoint needs a valid API key"), 401, "invalid_api_key"),
        (NotFound("no route for GET /nope"), 404, "not_found"),
        (UnsupportedMediaType("the request body must be JSON"), 415, "unsupported_media_type"),
        (UpstreamTimeout("openai did not answer in time"), 504, "upstream_timeout"),
    ],
)
def test_errors_only_the_doors_raise_map_to_their_own_status(
    error: MeteredError, status: int, code: str
) -> None:
    """401, 404, 415 and 504 keep their parent's error type and carry their own code."""
    got_status, body = http_error(error)
    assert (got_status, body["error"]["code"]) == (status, code)
    parent = InvalidRequest("x") if status != 504 else UpstreamError("x")
    assert body["error"]["type"] == http_error(parent)[1]["error"]["type"]


def test_a_subclass_answers_as_its_nearest_mapped_base() -> None:
    """A user's own MeteredError subclass is answered like the class it extends."""

    class Quarantined(BudgetExceeded):
        code = "quarantined"

    error = Quarantined("a", limit=Decimal(1), spent=Decimal(1), required=Decimal(1))
    status, body = http_error(error)
    assert (status, body["error"]["type"], body["error"]["code"]) == (
        402,
        "insufficient_quota",
        "quarantined",
    )


def test_error_parts_is_a_json_answer_with_retry_after_when_known() -> None:
    """The refused request gets JSON of the stated length and the budget's retry-after."""
    error = BudgetExceeded(
        "a", limit=Decimal(1), spent=Decimal(1), required=Decimal(1), retry_after=60
    )
    status, headers, body = error_parts(error)
    assert status == 402
    assert dict(headers) == {
        "content-type": "application/json",
        "content-length": str(len(body)),
        "retry-after": "60",
    }
    assert json.loads(body) == http_error(error)[1]


def test_error_parts_has_no_retry_after_when_unknown() -> None:
    """Errors with no retry time send no retry-after header."""
    _, headers, _ = error_parts(InvalidRequest("bad", param="model"))
    assert "retry-after" not in dict(headers)
