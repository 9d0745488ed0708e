"""Tests for metered.catalog: list prices, the genai-prices equivalence, overrides."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any

import genai_prices
import pytest
from genai_prices.data_snapshot import get_snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

import metered.pricing.rates as rates_module
from metered.config import ModelOverride
from metered.pricing.catalog import Catalog, CostRates, TieredRates, TimedRates
from metered.pricing.genai_prices import GenaiPricesLayer
from metered.providers.anthropic import from_anthropic
from metered.providers.openai_chat import from_openai_chat
from metered.usage import Usage

MTOK = 10**6
CATALOG = Catalog()


def mtok(*rate_tokens: tuple[str, int]) -> Decimal:
    """Sum of tokens x published $/1M-token rate, by hand: ("2.50", 1000) -> $0.0025."""
    return sum((Decimal(rate) * tokens for rate, tokens in rate_tokens), Decimal(0)) / MTOK


def cost(model: str, usage: Usage, **kwargs: Any) -> Decimal:
    entry = CATALOG.lookup(model)
    assert entry is not None, model
    return entry.cost(usage, **kwargs)


# --- published list prices ---------------------------------------------------------------
# Expected values are the providers' published per-1M list prices, written out by hand.
# input_tokens is the total (cache reads/writes included); output_tokens includes reasoning.

LIST_PRICES = [
    pytest.param(
        "gpt-4o",
        Usage(input_tokens=1000, output_tokens=500),
        mtok(("2.50", 1000), ("10", 500)),
        id="gpt-4o",
    ),
    pytest.param(
        "gpt-4o",
        Usage(input_tokens=10_000, cache_read_tokens=8_000, output_tokens=1_000),
        mtok(("2.50", 2_000), ("1.25", 8_000), ("10", 1_000)),
        id="gpt-4o-cached",
    ),
    pytest.param(
        "gpt-4o",
        Usage(input_tokens=1_000, cache_write_tokens=600, output_tokens=10),
        mtok(("2.50", 1_000), ("10", 10)),
        id="gpt-4o-cache-write-is-plain-input",
    ),
    pytest.param(
        "gpt-4o-mini",
        Usage(input_tokens=2_000, cache_read_tokens=1_024, output_tokens=300),
        mtok(("0.15", 976), ("0.075", 1_024), ("0.60", 300)),
        id="gpt-4o-mini-cached",
    ),
    pytest.param(
        "gpt-4.1",
        Usage(input_tokens=50_000, cache_read_tokens=40_000, output_tokens=2_000),
        mtok(("2", 10_000), ("0.50", 40_000), ("8", 2_000)),
        id="gpt-4.1-cached",
    ),
    pytest.param(
        "o3",
        Usage(input_tokens=1_000, output_tokens=5_000, reasoning_tokens=4_000),
        mtok(("2", 1_000), ("8", 5_000)),
        id="o3-reasoning-at-output-rate",
    ),
    pytest.param(
        "o3",
        Usage(
            input_tokens=30_000,
            cache_read_tokens=20_000,
            output_tokens=3_000,
            reasoning_tokens=2_500,
        ),
        mtok(("2", 10_000), ("0.50", 20_000), ("8", 3_000)),
        id="o3-cached-reasoning",
    ),
    pytest.param(
        "gpt-5",
        Usage(
            input_tokens=20_000,
            cache_read_tokens=10_000,
            output_tokens=8_000,
            reasoning_tokens=6_000,
        ),
        mtok(("1.25", 10_000), ("0.125", 10_000), ("10", 8_000)),
        id="gpt-5-cached-reasoning",
    ),
    pytest.param(
        "claude-sonnet-4-5",
        Usage(input_tokens=1_000, output_tokens=500),
        mtok(("3", 1_000), ("15", 500)),
        id="claude-sonnet-4-5",
    ),
    pytest.param(
        "claude-sonnet-4-5",
        Usage(
            input_tokens=3_000, cache_read_tokens=2_000, cache_write_tokens=500, output_tokens=400
        ),
        mtok(("3", 500), ("0.30", 2_000), ("3.75", 500), ("15", 400)),
        id="claude-sonnet-4-5-cache-read-and-write",
    ),
    pytest.param(
        "claude-sonnet-4-5",
        Usage(input_tokens=200_000, cache_read_tokens=50_000, output_tokens=1_000),
        mtok(("3", 150_000), ("0.30", 50_000), ("15", 1_000)),
        id="claude-sonnet-4-5-exactly-200k-is-base",
    ),
    pytest.param(
        "claude-sonnet-4-5",
        Usage(
            input_tokens=250_000,
            cache_read_tokens=50_000,
            cache_write_tokens=10_000,
            output_tokens=2_000,
        ),
        mtok(("6", 190_000), ("0.60", 50_000), ("7.50", 10_000), ("22.50", 2_000)),
        id="claude-sonnet-4-5-over-200k",
    ),
    pytest.param(
        "claude-haiku-4-5",
        Usage(
            input_tokens=10_000,
            cache_read_tokens=6_000,
            cache_write_tokens=2_000,
            output_tokens=1_000,
        ),
        mtok(("1", 2_000), ("0.10", 6_000), ("1.25", 2_000), ("5", 1_000)),
        id="claude-haiku-4-5-cached",
    ),
    pytest.param(
        "claude-opus-4-1",
        Usage(
            input_tokens=5_000,
            cache_read_tokens=1_000,
            cache_write_tokens=1_000,
            output_tokens=2_000,
        ),
        mtok(("15", 3_000), ("1.50", 1_000), ("18.75", 1_000), ("75", 2_000)),
        id="claude-opus-4-1-cached",
    ),
    pytest.param(
        "gemini-2.5-pro",
        Usage(
            input_tokens=100_000,
            cache_read_tokens=20_000,
            output_tokens=5_000,
            reasoning_tokens=3_000,
        ),
        mtok(("1.25", 80_000), ("0.125", 20_000), ("10", 5_000)),
        id="gemini-2.5-pro-up-to-200k",
    ),
    pytest.param(
        "gemini-2.5-pro",
        Usage(input_tokens=300_000, cache_read_tokens=100_000, output_tokens=10_000),
        mtok(("2.50", 200_000), ("0.25", 100_000), ("15", 10_000)),
        id="gemini-2.5-pro-over-200k",
    ),
    pytest.param(
        "gemini-2.5-flash",
        Usage(
            input_tokens=10_000,
            cache_read_tokens=4_000,
            output_tokens=2_000,
            reasoning_tokens=1_500,
        ),
        mtok(("0.30", 6_000), ("0.03", 4_000), ("2.50", 2_000)),
        id="gemini-2.5-flash-thinking",
    ),
    pytest.param(
        "gpt-4o-mini",
        Usage(),
        Decimal(0),
        id="no-tokens-costs-nothing",
    ),
]


@pytest.mark.parametrize(("model", "usage", "expected"), LIST_PRICES)
def test_cost_matches_published_list_price(model: str, usage: Usage, expected: Decimal) -> None:
    """The bundled catalog prices calls at the providers' published per-1M-token rates."""
    assert cost(model, usage) == expected


