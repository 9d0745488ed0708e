"""Steps 2-3 of the pipeline, policy and fit, and the part of step 4 they decide.

What a call may do depends on the request only through ``(route, model, api, tier,
urgent)``: the route's prices, the resolved model that passed the allow/deny lists, the
tier's output cap, the model's context window and tokenizer. :class:`Planner` works that
out once per key (a :class:`Plan`); each call then only fits its own body to the plan
(:func:`fit`): clamp its output limit, count its prompt, trim its history.

A :class:`Planner` belongs to one :class:`~metered.engine.meter.Meter`, whose config,
prices and lists never change, so a plan can never be stale.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from metered.config import Config, TierConfig, resolve_callable
from metered.errors import InvalidRequest, PolicyDenied, UnknownModel
from metered.fitting.policy import (
    ModelPolicy,
    OutputCap,
    apply_output_cap,
    cap_output,
    fit_thinking,
    output_limit_param,
    requested_output_limit,
    set_output_limit,
)
from metered.fitting.trimming import trim_messages
from metered.money import to_nanos
from metered.pricing.resolve import normalize_model_id
from metered.pricing.route import Pricer, Quote, RoutePricer
from metered.settlement import SettlementMode
from metered.tokens import ChatCounter, Shape, count_request
from metered.tokens.encodings import tokenizer
from metered.tokens.estimate import gemini_config
from metered.tokens.request import gemini_contents, gemini_system
from metered.usage import estimated

if TYPE_CHECKING:
    from metered.engine.accounts import Request
    from metered.engine.call import Call

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "Api",
    "Fit",
    "LimitSource",
    "OnResponse",
    "Plan",
    "Planner",
    "admit",
    "afford",
    "check_request",
    "choices",
    "fit",
    "responses_allowed",
]

logger = logging.getLogger("metered")

Api = Literal["chat", "responses", "anthropic", "gemini"]
OnResponse = Callable[["Call", Any], object]
OnRequest = Callable[["Call"], object]

#: Output tokens assumed for the maximum price when neither the caller nor a tier sets a
#: limit and the catalog names none (the hold may then be below the actual price; the
#: capture still records the actual).
DEFAULT_OUTPUT_TOKENS = 4096
_MAX_PLANS = 4096

_SHAPES: dict[str, Shape] = {"anthropic": "anthropic", "gemini": "gemini"}

PlanKey = tuple[str | None, str, Api, str | None, bool]

#: Who set a call's output limit: the caller, the tier's cap, the model's maximum (or the
#: default) filled in for a budgeted call, or the budget itself.
LimitSource = Literal["caller", "tier", "model", "budget"]


@dataclass(frozen=True, slots=True)
class Plan:
    """What steps 2-3 make of one ``(route, model, api, tier, urgent)``."""

    pricer: RoutePricer
    model: str  # the requested id as the route resolves it
    sent_model: str  # the id sent upstream: the requested one, surrounding space trimmed
    base: str  # the model it resolves to: the tokenizer's model
    tier_cfg: TierConfig | None
    cap: int | None  # the tier's output cap, urgent allowance applied
    reserve: int  # output tokens reserved when the caller sets no limit
    limit_param: str  # the body parameter that limits output for this model and API
    floor: int  # the least output a budget-limited call is sent for
    window: int | None  # the model's context window, if known
    # the prompt is held at num/den times its count: the model's own tokenizer may count
    # more than an estimate made with another (see metered.tokens.encodings)
    headroom: tuple[int, int]
    # None for the Responses API (counted per item). Shared by the plan's calls, which
    # read only totals from it.
    counter: ChatCounter | None
    mode: SettlementMode
    on_request: OnRequest | None
    on_response: tuple[OnResponse, ...]


class Fit(NamedTuple):
    """A request body fitted to its plan (step 3)."""

    body: dict[str, Any]  # what goes upstream: output-capped, trimmed
    prompt_tokens: int
    output_limit: int  # the most the call may output (what the estimate reserves)
    clamped_from: int | None  # the caller's limit, when the tier's cap lowered it
    trimmed: int  # history messages dropped to fit the context window
    source: LimitSource | None  # who set the limit sent upstream; None: no limit sent


class Planner:
    """Plans per ``(route, model, api, tier, urgent)``, made once and kept (bounded)."""

    def __init__(
        self,
        config: Config,
        pricer: Pricer,
        policy: ModelPolicy,
        on_response: OnResponse | None,
    ) -> None:
        self._config = config
        self._pricer = pricer
        self._policy = policy
        self._on_response = on_response
        self._hooks = {
            name: (
                resolve_callable(r.hooks.on_request) if r.hooks and r.hooks.on_request else None,
                resolve_callable(r.hooks.on_response) if r.hooks and r.hooks.on_response else None,
            )
            for name, r in config.routes.items()
        }
        self._plans: dict[PlanKey, Plan] = {}

    def plan(
        self, route: str | None, model: object, api: Api, tier: str | None, urgent: bool
    ) -> Plan:
        """The plan of a request (raises as steps 2-3 would: unknown route or model, a
        model the lists deny)."""
        if type(model) is not str:
            if model is None:
                raise InvalidRequest("'model' is required", param="model")
            normalize_model_id(model)  # raises the 400 for a JSON list, object, number
            raise AssertionError("unreachable: a non-string model id is refused")
        key = (route, model, api, tier, urgent)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._make(*key)
            if len(self._plans) >= _MAX_PLANS:  # model ids are user input: bound the cache
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _make(
        self, route: str | None, model: str, api: Api, tier: str | None, urgent: bool
    ) -> Plan:
        # an unknown route name is a 400, never a silent fall back to other prices
        pricer = self._pricer.route(route)
        resolved = pricer.resolve(model)
        self._policy.check(resolved)
        base = resolved.base
        entry = pricer.entry(resolved.requested or base)
        tier_cfg = self._config.tiers.get(tier) if tier is not None else None
        cap = None
        if tier_cfg is not None and tier_cfg.max_tokens is not None:
            # the tier's cap with the urgent allowance applied, as cap_output applies it
            cap = cap_output(
                None,
                cap=tier_cfg.max_tokens,
                urgent=urgent,
                urgent_multiplier=tier_cfg.urgent_multiplier,
                model=base,
                api=api,
            ).limit
        on_request, on_response = self._hooks.get(pricer.name or "", (None, None))
        return Plan(
            pricer=pricer,
            model=resolved.requested,
            sent_model=resolved.requested.strip(),
            base=base,
            tier_cfg=tier_cfg,
            cap=cap,
            reserve=(entry.max_output_tokens if entry else None) or DEFAULT_OUTPUT_TOKENS,
            limit_param=output_limit_param(base, api),
            floor=self._config.min_output_tokens,
            window=entry.context_window if entry is not None else None,
            headroom=tokenizer(base).headroom.as_integer_ratio(),
            counter=None
            if api == "responses"
            else ChatCounter(base, shape=_SHAPES.get(api, "openai")),
            mode=pricer.config.settlement,
            on_request=on_request,
            on_response=tuple(h for h in (self._on_response, on_response) if h is not None),
        )


def check_request(request: Request) -> None:
    """What no plan can fix: a caller refused as such (an unknown tier), a body that is
    not an object, a ``stream`` that is not a bool."""
    refusal = request.payer.refusal
    if refusal is not None:
        raise refusal()
    if not request.is_mapping:
        raise InvalidRequest("the request body must be a JSON object")
    stream = request.body.get("stream")
    if stream is not None and type(stream) is not bool:
        # the SDKs stream on any truthy value, metering only on True: refuse the rest
        raise InvalidRequest("'stream' must be a boolean", param="stream")


def admit(plan: Plan, call: Call, urgent: bool, budgeted: bool) -> tuple[Fit, Quote]:
    """The per-call part of steps 2-4: the route's ``onRequest`` hook, the fit, and the
    estimate (the prompt counted, every choice at its output limit)."""
    if plan.on_request is not None and plan.on_request(call) is False:
        raise PolicyDenied(
            f"model {plan.model!r} was refused by the route's onRequest hook",
            model=plan.model,
            reason="hook",
        )
    fitted = fit(plan, call.body, call.api, urgent, budgeted)
    estimate = _quote(plan, call, fitted.body, fitted.prompt_tokens, fitted.output_limit)
    if budgeted and estimate.pricing_source == "unpriced":
        # a budget cannot be enforced on a call whose price is unknown: never bypassed
        raise UnknownModel(plan.model, route=plan.pricer.name)
    return fitted, estimate


def _quote(plan: Plan, call: Call, body: dict[str, Any], prompt: int, limit: int) -> Quote:
    num, den = plan.headroom
    if num != den:  # the most the provider may count for the prompt, rounded up
        prompt = -(-prompt * num // den)
    usage = estimated(prompt, limit * choices(body, call.api))
    return plan.pricer.quote(
        plan.model, usage, headers=call.headers, body=body, metadata=call.metadata
    )


def afford(plan: Plan, call: Call, held_nanos: int) -> tuple[dict[str, Any], int, Quote]:
    """The largest output limit the amount a budget let the ledger hold pays for.

    The ledger held less than the call's maximum price, but at least the price at the
    plan's floor (or the call's own, smaller, limit): find, by bisection over the route's
    prices (which grow with output), the largest limit whose price fits in the hold, and
    write it into the body that goes upstream. Returns the body, the limit and its quote.
    """
    low, high = min(plan.floor, call.output_limit), call.output_limit
    best = _quote(plan, call, call.body, call.prompt_tokens, low)
    while high - low > 1:
        mid = (low + high) // 2
        quote = _quote(plan, call, call.body, call.prompt_tokens, mid)
        if to_nanos(quote.checked_price()) <= held_nanos:
            low, best = mid, quote
        else:
            high = mid
    param = output_limit_param(plan.base, call.api, body=call.body)
    body = apply_output_cap(call.body, OutputCap(low, param))
    # the providers want a thinking budget below the output limit
    fit_thinking(body, call.api, low)
    return body, low, best


def floor_price(plan: Plan, call: Call) -> int:
    """Nano-USD of the call at the least output it is worth sending for."""
    limit = min(plan.floor, call.output_limit)
    return to_nanos(_quote(plan, call, call.body, call.prompt_tokens, limit).checked_price())


def fit(plan: Plan, body: dict[str, Any], api: Api, urgent: bool, budgeted: bool = False) -> Fit:
    """Step 3: the tier's output cap and history trimming, for one request body.

    A ``budgeted`` call always sends an output limit (the model's maximum, else
    :data:`DEFAULT_OUTPUT_TOKENS`, when neither the caller nor the tier sets one): the
    amount held must bound what the provider may return.
    """
    requested = requested_output_limit(body, api)
    cap = plan.cap
    limit = requested
    clamped_from = None
    source: LimitSource | None = "caller" if requested is not None else None
    if cap is not None and (requested is None or requested > cap):
        # clamp, reject or fill in the cap: the uncommon case goes through the policy
        tier_cfg = plan.tier_cfg
        assert tier_cfg is not None  # a cap comes from a tier
        capped = cap_output(
            requested,
            cap=tier_cfg.max_tokens,
            policy=tier_cfg.cap_policy,
            urgent=urgent,
            urgent_multiplier=tier_cfg.urgent_multiplier,
            model=plan.base,
            api=api,
            param=None if api != "chat" else output_limit_param(plan.base, "chat", body=body),
        )
        body = apply_output_cap(body, capped)
        limit = capped.limit
        clamped_from = capped.clamped_from
        source = "tier"
    # the maximum the call may output: its limit, else the model's cap, else a default
    reserved = limit or plan.reserve
    if budgeted and limit is None:
        # the body names no limit (else requested would be set): the plan's parameter
        # name holds, and the body is the meter's own copy, written in place
        set_output_limit(body, plan.limit_param, reserved)
        source = "model"
    counter = plan.counter
    if counter is None:  # the Responses API
        prompt = count_request(body, model=plan.base).tokens
        return Fit(body, prompt, reserved, clamped_from, 0, source)
    key = "contents" if api == "gemini" else "messages"
    messages: Any = body.get(key)
    if api == "gemini":
        messages = gemini_contents(messages)
        tools, system = body.get("tools"), gemini_system(body)
    else:
        if not isinstance(messages, list):
            raise InvalidRequest("'messages' must be a list of messages", param="messages")
        tools = body.get("tools") or body.get("functions")
        system = body.get("system")
    prompt = counter.total(messages, tools=tools, system=system)
    window = plan.window
    if window is None or prompt + min(reserved, window) <= window:
        return Fit(body, prompt, reserved, clamped_from, 0, source)
    result = trim_messages(
        messages,
        model=plan.base,
        context_window=window,
        reserved_output=min(reserved, window),
        tools=tools,
        system=system,
        shape=counter.shape,
    )
    if result.trimmed:
        body[key] = result.messages
    return Fit(body, result.prompt_tokens, reserved, clamped_from, len(result.dropped), source)


def responses_allowed(hooks: tuple[OnResponse, ...], call: Call, response: Any) -> bool:
    """Whether the ``on_response`` hooks let ``call`` settle; a failing hook is logged and
    does not veto (accounting must not break the user's call)."""
    for hook in hooks:
        try:
            if hook(call, response) is False:
                return False
        except Exception:
            logger.exception("metered: on_response hook failed; settling normally")
    return True


def choices(body: Mapping[str, Any], api: Api = "chat") -> int:
    """How many completions the request asks for (``n``; Gemini's
    ``generationConfig.candidateCount``): each may use the output limit."""
    param = "n"
    n = body.get("n")
    if api == "gemini":
        config = gemini_config(body)[1] or {}
        param = "generationConfig.candidateCount"
        n = config.get("candidateCount", config.get("candidate_count"))
    if n is None:
        return 1
    if type(n) is not int or n < 1:
        raise InvalidRequest(f"'{param}' must be a positive integer", param=param)
    return n
