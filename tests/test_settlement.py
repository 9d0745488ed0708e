"""Tests for metered.settlement: the decision table, and each outcome through the engine."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from metered.engine.meter import Call, Meter
from metered.ledger import MemoryLedger
from metered.money import to_nanos
from metered.records import UsageRecord
from metered.settlement import Action, decide
from metered.tokens import count_text
from metered.usage import Usage

MeterFactory = Callable[..., Meter]
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
USAGE = Usage(input_tokens=10, output_tokens=20)
ZERO = Decimal(0)
USAGE_PRICE = Decimal("0.00021")  # 10 x $1/1M + 20 x $10/1M


def config(**route: Any) -> dict[str, Any]:
    """gpt-4o at $1/1M input and $10/1M output tokens, plus route options, $1 budgets."""
    models = {"gpt-4o": {"input": "$1 / 1M tokens", "output": "$10 / 1M tokens"}}
    return {
        "routes": {"r": {"models": models, **route}},
        "default_route": "r",
        "default_budgets": ["$1/total"],
    }


def spent_and_held(meter: Meter, account: str = "anonymous") -> tuple[Decimal, int]:
    balance = meter.ledger.balance(account)
    return balance.spent, balance.held_nanos


# -- the decision table ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "succeeded", "vetoed", "refund", "expected"),
    [
        ("after-response", True, False, False, Action("capture", "settled")),
        ("after-response", False, False, False, Action("release", "released")),
        ("after-response", False, False, True, Action("release", "released")),
        ("after-response", True, True, False, Action("release", "skipped")),
        ("before-response", True, False, False, Action("adjust", "settled")),
        ("before-response", False, False, False, Action("keep", "settled")),
        ("before-response", False, False, True, Action("refund", "refunded")),
        ("before-response", True, True, False, Action("refund", "refunded")),
    ],
)
def test_decide(mode: Any, succeeded: bool, vetoed: bool, refund: bool, expected: Action) -> None:
    """Each mode and outcome maps to one ledger action and settlement status."""
    assert decide(mode, succeeded=succeeded, vetoed=vetoed, refund_on_failure=refund) == expected


# -- upstream failures -----------------------------------------------------------------------


def test_upstream_error_releases_the_hold(make_meter: MeterFactory) -> None:
    """after-response: a failed upstream call is not charged (refund protection)."""
    meter = make_meter(config())
    call = meter.begin(BODY)
    call.finish(error=TimeoutError("read timeout"))
    record = call.record
    assert record is not None
    assert (record.settlement_status, record.settlement_amount) == ("released", ZERO)
    assert record.error_type == "TimeoutError"
    assert record.payment_settled is False
    assert spent_and_held(meter) == (ZERO, 0)


async def test_upstream_error_releases_the_hold_async(make_meter: MeterFactory) -> None:
    """afinish releases a failed call's hold like finish does."""
    meter = make_meter(config())
    call = await meter.abegin(BODY)
    await call.afinish(error=ConnectionError("reset"))
    record = call.record
    assert record is not None
    assert record.settlement_status == "released"
    assert spent_and_held(meter) == (ZERO, 0)


def test_before_response_keeps_the_charge_on_failure(make_meter: MeterFactory) -> None:
    """before-response: a failed call keeps its prepaid charge by default."""
    meter = make_meter(config(settlement="before-response"))
    call = meter.begin(BODY)
    call.finish(error=TimeoutError())
    record = call.record
    assert record is not None
    assert record.settlement_status == "settled"
    assert record.settlement_amount == call.payment_required
    assert spent_and_held(meter) == (call.payment_required, 0)


def test_before_response_refunds_on_failure_when_configured(make_meter: MeterFactory) -> None:
    """before-response with refund_on_failure gives the prepaid charge back."""
    meter = make_meter(config(settlement="before-response", refund_on_failure=True))
    call = meter.begin(BODY)
    call.finish(error=TimeoutError())
    record = call.record
    assert record is not None
    assert (record.settlement_status, record.settlement_amount) == ("refunded", ZERO)
    assert spent_and_held(meter) == (ZERO, 0)


