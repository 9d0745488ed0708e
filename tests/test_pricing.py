"""Tests for metered.pricing: cost, price, margin and the pricing source of every quote."""

from __future__ import annotations

from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from metered.config import Config, load_config, load_yaml
from metered.errors import ConfigError, InvalidRequest, PolicyDenied, UnknownModel
from metered.pricing.route import Pricer, Quote, RoutePricer
from metered.usage import Usage
from tests import pricefns

CONFIGS = Path(__file__).parent / "configs"
CHAT = "POST /v1/chat/completions"
MTOK = 10**6
USAGE = Usage(input_tokens=1_000, output_tokens=500)
GPT_4O_COST = (Decimal("2.50") * 1_000 + Decimal(10) * 500) / MTOK


def route(config: dict[str, Any] | Path) -> RoutePricer:
    """The pricer of the only route of a config given inline or as a YAML file."""
    loaded = load_yaml(config) if isinstance(config, Path) else load_config(config)
    pricer = Pricer(loaded)
    (name,) = pricer.routes
    return pricer.route(name)


def chat_route(**settings: Any) -> RoutePricer:
    """A one-route config: the chat route with these settings."""
    return route({"routes": {CHAT: settings}})


DEFAULT = Pricer(Config()).route()


# --- default table: no configuration ----------------------------------------------------


def test_without_rules_the_price_is_the_catalog_cost() -> None:
    """With no configuration a call is priced at its upstream cost (spend tracking)."""
    quote = DEFAULT.quote("gpt-4o", USAGE)
    assert (quote.cost, quote.price, quote.margin) == (GPT_4O_COST, GPT_4O_COST, Decimal(0))
    assert (quote.pricing_source, quote.pricing_mode) == ("default-table", "token-based")
    assert (quote.resolved_model, quote.provider, quote.route) == ("gpt-4o", "openai", None)


def test_quote_records_the_request_and_the_price_data() -> None:
    """A quote keeps the id as sent, the usage priced and the catalog version."""
    quote = DEFAULT.quote(" GPT-4o-2024-08-06 ", USAGE)
    assert quote.requested_model == " GPT-4o-2024-08-06 "
    assert quote.usage is USAGE
    assert quote.catalog_version == f"genai-prices {version('genai-prices')}+corrections 2026-12-04"


def test_unknown_model_on_the_default_route_is_unpriced_never_zero() -> None:
    """With nothing configured an unknown model is served unpriced: cost unknown (None),
    never $0; a route asking for it rejects instead."""
    quote = DEFAULT.quote("my-private-llm", USAGE)
    assert (quote.pricing_source, quote.cost, quote.margin) == ("unpriced", None, None)
    strict = Pricer(load_config({"routes": {"r": {"unknown_model": "reject"}}})).route("r")
    with pytest.raises(UnknownModel) as info:
        strict.quote("my-private-llm", USAGE)
    assert info.value.model == "my-private-llm"
    assert info.value.status_code == 400


def test_unpriced_quote_has_no_price_and_a_budget_cannot_check_it() -> None:
    """An unpriced quote's price and margin are None (never $0); checked_price(), what a
    budgeted call asks for, refuses it with UnknownModel."""
    quote = DEFAULT.quote("my-private-llm", USAGE)
    assert (quote.price, quote.margin) == (None, None)
    with pytest.raises(UnknownModel) as info:
        quote.checked_price()
    assert (info.value.model, info.value.status_code) == ("my-private-llm", 400)


def test_floors_do_not_price_an_unpriced_call() -> None:
    """A floor bounds a price; it does not invent one: an unpriced call stays unpriced."""
    quote = chat_route(floors={"*": "$0.01"}).quote("my-private-llm", USAGE)
    assert (quote.pricing_source, quote.price) == ("unpriced", None)


