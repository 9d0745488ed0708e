"""Money moves here: the ledger side of steps 5 and 9, written once for sync and async.

Each step is a *flow*: a generator that yields the ledger operations it needs
(:class:`Op`) and receives their results, with no I/O of its own. Two small drivers run a
flow, :func:`run` against the ledger's sync API and :func:`arun` against its async API, the
way httpx drives ``Auth.auth_flow``. A failing operation is thrown back into the flow, so
each flow decides in one place what a ledger error means.

:func:`protected` is how async settlement survives its caller: a client that disconnects
while a call settles cancels the request task, but the hold must still be captured or
released and the record emitted.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
import types
from collections.abc import Callable, Coroutine, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from metered.engine.outbox import PARKABLE, Outbox
from metered.engine.plan import Plan
from metered.engine.record import Finish
from metered.errors import LedgerError
from metered.ledger import Budget, Charge, Hold, Ledger, Receipt, Threshold
from metered.pricing.route import Quote
from metered.records import RecordSink
from metered.settlement import Action, SettlementMode, SettlementStatus, decide
from metered.telemetry import Telemetry
from metered.usage import Usage

__all__ = [
    "Applied",
    "Flow",
    "Once",
    "Op",
    "Runtime",
    "apply",
    "arun",
    "outcome",
    "protected",
    "remaining",
    "replay",
    "reservation",
    "reserved",
    "run",
    "settlement",
]

logger = logging.getLogger("metered")

T = TypeVar("T")

# a later finisher (another thread) waits at most this long for the first to settle
_WAIT_FOR_FIRST = 30.0


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a call needs from its meter, fixed when the meter is built."""

    ledger: Ledger
    telemetry: Telemetry
    sink: RecordSink | None
    on_budget_alert: Callable[[Threshold], object] | None
    hold_ttl_seconds: float
    outbox: Outbox


#: One ledger operation a flow needs, ``(method, args, kwargs)``: the sync driver calls
#: ``ledger.<method>(*args, **kwargs)``, the async one ``ledger.a<method>`` with the same.
Op = tuple[str, tuple[Any, ...], dict[str, Any]]


Flow = Generator[Op, Any, T]


def run(flow: Flow[T], ledger: Ledger) -> T:
    """Run ``flow`` against the ledger's sync API; returns what the flow returns."""
    try:
        method, args, kwargs = next(flow)
        while True:
            try:
                result = getattr(ledger, method)(*args, **kwargs)
            except BaseException as exc:  # the flow decides; it re-raises what it can't handle
                method, args, kwargs = flow.throw(exc)
            else:
                method, args, kwargs = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def arun(flow: Flow[T], ledger: Ledger) -> T:
    """Run ``flow`` against the ledger's async API; returns what the flow returns."""
    try:
        method, args, kwargs = next(flow)
        while True:
            try:
                result = await getattr(ledger, "a" + method)(*args, **kwargs)
            except BaseException as exc:  # a cancelled reservation is refused like a failed one
                method, args, kwargs = flow.throw(exc)
            else:
                method, args, kwargs = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


# Python 3.12+ can start a task eagerly: a ledger that never suspends (the in-process one)
# settles within this step, and only a ledger that awaits I/O costs a trip round the loop.
_EAGER = sys.version_info >= (3, 12)


