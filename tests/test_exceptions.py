"""Tests for metered.exceptions: the tree, the data each error carries, the HTTP mapping."""

from __future__ import annotations

from decimal import Decimal

import pytest

import metered.errors as exceptions_module
from metered.errors import (
    BudgetExceeded,
    ConfigError,
    ContextOverflow,
    InvalidRequest,
    LedgerError,
    MeteredError,
    PolicyDenied,
    RequestTooLarge,
    UnknownModel,
    UpstreamError,
)
from metered.http.errors import http_error


@pytest.mark.parametrize(
    ("error", "parent"),
    [
        (ConfigError, MeteredError),
        (ConfigError, ValueError),
        (PolicyDenied, MeteredError),
        (UnknownModel, PolicyDenied),
        (ContextOverflow, PolicyDenied),
        (BudgetExceeded, MeteredError),
        (RequestTooLarge, MeteredError),
        (InvalidRequest, MeteredError),
        (UpstreamError, MeteredError),
        (LedgerError, MeteredError),
    ],
)
def test_tree_is_as_drawn(error: type[Exception], parent: type[Exception]) -> None:
    """`except PolicyDenied` also catches UnknownModel, and so on down the tree."""
    assert issubclass(error, parent)


def test_all_lists_every_error_sorted() -> None:
    """__all__ is sorted and names every public exception class."""
    names = exceptions_module.__all__
    assert list(names) == sorted(names)
    public = {
        name
        for name, value in vars(exceptions_module).items()
        if isinstance(value, type) and issubclass(value, MeteredError)
    }
    assert public <= set(names)


def test_config_error_names_key_and_value() -> None:
    """The message reads `key: 'value' problem`, and the parts stay on the error."""
    error = ConfigError('routes."POST /v1/chat".models.gpt-4o', "is not a price", "5 dollars")
    assert str(error) == "routes.\"POST /v1/chat\".models.gpt-4o: '5 dollars' is not a price"
    assert (error.key, error.value, error.problem) == (
        'routes."POST /v1/chat".models.gpt-4o',
        "5 dollars",
        "is not a price",
    )


def test_config_error_without_value_or_key() -> None:
    """A value of None is still shown; no value and no key leave just the problem."""
    assert str(ConfigError("records", "sink 'jsonl' needs a path")) == (
        "records: sink 'jsonl' needs a path"
    )
    assert str(ConfigError("fallback", "is required", None)) == "fallback: None is required"
    assert str(ConfigError("", "must be a mapping")) == "must be a mapping"


def test_config_error_repr_shows_fields() -> None:
    """repr shows the data fields, for logs."""
    assert repr(ConfigError("k", "is bad", 3)) == "ConfigError(key='k', value=3, problem='is bad')"


def test_unknown_model_tells_how_to_fix_it() -> None:
    """The message names the model and route and the two ways to price it."""
    error = UnknownModel("my-llm", route="POST /v1/chat/completions")
    assert "'my-llm' has no price on route 'POST /v1/chat/completions'" in error.message
    assert "unknown_model: fallback" in error.message
    assert (error.model, error.reason, error.route) == (
        "my-llm",
        "unknown_model",
        "POST /v1/chat/completions",
    )
    assert repr(error) == "UnknownModel(model='my-llm', reason='unknown_model')"


def test_budget_exceeded_carries_amounts() -> None:
    """BudgetExceeded keeps Decimal amounts and the window for the caller."""
    error = BudgetExceeded(
        "team-a",
        limit=Decimal(5),
        spent=Decimal("4.99"),
        required=Decimal("0.02"),
        window="day",
        retry_after=3600,
    )
    assert (
        error.message
        == "account 'team-a' cannot pay $0.02 for this call: $4.99 of its $5 day budget is used"
    )
    assert (error.limit, error.spent, error.required) == (
        Decimal(5),
        Decimal("4.99"),
        Decimal("0.02"),
    )
    assert "BudgetExceeded(account='team-a'" in repr(error)


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