def test_explicit_unpriced_lets_an_unlisted_model_pass_with_its_cost() -> None:
    """unknown_model: unpriced on a reselling route: no price, the catalog cost is kept."""
    chat = chat_route(models={"gpt-4o": "$0.05"}, unknown_model="unpriced")
    quote = chat.quote("gpt-4o-mini", USAGE)
    assert (quote.pricing_source, quote.price, quote.margin) == ("unpriced", None, None)
    assert quote.cost == DEFAULT.quote("gpt-4o-mini", USAGE).cost
    assert quote.cost is not None


def test_markup_route_rejects_a_model_without_a_cost() -> None:
    """A markup route sells at cost x markup: a model with no cost is refused, not free."""
    with pytest.raises(UnknownModel):
        chat_route(markup="20%").quote("my-private-llm", USAGE)


def test_unpriced_with_a_fallback_is_a_config_error() -> None:
    """unknown_model: unpriced next to a fallback price contradicts itself: refused at load."""
    with pytest.raises(ConfigError, match="unpriced"):
        chat_route(fallback="$0.02", unknown_model="unpriced")


def test_unpriced_model_is_warned_about_once_per_pricer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two quotes of one unknown model log one warning; a new pricer warns again; a
    pricer that did not ask for warnings (the CLI's) logs none."""
    pricer = Pricer(Config(), warn_unpriced=True)
    with caplog.at_level("WARNING", logger="metered"):
        pricer.quote("llama3.1:8b", USAGE)
        pricer.quote("LLAMA3.1:8B", USAGE)
        pricer.quote("my-private-llm", USAGE)
        Pricer(Config(), warn_unpriced=True).quote("llama3.1:8b", USAGE)
        Pricer(Config()).quote("llama3.1:8b", USAGE)
    warned = [r.getMessage() for r in caplog.records if "has no price" in r.getMessage()]
    assert len(warned) == 3
    assert sum("'llama3.1:8b'" in m for m in warned) == 2


def test_unpriced_warnings_use_bounded_memory(caplog: pytest.LogCaptureFixture) -> None:
    """A flood of made-up model ids does not grow the warned-about set without bound."""
    from metered.pricing import route as route_module

    pricer = Pricer(Config(), warn_unpriced=True)
    with caplog.at_level("ERROR", logger="metered"):
        for i in range(route_module._WARNED_LIMIT + 10):
            pricer.quote(f"made-up-{i}", USAGE)
    assert len(pricer.route()._warned._seen) <= route_module._WARNED_LIMIT


def test_model_without_token_prices_is_not_priced_at_zero() -> None:
    """gpt-live-1 is listed per audio hour only: a token call to it is unpriced, not $0."""
    quote = DEFAULT.quote("gpt-live-1", USAGE)
    assert (quote.pricing_source, quote.cost) == ("unpriced", None)


def test_dated_snapshot_with_its_own_entry_uses_it() -> None:
    """gpt-4o-2024-05-13 has its own list price ($5 / $15), not gpt-4o's."""
    quote = DEFAULT.quote("gpt-4o-2024-05-13", USAGE)
    assert quote.cost == (Decimal(5) * 1_000 + Decimal(15) * 500) / MTOK
    assert quote.resolved_model == "gpt-4o-2024-05-13"


def test_dated_snapshot_without_its_own_entry_uses_the_base() -> None:
    """claude-sonnet-4-5-20250929 is priced as claude-sonnet-4-5."""
    quote = DEFAULT.quote("claude-sonnet-4-5-20250929", USAGE)
    assert quote.cost == (Decimal(3) * 1_000 + Decimal(15) * 500) / MTOK
    assert quote.resolved_model == "claude-sonnet-4-5"


def test_provider_prefix_and_case_do_not_change_the_cost() -> None:
    """'OpenAI/GPT-4o' costs what 'gpt-4o' costs."""
    assert DEFAULT.quote("OpenAI/GPT-4o", USAGE).cost == GPT_4O_COST


def test_cyrillic_look_alike_is_denied_before_pricing() -> None:
    """'gpt-4о' with a Cyrillic о is refused by policy rather than priced."""
    with pytest.raises(PolicyDenied) as info:
        DEFAULT.quote("gpt-4\u043e", USAGE)
    assert info.value.reason == "invalid_model_id"


@pytest.mark.parametrize("raw", [42, ["gpt-4o"], {"model": "gpt-4o"}])
def test_non_string_model_is_an_invalid_request(raw: object) -> None:
    """A JSON body with model: 42, a list or an object is a malformed request."""
    with pytest.raises(InvalidRequest):
        DEFAULT.quote(raw, USAGE)  # type: ignore[arg-type]


def test_default_table_is_used_for_the_default_route_name() -> None:
    """default_route makes a configured route the one used for route=None."""
    pricer = Pricer(
        load_config(
            {
                "routes": {"batch": {"type": "flat", "models": {"gpt-4o": "$0.05"}}},
                "default_route": "batch",
            }
        )
    )
    assert pricer.quote("gpt-4o", USAGE).price == Decimal("0.05")
    assert pricer.quote("gpt-4o", USAGE).route == "batch"


def test_unknown_route_name_is_an_invalid_request() -> None:
    """Asking for a route that is not configured is refused."""
    with pytest.raises(InvalidRequest, match="unknown route"):
        Pricer(Config()).route("POST /v1/nope")


# --- route.models ------------------------------------------------------------------------


def test_route_models_flat_price() -> None:
    """seed_models: gpt-4o costs $0.05 per request whatever the tokens."""
    quote = route(CONFIGS / "seed_models.yaml").quote("gpt-4o", USAGE)
    assert (quote.price, quote.pricing_source, quote.pricing_mode) == (
        Decimal("0.05"),
        "route.models",
        "flat",
    )
    assert quote.margin == Decimal("0.05") - GPT_4O_COST


def test_route_models_token_rates() -> None:
    """Per-model token rates price the usage at the operator's rates."""
    chat = chat_route(models={"gpt-4o": {"input": "$5 / 1M tokens", "output": "$20 / 1M tokens"}})
    quote = chat.quote("gpt-4o", USAGE)
    assert quote.price == (Decimal(5) * 1_000 + Decimal(20) * 500) / MTOK
    assert (quote.pricing_source, quote.pricing_mode) == ("route.models", "token-based")


def test_route_models_cache_rate_prices_cached_tokens() -> None:
    """A resale cache_read rate applies to the cached part of the input only."""
    chat = chat_route(
        models={
            "gpt-4o": {
                "input": "$5 / 1M tokens",
                "cache_read": "$1 / 1M tokens",
                "output": "$20 / 1M tokens",
            }
        }
    )
    usage = Usage(input_tokens=1_000, cache_read_tokens=800, output_tokens=0)
    assert chat.quote("gpt-4o", usage).price == (Decimal(5) * 200 + Decimal(1) * 800) / MTOK


def test_route_models_markup_over_cost() -> None:
    """{markup: 25%} resells a model at its upstream cost x 1.25."""
    quote = chat_route(models={"gpt-4o": {"markup": "25%"}}).quote("gpt-4o", USAGE)
    assert quote.price == GPT_4O_COST * Decimal("1.25")
    assert quote.margin == GPT_4O_COST * Decimal("0.25")
    assert quote.pricing_source == "route.models"


def test_name_the_user_sent_wins_when_listed() -> None:
    """A dated snapshot listed in route.models gets its own price, not its base's."""
    chat = chat_route(models={"gpt-4o-2024-08-06": "$0.07", "gpt-4o": "$0.05"})
    assert chat.quote("gpt-4o-2024-08-06", USAGE).price == Decimal("0.07")
    assert chat.quote("gpt-4o-2024-11-20", USAGE).price == Decimal("0.05")


def test_route_models_keys_are_normalised() -> None:
    """A model key written in any case matches a request in any case."""
    assert chat_route(models={"GPT-4o": "$0.05"}).quote("gpt-4O", USAGE).price == Decimal("0.05")


def test_route_with_models_does_not_pass_through_unlisted_models() -> None:
    """A route that lists its models rejects others instead of charging their cost."""
    with pytest.raises(UnknownModel) as info:
        chat_route(models={"gpt-4o": "$0.05"}).quote("gpt-4o-mini", USAGE)
    assert info.value.route == CHAT


# --- aliases, deployments, fine-tunes ----------------------------------------------------


def test_alias_is_priced_by_its_target() -> None:
    """my-chatbot -> claude-sonnet-4-5: cost and route price come from the target."""
    pricer = Pricer(
        load_config(
            {
                "models": {"aliases": {"my-chatbot": "claude-sonnet-4-5"}},
                "routes": {CHAT: {"models": {"claude-sonnet-4-5": "$0.02"}}},
            }
        )
    )
    quote = pricer.quote("my-chatbot", USAGE, route=CHAT)
    assert quote.price == Decimal("0.02")
    assert quote.cost == (Decimal(3) * 1_000 + Decimal(15) * 500) / MTOK
    assert quote.resolved_model == "claude-sonnet-4-5"


def test_alias_named_like_a_catalog_model_costs_its_target() -> None:
    """Aliasing gpt-4 to gpt-4o routes calls to gpt-4o, so they cost gpt-4o's rates."""
    pricer = Pricer(load_config({"models": {"aliases": {"gpt-4": "gpt-4o"}}}))
    quote = pricer.quote("gpt-4", USAGE)
    assert quote.cost == GPT_4O_COST
    assert quote.resolved_model == "gpt-4o"


def test_azure_deployment_costs_its_base_model() -> None:
    """An Azure deployment name costs its base model's Azure list price."""
    pricer = Pricer(load_config({"models": {"deployments": {"prod-4o": "gpt-4o"}}}))
    quote = pricer.quote("azure/prod-4o", USAGE)
    assert (quote.cost, quote.resolved_model, quote.provider) == (GPT_4O_COST, "gpt-4o", "azure")


def test_fine_tunes_from_the_seed_config() -> None:
    """seed_finetunes: the fine-tune's own flat price, dated or not."""
    chat = route(CONFIGS / "seed_finetunes.yaml")
    assert chat.quote("ft:gpt-4o:acme-support-v2", USAGE).price == Decimal("0.08")
    dated = chat.quote("ft:gpt-4o-2024-08-06:acme-support-v2", USAGE)
    assert (dated.price, dated.pricing_source) == (Decimal("0.08"), "route.models")
    assert dated.cost == (Decimal("3.75") * 1_000 + Decimal(15) * 500) / MTOK


def test_dated_fine_tune_costs_the_catalog_fine_tune_rate() -> None:
    """ft:gpt-4o-mini-2024-07-18:acme::x costs $0.30 / $1.20 per 1M, not the base rate."""
    quote = DEFAULT.quote("ft:gpt-4o-mini-2024-07-18:acme::x", USAGE)
    assert quote.cost == (Decimal("0.30") * 1_000 + Decimal("1.20") * 500) / MTOK
    assert quote.resolved_model == "ft:gpt-4o-mini"


def test_unlisted_fine_tune_without_catalog_price_is_rejected() -> None:
    """ft:gpt-4o-mini:acme::x has no catalog price: unpriced, never the base's price or $0."""
    quote = DEFAULT.quote("ft:gpt-4o-mini:acme::x", USAGE)
    assert (quote.pricing_source, quote.cost) == ("unpriced", None)


def test_unlisted_fine_tune_gets_the_fallback() -> None:
    """seed_finetunes: an unlisted fine-tune is charged the $0.03 fallback."""
    quote = route(CONFIGS / "seed_finetunes.yaml").quote("ft:gpt-4o-mini:acme::x", USAGE)
    assert (quote.price, quote.pricing_source) == (Decimal("0.03"), "fallback")
    assert (quote.cost, quote.margin) == (None, None)


# --- fallback ----------------------------------------------------------------------------


def test_unknown_model_gets_the_fallback_price() -> None:
    """seed_models: a model nobody prices is charged the $0.02 fallback, cost unknown."""
    quote = route(CONFIGS / "seed_models.yaml").quote("my-private-llm", USAGE)
    assert (quote.price, quote.pricing_source, quote.cost, quote.margin) == (
        Decimal("0.02"),
        "fallback",
        None,
        None,
    )


def test_explicit_reject_ignores_the_fallback() -> None:
    """unknown_model: reject wins over a fallback price."""
    chat = chat_route(models={"gpt-4o": "$0.05"}, fallback="$0.02", unknown_model="reject")
    with pytest.raises(UnknownModel):
        chat.quote("my-private-llm", USAGE)


def test_markup_without_a_cost_falls_through_to_the_fallback() -> None:
    """A markup needs a cost; for a model without one the fallback decides."""
    chat = chat_route(models={"my-private-llm": {"markup": "20%"}}, fallback="$0.02")
    quote = chat.quote("my-private-llm", USAGE)
    assert (quote.price, quote.pricing_source) == (Decimal("0.02"), "fallback")


def test_wildcard_model_price_covers_unlisted_models() -> None:
    """models: {'*': ...} is a catch-all price, like '*' in floors and ceilings."""
    quote = chat_route(models={"gpt-4o": "$0.05", "*": "$0.01"}).quote("o3", USAGE)
    assert (quote.price, quote.pricing_source) == (Decimal("0.01"), "route.models")


# --- route markup (default-table) -------------------------------------------------------


def test_route_markup_prices_catalog_models() -> None:
    """A route markup resells every catalog model at cost x markup."""
    quote = chat_route(markup="20%").quote("gpt-4o", USAGE)
    assert quote.price == GPT_4O_COST * Decimal("1.2")
    assert quote.pricing_source == "default-table"


def test_route_markup_does_not_override_listed_models() -> None:
    """route.models beats the markup for a listed model."""
    chat = chat_route(markup="20%", models={"gpt-4o": "$0.05"})
    assert chat.quote("gpt-4o", USAGE).pricing_source == "route.models"
    assert chat.quote("gpt-4o-mini", USAGE).pricing_source == "default-table"


# --- match rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "price", "source"),
    [
        ({"x-pricing-version": "v2"}, "0.012", "match"),
        ({"x-pricing-version": "v1"}, "0.01", "match"),
        ({"x-pricing-version": "v3"}, "0.01", "fallback"),
        ({}, "0.01", "fallback"),
    ],
)
def test_match_rules_on_headers(headers: dict[str, str], price: str, source: str) -> None:
    """seed_match: the canary cohort header picks its price; others get the fallback."""
    quote = route(CONFIGS / "seed_match.yaml").quote("gpt-4o", USAGE, headers=headers)
    assert (quote.price, quote.pricing_source) == (Decimal(price), source)


