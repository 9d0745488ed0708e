"""The engine: one pipeline for every metered chat call, whichever door it came through.

``Meter.begin`` runs steps 1-5 before the upstream call and may refuse it:

1. identify  — account, tier, feature, route (explicit, else the bound context)
2. policy    — normalised model id; allow/deny lists; the route's ``onRequest`` hook
3. fit       — the tier's output cap (clamp or reject), history trimming to the window
4. quote     — prompt counted locally + the output limit → the call's maximum price
5. reserve   — hold (``after-response``) or charge (``before-response``) on every account

A refused call raises :class:`~metered.errors.PolicyDenied` /
:class:`~metered.errors.BudgetExceeded` (or ``InvalidRequest``) before anything is
sent upstream or charged; its span is still emitted with the reason.

``Call.finish`` runs steps 7-9 exactly once (idempotent, thread-safe): measure (the
provider's usage, else an estimate), price (cost, price, margin), settle (see
:mod:`metered.settlement`), then emit the span, metrics and the usage record.
``Meter.abegin`` / ``Call.afinish`` are the async shells over the same steps.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, NamedTuple

from opentelemetry.trace import Span

from metered import context as _context
from metered.config import Config, TierConfig, load_config, load_yaml, resolve_callable
from metered.errors import (
    BudgetExceeded,
    InvalidRequest,
    MeteredError,
    PolicyDenied,
)
from metered.fitting.policy import (
    ModelPolicy,
    apply_output_cap,
    cap_output,
    output_limit_param,
    requested_output_limit,
)
from metered.fitting.trimming import trim_messages
from metered.ledger import Budget, Charge, Ledger, MemoryLedger, Receipt, Threshold, parse_budget
from metered.money import from_nanos, to_nanos
from metered.pricing.route import Pricer, Quote, RoutePricer
from metered.records import CallbackSink, JsonlSink, RecordSink, UsageRecord
from metered.settlement import Action, SettlementMode, decide
from metered.telemetry import EVENT_BUDGET_ALERT, EVENT_SETTLEMENT, Telemetry
from metered.tokens import ChatCounter, count_request
from metered.usage import Usage, estimated

__all__ = ["Api", "Call", "Meter"]

logger = logging.getLogger("metered")

Api = Literal["chat", "responses", "anthropic"]

#: Output tokens assumed for the maximum price when neither the caller nor a tier sets a
#: limit and the catalog names none (the hold may then be below the actual price; the
#: capture still records the actual).
DEFAULT_OUTPUT_TOKENS = 4096
# a second finish() waits this long for the first one to settle and emit its record
_WAIT_FOR_FIRST_FINISH = 30.0
_OPERATION: dict[str, str] = {"chat": "chat", "responses": "chat", "anthropic": "chat"}
_UNSET: Any = object()
_ids = itertools.count(1)
_ID_PREFIX = os.urandom(6).hex()


def _new_id() -> str:
    # unique across processes sharing a ledger, and ~20x cheaper than uuid4()
    return f"{_ID_PREFIX}-{next(_ids):x}"


OnResponse = Callable[["Call", Any], object]
OnBudgetAlert = Callable[[Threshold], object]


_PlanKey = tuple[str | None, object, Api, str | None, bool]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What steps 1-3 make of one (route, model, api, tier, urgent): planned once, so a
    call only identifies its payers, counts its prompt, quotes and reserves."""

    pricer: RoutePricer
    model: str  # the requested id as the route resolves it
    base: str  # the model it resolves to: the tokenizer's model
    tier_cfg: TierConfig | None
    cap: int | None  # the tier's output cap, urgent allowance applied
    reserve: int  # output tokens reserved when the caller sets no limit
    window: int | None  # the model's context window, if known
    # None for the Responses API (counted per item). Shared by the calls of the plan: the
    # engine reads only totals, never the counter's per-request ``exact`` flag.
    counter: ChatCounter | None
    mode: SettlementMode
    on_request: Callable[[Call], object] | None
    on_response: tuple[OnResponse, ...]