def test_dated_fine_tune_costs_the_fine_tune_rate() -> None:
    """A dated gpt-4o-mini fine-tune costs $0.30 / $1.20 per 1M, not the base $0.15 / $0.60."""
    entry = CATALOG.lookup("ft:gpt-4o-mini-2024-07-18:acme::x", provider="openai")
    assert entry is not None
    usage = Usage(input_tokens=10_000, output_tokens=1_000)
    assert entry.cost(usage) == mtok(("0.30", 10_000), ("1.20", 1_000))


def test_time_conditional_price_uses_the_request_time() -> None:
    """o3 cost $10 / $40 per 1M before its 2025-06-10 price drop."""
    usage = Usage(input_tokens=1_000, output_tokens=1_000)
    before = datetime(2025, 6, 9, 23, 59, tzinfo=UTC)
    after = datetime(2025, 6, 10, 0, 1, tzinfo=UTC)
    assert cost("o3", usage, when=before) == mtok(("10", 1_000), ("40", 1_000))
    assert cost("o3", usage, when=after) == mtok(("2", 1_000), ("8", 1_000))


def test_tier_switches_all_tokens_above_the_threshold() -> None:
    """One token over 200k moves every token to the long-context rate."""
    rates = CATALOG.lookup("claude-sonnet-4-5")
    assert rates is not None
    tiered = rates.current_rates()
    assert isinstance(tiered, TieredRates)
    assert tiered.rates_for(200_000).input == Decimal(3) / MTOK
    assert tiered.rates_for(200_001).input == Decimal(6) / MTOK