def test_match_header_names_are_case_insensitive_in_config() -> None:
    """A rule written with X-Team matches the lower-case header name."""
    chat = chat_route(match=[{"where": {"headers.X-Team": "red"}, "price": "$0.5"}])
    assert chat.quote("gpt-4o", USAGE, headers={"x-team": "red"}).price == Decimal("0.5")


def test_match_on_nested_body_field() -> None:
    """body.user.tier reaches into the JSON body."""
    chat = chat_route(
        match=[{"where": {"body.user.tier": "gold"}, "price": "$0.5"}], models={"gpt-4o": "$0.1"}
    )
    assert chat.quote("gpt-4o", USAGE, body={"user": {"tier": "gold"}}).price == Decimal("0.5")
    assert chat.quote("gpt-4o", USAGE, body={"user": "gold"}).price == Decimal("0.1")


def test_match_on_metadata_with_a_list_of_values() -> None:
    """A list in a condition accepts any of its values."""
    chat = chat_route(
        match=[{"where": {"metadata.team": ["red", "blue"]}, "price": "$0.5"}],
        models={"gpt-4o": "$0.1"},
    )
    assert chat.quote("gpt-4o", USAGE, metadata={"team": "blue"}).price == Decimal("0.5")
    assert chat.quote("gpt-4o", USAGE, metadata={"team": "green"}).price == Decimal("0.1")


