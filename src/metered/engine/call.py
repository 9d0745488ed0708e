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
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from opentelemetry.trace import Span

from metered import context as _context
from metered.engine.accounts import Payer
from metered.engine.plan import Api, OnResponse, Plan, Planner, choices, fit
from metered.engine.record import Facts, Finish, build_record, reasons
from metered.engine.settle import Flow, arun, protected, remaining, reserve, run, settle
from metered.errors import BudgetExceeded, InvalidRequest, MeteredError, PolicyDenied
from metered.ledger import Charge, Ledger, Receipt, Threshold
from metered.money import from_nanos, to_nanos
from metered.pricing.route import Quote
from metered.records import RecordSink, UsageRecord
from metered.settlement import Action, SettlementMode, decide
from metered.telemetry import EVENT_BUDGET_ALERT, EVENT_SETTLEMENT, Telemetry
from metered.usage import Usage, estimated

__all__ = ["Call", "Request", "Runtime", "aopen_call", "open_call"]

logger = logging.getLogger("metered")

# a second finish() (another thread) waits at most this long for the first to settle
_WAIT_FOR_FIRST_FINISH = 30.0
_ZERO = Decimal(0)


def _new_id() -> str:
    # Random per call, from the kernel: a forked worker (gunicorn --preload,
    # multiprocessing) cannot repeat its parent's ids, which a shared ledger would take
    # as replays of the parent's calls.
    return os.urandom(12).hex()


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a call needs from its meter, fixed when the meter is built."""

    ledger: Ledger
    telemetry: Telemetry
    sink: RecordSink | None
    on_budget_alert: Callable[[Threshold], object] | None
    hold_ttl_seconds: float


@dataclass(frozen=True, slots=True)
class Request:
    """An identified request (step 1): the body and who makes the call."""

    body: dict[str, Any]
    is_mapping: bool  # the door passed a mapping (anything else is refused in step 2)
    api: Api
    provider: str | None
    server_address: str | None
    account: str
    payer: Payer
    feature: str | None
    route: str | None
    urgent: bool
    headers: Mapping[str, str]
    metadata: Mapping[str, Any]


def open_call(runtime: Runtime, planner: Planner, request: Request) -> Call:
    """Steps 2-5 for ``request``, reserving through the ledger's sync API."""
    call = Call(runtime, request)
    run(call._open(planner, request), runtime.ledger)
    return call


