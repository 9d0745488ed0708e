"""Loading a configuration: YAML or a mapping in, a validated :class:`Config` out.

Every validation problem becomes one :class:`~metered.errors.ConfigError` naming the
key path and the bad value, e.g.
``routes."POST /v1/chat/completions".models.gpt-4o: '5 dollars' is not a price``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from metered.config.models import Config
from metered.errors import ConfigError
from metered.pricing.resolve import Resolver

__all__ = ["format_key", "load_config", "load_yaml"]


def format_key(loc: tuple[str | int, ...] | list[str | int]) -> str:
    """Render a key path the way users wrote it: ``routes."POST /v1/chat".models.gpt-4o``."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            continue
        text = str(item)
        if re.fullmatch(r"[A-Za-z0-9_:\-]+(\.[0-9]+)?", text) and " " not in text:
            parts.append(("." if parts else "") + text)
        else:
            parts.append(("." if parts else "") + '"' + text.replace('"', '\\"') + '"')
    return "".join(parts)


def _first_error(exc: ValidationError) -> ConfigError:
    """One clear line for the first problem pydantic found."""
    err = exc.errors(include_url=False)[0]
    # pydantic puts union members and validator names into loc; users never wrote those
    loc = [
        p
        for p in err["loc"]
        if not (isinstance(p, str) and (p.startswith("function-") or p in _UNION_MEMBERS))
    ]
    key = format_key(loc)
    if err["type"] == "extra_forbidden":
        return ConfigError(key, "is not a known setting (check the spelling)")
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if msg.startswith("Input should be"):
        msg = "should be" + msg[len("Input should be") :]
    value = err.get("input")
    if isinstance(value, (dict, list)):
        return ConfigError(key, msg)
    return ConfigError(key, msg, value)


_UNION_MEMBERS = frozenset({"ModelPrice", "str", "list[str]", "int", "bool"})


def load_config(data: Mapping[str, Any] | Config | None) -> Config:
    """Validate a config mapping (as loaded from YAML/JSON) into a :class:`Config`.

    Raises:
        ConfigError: the first problem, naming its key path and value.
    """
    if isinstance(data, Config):
        return data
    if data is None:
        return Config()
    if not isinstance(data, Mapping):
        raise ConfigError("", "the configuration must be a mapping of settings", data)
    allow_large = data.get("allow_large_prices", False) is True
    try:
        config = Config.model_validate(dict(data), context={"allow_large_prices": allow_large})
    except ValidationError as exc:
        raise _first_error(exc) from None
    _check_references(config)
    return config


def _check_references(config: Config) -> None:
    """Problems that span sections: names that must exist elsewhere, alias cycles."""
    if config.default_route is not None and config.default_route not in config.routes:
        raise ConfigError("default_route", "is not one of the routes", config.default_route)
    for name, account in config.accounts.items():
        if account.tier is not None and account.tier not in config.tiers:
            raise ConfigError(f"accounts.{name}.tier", "is not one of the tiers", account.tier)
        for i, parent in enumerate(account.parents):
            if parent == name:
                raise ConfigError(f"accounts.{name}.parents[{i}]", "is the account itself", parent)
    Resolver(aliases=config.models.aliases, deployments=config.models.deployments)


def load_yaml(path: str | Path) -> Config:
    """Load and validate a YAML config file. Relative paths in the settings that name
    files (:data:`FILE_SETTINGS`) are relative to the file's directory.

    Raises:
        ConfigError: unreadable file, invalid YAML, or invalid settings.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot be read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(str(path), f"is not valid YAML{where}") from None
    if isinstance(data, dict):
        data = _files_beside(data, Path(os.path.abspath(Path(path).parent)))
    return load_config(data if data is not None else {})


#: Settings that name files: (section, key). Read from a YAML file, a relative path is
#: relative to that file's directory (as the file's author sees it), not to wherever the
#: process happens to start; ``~`` is the user's home.
FILE_SETTINGS = (
    ("catalog", "genai_prices_data"),
    ("catalog", "litellm"),
    ("records", "path"),
    ("records", "outbox"),
)
_NOT_FILES = frozenset({"installed"})  # catalog.litellm: the installed package's copy


def _files_beside(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """``data`` with the relative paths of :data:`FILE_SETTINGS` made relative to
    ``base``; anything that is not a path string is left for validation to report."""
    out = dict(data)
    for section, key in FILE_SETTINGS:
        values = out.get(section)
        if not isinstance(values, dict):
            continue
        value = values.get(key)
        if not isinstance(value, str) or not value or value in _NOT_FILES:
            continue
        where = Path(value).expanduser()
        if not where.is_absolute():
            where = base / where
        out[section] = {**values, key: str(where)}
        values = out[section]
    return out