def test_match_on_a_boolean_body_field() -> None:
    """body.stream: true matches a streaming request."""
    chat = chat_route(
        match=[{"where": {"body.stream": True}, "price": "$0.2"}], models={"gpt-4o": "$0.1"}
    )
    assert chat.quote("gpt-4o", USAGE, body={"stream": True}).price == Decimal("0.2")
    assert chat.quote("gpt-4o", USAGE, body={"stream": False}).price == Decimal("0.1")


def test_all_conditions_of_a_rule_must_hold_and_first_rule_wins() -> None:
    """A rule matches only if every condition holds; the first matching rule wins."""
    chat = chat_route(
        match=[
            {"where": {"headers.x-plan": "pro", "metadata.team": "red"}, "price": "$0.3"},
            {"where": {"headers.x-plan": "pro"}, "price": "$0.2"},
        ],
        fallback="$0.1",
    )
    pro_red = chat.quote("gpt-4o", USAGE, headers={"x-plan": "pro"}, metadata={"team": "red"})
    pro_blue = chat.quote("gpt-4o", USAGE, headers={"x-plan": "pro"}, metadata={"team": "blue"})
    assert (pro_red.price, pro_blue.price) == (Decimal("0.3"), Decimal("0.2"))


# --- price.fn ----------------------------------------------------------------------------


