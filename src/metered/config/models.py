"""The typed configuration: one pydantic model per section, strict and frozen.

Values are parsed where they are declared (prices, markups, budgets), so a model that
validates holds only usable values. Unknown keys are errors: a typo must never silently
disable a guardrail. :mod:`metered.config.load` turns the first problem into a
:class:`~metered.errors.ConfigError` naming its key path.

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

from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from metered.config.budgets import parse_budget
from metered.config.callables import resolve_callable
from metered.errors import ConfigError
from metered.money import PriceUnit, Rate, parse_amount, parse_rate

__all__ = [
    "KNOWN_UPSTREAMS",
    "AccountConfig",
    "Amount",
    "AnyRate",
    "BudgetText",
    "CatalogConfig",
    "Config",
    "GatewayConfig",
    "Hooks",
    "Markup",
    "MatchRule",
    "ModelOverride",
    "ModelPrice",
    "ModelsConfig",
    "PriceFn",
    "RecordsConfig",
    "RequestRate",
    "RouteConfig",
    "RoutePrice",
    "SecondRate",
    "TelemetryConfig",
    "TierConfig",
    "TokenRate",
    "UnknownPolicy",
]


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
HeaderName = Annotated[str, Field(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")]  # an RFC 9110 token
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
    """Where upstream list prices come from (see :mod:`metered.pricing.catalog`).

    ``source: none`` leaves out metered's corrections and genai-prices (the overrides and
    a configured ``litellm`` layer remain). ``genai_prices_data`` is a genai-prices
    ``data.json`` read instead of the bundled snapshot; ``litellm`` is a LiteLLM cost map
    file, or ``installed`` for the copy inside an installed ``litellm`` package, asked
    after genai-prices (default: off). ``metered catalog update`` fetches both files.
    """

    source: Literal["genai-prices", "none"] = "genai-prices"
    overrides: dict[str, ModelOverride] = Field(default_factory=dict)
    genai_prices_data: str | None = Field(default=None, min_length=1)
    litellm: str | None = Field(default=None, min_length=1)


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


#: What a route does with a call no rule prices: refuse it (``UnknownModel``), charge the
#: fallback price, or let it pass with no price (``pricing_source: unpriced``).
UnknownPolicy = Literal["reject", "fallback", "unpriced"]

#: Upstreams a route may name besides an ``http(s)://`` URL (see ``metered.gateway``).
KNOWN_UPSTREAMS = ("openai", "anthropic", "gemini", "fake")


class RouteConfig(_Strict):
    """How one route (an HTTP route, or a named route for client calls) is priced and settled."""

    upstream: str | None = None
    type: Literal["token-based", "flat"] = "token-based"
    models: dict[str, RoutePrice] = Field(default_factory=dict)
    markup: Markup | None = None
    match: list[MatchRule] = Field(default_factory=list)
    price: PriceFn | None = None
    fallback: RoutePrice | None = None
    unknown_model: UnknownPolicy | None = None
    floors: dict[str, Amount] = Field(default_factory=dict)
    ceilings: dict[str, Amount] = Field(default_factory=dict)
    settlement: Literal["after-response", "before-response"] = "after-response"
    refund_on_failure: bool = False
    settle_partial_streams: bool = True
    hooks: Hooks | None = None
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    # the gateway forwards the caller's query string only when the route says so
    forward_query: bool = False

    @field_validator("upstream")
    @classmethod
    def _known_upstream(cls, value: str | None) -> str | None:
        # caught at load, not when `metered gateway` starts: `metered check` sees it too
        if value is not None and value not in KNOWN_UPSTREAMS:
            scheme = value.split("://", 1)[0].lower() if "://" in value else ""
            if scheme not in ("http", "https"):
                raise ValueError(f"must be one of {', '.join(KNOWN_UPSTREAMS)} or an http(s) URL")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RouteConfig:
        if self.unknown_model == "fallback" and self.fallback is None:
            raise ValueError("unknown_model is 'fallback' but no fallback price is set")
        if self.unknown_model == "unpriced" and self.fallback is not None:
            raise ValueError("unknown_model is 'unpriced' but a fallback price is set")
        if self.type == "flat" and self.price is None and not self.models and not self.match:
            raise ValueError("a flat route needs a price, models or match rules")
        for model, floor in self.floors.items():
            ceiling = self.ceilings.get(model)
            if ceiling is not None and ceiling < floor:
                raise ValueError(f"floor {floor} for {model!r} is above its ceiling {ceiling}")
        return self

    @property
    def unknown_policy(self) -> UnknownPolicy:
        """What happens to a call no rule prices: ``unknown_model`` when set; else
        ``fallback`` when a fallback price is set (the guides' shape); else ``reject`` when
        the route sells at its own prices (``models``, ``match``, ``price``, ``markup``: an
        unlisted model must not pass unbilled); else ``unpriced`` (a route, or no config at
        all, that only tracks spend: the call passes and its cost is recorded as unknown).
        """
        if self.unknown_model is not None:
            return self.unknown_model
        if self.fallback is not None:
            return "fallback"
        if self.models or self.match or self.price is not None or self.markup is not None:
            return "reject"
        return "unpriced"


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


class GatewayConfig(_Strict):
    """``metered gateway``: callers without a known key (``None``: 401; an account: served,
    charged to it); upstream response headers callers get besides the default ones."""

    unidentified_account: str | None = Field(default=None, min_length=1)
    response_headers: list[HeaderName] = Field(default_factory=list)


class TelemetryConfig(_Strict):
    """Span and metric options."""

    enabled: bool = True
    # None: follow OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT (off when unset)
    capture_content: (
        bool | Literal["no_content", "span_only", "event_only", "span_and_event"] | None
    ) = None
    content_max_chars: int = Field(default=16384, ge=0)
    # merge: one chat span per call beside another GenAI producer; separate: one each
    genai_spans: Literal["merge", "separate"] = "merge"


class RecordsConfig(_Strict):
    """Where per-call usage records go."""

    sink: Literal["none", "jsonl"] = "none"
    path: str | None = None
    fsync: Literal["never", "always"] = "never"
    # where settlements the ledger could not take wait (default: next to a JSONL path)
    outbox: str | None = None

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
    # the least output a budget-limited call is still sent for; below it the call is a 402
    min_output_tokens: int = Field(default=16, gt=0)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    records: RecordsConfig = Field(default_factory=RecordsConfig)
