"""One metered call: its state from ``begin`` to its record.

:func:`open_call` runs steps 2-5 for an identified request and returns the :class:`Call`
(or raises, after emitting the refused call's span and record). ``Call.finish`` /
``Call.afinish`` run steps 7-9 exactly once. Both are flows (:mod:`metered.engine.settle`)
run by the sync or the async driver: the steps are written once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import Span

from metered import context as _context
from metered.engine import plan as planning
from metered.engine import settle as flows
from metered.engine.accounts import Request
from metered.engine.plan import LimitSource, Plan, Planner
from metered.engine.record import (
    Facts,
    Finish,
    alert_events,
    build_record,
    finished_facts,
    reasons,
    refused_facts,
)
from metered.engine.settle import Flow, Once, Runtime
from metered.engine.watch import Watch
from metered.errors import BudgetExceeded, InvalidRequest
from metered.ledger import Charge, Receipt
from metered.money import from_nanos, to_nanos
from metered.pricing.route import Quote
from metered.providers import Transcript
from metered.records import UsageRecord
from metered.settlement import Action, SettlementMode
from metered.usage import Usage

__all__ = ["Call", "aopen_call", "open_call"]

logger = logging.getLogger("metered")

_ZERO = Decimal(0)
_NOTHING = flows.Applied(None)


def _new_id() -> str:
    # Random per call, from the kernel: a forked worker (gunicorn --preload,
    # multiprocessing) cannot repeat its parent's ids, which a shared ledger would take
    # as replays of the parent's calls.
    return os.urandom(12).hex()


def open_call(runtime: Runtime, planner: Planner, request: Request) -> Call:
    """Steps 2-5 for ``request``, reserving through the ledger's sync API."""
    call = Call(runtime, request)
    flows.run(call._open(planner, request), runtime.ledger)
    return call