def test_price_fn_prices_the_call() -> None:
    """A price.fn result is the price, recorded as source price.fn."""
    chat = chat_route(price={"fn": "tests.pricefns:premium_plan"}, fallback="$0.01")
    quote = chat.quote("gpt-4o", USAGE, metadata={"plan": "premium"})
    assert (quote.price, quote.pricing_source) == (Decimal("0.07"), "price.fn")


def test_price_fn_returning_none_falls_through() -> None:
    """None from price.fn hands the call to route.models, then the fallback."""
    chat = chat_route(
        price={"fn": "tests.pricefns:premium_plan"}, models={"gpt-4o": "$0.05"}, fallback="$0.01"
    )
    assert chat.quote("gpt-4o", USAGE).pricing_source == "route.models"
    assert chat.quote("o3", USAGE).pricing_source == "fallback"


def test_price_fn_can_price_from_the_cost() -> None:
    """price.fn receives the upstream cost, e.g. to resell at twice the cost."""
    chat = chat_route(price={"fn": "tests.pricefns:twice_the_cost"})
    assert chat.quote("gpt-4o", USAGE).price == GPT_4O_COST * 2


def test_price_fn_receives_the_call() -> None:
    """price.fn sees the resolved model, usage, cost, route and request context."""
    pricefns.SEEN.clear()
    chat = chat_route(price={"fn": "tests.pricefns:record_request"})
    chat.quote("gpt-4o-2024-08-06", USAGE, headers={"x-team": "red"}, metadata={"plan": "pro"})
    (request,) = pricefns.SEEN
    assert (request.model.requested, request.model.base) == ("gpt-4o-2024-08-06", "gpt-4o")
    assert (request.usage, request.cost, request.route) == (USAGE, GPT_4O_COST, CHAT)
    assert (request.headers, request.metadata) == ({"x-team": "red"}, {"plan": "pro"})