# --- equivalence with genai-prices --------------------------------------------------------

# the genai-prices layer alone: the arithmetic must equal genai-prices' own (metered's
# corrections deliberately differ from it, and are checked in tests/test_price_table.py)
SNAPSHOT = Catalog(layers=(GenaiPricesLayer(),))


def _token_models() -> list[tuple[str, str]]:
    """Every OpenAI/Anthropic/Google model with token prices that resolves to itself."""
    models = []
    for provider in get_snapshot().providers:
        if provider.id not in ("openai", "anthropic", "google"):
            continue
        for info in provider.models:
            entry = SNAPSHOT.lookup(info.id, provider=provider.id)
            if entry is None or (entry.model_id, entry.provider) != (info.id, provider.id):
                continue  # e.g. "ft:gpt-4o": its match rule wants a dated base
            rates = entry.current_rates()
            base = rates.base if isinstance(rates, TieredRates) else rates
            if base.input is None and base.output is None:
                continue  # priced per audio hour, per character, ...: not token models
            models.append((provider.id, info.id))
    return models


TOKEN_MODELS = _token_models()


def genai_cost(provider: str, model: str, usage: Usage) -> Decimal:
    """genai-prices' own calculation for the same usage."""
    result = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage.input_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            output_tokens=usage.output_tokens,
            output_reasoning_tokens=usage.reasoning_tokens,
        ),
        model_ref=model,
        provider_id=provider,
    )
    return result.total_price


def our_cost(provider: str, model: str, usage: Usage) -> Decimal:
    """The hot-path cost: a cached lookup and our own Decimal arithmetic."""
    entry = SNAPSHOT.lookup(model, provider=provider)
    assert entry is not None
    return entry.cost(usage)


def test_equivalence_covers_tiered_and_timed_models() -> None:
    """The model set is large and includes tiered and time-conditional prices."""
    assert len(TOKEN_MODELS) >= 50
    entries = [SNAPSHOT.lookup(m, provider=p) for p, m in TOKEN_MODELS]
    assert any(e is not None and isinstance(e.rates, TieredRates) for e in entries)
    assert any(e is not None and isinstance(e.rates, TimedRates) for e in entries)


FIXED_USAGES = [
    Usage(input_tokens=1_234, output_tokens=567),
    Usage(
        input_tokens=9_000,
        cache_read_tokens=5_000,
        cache_write_tokens=3_000,
        output_tokens=800,
        reasoning_tokens=300,
    ),
    Usage(
        input_tokens=300_001,
        cache_read_tokens=100_000,
        cache_write_tokens=50_000,
        output_tokens=20_000,
        reasoning_tokens=15_000,
    ),
]


@pytest.mark.parametrize("usage", FIXED_USAGES)
def test_every_token_model_matches_genai_prices(usage: Usage) -> None:
    """Each chosen model's cost equals genai_prices.calc_price exactly."""
    costs = {(p, m): (our_cost(p, m, usage), genai_cost(p, m, usage)) for p, m in TOKEN_MODELS}
    assert {model: pair for model, pair in costs.items() if pair[0] != pair[1]} == {}


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    """Random usages, dense around the 100k/200k/272k tier thresholds."""
    input_tokens = draw(
        st.one_of(
            st.integers(0, 5_000),
            st.integers(0, 1_200_000),
            st.sampled_from([100_000, 100_001, 200_000, 200_001, 272_000, 272_001]),
        )
    )
    cache_read = draw(st.integers(0, input_tokens))
    cache_write = draw(st.integers(0, input_tokens - cache_read))
    output_tokens = draw(st.integers(0, 200_000))
    reasoning = draw(st.integers(0, output_tokens))
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
    )


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(model=st.sampled_from(TOKEN_MODELS), usage=usages())
def test_cost_equals_genai_prices_on_random_usage(model: tuple[str, str], usage: Usage) -> None:
    """Our hot-path cost is exactly genai_prices.calc_price(...).total_price."""
    provider, model_id = model
    assert our_cost(provider, model_id, usage) == genai_cost(provider, model_id, usage)


