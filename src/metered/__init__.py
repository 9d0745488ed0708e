"""metered: know and control what every LLM chat call costs.

::

    from openai import OpenAI
    from metered import Meter, MeteredOpenAI

    meter = Meter.from_yaml("metered.yaml")      # or Meter() / Meter(config={...})
    client = MeteredOpenAI(OpenAI(), meter=meter, account="team-a")
    meter.spent("team-a"), meter.remaining("team-a")

Importing ``metered`` is cheap: the engine, the SDK proxies and the middleware load on
first use, and the SDKs themselves only when a proxy wraps a client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from metered.errors import (
    BudgetExceeded,
    ConfigError,
    ContextOverflow,
    InvalidRequest,
    LedgerError,
    MeteredError,
    PolicyDenied,
    UnknownModel,
    UnknownTier,
    UpstreamError,
)
from metered.usage import Usage

if TYPE_CHECKING:
    from metered.clients import (
        MeteredAnthropic,
        MeteredAsyncAnthropic,
        MeteredAsyncOpenAI,
        MeteredOpenAI,
    )
    from metered.context import CallerContext, bind
    from metered.engine import Call, Meter
    from metered.http.asgi import MeteredMiddleware
    from metered.http.identity import ApiKeys
    from metered.http.wsgi import MeteredWSGIMiddleware
    from metered.ledger import Budget, MemoryLedger, RedisLedger
    from metered.pricing.route import Quote
    from metered.records import UsageRecord

__version__ = "0.1.0"

__all__ = [
    "ApiKeys",
    "Budget",
    "BudgetExceeded",
    "Call",
    "CallerContext",
    "ConfigError",
    "ContextOverflow",
    "InvalidRequest",
    "LedgerError",
    "MemoryLedger",
    "Meter",
    "MeteredAnthropic",
    "MeteredAsyncAnthropic",
    "MeteredAsyncOpenAI",
    "MeteredError",
    "MeteredMiddleware",
    "MeteredOpenAI",
    "MeteredWSGIMiddleware",
    "PolicyDenied",
    "Quote",
    "RedisLedger",
    "UnknownModel",
    "UnknownTier",
    "UpstreamError",
    "Usage",
    "UsageRecord",
    "__version__",
    "bind",
]

# public name -> module that defines it (imported on first access)
_LAZY = {
    "ApiKeys": "metered.http.identity",
    "Budget": "metered.ledger",
    "Call": "metered.engine",
    "CallerContext": "metered.context",
    "MemoryLedger": "metered.ledger",
    "Meter": "metered.engine",
    "MeteredAnthropic": "metered.clients",
    "MeteredAsyncAnthropic": "metered.clients",
    "MeteredAsyncOpenAI": "metered.clients",
    "MeteredMiddleware": "metered.http.asgi",
    "MeteredOpenAI": "metered.clients",
    "MeteredWSGIMiddleware": "metered.http.wsgi",
    "Quote": "metered.pricing.route",
    "RedisLedger": "metered.ledger",
    "UsageRecord": "metered.records",
    "bind": "metered.context",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'metered' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
