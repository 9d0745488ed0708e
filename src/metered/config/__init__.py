"""Typed configuration, budgets and the YAML loader.

Modules: :mod:`~metered.config.models` (the pydantic models), :mod:`~metered.config.budgets`
(windows, periods, :func:`parse_budget`), :mod:`~metered.config.load` (:func:`load_config`,
:func:`load_yaml`, error formatting) and :mod:`~metered.config.callables` (hooks named by
import path). The names other modules use are re-exported here.
"""

from __future__ import annotations

from metered.config.budgets import Budget, Period, Window, WindowKind, parse_budget
from metered.config.callables import resolve_callable
from metered.config.load import format_key, load_config, load_yaml
from metered.config.models import (
    KNOWN_UPSTREAMS,
    AccountConfig,
    CatalogConfig,
    Config,
    GatewayConfig,
    Hooks,
    MatchRule,
    ModelOverride,
    ModelPrice,
    ModelsConfig,
    PriceFn,
    RecordsConfig,
    RouteConfig,
    TelemetryConfig,
    TierConfig,
)

__all__ = [
    "KNOWN_UPSTREAMS",
    "AccountConfig",
    "Budget",
    "CatalogConfig",
    "Config",
    "GatewayConfig",
    "Hooks",
    "MatchRule",
    "ModelOverride",
    "ModelPrice",
    "ModelsConfig",
    "Period",
    "PriceFn",
    "RecordsConfig",
    "RouteConfig",
    "TelemetryConfig",
    "TierConfig",
    "Window",
    "WindowKind",
    "format_key",
    "load_config",
    "load_yaml",
    "parse_budget",
    "resolve_callable",
]
