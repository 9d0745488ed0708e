"""Tests for metered.errors: the tree and the data each error carries (the HTTP mapping
is tested in test_http_errors.py)."""

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