async def test_before_response_refund_async(make_meter: MeterFactory) -> None:
    """afinish refunds a prepaid charge like finish does."""
    meter = make_meter(config(settlement="before-response", refund_on_failure=True))
    call = await meter.abegin(BODY)
    assert spent_and_held(meter) == (call.payment_required, 0)
    await call.afinish(error=TimeoutError())
    record = call.record
    assert record is not None
    assert record.settlement_status == "refunded"
    assert spent_and_held(meter) == (ZERO, 0)


def test_ledger_fault_during_settlement_does_not_break_the_call(
    make_meter: MeterFactory,
) -> None:
    """A ledger that fails to capture parks the charge (status pending, the amount it will
    settle); finish itself does not raise; the charge lands once the ledger answers."""

    class BrokenCapture(MemoryLedger):
        down = True

        def capture(self, *args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise ConnectionError("ledger down")
            return super().capture(*args, **kwargs)

    ledger = BrokenCapture()
    meter = make_meter(config(), ledger=ledger)
    call = meter.begin(BODY)
    call.finish(USAGE)
    record = call.record
    assert record is not None
    assert record.settlement_status == "pending"
    assert record.payment_settled is False
    assert record.settlement_amount > 0
    assert meter.pending_settlements() == 1
    assert meter.flush_settlements() == 0  # still down: it waits
    ledger.down = False
    assert meter.flush_settlements() == 1
    assert meter.pending_settlements() == 0
    assert ledger.balance(call.account).spent_nanos == to_nanos(record.settlement_amount)


def test_a_release_the_ledger_cannot_take_is_failed_not_parked(
    make_meter: MeterFactory,
) -> None:
    """A failed release moves no money (the hold expires by itself): nothing to park."""

    class BrokenRelease(MemoryLedger):
        def release(self, *args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("ledger down")

    meter = make_meter(config(), ledger=BrokenRelease())
    call = meter.begin(BODY)
    call.finish(error=TimeoutError())
    assert call.record is not None
    assert call.record.settlement_status == "failed"
    assert meter.pending_settlements() == 0


# -- on_response veto ------------------------------------------------------------------------


def test_on_response_receives_the_call_and_response(make_meter: MeterFactory) -> None:
    """The hook sees the metered call and the upstream response object."""
    seen: list[tuple[Call, object]] = []
    meter = make_meter(config(), on_response=lambda call, response: seen.append((call, response)))
    call = meter.begin(BODY)
    response = object()
    call.finish(USAGE, response=response)
    assert seen == [(call, response)]


def test_on_response_veto_skips_settlement(make_meter: MeterFactory) -> None:
    """after-response: a hook returning False releases the hold (status skipped)."""
    meter = make_meter(config(), on_response=lambda call, response: False)
    call = meter.begin(BODY)
    call.finish(USAGE, response={"choices": []})
    record = call.record
    assert record is not None
    assert (record.settlement_status, record.settlement_amount) == ("skipped", ZERO)
    assert spent_and_held(meter) == (ZERO, 0)


def test_on_response_veto_refunds_a_prepaid_charge(make_meter: MeterFactory) -> None:
    """before-response: a hook returning False refunds the charge (status refunded)."""
    meter = make_meter(config(settlement="before-response"), on_response=lambda c, r: False)
    call = meter.begin(BODY)
    call.finish(USAGE, response={"choices": []})
    record = call.record
    assert record is not None
    assert record.settlement_status == "refunded"
    assert spent_and_held(meter) == (ZERO, 0)


def test_route_on_response_hook_vetoes(make_meter: MeterFactory) -> None:
    """A route's onResponse import path is called like the meter's hook."""
    # operator.is_(call, response) is False: the simplest importable veto
    meter = make_meter(config(hooks={"onResponse": "operator:is_"}))
    call = meter.begin(BODY)
    call.finish(USAGE, response={})
    record = call.record
    assert record is not None
    assert record.settlement_status == "skipped"


def test_failing_on_response_hook_settles_normally(make_meter: MeterFactory) -> None:
    """A hook that raises is logged and ignored: the call is settled as usual."""

    def hook(call: Call, response: object) -> bool:
        raise RuntimeError("bug in the operator's hook")

    meter = make_meter(config(), on_response=hook)
    call = meter.begin(BODY)
    call.finish(USAGE)
    record = call.record
    assert record is not None
    assert record.settlement_status == "settled"
    assert record.settlement_amount == USAGE_PRICE


# -- streams cut mid-way ---------------------------------------------------------------------


def delivered(call: Call, text: str) -> Usage:
    """The estimated usage of a stream that delivered ``text`` before it was abandoned."""
    return Usage(
        input_tokens=call.prompt_tokens,
        output_tokens=count_text(text, model="gpt-4o"),
        source="estimated",
    )


def test_abandoned_stream_settles_the_delivered_tokens(make_meter: MeterFactory) -> None:
    """A stream cut mid-way is charged for what was delivered, marked estimated."""
    meter = make_meter(config())
    call = meter.begin({**BODY, "stream": True})
    usage = delivered(call, "The quick brown fox jumps over")
    call.finish(usage, partial=True)
    record = call.record
    assert record is not None
    assert record.settlement_status == "settled"
    assert record.tokens_source == "estimated"
    assert record.tokens_out == usage.output_tokens
    expected = usage.input_tokens * Decimal("0.000001") + usage.output_tokens * Decimal("0.00001")
    assert record.settlement_amount == expected
    assert spent_and_held(meter) == (expected, 0)


def test_abandoned_stream_is_free_when_partial_streams_are_not_settled(
    make_meter: MeterFactory,
) -> None:
    """settle_partial_streams: false treats a cut stream as a failure: nothing is charged."""
    meter = make_meter(config(settle_partial_streams=False))
    call = meter.begin({**BODY, "stream": True})
    call.finish(delivered(call, "The quick brown fox"), partial=True)
    record = call.record
    assert record is not None
    assert (record.settlement_status, record.settlement_amount) == ("released", ZERO)
    assert spent_and_held(meter) == (ZERO, 0)


def test_abandoned_prepaid_stream_is_refunded_when_partial_streams_are_not_settled(
    make_meter: MeterFactory,
) -> None:
    """before-response with settle_partial_streams: false refunds a cut stream, never keeps it."""
    meter = make_meter(config(settlement="before-response", settle_partial_streams=False))
    call = meter.begin({**BODY, "stream": True})
    assert spent_and_held(meter) == (call.payment_required, 0)
    call.finish(delivered(call, "The quick brown fox"), partial=True)
    record = call.record
    assert record is not None
    assert (record.settlement_status, record.settlement_amount) == ("refunded", ZERO)
    assert spent_and_held(meter) == (ZERO, 0)


# -- exactly once ----------------------------------------------------------------------------


def test_finish_twice_charges_once(make_meter: MeterFactory, records: list[UsageRecord]) -> None:
    """A second finish changes nothing: the record stays the first one's."""
    meter = make_meter(config())
    call = meter.begin(BODY)
    call.finish(USAGE)
    first = call.record
    call.finish(Usage(input_tokens=1000, output_tokens=1000))
    second = call.record
    assert second is first
    assert len(records) == 1
    assert spent_and_held(meter) == (USAGE_PRICE, 0)


async def test_afinish_after_finish_charges_once(make_meter: MeterFactory) -> None:
    """Mixing finish and afinish still settles once."""
    meter = make_meter(config())
    call = meter.begin(BODY)
    call.finish(USAGE)
    first = call.record
    await call.afinish(error=TimeoutError())
    assert call.record is first
    assert first is not None
    assert first.settlement_status == "settled"
    assert spent_and_held(meter) == (USAGE_PRICE, 0)


def test_concurrent_finish_charges_once(
    make_meter: MeterFactory, records: list[UsageRecord]
) -> None:
    """Eight threads finishing the same call at once settle it exactly once."""
    meter = make_meter(config())
    call = meter.begin(BODY)
    barrier = threading.Barrier(8)

    def finish() -> None:
        barrier.wait()
        call.finish(USAGE)

    threads = [threading.Thread(target=finish) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(records) == 1
    assert spent_and_held(meter) == (USAGE_PRICE, 0)


def test_finish_during_settlement_waits_for_the_first(make_meter: MeterFactory) -> None:
    """A finish racing one that is still settling returns once it has settled: the
    record is then there."""
    settling = threading.Event()
    proceed = threading.Event()

    def slow_hook(call: Call, response: object) -> bool:
        settling.set()
        proceed.wait(timeout=10)
        return True

    meter = make_meter(config(), on_response=slow_hook)
    call = meter.begin(BODY)
    results: list[UsageRecord | None] = []

    def finish() -> None:
        call.finish(USAGE)
        results.append(call.record)

    first = threading.Thread(target=finish)
    first.start()
    assert settling.wait(timeout=10)
    racing = threading.Thread(target=finish)
    racing.start()
    # the racing finish must not return before the first has settled
    racing.join(timeout=0.2)
    proceed.set()
    first.join()
    racing.join()
    assert len(results) == 2
    assert None not in results
    assert results[0] is results[1]


def test_finish_without_usage_settles_the_estimate(make_meter: MeterFactory) -> None:
    """No usage reported: the pre-call estimate (the maximum) is charged, marked estimated."""
    meter = make_meter(config())
    call = meter.begin(BODY)
    call.finish()
    record = call.record
    assert record is not None
    assert record.settlement_status == "settled"
    assert record.settlement_amount == call.payment_required
    assert record.tokens_source == "estimated"
    assert record.tokens_out == 100
    assert meter.ledger.balance("anonymous").spent_nanos == to_nanos(call.payment_required)


def test_only_a_store_outage_parks_a_settlement(make_meter: MeterFactory) -> None:
    """A capture the ledger refuses as such (a bug, a bad argument) is ``failed``, not
    parked: replaying it could only fail again."""

    class Refusing(MemoryLedger):
        def capture(self, *args: Any, **kwargs: Any) -> Any:
            raise ValueError("not this capture")

    meter = make_meter(config(), ledger=Refusing())
    call = meter.begin(BODY)
    call.finish(USAGE)
    assert call.record is not None
    assert call.record.settlement_status == "failed"
    assert meter.pending_settlements() == 0


def test_a_parked_settlement_refused_for_good_does_not_block_the_others(
    make_meter: MeterFactory,
) -> None:
    class Flaky(MemoryLedger):
        state = "down"

        def capture(self, key: str, *args: Any, **kwargs: Any) -> Any:
            if self.state == "down":
                raise ConnectionError("ledger down")
            if key == self.poisoned:
                raise ValueError("refused for good")
            return super().capture(key, *args, **kwargs)

    ledger = Flaky()
    meter = make_meter(config(), ledger=ledger)
    first, second = meter.begin(BODY), meter.begin(BODY)
    first.finish(USAGE)
    second.finish(USAGE)
    assert meter.pending_settlements() == 2
    ledger.state, ledger.poisoned = "up", first.id  # type: ignore[attr-defined]
    assert meter.flush_settlements() == 1  # the poisoned one dropped, the other landed
    assert meter.pending_settlements() == 0
    assert second.record is not None
    assert ledger.balance(second.account).spent_nanos == to_nanos(second.record.settlement_amount)