def test_price_fn_may_return_a_dollar_string() -> None:
    """'$0.04' from price.fn is parsed like a config amount."""
    assert chat_route(price={"fn": "tests.pricefns:dollar_string"}).quote(
        "gpt-4o", USAGE
    ).price == Decimal("0.04")


def test_price_fn_returning_a_float_is_refused() -> None:
    """Money as float from price.fn is an error naming the route's price.fn."""
    with pytest.raises(ConfigError) as info:
        chat_route(price={"fn": "tests.pricefns:float_price"}).quote("gpt-4o", USAGE)
    assert info.value.key == f'routes."{CHAT}".price.fn'


def test_match_rule_beats_price_fn() -> None:
    """Rules are tried in order: match, then price.fn, then route.models."""
    chat = chat_route(
        match=[{"where": {"headers.x-plan": "pro"}, "price": "$0.3"}],
        price={"fn": "tests.pricefns:premium_plan"},
        models={"gpt-4o": "$0.05"},
    )
    quote = chat.quote("gpt-4o", USAGE, headers={"x-plan": "pro"}, metadata={"plan": "premium"})
    assert quote.pricing_source == "match"


# --- floors and ceilings -----------------------------------------------------------------


def test_floor_raises_a_small_price() -> None:
    """A per-model floor is the least a call costs the customer."""
    chat = chat_route(markup="20%", floors={"gpt-4o": "$0.05"})
    quote = chat.quote("gpt-4o", USAGE)
    assert quote.price == Decimal("0.05")
    assert quote.margin == Decimal("0.05") - GPT_4O_COST


