"""Tests for metered.config: the shapes that load, and the errors that name the bad key."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from metered.config import Config, RouteConfig, format_key, load_config, load_yaml
from metered.errors import ConfigError
from metered.money import Rate

CONFIGS = Path(__file__).parent / "configs"
BAD = CONFIGS / "bad"
CHAT = "POST /v1/chat/completions"
IN_CHAT = f'routes."{CHAT}"'


# --- shapes that load --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["seed_models.yaml", "seed_finetunes.yaml", "seed_match.yaml"])
def test_seed_configs_load(name: str) -> None:
    """The route shapes of the pricing-operations guides load as written."""
    config = load_yaml(CONFIGS / name)
    route = config.routes[CHAT]
    assert route.upstream == "openai"
    assert route.fallback is not None
    assert route.unknown_policy == "fallback"


def test_seed_models_flat_prices_are_per_request() -> None:
    """A bare '$0.05' in route.models is a per-request price."""
    route = load_yaml(CONFIGS / "seed_models.yaml").routes[CHAT]
    assert route.models["gpt-4o"].request == Rate(Decimal("0.05"), "request")
    assert route.models["gpt-4o"].input is None


def test_seed_finetunes_keep_fine_tune_ids_as_keys() -> None:
    """Fine-tune ids with colons are model keys, not YAML structure."""
    route = load_yaml(CONFIGS / "seed_finetunes.yaml").routes[CHAT]
    assert set(route.models) == {"gpt-4o", "ft:gpt-4o:acme-support-v2", "ft:gpt-4o-mini:triage"}


def test_seed_match_rules_keep_their_order() -> None:
    """Match rules are first-match: the order written is the order kept."""
    route = load_yaml(CONFIGS / "seed_match.yaml").routes[CHAT]
    assert [rule.where for rule in route.match] == [
        {"headers.x-pricing-version": "v2"},
        {"headers.x-pricing-version": "v1"},
    ]
    assert route.match[0].price.request == Rate(Decimal("0.012"), "request")


def test_full_config_loads_every_section() -> None:
    """A config using every section validates into typed settings."""
    config = load_yaml(CONFIGS / "full.yaml")
    chat = config.routes[CHAT]
    assert config.models.aliases == {"my-chatbot": "claude-sonnet-4-5"}
    assert config.catalog.overrides["llama-3-70b-selfhosted"].second == Rate(
        Decimal("0.0005"), "second"
    )
    assert chat.models["gpt-4o"].input == Rate(Decimal(5) / 10**6, "token")
    assert chat.models["gpt-4o-mini"].markup == Decimal("1.25")
    assert chat.floors == {"*": Decimal("0.001")}
    assert chat.hooks is not None
    assert chat.hooks.on_request == "tests.pricefns:premium_plan"
    assert config.accounts["team-a"].tier == "pro"
    assert config.records.path == str(CONFIGS.absolute() / "usage.jsonl")  # beside the file


def test_empty_yaml_file_is_the_default_config(tmp_path: Path) -> None:
    """An empty file means defaults: price from the catalog, enforce nothing."""
    path = tmp_path / "metered.yaml"
    path.write_text("# nothing yet\n", encoding="utf-8")
    assert load_yaml(path) == Config()


def test_load_config_accepts_none_and_config() -> None:
    """None is the default config; a Config passes through unchanged."""
    config = Config()
    assert load_config(None) == Config()
    assert load_config(config) is config


@pytest.mark.parametrize(
    ("written", "multiplier"),
    [
        ("20%", Decimal("1.2")),
        (" 150 % ", Decimal("2.5")),
        ("1.2x", Decimal("1.2")),
        ("2X", Decimal(2)),
    ],
)
def test_markup_is_a_percentage_or_a_multiplier(written: object, multiplier: Decimal) -> None:
    """'20%' means cost x 1.2; a number is the multiplier itself."""
    assert load_config({"routes": {"r": {"markup": written}}}).routes["r"].markup == multiplier


@pytest.mark.parametrize("written", [0.2, 1.2, "2", 20])
def test_bare_number_markup_is_ambiguous(written: object) -> None:
    """A bare markup number (0.2: +20% or a fifth of cost?) is refused with a hint."""
    with pytest.raises(ConfigError, match="ambiguous") as info:
        load_config({"routes": {"r": {"markup": written}}})
    assert info.value.key == "routes.r.markup"


def test_unknown_policy_follows_the_fallback() -> None:
    """Setting a fallback price implies the fallback policy unless reject is explicit; a
    route that sets its own prices rejects what it did not price; a route that sets none
    serves unknown models unpriced."""
    assert RouteConfig().unknown_policy == "unpriced"
    assert RouteConfig.model_validate({"models": {"gpt-4o": "$1"}}).unknown_policy == "reject"
    assert RouteConfig.model_validate({"fallback": "$0.02"}).unknown_policy == "fallback"
    explicit = RouteConfig.model_validate({"fallback": "$0.02", "unknown_model": "reject"})
    assert explicit.unknown_policy == "reject"


@pytest.mark.parametrize(
    ("settings", "policy"),
    [
        ({}, "unpriced"),
        ({"upstream": "openai", "settlement": "before-response"}, "unpriced"),
        ({"floors": {"*": "$0.01"}}, "unpriced"),
        ({"models": {"gpt-4o": "$0.05"}}, "reject"),
        ({"markup": "20%"}, "reject"),
        ({"match": [{"where": {"headers.x-plan": "pro"}, "price": "$0.01"}]}, "reject"),
        ({"models": {"gpt-4o": "$0.05"}, "unknown_model": "unpriced"}, "unpriced"),
        ({"unknown_model": "reject"}, "reject"),
    ],
)
def test_enforcement_starts_where_the_config_asks(settings: dict[str, Any], policy: str) -> None:
    """A route that sells at its own prices rejects unknown models; one that only
    tracks spend lets them pass unpriced; unknown_model says so explicitly either way."""
    assert RouteConfig.model_validate(settings).unknown_policy == policy


def test_allow_large_prices_accepts_a_huge_per_token_override() -> None:
    """The large-price guard can be lifted for a deliberately expensive model."""
    config = load_config(
        {
            "allow_large_prices": True,
            "catalog": {"overrides": {"m": {"input": "$3 / token", "output": "$3 / token"}}},
        }
    )
    assert config.catalog.overrides["m"].input == Rate(Decimal(3), "token")


def test_hook_accepts_the_python_spelling() -> None:
    """on_response works as well as onResponse."""
    config = load_config(
        {"routes": {"r": {"hooks": {"on_response": "tests.pricefns:premium_plan"}}}}
    )
    hooks = config.routes["r"].hooks
    assert hooks is not None
    assert hooks.on_response == "tests.pricefns:premium_plan"


@pytest.mark.parametrize(
    ("loc", "text"),
    [
        (("routes", CHAT, "models", "gpt-4o"), IN_CHAT + ".models.gpt-4o"),
        (("routes", "batch", "match", 0, "where"), "routes.batch.match[0].where"),
        (("catalog", "overrides", "ft:gpt-4o:acme::x"), "catalog.overrides.ft:gpt-4o:acme::x"),
        (("models", "aliases", 'say "hi"'), 'models.aliases."say \\"hi\\""'),
    ],
)
def test_format_key_writes_paths_as_users_wrote_them(loc: tuple[str | int, ...], text: str) -> None:
    """Key paths quote names with spaces and index lists."""
    assert format_key(loc) == text


# --- errors that name the key ------------------------------------------------------------

BAD_CASES = {
    "wrong_unit.yaml": (IN_CHAT + ".models.gpt-4o", "unknown unit 'banana'"),
    "negative_price.yaml": (IN_CHAT + ".models.gpt-4o", "negative"),
    "typo_key.yaml": (IN_CHAT + ".modles", "is not a known setting"),
    "unknown_route_type.yaml": (IN_CHAT + ".type", "should be 'token-based' or 'flat'"),
    "fallback_missing.yaml": (IN_CHAT, "no fallback price is set"),
    "bad_price_fn.yaml": (IN_CHAT + ".price.fn", "has no attribute 'no_such_function'"),
    "bare_number.yaml": (IN_CHAT + ".models.gpt-4o", "bare number"),
    "per_mtok_as_per_token.yaml": (
        "catalog.overrides.llama-3-70b-selfhosted.input",
        "did you mean '/ 1M tokens'?",
    ),
    "ts_hook.yaml": (IN_CHAT + ".hooks.onResponse", "not a Python import path"),
    "floor_above_ceiling.yaml": (IN_CHAT, "floor 1 for 'gpt-4o' is above its ceiling"),
    "bad_markup.yaml": (IN_CHAT + ".markup", "is not a markup"),
    "huge_markup.yaml": (IN_CHAT + ".markup", "over 100x"),
    "no_currency.yaml": (IN_CHAT + ".models.gpt-4o", "needs a currency"),
    "one_token_rate.yaml": (IN_CHAT + ".models.gpt-4o", "is one token rate"),
    "bad_match_scope.yaml": (IN_CHAT + ".match[0].where", "must start with headers."),
    "override_input_only.yaml": ("catalog.overrides.my-model", "need both input and output"),
    "floor_bare_number.yaml": (IN_CHAT + ".floors.gpt-4o", "dollar amount"),
    "unknown_default_route.yaml": ("default_route", "is not one of the routes"),
    "account_unknown_tier.yaml": ("accounts.team-a.tier", "'gold' is not one of the tiers"),
    "bad_budget.yaml": ("tiers.free.budgets[0]", "$5/dya"),
}


def test_every_bad_config_file_has_a_case() -> None:
    """Each file in configs/bad is checked here (and by the CLI tests)."""
    files = {p.name for p in BAD.glob("*.yaml")} - {"invalid_yaml.yaml"}
    assert files == set(BAD_CASES)


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_config_names_the_key(name: str) -> None:
    """Each mistake is one ConfigError whose message starts with the key path."""
    key, problem = BAD_CASES[name]
    with pytest.raises(ConfigError) as info:
        load_yaml(BAD / name)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")
    assert problem in str(info.value)


def test_invalid_yaml_names_the_file_and_line() -> None:
    """A YAML syntax error points at the file and the line."""
    path = BAD / "invalid_yaml.yaml"
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert info.value.key == str(path)
    assert "is not valid YAML at line" in str(info.value)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing file is reported as a ConfigError naming the path."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot be read"):
        load_yaml(missing)


def test_top_level_must_be_a_mapping() -> None:
    """A YAML list at the top level is not a configuration."""
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config([1, 2])  # type: ignore[arg-type]


def test_bad_value_is_kept_on_the_error() -> None:
    """ConfigError carries the value as written, for tools that render it."""
    with pytest.raises(ConfigError) as info:
        load_config({"routes": {"r": {"models": {"gpt-4o": "5 dollars"}}}})
    assert info.value.value == "5 dollars"
    assert info.value.problem.startswith("is not a price")


def test_price_fn_must_be_callable() -> None:
    """A price.fn that names a non-callable attribute is refused at load time."""
    with pytest.raises(ConfigError, match="is not callable"):
        load_config({"routes": {"r": {"price": {"fn": "tests.pricefns:NOT_CALLABLE"}}}})


def test_price_fn_module_must_import() -> None:
    """A price.fn in a module that does not exist is refused at load time."""
    with pytest.raises(ConfigError, match="cannot be imported"):
        load_config({"routes": {"r": {"price": {"fn": "no_such_package_xyz.prices:fn"}}}})


def test_readme_config_loads() -> None:
    """The configuration shown in the README is valid as written."""
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    block = re.search(r"### Configure\n\n```yaml\n(.*?)```", readme, re.S)
    assert block is not None
    config = load_config(yaml.safe_load(block.group(1)))
    assert config.default_route == "POST /v1/chat/completions"
    assert config.accounts["alice"].parents == ["team-a"]