def protected(coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """``coro`` as a task that the caller's cancellation cannot interrupt.

    Await the result with ``await asyncio.shield(task)``: a cancelled caller stops
    waiting, the task runs to its end. Whatever the ledger is (in-process, Redis, a
    wrapper), settlement is protected the same way.

    The task starts eagerly: its first step runs now, and a coroutine that finishes
    without suspending never costs a trip round the event loop. Python 3.12+ does that
    itself (``eager_start``); on 3.11 :func:`_eager` does the same.
    """
    loop = asyncio.get_running_loop()
    if _EAGER:
        return asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
    return _eager(coro, loop)


def _eager(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> asyncio.Future[T]:
    """Python 3.11's eager task start: the first step runs here, in a copy of the context
    as a task's would; a coroutine that suspends goes on in a task (the same context),
    which resumes it where it stopped. Cancellation reaches a coroutine only where it
    suspends, so one that never does is as protected as a task."""
    context = contextvars.copy_context()
    try:
        yielded = context.run(coro.send, None)
    except StopIteration as stop:
        done: asyncio.Future[T] = loop.create_future()
        done.set_result(stop.value)
        return done
    except (KeyboardInterrupt, SystemExit):
        raise  # as a task step re-raises them
    except BaseException as exc:
        failed: asyncio.Future[T] = loop.create_future()
        if isinstance(exc, asyncio.CancelledError):
            failed.cancel()
        else:
            failed.set_exception(exc)
        return failed
    return loop.create_task(_resumed(coro, yielded), context=context)


async def _resumed(coro: Coroutine[Any, Any, T], yielded: Any) -> T:
    return await _relay(coro, yielded)


@types.coroutine
def _relay(coro: Coroutine[Any, Any, T], yielded: Any) -> Generator[Any, Any, T]:
    """Go on with ``coro``, which yielded ``yielded`` to its first driver: hand each
    yielded future to the task and what the task sends or throws back to ``coro``."""
    while True:
        try:
            sent = yield yielded
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]


def reservation(
    key: str,
    charges: tuple[Charge, ...],
    amount_nanos: int,
    mode: SettlementMode,
    ttl_seconds: float,
    floor_nanos: int | None = None,
) -> Op:
    """Step 5: hold the maximum price (``after-response``) or charge it (``before-response``).

    With ``floor_nanos`` the ledger reserves less when the budgets cannot pay it all, but
    never less than the floor (see :meth:`~metered.ledger.Ledger.hold`).
    """
    extra: dict[str, Any] = {} if floor_nanos is None else {"floor_nanos": floor_nanos}
    if mode == "after-response":
        return ("hold", (key, charges, amount_nanos), {"ttl_seconds": ttl_seconds, **extra})
    return ("charge", (key, charges, amount_nanos), extra)


def reserved(key: str, result: Hold | Receipt) -> Receipt | None:
    """What a reservation did: the charge's receipt, ``None`` for a hold.

    Raises:
        LedgerError: the ledger reports the call id as already held or charged. Ids are
            unique per call, so that is another call's entry (a replay): going ahead would
            let this call run unbudgeted, so it is refused.
    """
    if isinstance(result, Hold):
        if result.replayed:
            raise LedgerError(f"call id {key!r} is already held by another call")
        return None
    if result.status != "applied":
        raise LedgerError(f"call id {key!r} is already charged by another call")
    return result


def settlement(
    key: str, charges: tuple[Charge, ...], action: Action, amount_nanos: int
) -> Op | None:
    """Step 9: the ledger operation that applies a settlement decision, if any."""
    kind = action.kind
    if kind == "capture":
        return ("capture", (key, amount_nanos), {"charges": charges})
    if kind == "adjust":
        return ("adjust", (key, amount_nanos), {})
    if kind == "refund":
        return ("refund", (key,), {})
    if kind == "release":
        return ("release", (key,), {})
    return None


class Applied(NamedTuple):
    """What applying a settlement operation did.

    Attributes:
        receipt: the ledger's receipt (``None`` for a release, or when it failed).
        status: ``pending`` (parked in the outbox) or ``failed``, else ``None``.
        parked_nanos: the amount a parked operation will settle.
    """

    receipt: Receipt | None
    status: SettlementStatus | None = None
    parked_nanos: int = 0


#: What says the budget store is unavailable (a settlement then waits in the outbox); any
#: other failure is the operation's own and parking it would only repeat it.
UNAVAILABLE: tuple[type[Exception], ...] = (LedgerError, OSError)


def apply(key: str, op: Op, outbox: Outbox) -> Flow[Applied]:
    """Step 9 against the ledger: replay parked settlements first when due, then ``op``.

    A money-moving operation the store cannot take (:data:`UNAVAILABLE`) is parked
    (``pending``): the upstream call already happened, so its charge must land later. A
    failed release, or an operation the ledger refuses as such, is ``failed``.
    """
    if outbox.due():
        yield from replay(outbox)
    try:
        result = yield op
    except Exception as exc:
        logger.exception("metered: settlement failed for call %s", key)
        if op[0] in PARKABLE and isinstance(exc, UNAVAILABLE):
            outbox.park(op)
            amount = op[1][1] if op[0] in ("capture", "adjust") else 0
            return Applied(None, "pending", amount)
        return Applied(None, "failed")
    return Applied(None if op[0] == "release" else result)


def replay(outbox: Outbox) -> Flow[int]:
    """Replay the parked settlements in order, stopping at the first the store still
    refuses; returns how many landed (see :mod:`metered.engine.outbox`)."""
    landed: list[str] = []
    dropped: list[str] = []
    try:
        for ident, op in outbox.take():
            try:
                yield op
            except UNAVAILABLE as exc:
                logger.warning("metered: parked settlements wait: %s", exc)
                break
            except Exception:
                # refused for good (not a store outage): never let it block the others
                logger.exception("metered: dropping parked settlement %s of %s", op[0], op[1][0])
                dropped.append(ident)
            else:
                landed.append(ident)
    finally:
        outbox.done(landed + dropped)
    return len(landed)


def remaining(account: str, budgets: Sequence[Budget]) -> Flow[int | None]:
    """The least remaining (nano-USD) of ``account``'s budgets; ``None`` if unlimited or
    unreadable (a record is still emitted when the ledger cannot be read)."""
    least: int | None = None
    try:
        for budget in budgets:
            balance = yield ("balance", (account, budget), {})
            left = balance.remaining_nanos
            if left is not None and (least is None or left < least):
                least = left
    except Exception:
        logger.exception("metered: could not read the remaining budget")
        return None
    return least


def outcome(
    plan: Plan | None,
    model: str | None,
    estimate: Quote | None,
    fin: Finish,
    mode: SettlementMode,
    headers: Mapping[str, str],
    body: Mapping[str, Any],
    metadata: Mapping[str, Any],
) -> tuple[Quote | None, Action]:
    """What a finished call costs and what settlement does about it (step 8 and the
    decision of step 9); headers, body and metadata are what price rules match on."""
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
    action = decide(mode, succeeded=succeeded, vetoed=fin.vetoed, refund_on_failure=refund)
    if pricer is None or model is None:
        return None, action
    usage = fin.usage
    if usage is None:
        # no usage reported: settle the pre-call estimate (the maximum), marked estimated
        usage = estimate.usage if estimate is not None else Usage(source="unknown")
    try:
        quote = pricer.quote(model, usage, headers=headers, body=body, metadata=metadata)
        return quote, action
    except Exception:
        logger.exception("metered: pricing failed after the call; settling the estimate")
        return estimate, action


class Once:
    """Exactly once: the first :meth:`claim` wins; later claimers wait for it to end.

    A call is finished by whoever gets there first (the stream's end, an error, ``close``,
    garbage collection, another thread); the others must not settle again, and should
    return only once the first has settled, so the record is complete.
    """

    __slots__ = ("_claimed", "_ended", "_task", "_waiter", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()  # also guards what the first leaves behind
        self._claimed = False
        self._ended = False
        self._waiter: threading.Event | None = None  # made only when someone waits
        self._task: asyncio.Future[None] | None = None  # the first, when it runs async

    def claim(self) -> bool:
        """Whether the caller is the first (and must then call :meth:`end`)."""
        with self.lock:
            if self._claimed:
                return False
            self._claimed = True
            return True

    def end(self) -> None:
        """The first is over (done, or failed trying): release the waiters."""
        with self.lock:
            self._ended = True
            waiter = self._waiter
        if waiter is not None:
            waiter.set()

    def start(self, coro: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        """Run the first's work as a :func:`protected` task later claimers can await."""
        task = self._task = protected(coro)
        return task

    def wait(self) -> None:
        """Block until the first is over; never blocks a thread running an event loop (it
        may be the loop the first runs on)."""
        waiter = self._event()
        if waiter is not None and not _on_event_loop():
            waiter.wait(_WAIT_FOR_FIRST)

    async def await_first(self) -> None:
        """Async :meth:`wait`."""
        task = self._task
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            await asyncio.shield(task)
            return
        waiter = self._event()
        if waiter is not None:  # the first runs in another thread (or loop)
            await asyncio.to_thread(waiter.wait, _WAIT_FOR_FIRST)

    def _event(self) -> threading.Event | None:
        with self.lock:
            if self._ended:
                return None
            if self._waiter is None:
                self._waiter = threading.Event()
            return self._waiter


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
