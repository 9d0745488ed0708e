"""Tests for metered.usage: the Usage invariants."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest

from metered.usage import Usage, estimated

# --- Usage invariants -------------------------------------------------------------------


def test_usage_defaults_to_one_actual_request() -> None:
    """An empty Usage is one request with no tokens, reported by the provider."""
    usage = Usage()
    assert (usage.input_tokens, usage.output_tokens, usage.requests) == (0, 0, 1)
    assert usage.seconds == Decimal(0)
    assert usage.source == "actual"


def test_total_tokens_is_input_plus_output() -> None:
    """Cached and reasoning tokens are inside the totals, so they are not added again."""
    usage = Usage(input_tokens=10, output_tokens=5, cache_read_tokens=8, reasoning_tokens=3)
    assert usage.total_tokens == 15


@pytest.mark.parametrize(
    "fields",
    [
        {"input_tokens": -1},
        {"output_tokens": -5},
        {"requests": -1},
        {"input_tokens": True},
        {"output_tokens": 1.0},
        {"input_tokens": "10"},
        {"input_tokens": 10, "cache_read_tokens": 11},
        {"input_tokens": 10, "cache_read_tokens": 6, "cache_write_tokens": 5},
        {"output_tokens": 3, "reasoning_tokens": 4},
        {"seconds": 1.5},
        {"seconds": Decimal(-1)},
        {"seconds": Decimal("NaN")},
        {"source": "guessed"},
    ],
)
def test_usage_rejects_impossible_values(fields: dict[str, Any]) -> None:
    """Negative, non-int, bool and inconsistent counts are programming errors."""
    with pytest.raises(ValueError, match="Usage"):
        Usage(**fields)


def test_usage_accepts_cache_filling_the_whole_input() -> None:
    """Cache reads plus writes may equal the total input exactly."""
    usage = Usage(input_tokens=10, cache_read_tokens=6, cache_write_tokens=4)
    assert usage.cache_read_tokens + usage.cache_write_tokens == usage.input_tokens


def test_usage_is_frozen() -> None:
    """A priced Usage cannot be changed afterwards."""
    usage = Usage(input_tokens=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        usage.input_tokens = 2  # type: ignore[misc]


def test_estimated_equals_the_checked_constructor() -> None:
    """The engine's unchecked estimate is the same value, hash and frozenness as Usage()."""
    fast = estimated(1200, 300)
    slow = Usage(input_tokens=1200, output_tokens=300, source="estimated")
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert dataclasses.asdict(fast) == dataclasses.asdict(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.output_tokens = 1  # type: ignore[misc]


def test_with_source_returns_a_relabelled_copy() -> None:
    """with_source changes only the source."""
    usage = Usage(input_tokens=7, output_tokens=3)
    estimated = usage.with_source("estimated")
    assert estimated == Usage(input_tokens=7, output_tokens=3, source="estimated")
    assert usage.source == "actual"


def test_adding_usages_sums_every_count() -> None:
    """Two calls add up field by field, keeping a shared source."""
    a = Usage(input_tokens=10, output_tokens=4, cache_read_tokens=5, reasoning_tokens=1)
    b = Usage(input_tokens=20, output_tokens=6, cache_write_tokens=7, seconds=Decimal("1.5"))
    assert a + b == Usage(
        input_tokens=30,
        output_tokens=10,
        cache_read_tokens=5,
        cache_write_tokens=7,
        reasoning_tokens=1,
        requests=2,
        seconds=Decimal("1.5"),
    )


def test_adding_actual_and_estimated_usage_is_estimated() -> None:
    """A sum that mixes sources is only as good as an estimate."""
    total = Usage(input_tokens=1) + Usage(input_tokens=1, source="estimated")
    assert total.source == "estimated"


def test_adding_a_non_usage_is_a_type_error() -> None:
    """Usage + int is refused instead of silently coerced."""
    with pytest.raises(TypeError):
        _ = Usage() + 1  # type: ignore[operator]