async def aopen_call(runtime: Runtime, planner: Planner, request: Request) -> Call:
    """Steps 2-5 for ``request``, reserving through the ledger's async API."""
    call = Call(runtime, request)
    await arun(call._open(planner, request), runtime.ledger)
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

    __slots__ = (
        "_charges",
        "_done",
        "_ended",
        "_events",
        "_facts",
        "_first_chunk",
        "_lock",
        "_plan",
        "_record",
        "_request",
        "_runtime",
        "_span",
        "_started",
        "_task",
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
        self.trimmed = 0
        self.estimate: Quote | None = None
        self.payment_required = _ZERO
        self._plan: Plan | None = None  # None until planned (a call refused before)
        self._charges: tuple[Charge, ...] | None = None  # set once the call reserves
        self._facts: Facts | None = None  # what finish() found, for the record
        self._record: UsageRecord | None = None
        self._started = time.perf_counter()
        self._first_chunk: float | None = None
        self._events: list[tuple[str, Mapping[str, Any]]] | None = None  # span events
        self._lock = threading.Lock()
        self._done = False  # claimed by a finish (or refused)
        self._ended = False  # the first finish is over
        self._waiter: threading.Event | None = None  # made only when a 2nd finish waits
        self._task: asyncio.Future[None] | None = None  # an async first finish
        model = self.body.get("model")
        self._span = runtime.telemetry.start(
            operation="chat",
            model=model if isinstance(model, str) else None,
            provider=request.provider,
            server_address=request.server_address,
            stream=self.body.get("stream") is True,
        )

    @property
    def mode(self) -> SettlementMode:
        """The route's settlement mode."""
        plan = self._plan
        return plan.mode if plan is not None else "after-response"

    @property
    def span(self) -> Span | None:
        """The call's span (to parent upstream HTTP spans, or add events)."""
        return self._span

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
                    record = self._record = build_record(
                        self,
                        self._facts,
                        started=self._started,
                        first_chunk=self._first_chunk,
                        accounts=tuple(c.account for c in self._charges or ()),
                    )
        return record

    def first_chunk(self) -> None:
        """Mark the first streamed chunk (time to first chunk)."""
        if self._first_chunk is None:
            self._first_chunk = time.perf_counter()

    # -- steps 2-5 ---------------------------------------------------------------------

    def _open(self, planner: Planner, request: Request) -> Flow[None]:
        try:
            stream = self.body.get("stream")
            if stream is not None and type(stream) is not bool:
                # the SDKs stream on any truthy value, metering only on True: refuse the rest
                raise InvalidRequest("'stream' must be a boolean", param="stream")
            if not request.is_mapping:
                raise InvalidRequest("the request body must be a JSON object")
            tier = request.payer.tier
            plan = planner.plan(
                request.route, self.body.get("model"), self.api, tier, request.urgent
            )
            self._plan = plan
            self.model = plan.model
            self.route_name = plan.pricer.name
            # 2 policy: the model passed the lists when the plan was made; hooks run per call
            if plan.on_request is not None and plan.on_request(self) is False:
                raise PolicyDenied(
                    f"model {plan.model!r} was refused by the route's onRequest hook",
                    model=plan.model,
                    reason="hook",
                )
            # 3 fit, 4 quote
            fitted = fit(plan, self.body, self.api, request.urgent)
            self.body = fitted.body
            self.prompt_tokens = fitted.prompt_tokens
            self.output_limit = fitted.output_limit
            self.clamped_from = fitted.clamped_from
            self.trimmed = fitted.trimmed
            usage = estimated(fitted.prompt_tokens, fitted.output_limit * choices(self.body))
            self.estimate = plan.pricer.quote(
                plan.model, usage, headers=self.headers, body=self.body, metadata=self.metadata
            )
            self.payment_required = self.estimate.price
            # 5 reserve
            self._charges = request.payer.charges
            runtime = self._runtime
            receipt = yield from reserve(
                self.id,
                request.payer.charges,
                to_nanos(self.payment_required),
                plan.mode,
                runtime.hold_ttl_seconds,
            )
            if receipt is not None:
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
        with self._lock:
            if self._done:
                return
            self._done = True
        reason = getattr(exc, "reason", None) or getattr(exc, "code", None) or type(exc).__name__
        remaining_nanos = None
        if isinstance(exc, BudgetExceeded):
            remaining_nanos = max(to_nanos(exc.limit - exc.spent), 0)
        self._facts = Facts(
            usage=None,
            quote=self.estimate,
            priced=False,
            status="skipped",
            amount_nanos=0,
            settlement_ms=0.0,
            policy_decision="denied" if isinstance(exc, MeteredError) else "error",
            policy_reason=str(reason),
            error_type=type(exc).__name__,
            fin=None,
            remaining_nanos=remaining_nanos,
            timestamp=time.time(),
            ended=time.perf_counter(),
        )
        try:
            self._emit(exc)
        finally:
            self._end()

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
            waiter = self._second_finisher()
            # never block a thread running an event loop: it may be the one settling
            if waiter is not None and not _on_event_loop():
                waiter.wait(_WAIT_FOR_FIRST_FINISH)
            return
        try:
            run(self._settle(fin), self._runtime.ledger)
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
        """Async :meth:`finish`. Settlement runs to its end even if the caller is
        cancelled meanwhile (a client that went away mid-settlement): the hold is captured
        or released and the record emitted."""
        fin = self._claim(
            usage, error, response, status, response_model, response_id, finish_reasons, partial
        )
        if fin is None:
            await self._await_first()
            return
        task = self._task = protected(self._asettle(fin))
        await asyncio.shield(task)

    async def _asettle(self, fin: Finish) -> None:
        try:
            await arun(self._settle(fin), self._runtime.ledger)
        finally:
            self._end()

    async def _await_first(self) -> None:
        task = self._task
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            await asyncio.shield(task)
            return
        waiter = self._second_finisher()
        if waiter is not None:  # the first finish runs in another thread or loop
            await asyncio.to_thread(waiter.wait, _WAIT_FOR_FIRST_FINISH)

    def _second_finisher(self) -> threading.Event | None:
        """The event a later finish waits on; ``None`` when the first is already over."""
        with self._lock:
            if self._ended:
                return None
            if self._waiter is None:
                self._waiter = threading.Event()
            return self._waiter

    def _end(self) -> None:
        """The first finish is over (settled, or failed trying): release any waiters."""
        with self._lock:
            self._ended = True
            waiter = self._waiter
        if waiter is not None:
            waiter.set()

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
        with self._lock:
            if self._done:
                return None
            self._done = True
        plan = self._plan
        vetoed = False
        if error is None and plan is not None and plan.on_response:
            vetoed = not self._hooks_allow(plan.on_response, response)
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

    def _hooks_allow(self, hooks: tuple[OnResponse, ...], response: Any) -> bool:
        for hook in hooks:
            try:
                if hook(self, response) is False:
                    return False
            except Exception:
                logger.exception("metered: on_response hook failed; settling normally")
        return True

    def _settle(self, fin: Finish) -> Flow[None]:
        quote, action = self._price(fin)
        started = time.perf_counter()
        receipt: Receipt | None = None
        failed = False
        charges = self._charges
        if charges is not None:
            if action.kind in ("capture", "adjust"):
                price = quote.price if quote is not None else self.payment_required
                amount = to_nanos(price)
            else:
                amount = 0
            receipt, failed = yield from settle(self.id, charges, action, amount)
        if receipt is not None and receipt.remaining_nanos:
            # the first charge is this account, with the budgets remaining() reads
            left = receipt.remaining_nanos[0]
        elif self._request.payer.budgets:
            left = yield from remaining(self.account, self._request.payer.budgets)
        else:
            left = None
        self._complete(fin, quote, action, receipt, failed, started, left)

    def _price(self, fin: Finish) -> tuple[Quote | None, Action]:
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
        try:
            quote = pricer.quote(
                self.model, usage, headers=self.headers, body=self.body, metadata=self.metadata
            )
        except Exception:
            logger.exception("metered: pricing failed after the call; settling the estimate")
            return self.estimate, action
        return quote, action

    def _complete(
        self,
        fin: Finish,
        quote: Quote | None,
        action: Action,
        receipt: Receipt | None,
        failed: bool,
        settle_started: float,
        remaining_nanos: int | None,
    ) -> None:
        now = time.perf_counter()
        if receipt is not None:
            self._alerts(receipt)
            amount = receipt.amount_nanos
        elif action.kind == "keep":
            amount = to_nanos(self.payment_required)
        else:
            amount = 0
        status = "failed" if failed else action.status
        settled = status == "settled"
        self._facts = Facts(
            usage=quote.usage if quote is not None and settled else fin.usage,
            quote=quote,
            priced=settled,
            status=status,
            amount_nanos=amount,
            settlement_ms=(now - settle_started) * 1000,
            policy_decision="allowed",
            policy_reason=None,
            error_type=type(fin.error).__name__ if fin.error is not None else None,
            fin=fin,
            remaining_nanos=remaining_nanos,
            timestamp=time.time(),
            ended=now,
        )
        totals = _context.bound.totals.get()
        if totals is not None and settled and quote is not None:
            totals.add(quote.cost, from_nanos(amount))
        span = self._span
        if span is not None and span.is_recording():
            self._event(
                EVENT_SETTLEMENT,
                {
                    "metered.settlement.status": status,
                    "metered.settlement.amount.usd": float(from_nanos(amount)),
                },
            )
        self._emit(fin.error)

    # -- outputs -----------------------------------------------------------------------

    def _event(self, name: str, attributes: Mapping[str, Any]) -> None:
        if self._events is None:
            self._events = []
        self._events.append((name, attributes))

    def _alerts(self, receipt: Receipt) -> None:
        callback = self._runtime.on_budget_alert
        for threshold in receipt.crossed:
            budget = threshold.budget
            self._event(
                EVENT_BUDGET_ALERT,
                {
                    "metered.account": threshold.account,
                    "metered.budget.window": str(budget.window),
                    "metered.budget.fraction": float(threshold.fraction),
                    "metered.budget.spent.usd": float(from_nanos(threshold.spent_nanos)),
                    "metered.budget.limit.usd": float(budget.limit),
                },
            )
            if callback is not None:
                try:
                    callback(threshold)
                except Exception:
                    logger.exception("metered: on_budget_alert callback failed")

    def _emit(self, error: BaseException | None) -> None:
        """Hand the record to the span, metrics, capture and sink, whichever are there;
        with none of them the record is not built until someone reads it."""
        runtime = self._runtime
        span = self._span
        telemetry = runtime.telemetry
        if span is not None and telemetry.wants_record(span):
            record = self.record
            assert record is not None  # facts are set before _emit
            telemetry.finish(
                span,
                record,
                operation=record.operation,
                duration_s=time.perf_counter() - self._started,
                events=self._events or (),
                error=error,
            )
        captured = _context.bound.captured.get()
        sink = runtime.sink
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


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
