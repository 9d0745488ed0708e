"""metered: know and control what every LLM chat call costs."""

from metered.exceptions import (
    BudgetExceeded,
    ConfigError,
    ContextOverflow,
    InvalidRequest,
    LedgerError,
    MeteredError,
    PolicyDenied,
    RequestTooLarge,
    UnknownModel,
    UpstreamError,
)
from metered.usage import Usage

__version__ = "0.1.0"

__all__ = [
    "BudgetExceeded",
    "ConfigError",
    "ContextOverflow",
    "InvalidRequest",
    "LedgerError",
    "MeteredError",
    "PolicyDenied",
    "RequestTooLarge",
    "UnknownModel",
    "UpstreamError",
    "Usage",
    "__version__",
]