def test_floor_applies_to_dated_ids_of_its_model() -> None:
    """A floor on gpt-4o also bounds gpt-4o-2024-08-06."""
    chat = chat_route(markup="20%", floors={"gpt-4o": "$0.05"})
    assert chat.quote("gpt-4o-2024-08-06", USAGE).price == Decimal("0.05")


def test_ceiling_caps_a_large_price() -> None:
    """A ceiling caps the price, even below cost (the operator's choice)."""
    quote = chat_route(markup="20%", ceilings={"gpt-4o": "$0.001"}).quote("gpt-4o", USAGE)
    assert quote.price == Decimal("0.001")
    assert quote.margin == Decimal("0.001") - GPT_4O_COST


def test_wildcard_floor_applies_to_every_model() -> None:
    """floors: {'*': ...} bounds models without their own floor."""
    chat = chat_route(markup="20%", floors={"*": "$0.01", "gpt-4o": "$0.02"})
    assert chat.quote("gpt-4o-mini", USAGE).price == Decimal("0.01")
    assert chat.quote("gpt-4o", USAGE).price == Decimal("0.02")


def test_floor_bounds_the_fallback_too() -> None:
    """Floors apply whichever rule priced the call."""
    chat = chat_route(fallback="$0.001", floors={"*": "$0.01"})
    quote = chat.quote("my-private-llm", USAGE)
    assert (quote.price, quote.pricing_source) == (Decimal("0.01"), "fallback")


# --- per-second and overrides ------------------------------------------------------------


def test_self_hosted_per_second_model_with_markup() -> None:
    """A per-second override with a route markup is priced per second."""
    pricer = Pricer(
        load_config(
            {
                "catalog": {"overrides": {"llama-selfhosted": {"second": "$0.0005/s"}}},
                "routes": {CHAT: {"markup": "2x"}},
            }
        )
    )
    quote = pricer.quote("llama-selfhosted", Usage(seconds=Decimal(4)), route=CHAT)
    assert (quote.cost, quote.price, quote.pricing_mode) == (
        Decimal("0.002"),
        Decimal("0.004"),
        "per-second",
    )


def test_quote_is_a_frozen_value() -> None:
    """Quotes are immutable records of what was charged."""
    quote = DEFAULT.quote("gpt-4o", USAGE)
    assert isinstance(quote, Quote)
    with pytest.raises(AttributeError):
        quote.price = Decimal(0)  # type: ignore[misc]
