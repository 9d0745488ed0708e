"""Tests for the output-cap section of metered.policy (per-tier max output tokens)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from metered.errors import ConfigError, InvalidRequest, PolicyDenied
from metered.fitting.policy import (
    OutputCap,
    apply_output_cap,
    cap_output,
    output_limit_param,
    requested_output_limit,
)


@pytest.mark.parametrize(
    ("model", "api", "param"),
    [
        ("gpt-4o", "chat", "max_tokens"),
        ("gpt-3.5-turbo", "chat", "max_tokens"),
        ("o1-mini", "chat", "max_completion_tokens"),
        ("o3", "chat", "max_completion_tokens"),
        ("openai/o4-mini", "chat", "max_completion_tokens"),
        ("gpt-5-nano", "chat", "max_completion_tokens"),
        ("ft:o4-mini-2025-04-16:acme::x", "chat", "max_completion_tokens"),
        ("gpt-4o", "responses", "max_output_tokens"),
        ("o3", "responses", "max_output_tokens"),
        ("claude-sonnet-4-5", "anthropic", "max_tokens"),
    ],
)
def test_output_limit_param(model: str, api: Any, param: str) -> None:
    """Each model family and API gets the parameter it accepts."""
    assert output_limit_param(model, api) == param


def test_output_limit_param_keeps_callers_name() -> None:
    """A chat body already using max_completion_tokens keeps it on older models."""
    body = {"max_completion_tokens": 10}
    assert output_limit_param("gpt-4o", "chat", body=body) == "max_completion_tokens"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, None),
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 50}, 50),
        ({"max_output_tokens": 70}, 70),
        ({"max_tokens": None}, None),
        ({"max_tokens": 100, "max_completion_tokens": 300}, 300),
    ],
)
def test_requested_output_limit(body: dict[str, Any], expected: int | None) -> None:
    """The body's limit is read from whichever name carries it (largest if several)."""
    assert requested_output_limit(body) == expected


@pytest.mark.parametrize("value", [0, -5, 1.5, "100", True, [100]])
def test_requested_output_limit_rejects_invalid(value: object) -> None:
    """Non-positive, non-int and bool limits raise InvalidRequest naming the parameter."""
    with pytest.raises(InvalidRequest) as info:
        requested_output_limit({"max_completion_tokens": value})
    assert info.value.param == "max_completion_tokens"


def test_clamp_lowers_and_records_original() -> None:
    """Over-cap limits are lowered to the cap and the original is kept."""
    assert cap_output(5000, cap=1000, model="gpt-4o") == OutputCap(
        limit=1000, param="max_tokens", clamped_from=5000
    )


def test_under_cap_is_untouched() -> None:
    """A limit under the cap is sent as is."""
    assert cap_output(300, cap=1000, model="o3") == OutputCap(300, "max_completion_tokens")


def test_reject_policy_raises_policy_denied() -> None:
    """With policy=reject, an over-cap limit is refused with reason max_tokens_over_cap."""
    with pytest.raises(PolicyDenied) as info:
        cap_output(5000, cap=1000, model="gpt-4o", policy="reject")
    assert info.value.reason == "max_tokens_over_cap"
    assert info.value.model == "gpt-4o"


def test_missing_limit_is_set_to_cap() -> None:
    """A request without a limit gets the cap, marked as defaulted."""
    assert cap_output(None, cap=200, model="claude-sonnet-4-5", api="anthropic") == OutputCap(
        limit=200, param="max_tokens", defaulted=True
    )


def test_missing_limit_uses_default_below_cap() -> None:
    """The default fills a missing limit, but never above the cap."""
    assert cap_output(None, cap=1000, default=256, model="gpt-4o").limit == 256
    assert cap_output(None, cap=100, default=256, model="gpt-4o").limit == 100


def test_no_limit_no_cap_no_default_sets_nothing() -> None:
    """Without a cap or default, an unset limit stays unset."""
    assert cap_output(None, cap=None, model="gpt-4o") == OutputCap(None, "max_tokens")


@pytest.mark.parametrize(
    ("multiplier", "cap"),
    [
        (Decimal("1.5"), 300),
        (1.5, 300),
        ("1.5", 300),
        (2, 400),
        (0.7, 140),
        (Decimal("1.333"), 266),
    ],
)
def test_urgent_multiplier(multiplier: Any, cap: int) -> None:
    """Urgent calls get cap x multiplier, rounded down with exact decimal arithmetic."""
    capped = cap_output(
        10_000, cap=200, model="gpt-4o-mini", urgent=True, urgent_multiplier=multiplier
    )
    assert (capped.limit, capped.clamped_from) == (cap, 10_000)


def test_urgent_multiplier_default_is_one_and_a_half() -> None:
    """The default urgent allowance is 1.5x the tier cap."""
    assert cap_output(None, cap=1000, model="gpt-4o", urgent=True).limit == 1500


@pytest.mark.parametrize("multiplier", [0, -1, "abc", Decimal("NaN"), float("inf"), True])
def test_invalid_urgent_multiplier_is_config_error(multiplier: Any) -> None:
    """A non-positive or non-numeric multiplier is a configuration error."""
    with pytest.raises(ConfigError) as info:
        cap_output(100, cap=200, model="gpt-4o", urgent=True, urgent_multiplier=multiplier)
    assert info.value.key == "urgent_multiplier"


@pytest.mark.parametrize("requested", [0, -1, True, 2.0, "5"])
def test_invalid_requested_limit(requested: Any) -> None:
    """An invalid requested limit raises InvalidRequest naming the model's parameter."""
    with pytest.raises(InvalidRequest) as info:
        cap_output(requested, cap=200, model="o3")
    assert info.value.param == "max_completion_tokens"


@pytest.mark.parametrize(("field", "value"), [("cap", 0), ("default", -1), ("policy", "drop")])
def test_invalid_configuration(field: str, value: Any) -> None:
    """Invalid cap, default or policy values are configuration errors naming the field."""
    kwargs: dict[str, Any] = {"cap": 100, field: value}
    with pytest.raises(ConfigError) as info:
        cap_output(10, model="gpt-4o", **kwargs)
    assert info.value.key == field


def test_apply_output_cap_renames_and_sets() -> None:
    """The capped body carries the limit under the model's parameter only."""
    body = {"model": "o3", "messages": [], "max_tokens": 5000}
    capped = apply_output_cap(body, cap_output(5000, cap=1000, model="o3"))
    assert capped == {"model": "o3", "messages": [], "max_completion_tokens": 1000}
    assert body["max_tokens"] == 5000


def test_apply_output_cap_without_limit_copies() -> None:
    """With nothing to set, the body is copied unchanged."""
    body = {"model": "gpt-4o", "messages": []}
    assert apply_output_cap(body, OutputCap(None, "max_tokens")) == body
