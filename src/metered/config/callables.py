"""Hooks and price functions named in config as ``package.module:function``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["resolve_callable"]


def resolve_callable(path: str) -> Callable[..., Any]:
    """Import ``package.module:function`` (or ``package.module.function``).

    Raises:
        ValueError: the path is malformed, the module cannot be imported, or the attribute
            is missing or not callable (used inside validation, so pydantic adds the key).
    """
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr or path.endswith((".ts", ".js")) or "/" in path:
        raise ValueError(
            "is not a Python import path; write 'package.module:function' "
            "(metered runs Python hooks, not scripts)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot be imported ({exc})") from None
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{attr!r} in {module_name!r} is not callable")
    return target
