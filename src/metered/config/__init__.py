"""Typed configuration and the YAML loader.

Every validation problem becomes one :class:`~metered.errors.ConfigError` naming the
key path and the bad value, e.g.
``routes."POST /v1/chat/completions".models.gpt-4o: '5 dollars' is not a price``.
Unknown keys are errors: a typo must never silently disable a guardrail.

The route shape of the pricing-operations guides loads as written::

    routes:
      "POST /v1/chat/completions":
        upstream: openai
        type: token-based
        models:
          gpt-4o: "$0.05"
          ft:gpt-4o:acme-support-v2: "$0.08"
        fallback: "$0.03"
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from metered.errors import ConfigError
from metered.money import PriceUnit, Rate, parse_amount, parse_rate

__all__ = [
    "AccountConfig",
    "CatalogConfig",
    "Config",
    "MatchRule",
    "ModelOverride",
    "ModelPrice",
    "ModelsConfig",
    "RecordsConfig",
    "RouteConfig",
    "TelemetryConfig",
    "TierConfig",
    "format_key",
    "load_config",
    "load_yaml",
]


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


def _allow_large(info: ValidationInfo) -> bool:
    context = info.context if isinstance(info.context, dict) else {}
    return bool(context.get("allow_large_prices", False))


def _rate_validator(
    default_unit: PriceUnit | None, allowed: frozenset[PriceUnit] | None
) -> Callable[[Any, ValidationInfo], Rate]:
    def validate(value: Any, info: ValidationInfo) -> Rate:
        if isinstance(value, Rate):
            return value
        try:
            return parse_rate(
                value,
                default_unit=default_unit,
                allowed=allowed,
                allow_large=_allow_large(info),
            )
        except ConfigError as exc:
            raise ValueError(exc.problem) from None

    return validate


def _amount(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    try:
        return parse_amount(value)
    except ConfigError as exc:
        raise ValueError(exc.problem) from None


_TOKEN = frozenset({"token"})
#: A per-token price: "$3 / 1M tokens".
TokenRate = Annotated[Rate, BeforeValidator(_rate_validator(None, _TOKEN))]
#: A per-request price: "$0.05" (a unit may be written: "$0.05/request").
RequestRate = Annotated[Rate, BeforeValidator(_rate_validator("request", frozenset({"request"})))]
#: A per-second price: "$0.0005/s".
SecondRate = Annotated[Rate, BeforeValidator(_rate_validator(None, frozenset({"second"})))]
#: Per request, per token or per second: "$0.05", "$3 / 1M tokens", "$0.001/s".
AnyRate = Annotated[Rate, BeforeValidator(_rate_validator("request", None))]
#: A plain dollar amount: "$5".
Amount = Annotated[Decimal, BeforeValidator(_amount)]


def _markup(value: Any) -> Decimal:
    """``"20%"`` (cost + 20%) or ``"1.2x"`` (a multiplier) → multiplier as Decimal.

    Bare numbers are refused: ``0.2`` reads as "+20%" to some and "a fifth of cost" to
    others, and either guess is a pricing error.
    """
    hint = "write a percentage over cost such as '20%' or a multiplier such as '1.2x'"
    if not isinstance(value, str):
        raise ValueError(f"is ambiguous; {hint}")
    text = value.strip().lower()
    try:
        if text.endswith("%"):
            multiplier = 1 + Decimal(text[:-1].strip()) / 100
        elif text.endswith("x"):
            multiplier = Decimal(text[:-1].strip())
        else:
            Decimal(text)  # a number without a unit is ambiguous; anything else is not a markup
            raise ValueError(f"is ambiguous; {hint}")
    except ArithmeticError:
        raise ValueError(f"is not a markup; {hint}") from None
    if not multiplier.is_finite() or multiplier < 0:
        raise ValueError("must be a finite markup that leaves a non-negative price")
    if multiplier > 100:
        raise ValueError(f"is a markup over 100x; {hint}")
    return multiplier


Markup = Annotated[Decimal, BeforeValidator(_markup)]


def _budget(value: Any) -> str:
    from metered.ledger import parse_budget

    try:
        parse_budget(value, key="")
    except ConfigError as exc:
        raise ValueError(exc.problem) from None
    return str(value)


#: A budget: "$5/day", "$100/month", "$20/week", "$3/24h" (rolling), "$50" (lifetime).
BudgetText = Annotated[str, BeforeValidator(_budget)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ModelOverride(_Strict):
    """Operator override of upstream list prices (what the provider charges you).

    Token prices are per token as written (``"$3 / 1M tokens"``); ``request`` and
    ``second`` cover per-request and per-second (self-hosted, SageMaker-style) billing.
    """

    provider: str | None = None
    input: TokenRate | None = None
    output: TokenRate | None = None
    cache_read: TokenRate | None = None
    cache_write: TokenRate | None = None
    reasoning: TokenRate | None = None
    request: RequestRate | None = None
    second: SecondRate | None = None
    context_window: int | None = Field(default=None, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _some_price(self) -> ModelOverride:
        if (
            self.input is None
            and self.output is None
            and self.request is None
            and self.second is None
        ):
            raise ValueError("needs at least one of input/output, request or second")
        if (self.input is None) != (self.output is None):
            raise ValueError("token prices need both input and output")
        return self


class CatalogConfig(_Strict):
    """Where upstream list prices come from."""

    source: Literal["genai-prices", "none"] = "genai-prices"
    overrides: dict[str, ModelOverride] = Field(default_factory=dict)


class ModelsConfig(_Strict):
    """Model naming and the allow/deny guardrails shared by every route."""

    aliases: dict[str, str] = Field(default_factory=dict)
    deployments: dict[str, str] = Field(
        default_factory=dict, description="Azure deployment name -> base model"
    )
    allow: list[str] | None = None
    deny: list[str] = Field(default_factory=list)


class ModelPrice(_Strict):
    """A per-model resale price given as token rates or a markup over cost."""

    input: TokenRate | None = None
    output: TokenRate | None = None
    cache_read: TokenRate | None = None
    cache_write: TokenRate | None = None
    reasoning: TokenRate | None = None
    request: RequestRate | None = None
    markup: Markup | None = None

    @model_validator(mode="after")
    def _shape(self) -> ModelPrice:
        has_tokens = self.input is not None or self.output is not None
        if self.markup is not None and (has_tokens or self.request is not None):
            raise ValueError("give either a markup or explicit rates, not both")
        if has_tokens and (self.input is None or self.output is None):
            raise ValueError("token rates need both input and output")
        if self.markup is None and not has_tokens and self.request is None:
            raise ValueError("needs input/output rates, a request price or a markup")
        return self


def _model_price(value: Any, info: ValidationInfo) -> Any:
    # A bare string is a flat price ("$0.05" per request) or, if it names tokens, an error:
    # one rate cannot say both the input and the output price.
    if isinstance(value, (str, int, float, Decimal)) and not isinstance(value, bool):
        rate = _rate_validator("request", None)(value, info)
        if rate.unit == "token":
            raise ValueError(
                "is one token rate; write {input: '$3 / 1M tokens', output: '$15 / 1M tokens'}"
            )
        if rate.unit == "second":
            raise ValueError("is a per-second price; resale prices are per request or per token")
        return ModelPrice(request=rate)
    return value


RoutePrice = Annotated[ModelPrice, BeforeValidator(_model_price)]


class MatchRule(_Strict):
    """First-match pricing rule: ``where`` keys are ``headers.x``, ``body.x`` or ``metadata.x``."""

    where: dict[str, str | int | bool | list[str]]
    price: RoutePrice
    name: str | None = None

    @field_validator("where")
    @classmethod
    def _where_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("needs at least one condition")
        for key in value:
            scope, _, field = key.partition(".")
            if scope not in ("headers", "body", "metadata") or not field:
                raise ValueError(
                    f"condition {key!r} must start with headers., body. or metadata. "
                    "and name a field"
                )
        return value


class PriceFn(_Strict):
    """A Python callable that prices a call: ``fn: "package.module:function"``."""

    fn: str

    @field_validator("fn")
    @classmethod
    def _importable(cls, value: str) -> str:
        resolve_callable(value)
        return value


class Hooks(_Strict):
    """Python hooks, as ``module:function`` import paths."""

    on_request: str | None = Field(default=None, alias="onRequest")
    on_response: str | None = Field(default=None, alias="onResponse")

    @field_validator("on_request", "on_response")
    @classmethod
    def _importable(cls, value: str | None) -> str | None:
        if value is not None:
            resolve_callable(value)
        return value


class RouteConfig(_Strict):
    """How one route (an HTTP route, or a named route for client calls) is priced and settled."""

    upstream: str | None = None
    type: Literal["token-based", "flat"] = "token-based"
    models: dict[str, RoutePrice] = Field(default_factory=dict)
    markup: Markup | None = None
    match: list[MatchRule] = Field(default_factory=list)
    price: PriceFn | None = None
    fallback: RoutePrice | None = None
    unknown_model: Literal["reject", "fallback"] | None = None
    floors: dict[str, Amount] = Field(default_factory=dict)
    ceilings: dict[str, Amount] = Field(default_factory=dict)
    settlement: Literal["after-response", "before-response"] = "after-response"
    refund_on_failure: bool = False
    settle_partial_streams: bool = True
    hooks: Hooks | None = None
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> RouteConfig:
        if self.unknown_model == "fallback" and self.fallback is None:
            raise ValueError("unknown_model is 'fallback' but no fallback price is set")
        if self.type == "flat" and self.price is None and not self.models and not self.match:
            raise ValueError("a flat route needs a price, models or match rules")
        for model, floor in self.floors.items():
            ceiling = self.ceilings.get(model)
            if ceiling is not None and ceiling < floor:
                raise ValueError(f"floor {floor} for {model!r} is above its ceiling {ceiling}")
        return self

    @property
    def unknown_policy(self) -> Literal["reject", "fallback"]:
        """``fallback`` when a fallback price is set (the guides' shape), else ``reject``."""
        if self.unknown_model is not None:
            return self.unknown_model
        return "fallback" if self.fallback is not None else "reject"


class TierConfig(_Strict):
    """A customer tier: output caps and default budgets."""

    max_tokens: int | None = Field(default=None, gt=0)
    urgent_multiplier: Decimal = Field(default=Decimal("1.5"), gt=0)
    cap_policy: Literal["clamp", "reject"] = "clamp"
    budgets: list[BudgetText] = Field(default_factory=list)


class AccountConfig(_Strict):
    """A named account: its tier, its own budgets and the accounts it also charges (a team)."""

    tier: str | None = None
    budgets: list[BudgetText] = Field(default_factory=list)
    parents: list[str] = Field(default_factory=list)


class TelemetryConfig(_Strict):
    """Span and metric options."""

    enabled: bool = True
    capture_content: bool = False


class RecordsConfig(_Strict):
    """Where per-call usage records go."""

    sink: Literal["none", "jsonl"] = "none"
    path: str | None = None
    fsync: Literal["never", "always"] = "never"

    @model_validator(mode="after")
    def _path(self) -> RecordsConfig:
        if self.sink == "jsonl" and not self.path:
            raise ValueError("sink 'jsonl' needs a path")
        return self


class Config(_Strict):
    """The whole metered configuration."""

    version: Literal[1] = 1
    allow_large_prices: bool = False
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    default_route: str | None = None
    tiers: dict[str, TierConfig] = Field(default_factory=dict)
    accounts: dict[str, AccountConfig] = Field(default_factory=dict)
    default_budgets: list[BudgetText] = Field(default_factory=list)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    records: RecordsConfig = Field(default_factory=RecordsConfig)


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
    from metered.pricing.resolve import Resolver

    Resolver(aliases=config.models.aliases, deployments=config.models.deployments)


def load_yaml(path: str | Path) -> Config:
    """Load and validate a YAML config file.

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
    return load_config(data if data is not None else {})
