"""Tests for the allow/deny lists of metered.policy (ModelPolicy)."""

from __future__ import annotations

import pytest

from metered.errors import ConfigError, PolicyDenied
from metered.fitting.policy import ModelPolicy
from metered.pricing.resolve import ResolvedModel, Resolver

RESOLVER = Resolver(aliases={"my-bot": "gpt-4o"}, deployments={"prod-4o": "gpt-4o"})


def resolve(model: str) -> ResolvedModel:
    return RESOLVER.resolve(model)


def denial(policy: ModelPolicy, model: str) -> str | None:
    """The reason ``model`` is refused, or ``None`` when it is allowed."""
    try:
        policy.check(resolve(model))
    except PolicyDenied as exc:
        return exc.reason
    return None


def test_no_lists_allow_everything() -> None:
    """Without lists every model passes and the policy is not enforcing."""
    policy = ModelPolicy()
    assert not policy.enforcing
    assert denial(policy, "anything-at-all") is None


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o",
        "GPT-4o",
        "  gpt-4o ",
        "openai/gpt-4o",
        "gpt-4o-2024-08-06",
        "my-bot",  # an alias of gpt-4o
        "azure/prod-4o",  # an Azure deployment of gpt-4o
    ],
)
def test_denylist_catches_every_spelling(model: str) -> None:
    """Case, whitespace, prefixes, snapshots and aliases are all denied (look-alikes with
    invisible or non-ASCII characters are refused before any list: test_resolve)."""
    policy = ModelPolicy(deny=["gpt-4o"])
    assert policy.enforcing
    assert denial(policy, model) == "denylist"


def test_denylist_catches_a_fine_tune_of_a_denied_base() -> None:
    """A fine-tune of a denied model is denied too."""
    policy = ModelPolicy(deny=["gpt-4o-mini"])
    assert denial(policy, "ft:gpt-4o-mini-2024-07-18:acme::abc123") == "denylist"


def test_denylist_entries_are_normalised() -> None:
    """An entry written with capitals and spaces matches the normalised id."""
    assert denial(ModelPolicy(deny=["  GPT-4o "]), "gpt-4o") == "denylist"


def test_denylist_entry_with_a_provider_prefix_denies_the_model() -> None:
    """deny: [openai/gpt-4o] also blocks gpt-4o requested without the prefix (fail closed)."""
    assert denial(ModelPolicy(deny=["openai/gpt-4o"]), "gpt-4o") == "denylist"


def test_denylist_wildcard() -> None:
    """gpt-4o* denies the gpt-4o family and nothing else."""
    policy = ModelPolicy(deny=["gpt-4o*"])
    assert denial(policy, "gpt-4o-mini") == "denylist"
    assert denial(policy, "GPT-4O-MINI-2024-07-18") == "denylist"
    assert denial(policy, "gpt-4.1") is None


def test_denylist_entries_are_literal_apart_from_wildcards() -> None:
    """A dot in an entry is a dot, not a regex wildcard."""
    policy = ModelPolicy(deny=["gpt-4.1"])
    assert denial(policy, "gpt-4.1") == "denylist"
    assert denial(policy, "gpt-401") is None


def test_denylist_does_not_catch_similar_names() -> None:
    """Denying gpt-4o leaves gpt-4o-mini and gpt-4 alone (exact match unless wildcarded)."""
    policy = ModelPolicy(deny=["gpt-4o"])
    assert denial(policy, "gpt-4o-mini") is None
    assert denial(policy, "gpt-4") is None


@pytest.mark.parametrize(
    "model", ["gpt-4o-mini", "GPT-4o-mini", "openai/gpt-4o-mini", "gpt-4o-mini-2024-07-18"]
)
def test_allowlist_admits_spellings_of_listed_models(model: str) -> None:
    """Any spelling that resolves to an allowed name passes."""
    assert denial(ModelPolicy(allow=["gpt-4o-mini"]), model) is None


def test_allowlist_admits_an_alias_of_a_listed_model() -> None:
    """An operator alias of an allowed model passes."""
    assert denial(ModelPolicy(allow=["gpt-4o"]), "my-bot") is None


def test_allowlist_refuses_unlisted_models() -> None:
    """A model not on the allowlist is refused with reason not_allowlisted."""
    policy = ModelPolicy(allow=["gpt-4o-mini"])
    assert denial(policy, "gpt-4o") == "not_allowlisted"
    assert denial(policy, "o1") == "not_allowlisted"


def test_allowlist_does_not_extend_to_fine_tunes() -> None:
    """Allowing a base model does not admit fine-tunes of it: they are other models."""
    policy = ModelPolicy(allow=["gpt-4o"])
    assert denial(policy, "ft:gpt-4o-2024-08-06:acme::x") == "not_allowlisted"
    assert denial(ModelPolicy(allow=["ft:gpt-4o*"]), "ft:gpt-4o-2024-08-06:acme::x") is None


def test_empty_allowlist_refuses_everything() -> None:
    """allow: [] fails closed: no model passes."""
    policy = ModelPolicy(allow=[])
    assert policy.enforcing
    assert denial(policy, "gpt-4o") == "not_allowlisted"


def test_deny_wins_over_allow() -> None:
    """A model on both lists is denied."""
    policy = ModelPolicy(allow=["gpt-4o*"], deny=["gpt-4o-mini"])
    assert denial(policy, "gpt-4o-mini") == "denylist"
    assert denial(policy, "gpt-4o") is None


def test_denial_names_the_model_and_the_entry() -> None:
    """The error carries the requested id and says which listed name matched."""
    with pytest.raises(PolicyDenied) as caught:
        ModelPolicy(deny=["gpt-4o"]).check(resolve("openai/gpt-4o"))
    assert caught.value.model == "openai/gpt-4o"
    assert "'gpt-4o' is on the denylist" in caught.value.message


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"deny": ["gpt-4o", "gpt-4\u043e"]}, "models.deny[1]"),
        ({"allow": ["  "]}, "models.allow[0]"),
    ],
)
def test_invalid_entries_are_config_errors(kwargs: dict[str, list[str]], key: str) -> None:
    """A look-alike or empty entry is refused at load time, naming its position."""
    with pytest.raises(ConfigError) as caught:
        ModelPolicy(**kwargs)
    assert caught.value.key == key
