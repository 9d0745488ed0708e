"""Tests for metered.resolve: model id normalisation and the chain of names to price by."""

from __future__ import annotations

import pytest

from metered.errors import ConfigError, InvalidRequest, PolicyDenied
from metered.pricing.resolve import Resolver, normalize_model_id

# --- normalisation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "gpt-4o",
        "GPT-4o",
        "  gpt-4o\n",
    ],
)
def test_normalisation_folds_case_and_surrounding_space(raw: str) -> None:
    """Spellings of the same id that differ in case or surrounding space are one id."""
    assert normalize_model_id(raw) == "gpt-4o"


@pytest.mark.parametrize(
    "raw",
    [
        "gpt-4\u043e",  # Cyrillic о
        "gpt-4\u03bf",  # Greek omicron
        "gpt\u20104o",  # Unicode hyphen
        "gpt\u200b-4o",  # zero-width space
        "\ufeffgpt-4o\u2060",  # BOM and word joiner
        "gpt-4\u00ado",  # soft hyphen
        "ｇｐｔ-４ｏ",  # fullwidth forms: NFKC-equal to gpt-4o, read as written upstream
        "gpt 4o",
        "gpt-4o\x00",
    ],
)
def test_look_alike_ids_are_denied(raw: str) -> None:
    """A look-alike id is refused by policy: never mapped to the ASCII id it resembles
    (the allow-list would check one model and the upstream would read another)."""
    with pytest.raises(PolicyDenied) as info:
        normalize_model_id(raw)
    assert info.value.reason == "invalid_model_id"
    assert info.value.model == raw


@pytest.mark.parametrize("raw", [None, 4, b"gpt-4o", ["gpt-4o"], {"model": "gpt-4o"}])
def test_non_string_model_is_an_invalid_request(raw: object) -> None:
    """A model that is not a string is a malformed request about the 'model' param."""
    with pytest.raises(InvalidRequest) as info:
        normalize_model_id(raw)
    assert info.value.param == "model"


@pytest.mark.parametrize("raw", ["", "   "])
def test_empty_model_is_an_invalid_request(raw: str) -> None:
    """An empty id (after normalisation) is a malformed request."""
    with pytest.raises(InvalidRequest, match="must not be empty"):
        normalize_model_id(raw)


# --- the chain ---------------------------------------------------------------------------

RESOLVER = Resolver(
    aliases={"my-chatbot": "claude-sonnet-4-5", "Support-Bot": "my-chatbot"},
    deployments={"prod-4o": "gpt-4o", "prod-mini": "gpt-4o-mini-2024-07-18"},
)


def test_plain_id_is_its_own_chain() -> None:
    """A catalog id resolves to itself with no provider hint."""
    resolved = RESOLVER.resolve("gpt-4o")
    assert resolved.chain == ("gpt-4o",)
    assert (resolved.base, resolved.provider, resolved.is_fine_tune) == ("gpt-4o", None, False)


def test_requested_id_is_kept_as_sent() -> None:
    """The id the caller sent is kept verbatim beside the normalised one."""
    resolved = RESOLVER.resolve(" GPT-4o ")
    assert (resolved.requested, resolved.normalized) == (" GPT-4o ", "gpt-4o")


@pytest.mark.parametrize(
    ("raw", "chain", "provider"),
    [
        ("openai/gpt-4o", ("openai/gpt-4o", "gpt-4o"), "openai"),
        (
            "anthropic/claude-haiku-4-5",
            ("anthropic/claude-haiku-4-5", "claude-haiku-4-5"),
            "anthropic",
        ),
        ("vertex_ai/gemini-2.5-pro", ("vertex_ai/gemini-2.5-pro", "gemini-2.5-pro"), "vertex_ai"),
    ],
)
def test_provider_prefix_is_stripped_and_recorded(
    raw: str, chain: tuple[str, ...], provider: str
) -> None:
    """'openai/gpt-4o' prices as gpt-4o and remembers who serves it."""
    resolved = RESOLVER.resolve(raw)
    assert (resolved.chain, resolved.provider) == (chain, provider)


def test_unknown_prefix_is_part_of_the_id() -> None:
    """A slash that is not a known provider prefix is kept (e.g. org/model ids)."""
    assert RESOLVER.resolve("acme/gpt-4o").chain == ("acme/gpt-4o",)


@pytest.mark.parametrize(
    ("raw", "base"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("o3-2025-04-16", "o3"),
    ],
)
def test_dated_snapshot_falls_back_to_its_base(raw: str, base: str) -> None:
    """A dated snapshot id is tried first, then its undated base."""
    assert RESOLVER.resolve(raw).chain == (raw, base)


def test_prefixed_dated_id_has_three_names() -> None:
    """Prefix and date both come off, most specific first."""
    resolved = RESOLVER.resolve("anthropic/claude-sonnet-4-5-20250929")
    assert resolved.chain == (
        "anthropic/claude-sonnet-4-5-20250929",
        "claude-sonnet-4-5-20250929",
        "claude-sonnet-4-5",
    )