async def aopen_call(runtime: Runtime, planner: Planner, request: Request) -> Call:
    """Steps 2-5 for ``request``, reserving through the ledger's async API."""
    call = Call(runtime, request)
    await flows.arun(call._open(planner, request), runtime.ledger)
    return call


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

    # fmt: off
    __slots__ = (
        "_charges", "_facts", "_once", "_plan", "_record", "_request", "_runtime", "_watch",
        "account", "api", "body", "clamped_from", "estimate",
        "feature", "headers", "id", "metadata", "model", "output_limit", "output_limit_source",
        "payment_required", "prompt_tokens", "provider", "route_name", "server_address", "tier",
        "trimmed",
    )
    # fmt: on

    def __init__(self, runtime: Runtime, request: Request) -> None:
        self.id = _new_id()
        self._runtime = runtime
        self._request = request
        self.body = request.body  # the meter's own copy: fitting may change it
        self.api = request.api
        self.provider = request.provider
        self.server_address = request.server_address
        self.account = request.account
        self.tier = request.payer.tier
        self.feature = request.feature
        self.route_name = request.route
        self.headers = request.headers
        self.metadata = request.metadata
        self.model: str | None = None
        self.prompt_tokens = 0
        self.output_limit = 0
        self.clamped_from: int | None = None
        self.output_limit_source: LimitSource | None = None
        self.trimmed = 0
        self.estimate: Quote | None = None
        self.payment_required = _ZERO
        self._plan: Plan | None = None  # None until planned (a call refused before)
        self._charges: tuple[Charge, ...] | None = None  # set once the call reserves
        self._facts: Facts | None = None  # what finish() found, for the record
        self._record: UsageRecord | None = None
        self._once = Once()  # the first finish (or the refusal) settles and emits
        self._watch = Watch(runtime, request, self.body)

    @property
    def mode(self) -> SettlementMode:
        """The route's settlement mode."""
        plan = self._plan
        return plan.mode if plan is not None else "after-response"

    @property
    def span(self) -> Span | None:
        """The call's span (to parent upstream HTTP spans, or add events)."""
        return self._watch.span

    def transcript(self) -> Transcript | None:
        """A transcript for the call's stream reader while content capture is on."""
        return self._watch.transcript()

    def upstream_context(self) -> Context | None:
        """The OpenTelemetry context to send the upstream request in (``None``: keep the
        current one): the call's span, and a mark that stands an inner GenAI
        instrumentation down (:mod:`metered.telemetry.genai`)."""
        return self._watch.upstream_context()

    @property
    def record(self) -> UsageRecord | None:
        """The call's usage record once it is finished (or refused), else ``None``.

        Built on first access (and then kept): most calls are only ever seen through
        their span, metrics or sink, and a call that nothing asks about costs no record.
        """
        record = self._record
        if record is None and self._facts is not None:
            with self._once.lock:
                record = self._record
                if record is None:
                    record = self._record = build_record(
                        self,
                        self._facts,
                        started=self._watch.started,
                        first_chunk=self._watch.first_chunk,
                        accounts=tuple(c.account for c in self._charges or ()),
                    )
        return record

    def first_chunk(self) -> None:
        """Mark the first streamed chunk (time to first chunk)."""
        self._watch.mark_first_chunk()

    # -- steps 2-5 ---------------------------------------------------------------------

    def _open(self, planner: Planner, request: Request) -> Flow[None]:
        try:
            planning.check_request(request)
            plan = self._plan = planner.plan(
                request.route, self.body.get("model"), self.api, request.payer.tier, request.urgent
            )
            self.model = plan.model
            if plan.model != plan.sent_model:  # the id the policy approved, nothing around it
                self.body["model"] = plan.sent_model
            self.route_name = plan.pricer.name
            charges = request.payer.charges
            # a budgeted call always sends a limit, and at most what its budget pays for
            budgeted = any(charge.budgets for charge in charges)
            fitted, self.estimate = planning.admit(
                plan, self, request.urgent, budgeted
            )  # 2 (hooks), 3, 4
            self.body = fitted.body
            self.prompt_tokens = fitted.prompt_tokens
            self.output_limit = fitted.output_limit
            self.output_limit_source = fitted.source
            self.clamped_from = fitted.clamped_from
            self.trimmed = fitted.trimmed
            # an unpriced call (allowed only when no budget is charged) holds nothing
            self.payment_required = self.estimate.price or _ZERO
            # 5 reserve the maximum price; when the budgets cannot pay it, the most they
            # leave above the floor (a second, elastic, reservation: the common case pays
            # for no floor quote), and send the output limit that amount pays for
            self._charges = charges
            amount = to_nanos(self.payment_required)
            ttl = self._runtime.hold_ttl_seconds
            try:
                result = yield flows.reservation(self.id, charges, amount, plan.mode, ttl)
            except BudgetExceeded:
                floor = planning.floor_price(plan, self)
                if floor >= amount:
                    raise
                result = yield flows.reservation(self.id, charges, amount, plan.mode, ttl, floor)
            receipt = flows.reserved(self.id, result)
            if result.amount_nanos < amount:
                self.body, self.output_limit, self.estimate = planning.afford(
                    plan, self, result.amount_nanos
                )
                self.output_limit_source = "budget"
                self.payment_required = from_nanos(result.amount_nanos)
            if receipt is not None and receipt.crossed:
                self._alerts(receipt)
        except RecursionError:
            # a body nested thousands deep (SDK kwargs may be) is malformed, not a crash
            refused = InvalidRequest("the request nests too deeply to be counted")
            self._refuse(refused)
            raise refused from None
        except BaseException as exc:
            self._refuse(exc)
            raise

    def _refuse(self, exc: BaseException) -> None:
        """Emit the span and record of a call refused in steps 1-5."""
        if not self._once.claim():
            return
        self._facts = refused_facts(exc, self.estimate)
        try:
            self._emit(exc)
        finally:
            self._once.end()

    # -- steps 7-9 ---------------------------------------------------------------------

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
        attributes: Mapping[str, Any] | None = None,
        output: Any = None,
    ) -> None:
        """Measure, price, settle and emit, once; later calls change nothing.

        A later call (another thread) returns once the first has settled (and the record).

        Args:
            usage: what the provider reported (``source="actual"``) or what the adapter
                counted (``estimated``); ``None`` settles the pre-call estimate.
            error: the upstream failure, if the call failed.
            response: the upstream response, passed to ``on_response`` hooks.
            status: the upstream HTTP status, if known.
            response_model / response_id / finish_reasons: from the response.
            partial: a stream that ended early; ``usage`` is what was delivered.
            attributes: provider-specific response attributes for the span.
            output: what came back, for content capture and stream timing: the stream
                reader, or the whole response's JSON bytes (``response`` serves when
                this is ``None``).
        """
        fin = self._claim(
            usage, error, response, status, response_model, response_id, finish_reasons, partial
        )
        if fin is None:
            self._once.wait()
            return
        self._observe(attributes, output, response)
        try:
            flows.run(self._settle(fin), self._runtime.ledger)
        finally:
            self._once.end()

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
        attributes: Mapping[str, Any] | None = None,
        output: Any = None,
    ) -> None:
        """Async :meth:`finish`. Settlement runs to its end even if the caller is
        cancelled meanwhile (a client that went away mid-settlement): the hold is captured
        or released and the record emitted."""
        fin = self._claim(
            usage, error, response, status, response_model, response_id, finish_reasons, partial
        )
        if fin is None:
            await self._once.await_first()
            return
        self._observe(attributes, output, response)
        await asyncio.shield(self._once.start(self._asettle(fin)))

    async def _asettle(self, fin: Finish) -> None:
        try:
            await flows.arun(self._settle(fin), self._runtime.ledger)
        finally:
            self._once.end()

    def _observe(self, attributes: Mapping[str, Any] | None, output: Any, response: Any) -> None:
        if attributes:
            self._watch.describe(attributes)
        self._watch.keep(output if output is not None else response)

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
    ) -> Finish | None:
        if not self._once.claim():
            return None
        plan = self._plan
        vetoed = False
        if error is None and plan is not None and plan.on_response:
            vetoed = not planning.responses_allowed(plan.on_response, self, response)
        return Finish(
            usage,
            error,
            status,
            response_model,
            response_id,
            reasons(finish_reasons),
            partial,
            vetoed,
        )

    def _settle(self, fin: Finish) -> Flow[None]:
        quote, action = self._price(fin)
        started = time.perf_counter()
        applied = _NOTHING
        charges = self._charges
        if charges is not None:
            if action.kind in ("capture", "adjust"):
                price = quote.price if quote is not None else None
                price = self.payment_required if price is None else price
                amount = to_nanos(price)
            else:
                amount = 0
            op = flows.settlement(self.id, charges, action, amount)
            if op is not None:
                # the upstream call already happened: a failure must not break it (the
                # charge is parked until the store answers)
                applied = yield from flows.apply(self.id, op, self._runtime.outbox)
        receipt = applied.receipt
        if receipt is not None and receipt.remaining_nanos:
            # the first charge is this account, with the budgets Meter.remaining() reads
            left = receipt.remaining_nanos[0]
        elif self._request.payer.budgets:
            left = yield from flows.remaining(self.account, self._request.payer.budgets)
        else:
            left = None
        self._complete(fin, quote, action, applied, started, left)

    def _price(self, fin: Finish) -> tuple[Quote | None, Action]:
        return flows.outcome(
            self._plan,
            self.model,
            self.estimate,
            fin,
            self.mode,
            self.headers,
            self.body,
            self.metadata,
        )

    def _complete(
        self,
        fin: Finish,
        quote: Quote | None,
        action: Action,
        applied: flows.Applied,
        settle_started: float,
        remaining_nanos: int | None,
    ) -> None:
        now = time.perf_counter()
        receipt = applied.receipt
        if receipt is not None:
            if receipt.crossed:
                self._alerts(receipt)
            amount = receipt.amount_nanos
        elif action.kind == "keep":
            amount = to_nanos(self.payment_required)
        else:
            amount = applied.parked_nanos  # 0, or what a parked settlement will charge
        status = applied.status or action.status
        settled = status == "settled"
        self._facts = finished_facts(
            fin, quote, status, amount, (now - settle_started) * 1000, remaining_nanos, now
        )
        totals = _context.bound.totals.get()
        if totals is not None and settled and quote and quote.pricing_source != "unpriced":
            totals.add(quote.cost, from_nanos(amount))
        self._emit(fin.error)

    # -- outputs -----------------------------------------------------------------------

    def _alerts(self, receipt: Receipt) -> None:
        for name, attributes in alert_events(receipt.crossed, self._runtime.on_budget_alert):
            self._watch.event(name, attributes)

    def _emit(self, error: BaseException | None) -> None:
        self._watch.emit(lambda: self.record, error, self.api, self.body)
