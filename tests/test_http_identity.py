"""Tests for metered.http.identity: API keys and resolvers that name the caller."""

from __future__ import annotations

from typing import Any

import pytest

from metered.context import CallerContext
from metered.errors import ConfigError
from metered.http.identity import ApiKeys, caller_of, is_unidentified


def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "headers": list(headers)}


def test_api_keys_map_bearer_and_x_api_key_headers_to_accounts() -> None:
    """Both header styles resolve, in ASGI scopes and WSGI environs alike."""
    keys = ApiKeys({"sk-live-acme": "acme"})
    assert keys(scope((b"authorization", b"Bearer sk-live-acme"))) == "acme"
    assert keys(scope((b"x-api-key", b"sk-live-acme"))) == "acme"
    assert keys({"HTTP_AUTHORIZATION": "Bearer sk-live-acme"}) == "acme"
    assert keys({"HTTP_X_API_KEY": "sk-live-acme"}) == "acme"


def test_api_keys_ignore_other_schemes_and_unknown_keys() -> None:
    """Basic auth and unknown keys are unidentified when no secret is configured."""
    keys = ApiKeys({"sk-live-acme": "acme"})
    assert keys(scope((b"authorization", b"Basic sk-live-acme"))) is None
    assert keys(scope((b"authorization", b"Bearer sk-unknown"))) is None
    assert keys(scope()) is None


def test_api_keys_name_unknown_keys_by_keyed_hash() -> None:
    """With a secret, an unknown key becomes key:<16 hex>, stable and not the key itself."""
    account = ApiKeys(secret="s3cret").account("sk-live-XYZ")
    assert account is not None
    assert account.startswith("key:")
    assert len(account) == len("key:") + 16
    assert "XYZ" not in account
    assert ApiKeys(secret="s3cret").account("sk-live-XYZ") == account
    assert ApiKeys(secret="other").account("sk-live-XYZ") != account


def test_api_keys_keep_no_raw_key() -> None:
    """Neither repr nor the stored digests hold the key text."""
    keys = ApiKeys({"sk-live-very-secret": "acme"})
    assert "very-secret" not in repr(keys)
    assert all(b"very-secret" not in digest for digest in keys._digests)


def test_api_keys_from_env_parses_pairs_and_never_echoes_a_key() -> None:
    """METERED_API_KEYS holds key=account pairs; a malformed pair is named by position."""
    keys = ApiKeys.from_env(environ={"METERED_API_KEYS": "sk-a=acme, sk-b=globex"})
    assert (keys.account("sk-a"), keys.account("sk-b"), keys.account("sk-c")) == (
        "acme",
        "globex",
        None,
    )
    with pytest.raises(ConfigError) as error:
        ApiKeys.from_env(environ={"METERED_API_KEYS": "sk-a=acme sk-secret-no-account"})
    assert "sk-secret" not in str(error.value)
    assert "METERED_API_KEYS[1]" in str(error.value)


def test_caller_of_normalises_resolver_results() -> None:
    """Names and callers pass, empty ones are unidentified, anything else is a bug."""
    caller = CallerContext(account="acme", tier="pro")
    assert caller_of("acme") == "acme"
    assert caller_of(caller) is caller
    assert caller_of("") is None
    assert caller_of(CallerContext()) is None
    assert caller_of(None) is None
    with pytest.raises(TypeError):
        caller_of(42)


def test_unknown_key_named_by_secret_is_tracked_but_not_identified() -> None:
    """With a secret, an unlisted key gets a stable account but still counts as unidentified."""
    keys = ApiKeys({"sk-known": "acme"}, secret="s3cret")
    known = keys.account("sk-known")
    unknown = keys.account("sk-random-1")
    assert known == "acme"
    assert not is_unidentified(known)
    assert unknown is not None
    assert unknown.startswith("key:")
    assert unknown == keys.account("sk-random-1")  # stable
    assert is_unidentified(unknown)
    assert is_unidentified(None)