def test_alias_resolves_to_its_target() -> None:
    """An operator alias prices as the model it stands for, unless listed itself."""
    assert RESOLVER.resolve("my-chatbot").chain == ("my-chatbot", "claude-sonnet-4-5")


def test_alias_of_an_alias_is_followed() -> None:
    """Aliases chain; alias names are normalised like requested ids."""
    resolved = RESOLVER.resolve("SUPPORT-BOT")
    assert resolved.chain == ("support-bot", "claude-sonnet-4-5")
    assert resolved.base == "claude-sonnet-4-5"


@pytest.mark.parametrize(
    "aliases",
    [{"a": "b", "b": "a"}, {"loop": "LOOP"}, {"a": "b", "b": "c", "c": "a"}],
)
def test_alias_cycle_is_a_config_error(aliases: dict[str, str]) -> None:
    """A cycle of aliases is refused when the resolver is built, naming models.aliases."""
    with pytest.raises(ConfigError, match="aliases form a cycle") as info:
        Resolver(aliases=aliases)
    assert info.value.key.startswith("models.aliases.")


def test_alias_to_a_look_alike_is_a_config_error() -> None:
    """An alias target with a Cyrillic letter is caught at load time, not per call."""
    with pytest.raises(ConfigError) as info:
        Resolver(aliases={"bot": "gpt-4\u043e"})
    assert info.value.key == "models.aliases.bot"


@pytest.mark.parametrize("raw", ["prod-4o", "azure/prod-4o", "AZURE/Prod-4o"])
def test_azure_deployment_resolves_to_its_base_model(raw: str) -> None:
    """An Azure deployment name prices as its base model, served by Azure."""
    resolved = RESOLVER.resolve(raw)
    assert resolved.base == "gpt-4o"
    assert resolved.provider == "azure"


def test_azure_deployment_of_a_dated_model_keeps_the_date() -> None:
    """A deployment of a dated snapshot tries the dated id, then its base."""
    assert RESOLVER.resolve("prod-mini").chain == (
        "prod-mini",
        "gpt-4o-mini-2024-07-18",
        "gpt-4o-mini",
    )


def test_fine_tune_never_resolves_to_its_base_price() -> None:
    """A fine-tune is priced as a fine-tune: the base model is not in its chain."""
    resolved = RESOLVER.resolve("ft:gpt-4o-mini-2024-07-18:acme::x1y2")
    assert resolved.chain == ("ft:gpt-4o-mini-2024-07-18:acme::x1y2", "ft:gpt-4o-mini:acme::x1y2")
    assert "gpt-4o-mini" not in resolved.chain
    assert (resolved.fine_tune_base, resolved.provider, resolved.is_fine_tune) == (
        "gpt-4o-mini",
        "openai",
        True,
    )


def test_undated_fine_tune_is_its_own_chain() -> None:
    """ft:gpt-4o-mini:acme::x has only its own name to be priced by."""
    resolved = RESOLVER.resolve("ft:gpt-4o-mini:acme::x")
    assert resolved.chain == ("ft:gpt-4o-mini:acme::x",)
    assert resolved.fine_tune_base == "gpt-4o-mini"


def test_resolution_is_cached_per_requested_id() -> None:
    """Resolving the same id twice returns the same object (no work on the hot path)."""
    assert RESOLVER.resolve("gpt-4o-2024-08-06") is RESOLVER.resolve("gpt-4o-2024-08-06")


@pytest.mark.parametrize("raw", [42, ["gpt-4o"], {"model": "gpt-4o"}])
def test_resolve_rejects_non_strings(raw: object) -> None:
    """Resolver.resolve refuses a non-string model like normalize_model_id, unhashable
    JSON values included."""
    with pytest.raises(InvalidRequest):
        RESOLVER.resolve(raw)  # type: ignore[arg-type]


def test_overlong_model_id_is_refused() -> None:
    """A model id longer than MAX_MODEL_ID_LENGTH is a 400, not a cache or span entry."""
    from metered.pricing.resolve import MAX_MODEL_ID_LENGTH

    with pytest.raises(InvalidRequest, match="at most") as info:
        normalize_model_id("m" * (MAX_MODEL_ID_LENGTH + 1))
    assert info.value.param == "model"
    assert normalize_model_id("m" * MAX_MODEL_ID_LENGTH) == "m" * MAX_MODEL_ID_LENGTH


def test_an_operator_can_list_a_non_ascii_name_verbatim_as_an_alias() -> None:
    resolver = Resolver(aliases={"ｇｐｔ-４ｏ": "gpt-4o"})
    assert resolver.resolve("ｇｐｔ-４ｏ").chain[:2] == ("ｇｐｔ-４ｏ", "gpt-4o")
    with pytest.raises(PolicyDenied):
        resolver.resolve("gpt\u200b-4o")  # other look-alikes stay refused
