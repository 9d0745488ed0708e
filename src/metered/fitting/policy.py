"""Policy: which models may be called (allow/deny lists) and how much output a tier gets.

Allow and deny lists fail closed. Entries are normalised like requested ids (see
:mod:`metered.pricing.resolve`) and may use ``*`` wildcards (``gpt-4o*``). A request is checked
by every name in its resolution chain, so ``GPT-4o ``, ``openai/gpt-4o``, a dated snapshot
or an alias of a denied model is denied too; a fine-tune of a denied base model is denied.
An allowlist admits a request when the id it sent, or a name it resolves to, is listed.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Final, Literal

from metered.errors import ConfigError, InvalidRequest, PolicyDenied
from metered.pricing.resolve import PROVIDER_PREFIXES, ResolvedModel, normalize_model_id
from metered.tokens.estimate import (
    GEMINI_CONFIG,
    GEMINI_OUTPUT_LIMIT,
    GEMINI_OUTPUT_LIMIT_KEYS,
    MAX_OUTPUT_TOKENS,
    OUTPUT_LIMIT_PARAMS,
    checked_output_limit,
    gemini_config,
    requested_output_limit,
)

__all__ = [
    "DEFAULT_URGENT_MULTIPLIER",
    "GEMINI_OUTPUT_LIMIT",
    "MAX_OUTPUT_TOKENS",
    "OUTPUT_LIMIT_PARAMS",
    "CapPolicy",
    "ModelPolicy",
    "OutputApi",
    "OutputCap",
    "apply_output_cap",
    "cap_output",
    "fit_thinking",
    "output_limit_param",
    "requested_output_limit",
    "set_output_limit",
]


def _pattern(entries: Iterable[str], key: str, *, strip_provider: bool) -> re.Pattern[str] | None:
    parts: list[str] = []
    for i, entry in enumerate(entries):
        try:
            # normalise around the wildcards so "GPT-4o*" and "gpt-4o*" mean the same
            name = "*".join(normalize_model_id(p) if p else "" for p in entry.split("*"))
            prefix, slash, rest = name.partition("/")
            if strip_provider and slash and prefix in PROVIDER_PREFIXES and rest:
                # denying "openai/gpt-4o" denies gpt-4o through every provider; an allow
                # entry keeps its provider (allowing openai/ must not admit azure/)
                name = rest
        except (InvalidRequest, PolicyDenied) as exc:
            raise ConfigError(f"{key}[{i}]", exc.message, entry) from None
        parts.append(fnmatch.translate(name))
    return re.compile("|".join(parts)) if parts else None


class ModelPolicy:
    """Allow/deny lists. ``allow=None`` allows every model not denied.

    Raises:
        ConfigError: an entry is not a valid model id.
    """

    def __init__(self, *, allow: Iterable[str] | None = None, deny: Iterable[str] = ()) -> None:
        self._allow = (
            None if allow is None else _pattern(allow, "models.allow", strip_provider=False)
        )
        self._allow_all = allow is None
        self._deny = _pattern(deny, "models.deny", strip_provider=True)

    @property
    def enforcing(self) -> bool:
        """Whether any list is configured."""
        return not self._allow_all or self._deny is not None

    def check(self, model: ResolvedModel) -> None:
        """Raise :class:`PolicyDenied` unless the model may be called."""
        deny = self._deny
        if deny is not None:
            names = (
                model.chain
                if model.fine_tune_base is None
                else (*model.chain, model.fine_tune_base)
            )
            for name in names:
                if deny.fullmatch(name):
                    raise PolicyDenied(
                        f"model {model.requested!r} is not allowed: {name!r} is on the denylist",
                        model=model.requested,
                        reason="denylist",
                    )
        if self._allow_all:
            return
        allow = self._allow
        if allow is None or not any(allow.fullmatch(name) for name in model.chain):
            raise PolicyDenied(
                f"model {model.requested!r} is not on the allowlist",
                model=model.requested,
                reason="not_allowlisted",
            )


# ======================================================================================
# Output caps: per-tier limits on max output tokens (token fit, step 3 of the pipeline).
# ======================================================================================

OutputApi = Literal["chat", "responses", "anthropic", "gemini"]
CapPolicy = Literal["clamp", "reject"]

DEFAULT_URGENT_MULTIPLIER: Final = Decimal("1.5")

_MIN_THINKING: Final = 1024  # Anthropic's least thinking budget
# o-series and gpt-5 reasoning models reject max_tokens in chat
_COMPLETION_TOKENS_MODELS = re.compile(r"(?:o\d|gpt-5|codex-mini)(?![a-z0-9])")


@dataclass(frozen=True, slots=True)
class OutputCap:
    """The output limit to send upstream.

    Attributes:
        limit: the limit to set; ``None`` only when there is no request limit, no cap and
            no default (nothing to enforce).
        param: the body parameter that carries it for this model and API; a dotted path
            names a nested key (Gemini's ``generationConfig.maxOutputTokens``).
        clamped_from: the caller's limit when it was lowered to the cap, else ``None``.
        defaulted: the caller set no limit and ``limit`` was filled in.
    """

    limit: int | None
    param: str
    clamped_from: int | None = None
    defaulted: bool = False


def _config_int(value: int | None, key: str) -> int | None:
    if value is not None and (type(value) is not int or value < 1):
        raise ConfigError(key, "must be a positive integer", value)
    return value


def output_limit_param(
    model: str, api: OutputApi = "chat", *, body: Mapping[str, Any] | None = None
) -> str:
    """The parameter that limits output for ``model`` on ``api``.

    Chat: ``max_completion_tokens`` for o-series and gpt-5 models (they reject
    ``max_tokens``) and whenever ``body`` already uses it; ``max_tokens`` otherwise.
    Responses: ``max_output_tokens``. Anthropic: ``max_tokens``. Gemini:
    ``generationConfig.maxOutputTokens`` (a nested key).
    """
    if api == "gemini":
        return GEMINI_OUTPUT_LIMIT
    if api == "responses":
        return "max_output_tokens"
    if api == "anthropic":
        return "max_tokens"
    name = model.strip().lower().rsplit("/", 1)[-1].removeprefix("ft:")
    if _COMPLETION_TOKENS_MODELS.match(name) or (
        body is not None and body.get("max_completion_tokens") is not None
    ):
        return "max_completion_tokens"
    return "max_tokens"


def _multiplier(value: Decimal | int | float | str) -> Decimal:
    try:
        # a float goes through its repr so 1.1 means 1.1, not 1.100000000000000088...
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except (ArithmeticError, ValueError, TypeError):
        number = Decimal("NaN")
    if isinstance(value, bool) or not number.is_finite() or number <= 0:
        raise ConfigError("urgent_multiplier", "must be a positive number", value)
    return number


def cap_output(
    requested: int | None,
    *,
    cap: int | None,
    model: str,
    policy: CapPolicy = "clamp",
    urgent: bool = False,
    urgent_multiplier: Decimal | int | float | str = DEFAULT_URGENT_MULTIPLIER,
    default: int | None = None,
    api: OutputApi = "chat",
    param: str | None = None,
) -> OutputCap:
    """Apply an output cap to a request's limit.

    Args:
        requested: the caller's limit (see :func:`requested_output_limit`), or ``None``.
        cap: the tier's cap (``tiers.<name>.max_tokens``; the engine resolves an unknown
            tier to the smallest one); ``None`` for no cap.
        model: the model id, for the parameter name and error messages.
        policy: ``clamp`` lowers an over-cap limit (and records the original);
            ``reject`` refuses the call.
        urgent: the call gets ``cap * urgent_multiplier`` (rounded down).
        urgent_multiplier: the urgent allowance factor (exact decimal arithmetic).
        default: the limit to set when the caller set none (never above the cap); with no
            default the cap itself is set.
        api: ``chat``, ``responses``, ``anthropic`` or ``gemini``, for the parameter name.
        param: force the parameter name (default: :func:`output_limit_param`).

    Raises:
        InvalidRequest: ``requested`` is not a positive integer.
        PolicyDenied: ``policy="reject"`` and the limit is over the cap
            (``reason="max_tokens_over_cap"``).
        ConfigError: invalid ``cap``, ``default``, ``policy`` or ``urgent_multiplier``.
    """
    name = param or output_limit_param(model, api)
    if requested is not None:
        requested = checked_output_limit(requested, param=name)
    cap = _config_int(cap, "cap")
    default = _config_int(default, "default")
    if policy not in ("clamp", "reject"):
        raise ConfigError("policy", "must be 'clamp' or 'reject'", policy)
    if cap is not None and urgent:
        cap = max(1, int((cap * _multiplier(urgent_multiplier)).to_integral_value(ROUND_FLOOR)))
    if requested is None:
        limit = default if cap is None else min(default or cap, cap)
        return OutputCap(limit=limit, param=name, defaulted=limit is not None)
    if cap is None or requested <= cap:
        return OutputCap(limit=requested, param=name)
    if policy == "reject":
        raise PolicyDenied(
            f"{name}={requested} is over the {cap}-token output cap for model {model!r}",
            model=model,
            reason="max_tokens_over_cap",
        )
    return OutputCap(limit=cap, param=name, clamped_from=requested)


def apply_output_cap(body: Mapping[str, Any], cap: OutputCap) -> dict[str, Any]:
    """A copy of ``body`` whose output limit is ``cap`` (other limit names removed).

    The body is returned unchanged (copied) when ``cap.limit`` is ``None``.
    """
    out = dict(body)
    if cap.limit is not None:
        set_output_limit(out, cap.param, cap.limit)
    return out


def set_output_limit(body: dict[str, Any], param: str, limit: int) -> None:
    """Write ``limit`` at ``param`` in ``body``, in place, other spellings removed.

    A flat ``param`` replaces every output-limit name of the body. Gemini's nested
    ``generationConfig.maxOutputTokens`` is written into the body's generation config
    (whichever spelling the body uses), which is copied first: the nested object may be
    the caller's own.
    """
    if param != GEMINI_OUTPUT_LIMIT:
        for name in OUTPUT_LIMIT_PARAMS:
            body.pop(name, None)
        body[param] = limit
        return
    name, config = gemini_config(body)
    out = dict(config or {})
    for key in GEMINI_OUTPUT_LIMIT_KEYS:
        out.pop(key, None)
    out[GEMINI_OUTPUT_LIMIT_KEYS[0]] = limit
    for other in GEMINI_CONFIG:  # a null spelling beside it would be a second config
        if other != name:
            body.pop(other, None)
    body[name] = out


def fit_thinking(body: dict[str, Any], api: OutputApi, limit: int) -> None:
    """Keep a thinking budget below the output ``limit`` (in place), as the providers
    count thinking inside it: Anthropic's ``thinking.budget_tokens`` (at least 1024, its
    least) and Gemini's ``generationConfig.thinkingConfig.thinkingBudget`` (only a
    positive budget: ``-1`` is dynamic, ``0`` off). Gemini bills thoughts as output and
    counts them against ``maxOutputTokens`` (googleapis/python-genai issues 782, 811,
    2062), so the limit bounds the price either way; the lower budget leaves room for an
    answer. A budget below a model's least (128 on 2.5 Pro) is Gemini's to refuse."""
    if api == "anthropic":
        thinking = body.get("thinking")
        budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
        if type(budget) is int and budget >= limit:
            assert isinstance(thinking, dict)
            body["thinking"] = {**thinking, "budget_tokens": max(_MIN_THINKING, limit - 1)}
    elif api == "gemini":
        name, config = gemini_config(body)
        if config is None:
            return
        for key in ("thinkingConfig", "thinking_config"):
            thinking = config.get(key)
            if not isinstance(thinking, Mapping):
                continue
            for field in ("thinkingBudget", "thinking_budget"):
                budget = thinking.get(field)
                if type(budget) is int and budget > 0 and budget >= limit:
                    thinking = {**thinking, field: max(1, limit - 1)}
                    config = {**config, key: thinking}
                    body[name] = config