def _openai_chat(model: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion", "model": model, "choices": [], "usage": usage}


def _anthropic(model: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": "m", "type": "message", "model": model, "content": [], "usage": usage}


RESPONSES = [
    pytest.param(
        "openai",
        "chat",
        from_openai_chat,
        _openai_chat(
            "gpt-4o",
            {
                "prompt_tokens": 3_000,
                "completion_tokens": 200,
                "prompt_tokens_details": {"cached_tokens": 2_048},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        ),
        id="openai-chat-cached",
    ),
    pytest.param(
        "openai",
        "chat",
        from_openai_chat,
        _openai_chat(
            "gpt-6-sol",
            {
                "prompt_tokens": 3_000,
                "completion_tokens": 200,
                "prompt_tokens_details": {"cached_tokens": 1_000, "cache_write_tokens": 1_500},
            },
        ),
        id="openai-chat-cache-writes",
    ),
    pytest.param(
        "anthropic",
        "default",
        from_anthropic,
        _anthropic(
            "claude-sonnet-4-5",
            {
                "input_tokens": 100,
                "cache_read_input_tokens": 2_000,
                "cache_creation_input_tokens": 500,
                "output_tokens": 50,
            },
        ),
        id="anthropic-5m-cache",
    ),
    pytest.param(
        "anthropic",
        "default",
        from_anthropic,
        _anthropic(
            "claude-sonnet-4-5",
            {
                "input_tokens": 100,
                "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 1_000,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 0,
                    "ephemeral_1h_input_tokens": 1_000,
                },
                "output_tokens": 50,
            },
        ),
        id="anthropic-1h-cache-write",
    ),
]


@pytest.mark.parametrize(("provider", "flavor", "extract", "body"), RESPONSES)
def test_cost_of_a_provider_response_matches_genai_prices(
    provider: str, flavor: str, extract: Any, body: dict[str, Any]
) -> None:
    """Extracting usage from a response and pricing it agrees with genai-prices end to end."""
    expected = genai_prices.extract_usage(body, provider_id=provider, api_flavor=flavor)
    usage = extract(body)
    assert usage is not None
    assert our_cost(provider, body["model"], usage) == expected.calc_price().total_price


# --- lookups -----------------------------------------------------------------------------


def test_unknown_model_has_no_entry() -> None:
    """A model nobody lists is None, never a $0 entry."""
    assert CATALOG.lookup("definitely-not-a-model-xyz") is None


def test_lookup_is_cached() -> None:
    """A second lookup of the same model returns the same compiled entry."""
    assert CATALOG.lookup("gpt-4o") is CATALOG.lookup("gpt-4o")


def test_provider_narrows_the_lookup() -> None:
    """The same model id has a provider-specific entry when the provider is named."""
    google = CATALOG.lookup("claude-sonnet-4-5", provider="vertex")
    direct = CATALOG.lookup("claude-sonnet-4-5")
    assert google is not None
    assert direct is not None
    assert (google.provider, direct.provider) == ("google", "anthropic")


def test_a_named_provider_without_the_model_has_no_price() -> None:
    """Provider-true: a provider that does not list the model never borrows another's."""
    assert CATALOG.lookup("claude-haiku-4-5", provider="openai") is None
    assert CATALOG.lookup("gpt-4o", provider="groq") is None
    entry = CATALOG.lookup("claude-haiku-4-5")  # no provider named: found by its name
    assert entry is not None
    assert entry.provider == "anthropic"


def test_version_names_the_price_data() -> None:
    """The catalog version identifies the genai-prices snapshot and overrides."""
    assert CATALOG.version == f"genai-prices {version('genai-prices')}+corrections 2026-12-04"
    overridden = Catalog(overrides={"m": ModelOverride.model_validate({"request": "$0.01"})})
    assert overridden.version.endswith("+overrides")


# --- overrides ---------------------------------------------------------------------------


def _override(**fields: str) -> ModelOverride:
    return ModelOverride.model_validate(fields)


def test_override_wins_over_the_snapshot() -> None:
    """A negotiated rate replaces the list price."""
    catalog = Catalog(
        overrides={"gpt-4o": _override(input="$1 / 1M tokens", output="$4 / 1M tokens")}
    )
    entry = catalog.lookup("gpt-4o")
    assert entry is not None
    assert entry.source == "override"
    assert entry.cost(Usage(input_tokens=1_000, output_tokens=1_000)) == mtok(
        ("1", 1_000), ("4", 1_000)
    )


def test_override_of_a_snapshot_model_covers_its_dated_ids() -> None:
    """A gpt-4o override also prices gpt-4o-2024-08-06, which the snapshot maps to gpt-4o."""
    catalog = Catalog(
        overrides={"gpt-4o": _override(input="$1 / 1M tokens", output="$4 / 1M tokens")}
    )
    entry = catalog.lookup("gpt-4o-2024-08-06")
    assert entry is not None
    assert entry.cost(Usage(input_tokens=1_000, output_tokens=1_000)) == mtok(
        ("1", 1_000), ("4", 1_000)
    )


def test_per_second_override_prices_compute_time() -> None:
    """A self-hosted model billed per second costs seconds x rate."""
    catalog = Catalog(
        overrides={"Llama-3-70B-Selfhosted": _override(provider="self", second="$0.0005/s")},
        source="none",
    )
    entry = catalog.lookup("llama-3-70b-selfhosted")
    assert entry is not None
    assert entry.provider == "self"
    assert entry.cost(Usage(input_tokens=10_000, seconds=Decimal("2.5"))) == Decimal("0.00125")


def test_per_request_override_prices_each_request() -> None:
    """A per-request override charges per request, whatever the tokens."""
    catalog = Catalog(overrides={"search-bot": _override(request="$0.002")})
    entry = catalog.lookup("search-bot")
    assert entry is not None
    assert entry.cost(Usage(input_tokens=50_000, requests=3)) == Decimal("0.006")


def test_source_none_knows_only_overrides() -> None:
    """With source 'none' the snapshot is not consulted."""
    catalog = Catalog(source="none")
    assert catalog.lookup("gpt-4o") is None
    assert list(catalog.entries()) == []


def test_entries_filters_by_pattern_overrides_first() -> None:
    """entries() lists overrides before snapshot models matching the regex."""
    catalog = Catalog(overrides={"gpt-4o-acme": _override(request="$0.01")})
    ids = [e.model_id for e in catalog.entries("^gpt-4o-(acme|mini)$")]
    assert ids[0] == "gpt-4o-acme"
    assert "gpt-4o-mini" in ids


def test_per_mtok_shows_rates_as_written() -> None:
    """Rates display per 1M tokens for people."""
    rates = CostRates(input=Decimal(3) / MTOK, output=Decimal(15) / MTOK, request=Decimal("0.01"))
    assert rates.per_mtok() == {
        "input": Decimal(3),
        "output": Decimal(15),
        "request": Decimal("0.01"),
    }


def test_lookup_cache_is_bounded() -> None:
    """Model ids are user input: the catalog's lookup cache never grows without bound."""
    from metered.pricing.catalog import _CACHE_LIMIT

    catalog = Catalog(source="none")
    for i in range(_CACHE_LIMIT * 2 + 10):
        assert catalog.lookup(f"unknown-model-{i}") is None
    assert len(catalog._cache) <= _CACHE_LIMIT


def test_timed_rates_switch_when_the_minute_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Time-dependent rates are re-selected in a new minute, never reused from the last one."""
    cheap = SimpleNamespace(input_mtok=Decimal(1), output_mtok=Decimal(2))
    dear = SimpleNamespace(input_mtok=Decimal(10), output_mtok=Decimal(20))
    now = {"t": 60.0 * 1000}
    model = SimpleNamespace(
        get_prices=lambda when, context=None: cheap if now["t"] < 60.0 * 1001 else dear
    )
    monkeypatch.setattr(rates_module, "time", SimpleNamespace(time=lambda: now["t"]))
    rates = TimedRates(model)
    usage = Usage(input_tokens=MTOK, output_tokens=0)
    assert rates.cost(usage) == Decimal(1)
    now["t"] = 60.0 * 1001
    assert rates.cost(usage) == Decimal(10)
