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

Where each step lives: identify in :mod:`~metered.engine.accounts`, policy and fit in
:mod:`~metered.engine.plan`, the ledger side of reserve and settle in
:mod:`~metered.engine.settle`, the call's state in :mod:`~metered.engine.call`, and the
record in :mod:`~metered.engine.record`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from metered import context as _context
from metered.config import Config, load_config, load_yaml
from metered.engine.accounts import Accounts, Request
from metered.engine.call import Call, aopen_call, open_call
from metered.engine.outbox import Outbox, outbox_path
from metered.engine.plan import Api, OnResponse, Planner
from metered.engine.settle import Runtime, arun, remaining, replay, run
from metered.fitting.policy import ModelPolicy
from metered.headers import public_headers
from metered.ledger import Charge, Ledger, MemoryLedger, Threshold, parse_budget
from metered.money import from_nanos
from metered.pricing.route import Pricer, Quote
from metered.records import CallbackSink, JsonlSink, RecordSink, UsageRecord
from metered.telemetry import Telemetry
from metered.usage import Usage

__all__ = ["Api", "Call", "Meter"]

_UNSET: Any = object()

OnBudgetAlert = Callable[[Threshold], object]


class Meter:
    """The metering engine. Immutable once built: to change its config, ledger, prices or
    model lists, build another meter.

    Args:
        config: a :class:`~metered.config.Config`, a mapping of settings, or ``None`` for
            defaults (price from the catalog, enforce nothing).
        ledger: the budget store; default an in-process :class:`MemoryLedger`.
        tracer_provider / meter_provider / logger_provider: OTel providers (the logger
            provider takes content-capture events); default the global ones.
        sink: where usage records go: a callable or a :class:`RecordSink`; default from
            ``records:`` in the config (none).
        on_response: ``hook(call, response) -> bool``; a false result vetoes settlement.
        on_budget_alert: called with each budget :class:`Threshold` crossed.
        default_account: account charged when no caller is bound.
        hold_ttl_seconds: how long a hold may outlive a crashed caller.
        outbox: where settlements the ledger could not take wait (a file; see
            :mod:`metered.engine.outbox`); default ``records.outbox`` in the config, else
            ``<records.path>.outbox`` next to JSONL records, else memory only. Leftovers
            of an earlier process are replayed when the meter is built.

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
        logger_provider: Any = None,
        sink: RecordSink | Callable[[UsageRecord], object] | None = None,
        on_response: OnResponse | None = None,
        on_budget_alert: OnBudgetAlert | None = None,
        default_account: str = "anonymous",
        hold_ttl_seconds: float = 600.0,
        outbox: str | os.PathLike[str] | None = None,
    ) -> None:
        self._config = config = load_config(config)
        # the Call object already makes finish() exactly-once, so the ledger only needs to
        # remember finished keys briefly
        self._ledger: Ledger = ledger if ledger is not None else MemoryLedger(retain_seconds=120.0)
        self._pricer = Pricer(config, warn_unpriced=True)
        self._policy = ModelPolicy(allow=config.models.allow, deny=config.models.deny)
        self._accounts = Accounts(config)
        self._planner = Planner(config, self._pricer, self._policy, on_response)
        self._default_account = default_account
        self._runtime = Runtime(
            ledger=self._ledger,
            telemetry=Telemetry(
                tracer_provider=tracer_provider,
                meter_provider=meter_provider,
                logger_provider=logger_provider,
                enabled=config.telemetry.enabled,
                capture_content=config.telemetry.capture_content,
                content_max_chars=config.telemetry.content_max_chars,
                genai_spans=config.telemetry.genai_spans,
            ),
            sink=_make_sink(sink, config),
            on_budget_alert=on_budget_alert,
            hold_ttl_seconds=hold_ttl_seconds,
            outbox=Outbox(outbox if outbox is not None else outbox_path(config)),
        )
        if self._runtime.outbox.due():
            with contextlib.suppress(Exception):  # an async-only ledger replays on first use
                self.flush_settlements()

    @classmethod
    def from_yaml(cls, path: str | Path, **kwargs: Any) -> Meter:
        """Build a meter from a YAML config file (see :mod:`metered.config`)."""
        return cls(load_yaml(path), **kwargs)

    @property
    def config(self) -> Config:
        """The validated configuration."""
        return self._config

    @property
    def ledger(self) -> Ledger:
        """The budget store."""
        return self._ledger

    @property
    def pricer(self) -> Pricer:
        """The prices of every route."""
        return self._pricer

    @property
    def policy(self) -> ModelPolicy:
        """The model allow/deny lists."""
        return self._policy

    @property
    def telemetry(self) -> Telemetry:
        """Where spans and metrics go."""
        return self._runtime.telemetry

    @property
    def default_account(self) -> str:
        """The account charged when no caller is bound."""
        return self._default_account

    # -- accounts ------------------------------------------------------------------------

    def charges_for(
        self, account: str, *, tier: str | None = None, feature: str | None = None
    ) -> tuple[Charge, ...]:
        """The accounts a call by ``account`` is charged to, with their budgets.

        A configured account brings its own budgets (else its tier's, else the default
        budgets) and its ``parents`` (a team); a feature tag is tracked as the account
        ``feature:<name>``.
        """
        return self._accounts.charges_for(account, tier=tier, feature=feature)

    def spent(self, account: str, *, window: str | None = None) -> Decimal:
        """What ``account`` has spent (settled), lifetime or in ``window`` (``"day"`` ...)."""
        budget = parse_budget(f"$0/{window}", key="window").window if window else None
        return self._ledger.balance(account, budget).spent

    async def aspent(self, account: str, *, window: str | None = None) -> Decimal:
        """Async :meth:`spent` (reads the ledger through its async API)."""
        budget = parse_budget(f"$0/{window}", key="window").window if window else None
        return (await self._ledger.abalance(account, budget)).spent

    def remaining(self, account: str, *, tier: str | None = None) -> Decimal | None:
        """The least remaining of ``account``'s budgets (holds count), ``None`` if unlimited."""
        budgets = self._accounts.payer(account, tier, None).budgets
        return _usd(run(remaining(account, budgets), self._ledger))

    async def aremaining(self, account: str, *, tier: str | None = None) -> Decimal | None:
        """Async :meth:`remaining` (reads the ledger through its async API)."""
        budgets = self._accounts.payer(account, tier, None).budgets
        return _usd(await arun(remaining(account, budgets), self._ledger))

    def quote(self, model: str, usage: Usage, *, route: str | None = None, **context: Any) -> Quote:
        """Price a usage without metering a call (see :meth:`RoutePricer.quote`)."""
        return self._pricer.quote(model, usage, route=route, **context)

    # -- steps 1-5 -----------------------------------------------------------------------

    def begin(
        self,
        body: Mapping[str, Any],
        *,
        api: Api = "chat",
        provider: str | None = None,
        server_address: str | None = None,
        server_port: int | None = None,
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
            LedgerError: the budget store failed, or holds this call's id already.
        """
        request = self._identify(
            body,
            api,
            provider,
            server_address,
            server_port,
            account,
            tier,
            feature,
            route,
            urgent,
            headers,
            metadata,
        )
        return open_call(self._runtime, self._planner, request)

    async def abegin(
        self,
        body: Mapping[str, Any],
        *,
        api: Api = "chat",
        provider: str | None = None,
        server_address: str | None = None,
        server_port: int | None = None,
        account: str | None = _UNSET,
        tier: str | None = _UNSET,
        feature: str | None = _UNSET,
        route: str | None = _UNSET,
        urgent: bool = _UNSET,
        headers: Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Call:
        """Async :meth:`begin` (reserves through the ledger's async API)."""
        request = self._identify(
            body,
            api,
            provider,
            server_address,
            server_port,
            account,
            tier,
            feature,
            route,
            urgent,
            headers,
            metadata,
        )
        return await aopen_call(self._runtime, self._planner, request)

    def _identify(
        self,
        body: Mapping[str, Any],
        api: Api,
        provider: str | None,
        server_address: str | None,
        server_port: int | None,
        account: str | None,
        tier: str | None,
        feature: str | None,
        route: str | None,
        urgent: bool,
        headers: Mapping[str, str] | None,
        metadata: Mapping[str, Any] | None,
    ) -> Request:
        """Step 1: explicit arguments win over the caller bound to the context."""
        bound = _context.bound
        account = (bound.account.get() if account is _UNSET else account) or self._default_account
        tier = bound.tier.get() if tier is _UNSET else tier
        feature = bound.feature.get() if feature is _UNSET else feature
        bound_meta = bound.metadata.get()
        is_mapping = type(body) is dict or isinstance(body, Mapping)
        # positional, in field order: built on every call, and binding a dozen keywords
        # costs more than the rest of this step
        return Request(
            dict(body) if is_mapping else {},
            is_mapping,
            api,
            provider,
            server_address,
            server_port,
            account,
            self._accounts.payer(account, tier, feature),
            feature,
            bound.route.get() if route is _UNSET else route,
            bound.urgent.get() if urgent is _UNSET else urgent,
            public_headers(headers),  # every door: credentials never reach hooks or rules
            {**bound_meta, **(metadata or {})} if bound_meta else (metadata or {}),
        )

    def pending_settlements(self) -> int:
        """How many settlements wait in the outbox for the budget store (see
        :mod:`metered.engine.outbox`)."""
        return len(self._runtime.outbox)

    def flush_settlements(self) -> int:
        """Replay the parked settlements now; returns how many landed (the rest wait)."""
        return run(replay(self._runtime.outbox), self._ledger)

    async def aflush_settlements(self) -> int:
        """Async :meth:`flush_settlements` (through the ledger's async API)."""
        return await arun(replay(self._runtime.outbox), self._ledger)

    def close(self) -> None:
        """Close the ledger and the record sink."""
        self._ledger.close()
        sink = self._runtime.sink
        if isinstance(sink, JsonlSink):
            sink.close()

    async def aclose(self) -> None:
        """Async :meth:`close` (closes an async ledger client, e.g. Redis's pool)."""
        await self._ledger.aclose()
        sink = self._runtime.sink
        if isinstance(sink, JsonlSink):
            sink.close()


def _make_sink(
    sink: RecordSink | Callable[[UsageRecord], object] | None, config: Config
) -> RecordSink | None:
    if sink is not None:
        return sink if isinstance(sink, (JsonlSink, CallbackSink)) else CallbackSink(sink)
    records = config.records
    if records.sink == "jsonl" and records.path:
        return JsonlSink(records.path, fsync=records.fsync)
    return None


def _usd(nanos: int | None) -> Decimal | None:
    return None if nanos is None else from_nanos(nanos)