class Meter:
    """The metering engine.

    Args:
        config: a :class:`~metered.config.Config`, a mapping of settings, or ``None`` for
            defaults (price from the catalog, enforce nothing).
        ledger: the budget store; default an in-process :class:`MemoryLedger`.
        tracer_provider / meter_provider: OTel providers; default the global ones.
        sink: where usage records go: a callable or a :class:`RecordSink`; default from
            ``records:`` in the config (none).
        on_response: ``hook(call, response) -> bool``; a false result vetoes settlement.
        on_budget_alert: called with each budget :class:`Threshold` crossed.
        default_account: account charged when no caller is bound.
        hold_ttl_seconds: how long a hold may outlive a crashed caller.

    Example::

        meter = Meter.from_yaml("metered.yaml")
        client = MeteredOpenAI(OpenAI(), meter=meter, account="team-a")
        meter.spent("team-a")
    """

    def __init__(
        self,
        config: Config | Mapping[str, Any] | None = None,
        *,
        ledger: Ledger | None = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        sink: RecordSink | Callable[[UsageRecord], object] | None = None,
        on_response: OnResponse | None = None,
        on_budget_alert: OnBudgetAlert | None = None,
        default_account: str = "anonymous",
        hold_ttl_seconds: float = 600.0,
    ) -> None:
        self.config = load_config(config)
        self._plans: dict[_PlanKey, _Plan] = {}
        self._pricer = Pricer(self.config)
        # the Call object already makes finish() exactly-once, so the ledger only needs to
        # remember finished keys briefly (memory: ~0.5 KB per call while remembered)
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger(retain_seconds=120.0)
        # Async settlement runs in a shielded task so a caller's cancellation cannot cut it
        # short; a MemoryLedger whose async methods are its own never suspends, so nothing
        # can cancel it and it settles inline (~15 us less). Wrappers and other ledgers,
        # whatever they forward, get the task.
        self._settles_inline = (
            isinstance(self.ledger, MemoryLedger) and self.ledger.async_runs_inline is True
        )
        self._policy = ModelPolicy(allow=self.config.models.allow, deny=self.config.models.deny)
        self.telemetry = Telemetry(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            enabled=self.config.telemetry.enabled,
        )
        self.default_account = default_account
        self.hold_ttl_seconds = hold_ttl_seconds
        self.on_budget_alert = on_budget_alert
        self._on_response = on_response
        self._sink = self._make_sink(sink)
        self._budgets = self._parse_budgets()
        self._charges_cache: dict[tuple[str, str | None, str | None], tuple[Charge, ...]] = {}
        self._payers: dict[
            tuple[str, str | None, str | None], tuple[str | None, tuple[Charge, ...]]
        ] = {}
        self._route_hooks = {
            name: (
                resolve_callable(r.hooks.on_request) if r.hooks and r.hooks.on_request else None,
                resolve_callable(r.hooks.on_response) if r.hooks and r.hooks.on_response else None,
            )
            for name, r in self.config.routes.items()
        }

    @property
    def pricer(self) -> Pricer:
        """The prices of every route (replacing it applies to the next call)."""
        return self._pricer

    @pricer.setter
    def pricer(self, pricer: Pricer) -> None:
        self._pricer = pricer
        self._plans.clear()  # plans hold a route's pricer

    @property
    def policy(self) -> ModelPolicy:
        """The model allow/deny lists (replacing it applies to the next call)."""
        return self._policy

    @policy.setter
    def policy(self, policy: ModelPolicy) -> None:
        self._policy = policy
        self._plans.clear()  # plans hold models that passed the old lists

    @classmethod
    def from_yaml(cls, path: str | Path, **kwargs: Any) -> Meter:
        """Build a meter from a YAML config file (see :mod:`metered.config`)."""
        return cls(load_yaml(path), **kwargs)

    def _make_sink(
        self, sink: RecordSink | Callable[[UsageRecord], object] | None
    ) -> RecordSink | None:
        if sink is not None:
            return sink if isinstance(sink, (JsonlSink, CallbackSink)) else CallbackSink(sink)
        records = self.config.records
        if records.sink == "jsonl" and records.path:
            return JsonlSink(records.path, fsync=records.fsync)
        return None

    def _parse_budgets(self) -> dict[str, tuple[Budget, ...]]:
        out: dict[str, tuple[Budget, ...]] = {}

        def parse(items: Iterable[str], key: str) -> tuple[Budget, ...]:
            return tuple(parse_budget(raw, key=f"{key}[{i}]") for i, raw in enumerate(items))

        out["@default"] = parse(self.config.default_budgets, "default_budgets")
        for name, tier in self.config.tiers.items():
            out[f"@tier:{name}"] = parse(tier.budgets, f"tiers.{name}.budgets")
        for name, account in self.config.accounts.items():
            out[name] = parse(account.budgets, f"accounts.{name}.budgets")
        return out

    # -- accounts ------------------------------------------------------------------------

    def charges_for(
        self, account: str, *, tier: str | None = None, feature: str | None = None
    ) -> tuple[Charge, ...]:
        """The accounts a call by ``account`` is charged to, with their budgets.

        A configured account brings its own budgets (else its tier's, else the default
        budgets) and its ``parents`` (a team); a feature tag is tracked as the account
        ``feature:<name>``.
        """
        key = (account, tier, feature)
        cached = self._charges_cache.get(key)
        if cached is not None:
            return cached
        configured = self.config.accounts.get(account)
        tier = tier or (configured.tier if configured else None)
        charges = [Charge(account, self._budgets_of(account, tier))]
        seen = {account}
        for parent in configured.parents if configured else ():
            if parent not in seen:
                seen.add(parent)
                parent_cfg = self.config.accounts.get(parent)
                charges.append(
                    Charge(
                        parent, self._budgets_of(parent, parent_cfg.tier if parent_cfg else None)
                    )
                )
        if feature:
            name = f"feature:{feature}"
            if name not in seen:
                charges.append(Charge(name, self._budgets.get(name, ())))
        result = tuple(charges)
        if len(self._charges_cache) > 10_000:  # account names are user input: bound it
            self._charges_cache.clear()
        self._charges_cache[key] = result
        return result

    def _payer(
        self, account: str, tier: str | None, feature: str | None
    ) -> tuple[str | None, tuple[Charge, ...]]:
        """The tier that applies to a caller and the accounts it is charged to (cached:
        one lookup per call)."""
        key = (account, tier, feature)
        payer = self._payers.get(key)
        if payer is None:
            effective = self._effective_tier(tier or self._tier_of(account))
            payer = (effective, self.charges_for(account, tier=effective, feature=feature))
            if len(self._payers) > 10_000:  # account names are user input: bound it
                self._payers.clear()
            self._payers[key] = payer
        return payer

    def _budgets_of(self, account: str, tier: str | None) -> tuple[Budget, ...]:
        own = self._budgets.get(account)
        if own:
            return own
        if tier is not None:
            tiered = self._budgets.get(f"@tier:{tier}")
            if tiered:
                return tiered
        return self._budgets["@default"]

    def spent(self, account: str, *, window: str | None = None) -> Decimal:
        """What ``account`` has spent (settled), lifetime or in ``window`` (``"day"`` ...)."""
        budget = parse_budget(f"$0/{window}", key="window").window if window else None
        return self.ledger.balance(account, budget).spent

    def remaining(self, account: str, *, tier: str | None = None) -> Decimal | None:
        """The least remaining of ``account``'s budgets (holds count), ``None`` if unlimited."""
        budgets = self._budgets_of(account, self._effective_tier(tier or self._tier_of(account)))
        return _least(self.ledger.balance(account, budget).remaining for budget in budgets)

    async def aremaining(self, account: str, *, tier: str | None = None) -> Decimal | None:
        """Async :meth:`remaining` (reads the ledger through its async API)."""
        budgets = self._budgets_of(account, self._effective_tier(tier or self._tier_of(account)))
        return _least(
            [(await self.ledger.abalance(account, budget)).remaining for budget in budgets]
        )

    def _effective_tier(self, tier: str | None) -> str | None:
        """The tier whose caps and budgets apply. A name that is not configured fails
        closed: it gets the tier with the smallest output cap, budgets included (a typo or
        a stale tier from an identity provider must not unlock more, or spend unbounded)."""
        tiers = self.config.tiers
        if tier is None or tier in tiers or not tiers:
            return tier
        return min(tiers, key=lambda name: (tiers[name].max_tokens or 2**63, name))

    def _tier_of(self, account: str) -> str | None:
        configured = self.config.accounts.get(account)
        return configured.tier if configured else None

    def quote(self, model: str, usage: Usage, *, route: str | None = None, **context: Any) -> Quote:
        """Price a usage without metering a call (see :meth:`RoutePricer.quote`)."""
        return self.pricer.quote(model, usage, route=route, **context)

    # -- steps 1-5 -----------------------------------------------------------------------

    def begin(
        self,
        body: Mapping[str, Any],
        *,
        api: Api = "chat",
        provider: str | None = None,
        server_address: str | None = None,
        account: str | None = _UNSET,
        tier: str | None = _UNSET,
        feature: str | None = _UNSET,
        route: str | None = _UNSET,
        urgent: bool = _UNSET,
        headers: Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Call:
        """Steps 1-5 for a request ``body`` (SDK kwargs or a JSON body); see the module doc.

        Returns:
            the :class:`Call`; send ``call.body`` (fitted: trimmed, output-capped) upstream.

        Raises:
            InvalidRequest: malformed request (missing/non-string model, bad limits).
            PolicyDenied: model not allowed, unknown and rejected, or cannot fit.
            BudgetExceeded: an account cannot pay the maximum price.
        """
        call = self._prepare(
            body,
            api,
            provider,
            server_address,
            account,
            tier,
            feature,
            route,
            urgent,
            headers,
            metadata,
        )
        if call._charges is not None:
            try:
                self._reserve(call)
            except BaseException as exc:
                call._reject(exc)
                raise
        return call

    async def abegin(
        self,
        body: Mapping[str, Any],
        *,
        api: Api = "chat",
        provider: str | None = None,
        server_address: str | None = None,
        account: str | None = _UNSET,
        tier: str | None = _UNSET,
        feature: str | None = _UNSET,
        route: str | None = _UNSET,
        urgent: bool = _UNSET,
        headers: Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Call:
        """Async :meth:`begin` (reserves through the ledger's async API)."""
        call = self._prepare(
            body,
            api,
            provider,
            server_address,
            account,
            tier,
            feature,
            route,
            urgent,
            headers,
            metadata,
        )
        if call._charges is not None:
            try:
                await self._areserve(call)
            except BaseException as exc:
                call._reject(exc)
                raise
        return call

    def _prepare(
        self,
        body: Mapping[str, Any],
        api: Api,
        provider: str | None,
        server_address: str | None,
        account: str | None,
        tier: str | None,
        feature: str | None,
        route: str | None,
        urgent: bool,
        headers: Mapping[str, str] | None,
        metadata: Mapping[str, Any] | None,
    ) -> Call:
        # 1 identify
        bound = _context.bound
        account = (bound.account.get() if account is _UNSET else account) or self.default_account
        tier = bound.tier.get() if tier is _UNSET else tier
        feature = bound.feature.get() if feature is _UNSET else feature
        route = bound.route.get() if route is _UNSET else route
        urgent = bound.urgent.get() if urgent is _UNSET else urgent
        bound_meta = bound.metadata.get()
        meta = {**bound_meta, **(metadata or {})} if bound_meta else (metadata or {})
        # an ABC isinstance costs ~0.2 us; bodies are nearly always plain dicts
        is_mapping = type(body) is dict or isinstance(body, Mapping)
        model = body.get("model") if is_mapping else None
        tier, charges = self._payer(account, tier, feature)
        # steps 2-3 depend on the request only through its model: plan them once
        key = (route, model, api, tier, urgent)
        plan = self._plans.get(key) if type(model) is str else None
        call = Call(
            self,
            plan,
            dict(body) if is_mapping else {},
            api,
            provider,
            server_address,
            account,
            tier,
            feature,
            route,
            headers or {},
            meta,
        )
        stream = call.body.get("stream")
        call._span = self.telemetry.start(
            operation=_OPERATION[api],
            model=model if isinstance(model, str) else None,
            provider=provider,
            server_address=server_address,
            stream=stream is True,
        )
        try:
            if stream is not None and type(stream) is not bool:
                # the SDKs stream on any truthy value, metering only on True: refuse the rest
                raise InvalidRequest("'stream' must be a boolean", param="stream")
            if plan is None:
                if not is_mapping:
                    raise InvalidRequest("the request body must be a JSON object")
                if model is None:
                    raise InvalidRequest("'model' is required", param="model")
                plan = self._plan(key, model)
                call._plan = plan
            call.model = plan.model
            # 2 policy: the model passed the lists when the plan was made; hooks run per call
            if plan.on_request is not None and plan.on_request(call) is False:
                raise PolicyDenied(
                    f"model {model!r} was refused by the route's onRequest hook",
                    model=model,
                    reason="hook",
                )
            # 3 fit, 4 quote
            self._fit(call, plan, urgent)
            estimate = estimated(call.prompt_tokens, call.output_limit * _choices(call.body))
            call.estimate = plan.pricer.quote(
                plan.model, estimate, headers=call.headers, body=call.body, metadata=meta
            )
            call.payment_required = call.estimate.price
            call._charges = charges
        except RecursionError:
            # a body nested thousands deep (SDK kwargs may be) is malformed, not a crash
            refused = InvalidRequest("the request nests too deeply to be counted")
            call._reject(refused)
            raise refused from None
        except BaseException as exc:
            call._reject(exc)
            raise
        return call

    def _plan(self, key: _PlanKey, model: str) -> _Plan:
        """Plan the model-dependent part of steps 2-3 (raises as those steps would)."""
        route, _, api, tier, urgent = key
        # an unknown route name is a 400, never a silent fall back to other prices
        pricer = self.pricer.route(route)
        resolved = pricer.resolve(model)
        self.policy.check(resolved)
        base = resolved.base
        entry = pricer.entry(resolved.requested or base)
        tier_cfg = self.config.tiers.get(tier) if tier is not None else None
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
        hooks = self._route_hooks.get(pricer.name or "", (None, None))
        plan = _Plan(
            pricer=pricer,
            model=resolved.requested,
            base=base,
            tier_cfg=tier_cfg,
            cap=cap,
            reserve=(entry.max_output_tokens if entry else None) or DEFAULT_OUTPUT_TOKENS,
            window=entry.context_window if entry is not None else None,
            counter=None
            if api == "responses"
            else ChatCounter(base, shape="anthropic" if api == "anthropic" else "openai"),
            mode=pricer.config.settlement,
            on_request=hooks[0],
            on_response=tuple(h for h in (self._on_response, hooks[1]) if h is not None),
        )
        if len(self._plans) > 4096:  # model ids are user input: bound the cache
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _fit(self, call: Call, plan: _Plan, urgent: bool) -> None:
        """Step 3: the tier's output cap and history trimming; sets the call's fit."""
        body = call.body
        requested = requested_output_limit(body)
        cap = plan.cap
        limit = requested
        if cap is not None and (requested is None or requested > cap):
            # clamp, reject or fill in the cap: the uncommon case goes through the policy
            tier_cfg = plan.tier_cfg
            assert tier_cfg is not None
            capped = cap_output(
                requested,
                cap=tier_cfg.max_tokens,
                policy=tier_cfg.cap_policy,
                urgent=urgent,
                urgent_multiplier=tier_cfg.urgent_multiplier,
                model=plan.base,
                api=call.api,
                param=None
                if call.api != "chat"
                else output_limit_param(plan.base, "chat", body=body),
            )
            body = call.body = apply_output_cap(body, capped)
            limit = capped.limit
            call.clamped_from = capped.clamped_from
        # the maximum the call may output: its limit, else the model's cap, else a default
        reserved = call.output_limit = limit or plan.reserve
        counter = plan.counter
        if counter is None:  # the Responses API
            call.prompt_tokens = count_request(body, model=plan.base).tokens
            return
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise InvalidRequest("'messages' must be a list of messages", param="messages")
        tools = body.get("tools") or body.get("functions")
        system = body.get("system")
        prompt = call.prompt_tokens = counter.total(messages, tools=tools, system=system)
        window = plan.window
        if window is None or prompt + min(reserved, window) <= window:
            return
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
            body["messages"] = result.messages
        call.prompt_tokens = result.prompt_tokens
        call.trimmed = len(result.dropped)

    def _reserve(self, call: Call) -> None:
        assert call._charges is not None
        amount = to_nanos(call.payment_required)
        if call.mode == "after-response":
            self.ledger.hold(call.id, call._charges, amount, ttl_seconds=self.hold_ttl_seconds)
        else:
            receipt = self.ledger.charge(call.id, call._charges, amount)
            call._alerts(receipt)

    async def _areserve(self, call: Call) -> None:
        assert call._charges is not None
        amount = to_nanos(call.payment_required)
        if call.mode == "after-response":
            await self.ledger.ahold(
                call.id, call._charges, amount, ttl_seconds=self.hold_ttl_seconds
            )
        else:
            receipt = await self.ledger.acharge(call.id, call._charges, amount)
            call._alerts(receipt)

    def close(self) -> None:
        """Close the ledger and the record sink."""
        self.ledger.close()
        if isinstance(self._sink, JsonlSink):
            self._sink.close()

    async def aclose(self) -> None:
        """Async :meth:`close` (closes an async ledger client, e.g. Redis's pool)."""
        await self.ledger.aclose()
        if isinstance(self._sink, JsonlSink):
            self._sink.close()


def _least(values: Iterable[Decimal | None]) -> Decimal | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _choices(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    if n is None:
        return 1
    if type(n) is not int or n < 1:
        raise InvalidRequest("'n' must be a positive integer", param="n")
    return n


@dataclass(slots=True)
class _Finish:
    usage: Usage | None
    error: BaseException | None
    status: int | None
    response_model: str | None
    response_id: str | None
    finish_reasons: tuple[str, ...]
    partial: bool
    vetoed: bool


class _Facts(NamedTuple):
    """What a finished (or refused) call's record is built from, taken when it finished
    (the record itself is built when something reads it)."""

    usage: Usage | None
    quote: Quote | None
    priced: bool  # money moved: cost, price and margin go on the record
    status: str  # settlement status
    amount_nanos: int  # settled
    settlement_ms: float
    policy_decision: str
    policy_reason: str | None
    error_type: str | None
    upstream_status: int | None
    fin: _Finish | None
    remaining_nanos: int | None  # the payer's least remaining budget
    timestamp: float  # epoch seconds
    ended: float  # perf_counter


class Call:
    """One metered call between :meth:`Meter.begin` and :meth:`finish`.

    Attributes:
        id: unique call id (the ledger idempotency key).
        body: the request to send upstream (trimmed and output-capped).
        model: the requested model id.
        estimate: the pre-call quote (prompt counted + output limit).
        payment_required: the amount held or charged before the call.
        account: who pays first (then its parents and feature tag).
        record: the :class:`~metered.records.UsageRecord` once the call is finished or
            refused (``None`` before).

    Example::

        call = meter.begin(body)
        response = client.chat.completions.create(**call.body)
        call.finish(from_openai_chat(response), response=response)
        call.record.settlement_status  # "settled"
    """

    __slots__ = (
        "_charges",
        "_done",
        "_ended",
        "_events",
        "_facts",
        "_first_chunk",
        "_lock",
        "_meter",
        "_plan",
        "_record",
        "_span",
        "_started",
        "_waiter",
        "account",
        "api",
        "body",
        "clamped_from",
        "estimate",
        "feature",
        "headers",
        "id",
        "metadata",
        "model",
        "output_limit",
        "payment_required",
        "prompt_tokens",
        "provider",
        "route_name",
        "server_address",
        "tier",
        "trimmed",
    )

    def __init__(
        self,
        meter: Meter,
        plan: _Plan | None,
        body: dict[str, Any],
        api: Api,
        provider: str | None,
        server_address: str | None,
        account: str,
        tier: str | None,
        feature: str | None,
        route_name: str | None,
        headers: Mapping[str, str],
        metadata: Mapping[str, Any],
    ) -> None:
        self.id = _new_id()
        self._meter = meter
        self._plan = plan  # None until the model is planned (a call refused before)
        self.body = body
        self.api = api
        self.provider = provider
        self.server_address = server_address
        self.account = account
        self.tier = tier
        self.feature = feature
        self.route_name = route_name
        self.headers = headers
        self.metadata = metadata
        self.model: str | None = None
        self.prompt_tokens = 0
        self.output_limit = 0
        self.clamped_from: int | None = None
        self.trimmed = 0
        self.estimate: Quote | None = None
        self.payment_required = _ZERO
        self._facts: _Facts | None = None  # what finish() found, for the record
        self._record: UsageRecord | None = None
        self._charges: tuple[Charge, ...] | None = None  # set once the call may reserve
        self._span: Span | None = None
        self._started = time.perf_counter()
        self._first_chunk: float | None = None
        self._events: list[tuple[str, Mapping[str, Any]]] | None = None  # span events
        self._lock = threading.Lock()
        self._done = False
        self._waiter: threading.Event | None = None  # made only when a 2nd finish waits
        self._ended = False

    @property
    def mode(self) -> SettlementMode:
        """The route's settlement mode."""
        plan = self._plan
        return plan.mode if plan is not None else "after-response"

    @property
    def span(self) -> Span | None:
        """The call's span (to parent upstream HTTP spans, or add events)."""
        return self._span

    def first_chunk(self) -> None:
        """Mark the first streamed chunk (time to first chunk)."""
        if self._first_chunk is None:
            self._first_chunk = time.perf_counter()

    def _event(self, event: tuple[str, Mapping[str, Any]]) -> None:
        if self._events is None:
            self._events = []
        self._events.append(event)

    def _alerts(self, receipt: Receipt) -> None:
        for threshold in receipt.crossed:
            self._event(
                (
                    EVENT_BUDGET_ALERT,
                    {
                        "metered.account": threshold.account,
                        "metered.budget.window": str(threshold.budget.window),
                        "metered.budget.fraction": float(threshold.fraction),
                        "metered.budget.spent.usd": float(from_nanos(threshold.spent_nanos)),
                        "metered.budget.limit.usd": float(threshold.budget.limit),
                    },
                )
            )
            callback = self._meter.on_budget_alert
            if callback is not None:
                try:
                    callback(threshold)
                except Exception:
                    logger.exception("metered: on_budget_alert callback failed")

    # -- rejection ---------------------------------------------------------------------------

    def _reject(self, exc: BaseException) -> None:
        """Emit the span and record of a call refused in steps 1-5."""
        with self._lock:
            if self._done:
                return
            self._done = True
        reason = getattr(exc, "reason", None) or getattr(exc, "code", None) or type(exc).__name__
        decision = "denied" if isinstance(exc, MeteredError) else "error"
        self._facts = _Facts(
            usage=None,
            quote=self.estimate,
            priced=False,
            status="skipped",
            amount_nanos=0,
            settlement_ms=0.0,
            policy_decision=decision,
            policy_reason=str(reason),
            error_type=type(exc).__name__,
            upstream_status=None,
            fin=None,
            remaining_nanos=self._remaining_from(exc),
            timestamp=time.time(),
            ended=time.perf_counter(),
        )
        try:
            self._emit(exc)
        finally:
            self._end()

    @staticmethod
    def _remaining_from(exc: BaseException) -> int | None:
        if isinstance(exc, BudgetExceeded):
            return max(to_nanos(exc.limit - exc.spent), 0)
        return None

    @property
    def record(self) -> UsageRecord | None:
        """The call's usage record once it is finished (or refused), else ``None``.

        Built on first access (and then kept): most calls are only ever seen through
        their span, metrics or sink, and a call that nothing asks about costs no record.
        """
        record = self._record
        if record is None and self._facts is not None:
            with self._lock:
                record = self._record
                if record is None:
                    record = self._record = self._build_record(self._facts)
        return record

    # -- steps 7-9 ---------------------------------------------------------------------------

    def finish(
        self,
        usage: Usage | None = None,
        *,
        error: BaseException | None = None,
        response: Any = None,
        status: int | None = None,
        response_model: str | None = None,
        response_id: str | None = None,
        finish_reasons: Sequence[str] = (),
        partial: bool = False,
    ) -> None:
        """Measure, price, settle and emit, once; later calls change nothing.

        A later call (another thread) returns once the first has settled, so
        :attr:`record` is then complete.

        Args:
            usage: what the provider reported (``source="actual"``) or what the adapter
                counted (``estimated``); ``None`` settles the pre-call estimate.
            error: the upstream failure, if the call failed.
            response: the upstream response, passed to ``on_response`` hooks.
            status: the upstream HTTP status, if known.
            response_model / response_id / finish_reasons: from the response.
            partial: a stream that ended early; ``usage`` is what was delivered.
        """
        fin = self._claim(
            usage, error, response, status, response_model, response_id, finish_reasons, partial
        )
        if fin is None:
            if not _on_event_loop():  # never block a loop that may be settling the first one
                with self._lock:
                    if not self._ended and self._waiter is None:
                        self._waiter = threading.Event()
                    waiter = None if self._ended else self._waiter
                if waiter is not None:
                    waiter.wait(_WAIT_FOR_FIRST_FINISH)
            return
        try:
            quote, action = self._price(fin)
            started = time.perf_counter()
            receipt, failed = self._settle_sync(action, quote)
            remaining = self._remaining_after(receipt)
            if remaining is _UNSET:
                remaining = self._read_remaining()
            self._complete(fin, quote, action, receipt, failed, started, remaining)
        finally:
            self._end()

    async def afinish(
        self,
        usage: Usage | None = None,
        *,
        error: BaseException | None = None,
        response: Any = None,
        status: int | None = None,
        response_model: str | None = None,
        response_id: str | None = None,
        finish_reasons: Sequence[str] = (),
        partial: bool = False,
    ) -> None:
        """Async :meth:`finish`."""
        fin = self._claim(
            usage, error, response, status, response_model, response_id, finish_reasons, partial
        )
        if fin is None:
            # the first finish may be awaiting the ledger on this very loop: yield to it
            deadline = time.monotonic() + _WAIT_FOR_FIRST_FINISH
            while not self._ended and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            return
        if self._meter._settles_inline:
            # the ledger never suspends: nothing can cancel the settlement midway
            await self._afinish_claimed(fin)
            return
        # Settle even if the caller's task is cancelled meanwhile (a client that went away
        # mid-settlement): the hold must be captured or released, and the record emitted.
        await asyncio.shield(asyncio.ensure_future(self._afinish_claimed(fin)))

    async def _afinish_claimed(self, fin: _Finish) -> None:
        try:
            quote, action = self._price(fin)
            started = time.perf_counter()
            receipt, failed = await self._settle_async(action, quote)
            remaining = self._remaining_after(receipt)
            if remaining is _UNSET:
                remaining = await self._aread_remaining()
            self._complete(fin, quote, action, receipt, failed, started, remaining)
        finally:
            self._end()

    def _end(self) -> None:
        """The first finish is over (settled, or failed trying): release any waiters."""
        with self._lock:
            self._ended = True
            waiter = self._waiter
        if waiter is not None:
            waiter.set()

    def _remaining_after(self, receipt: Receipt | None) -> int | None:
        """The remaining budget (nano-USD) as the settlement receipt reports it; ``_UNSET``
        when the ledger must be asked (a release, or a ledger that does not report it)."""
        if receipt is not None and receipt.remaining_nanos:
            # the first charge is this account, with the budgets remaining() reads
            return receipt.remaining_nanos[0]
        if not self._meter._budgets_of(self.account, self.tier):
            return None
        return _UNSET  # type: ignore[no-any-return]

    def _read_remaining(self) -> int | None:
        try:
            return _nanos_or_none(self._meter.remaining(self.account, tier=self.tier))
        except Exception:
            logger.exception("metered: could not read the remaining budget")
            return None

    async def _aread_remaining(self) -> int | None:
        try:
            return _nanos_or_none(await self._meter.aremaining(self.account, tier=self.tier))
        except Exception:
            logger.exception("metered: could not read the remaining budget")
            return None

    def _claim(
        self,
        usage: Usage | None,
        error: BaseException | None,
        response: Any,
        status: int | None,
        response_model: str | None,
        response_id: str | None,
        finish_reasons: Sequence[str],
        partial: bool,
    ) -> _Finish | None:
        with self._lock:
            if self._done:
                return None
            self._done = True
        plan = self._plan
        vetoed = False
        if error is None and plan is not None and plan.on_response:
            vetoed = not self._hooks_allow(plan.on_response, response)
        return _Finish(
            usage,
            error,
            status,
            response_model,
            response_id,
            _reasons(finish_reasons),
            partial,
            vetoed,
        )

    def _hooks_allow(self, hooks: tuple[OnResponse, ...], response: Any) -> bool:
        for hook in hooks:
            try:
                if hook(self, response) is False:
                    return False
            except Exception:
                logger.exception("metered: on_response hook failed; settling normally")
        return True

    def _price(self, fin: _Finish) -> tuple[Quote | None, Action]:
        plan = self._plan
        pricer = plan.pricer if plan is not None else None
        settle_partial = pricer is not None and pricer.config.settle_partial_streams
        refund = pricer is not None and pricer.config.refund_on_failure
        if fin.error is not None:
            # an upstream failure, even after some chunks, is the provider's fault: refund
            # protection wins over the tokens already delivered
            succeeded = False
        elif fin.partial:
            # a stream the caller cut short (break, close, GC) pays for what was delivered,
            # or, with settle_partial_streams off, for nothing at all
            succeeded = settle_partial
            refund = refund or not settle_partial
        else:
            succeeded = True
        action = decide(self.mode, succeeded=succeeded, vetoed=fin.vetoed, refund_on_failure=refund)
        if pricer is None or self.model is None:
            return None, action
        usage = fin.usage
        if usage is None:
            # no usage reported: settle the pre-call estimate (the maximum), marked estimated
            usage = self.estimate.usage if self.estimate is not None else Usage(source="unknown")
        quote: Quote | None
        try:
            quote = pricer.quote(
                self.model, usage, headers=self.headers, body=self.body, metadata=self.metadata
            )
        except Exception:
            logger.exception("metered: pricing failed after the call; settling the estimate")
            quote = self.estimate
        return quote, action

    def _ledger_args(self, action: Action, quote: Quote | None) -> int:
        if action.kind in ("capture", "adjust"):
            return to_nanos(quote.price) if quote is not None else to_nanos(self.payment_required)
        return 0

    def _settle_sync(self, action: Action, quote: Quote | None) -> tuple[Receipt | None, bool]:
        ledger = self._meter.ledger
        if self._charges is None:
            return None, False
        try:
            amount = self._ledger_args(action, quote)
            if action.kind == "capture":
                return ledger.capture(self.id, amount, charges=self._charges), False
            if action.kind == "adjust":
                return ledger.adjust(self.id, amount), False
            if action.kind == "refund":
                return ledger.refund(self.id), False
            if action.kind == "release":
                ledger.release(self.id)
            return None, False
        except Exception:
            logger.exception("metered: settlement failed for call %s", self.id)
            return None, True

    async def _settle_async(
        self, action: Action, quote: Quote | None
    ) -> tuple[Receipt | None, bool]:
        ledger = self._meter.ledger
        if self._charges is None:
            return None, False
        try:
            amount = self._ledger_args(action, quote)
            if action.kind == "capture":
                return await ledger.acapture(self.id, amount, charges=self._charges), False
            if action.kind == "adjust":
                return await ledger.aadjust(self.id, amount), False
            if action.kind == "refund":
                return await ledger.arefund(self.id), False
            if action.kind == "release":
                await ledger.arelease(self.id)
            return None, False
        except Exception:
            logger.exception("metered: settlement failed for call %s", self.id)
            return None, True

    def _complete(
        self,
        fin: _Finish,
        quote: Quote | None,
        action: Action,
        receipt: Receipt | None,
        failed: bool,
        settle_started: float,
        remaining: int | None,
    ) -> None:
        now = time.perf_counter()
        if receipt is not None:
            if receipt.crossed:
                self._alerts(receipt)
            amount = receipt.amount_nanos
        elif action.kind == "keep":
            amount = to_nanos(self.payment_required)
        else:
            amount = 0
        status = "failed" if failed else action.status
        settled = status == "settled"
        self._facts = _Facts(  # positional, in field order: this one is built on every call
            quote.usage if quote is not None and settled else fin.usage,
            quote,
            settled,
            status,
            amount,
            (now - settle_started) * 1000,
            "allowed",
            None,
            type(fin.error).__name__ if fin.error is not None else None,
            fin.status,
            fin,
            remaining,
            time.time(),
            now,
        )
        totals = _context.bound.totals.get()
        if totals is not None and settled and quote is not None:
            totals.add(quote.cost, from_nanos(amount))
        span = self._span
        if span is not None and span.is_recording():
            self._event(
                (
                    EVENT_SETTLEMENT,
                    {
                        "metered.settlement.status": status,
                        "metered.settlement.amount.usd": float(from_nanos(amount)),
                    },
                )
            )
        self._emit(fin.error)

    def _build_record(self, facts: _Facts) -> UsageRecord:
        (
            usage,
            quote,
            priced,
            status,
            amount_nanos,
            settlement_ms,
            policy_decision,
            policy_reason,
            error_type,
            upstream_status,
            fin,
            remaining_nanos,
            timestamp,
            ended,
        ) = facts
        u = usage or _NO_USAGE
        ttfc = None if self._first_chunk is None else (self._first_chunk - self._started) * 1000
        # cost, price and margin describe money that moved: a released, refunded or refused
        # call shows none (what it would have cost stays in payment_required)
        money = quote if priced else None
        plan = self._plan
        return UsageRecord(
            timestamp=timestamp,
            call_id=self.id,
            route=self.route_name if plan is None else plan.pricer.name,
            provider=(quote.provider if quote is not None and quote.provider else self.provider),
            operation=_OPERATION[self.api],
            requested_model=self.model or _str_or_none(self.body.get("model")),
            # doors read these from provider JSON: keep the types the record promises
            response_model=_str_or_none(fin.response_model) if fin else None,
            resolved_model=quote.resolved_model if quote is not None else None,
            resolved_pricing_mode=quote.pricing_mode if quote is not None else None,
            pricing_source=quote.pricing_source if quote is not None else None,
            resolved_price=money.price if money is not None else None,
            cost=money.cost if money is not None else None,
            margin=money.margin if money is not None else None,
            tokens_in=u.input_tokens,
            tokens_out=u.output_tokens,
            cache_read_tokens=u.cache_read_tokens,
            cache_write_tokens=u.cache_write_tokens,
            reasoning_tokens=u.reasoning_tokens,
            tokens_source=u.source,
            payment_required=self.payment_required,
            payment_settled=status == "settled",
            settlement_mode=self.mode,
            settlement_status=status,
            settlement_amount=from_nanos(amount_nanos),
            settlement_latency_ms=settlement_ms,
            upstream_status=_status_or_none(upstream_status),
            upstream_latency_ms=(ended - self._started) * 1000 if fin is not None else None,
            account=self.account,
            accounts=tuple(c.account for c in self._charges or ()),
            tier=self.tier,
            feature=self.feature,
            policy_decision=policy_decision,
            policy_reason=policy_reason,
            error_type=error_type,
            stream=bool(self.body.get("stream")),
            request_max_tokens=self.output_limit or None,
            time_to_first_chunk_ms=ttfc,
            trimmed_messages=self.trimmed,
            max_tokens_clamped_from=self.clamped_from,
            budget_remaining=None if remaining_nanos is None else from_nanos(remaining_nanos),
            finish_reasons=fin.finish_reasons if fin else (),
            response_id=_str_or_none(fin.response_id) if fin else None,
            server_address=self.server_address,
            catalog_version=quote.catalog_version if quote is not None else None,
        )

    def _emit(self, error: BaseException | None) -> None:
        """Hand the record to the span, metrics, capture and sink, whichever are there;
        with none of them the record is not built until someone reads it."""
        meter = self._meter
        span = self._span
        telemetry = meter.telemetry
        if span is not None and telemetry.wants_record(span):
            record = self.record
            assert record is not None
            telemetry.finish(
                span,
                record,
                operation=record.operation,
                duration_s=time.perf_counter() - self._started,
                events=self._events or (),
                error=error,
            )
        captured = _context.bound.captured.get()
        sink = meter._sink
        if captured is None and sink is None:
            return
        record = self.record
        assert record is not None
        if captured is not None:
            captured.append(record)
        if sink is not None:
            try:
                sink(record)
            except Exception:
                logger.exception("metered: usage record sink failed")


_NO_USAGE = Usage(source="unknown")
_ZERO = Decimal(0)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _nanos_or_none(usd: Decimal | None) -> int | None:
    return None if usd is None else to_nanos(usd)


def _status_or_none(value: object) -> int | None:
    # an HTTPStatus is an int too; a bool is not a status
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return None


def _reasons(value: object) -> tuple[str, ...]:
    """The finish reasons a door passed, as strings. Doors read them from provider JSON:
    ``None``, a bare string or odd items must not raise once the call is claimed (the hold
    would then outlive the call)."""
    if type(value) is list or type(value) is tuple:
        reasons = tuple(value)
        for reason in reasons:
            if type(reason) is not str:
                return tuple(r for r in reasons if type(r) is str)
        return reasons
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable) and not isinstance(value, Mapping):
        return _reasons(list(value))
    return ()
