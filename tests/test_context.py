"""Tests for metered.context: caller ContextVars, and how the engine reads them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from metered.context import (
    CallerContext,
    RequestTotals,
    bind,
    current,
    current_totals,
    forwarding,
    metering_by_route,
    take_route_metering,
)
from metered.engine.meter import Meter
from metered.usage import Usage

MeterFactory = Callable[..., Meter]
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 500}
USAGE = Usage(input_tokens=10, output_tokens=10)
CONFIG: dict[str, Any] = {
    "routes": {
        "standard": {
            "models": {"gpt-4o": "$0.05"},
            "match": [{"where": {"metadata.plan": "premium"}, "price": "$0.07"}],
        },
        "cheap": {"models": {"gpt-4o": "$0.01"}},
    },
    "default_route": "standard",
    "tiers": {"free": {"max_tokens": 200}, "pro": {"max_tokens": 1000}},
}


# -- bind / current --------------------------------------------------------------------------


def test_nothing_bound_by_default() -> None:
    """Outside any bind every item is unset."""
    assert current() == CallerContext()
    assert current_totals() is None


def test_bind_sets_and_restores() -> None:
    """Items are bound for the block and restored after it."""
    with bind(account="u1", tier="pro", feature="search", route="cheap", urgent=True):
        assert current() == CallerContext(
            account="u1", tier="pro", feature="search", route="cheap", urgent=True
        )
    assert current() == CallerContext()


def test_nested_bind_keeps_items_it_does_not_name() -> None:
    """Binding the tier inside an account binding keeps the account."""
    with bind(account="u1"), bind(tier="pro"):
        assert (current().account, current().tier) == ("u1", "pro")


def test_bind_restores_after_an_exception() -> None:
    """An error inside the block still unbinds."""
    with pytest.raises(RuntimeError), bind(account="u1"):
        raise RuntimeError("handler failed")
    assert current().account is None


async def test_tasks_inherit_the_binding() -> None:
    """A task started inside a binding sees it; its own bindings do not leak back."""

    async def child() -> str | None:
        seen = current().account
        with bind(account="child"):
            await asyncio.sleep(0)
        return seen

    with bind(account="parent"):
        seen = await asyncio.create_task(child())
        assert current().account == "parent"
    assert seen == "parent"


def test_request_totals_add_up() -> None:
    """RequestTotals sums cost and price of settled calls; unknown cost adds nothing."""
    totals = RequestTotals()
    totals.add(Decimal("0.01"), Decimal("0.05"))
    totals.add(None, Decimal("0.02"))
    assert (totals.calls, totals.cost, totals.price) == (2, Decimal("0.01"), Decimal("0.07"))


# -- the engine reads the binding ------------------------------------------------------------


def test_bound_caller_flows_into_begin(make_meter: MeterFactory) -> None:
    """account, tier, feature and route bound by a middleware apply to the call."""
    meter = make_meter(CONFIG)
    with bind(account="u1", tier="free", feature="search", route="cheap"):
        call = meter.begin(BODY)
    call.finish(USAGE)
    record = call.record
    assert record is not None
    assert (record.account, record.tier, record.feature) == ("u1", "free", "search")
    assert record.route == "cheap"
    assert record.settlement_amount == Decimal("0.01")
    assert call.body["max_tokens"] == 200  # the free tier's cap
    assert record.accounts == ("u1", "feature:search")


def test_bound_urgent_raises_the_cap(make_meter: MeterFactory) -> None:
    """A request bound as urgent gets the tier's urgent allowance."""
    meter = make_meter(CONFIG)
    with bind(tier="free", urgent=True):
        call = meter.begin(BODY)
    assert call.body["max_tokens"] == 300  # 200 x the default 1.5
    call.finish(USAGE)


def test_bound_metadata_feeds_match_rules(make_meter: MeterFactory) -> None:
    """Metadata bound for the request selects a match-rule price."""
    meter = make_meter(CONFIG)
    with bind(metadata={"plan": "premium"}):
        call = meter.begin(BODY)
        call.finish(USAGE)
        record = call.record
    assert record is not None
    assert (record.pricing_source, record.settlement_amount) == ("match", Decimal("0.07"))


def test_explicit_arguments_win_over_the_binding(make_meter: MeterFactory) -> None:
    """Keyword arguments to begin override bound items; metadata merges key by key."""
    meter = make_meter(CONFIG)
    with bind(account="bound", tier="free", route="cheap", metadata={"plan": "premium", "a": 1}):
        call = meter.begin(
            BODY, account="explicit", tier="pro", route="standard", metadata={"plan": "basic"}
        )
    assert (call.account, call.tier) == ("explicit", "pro")
    assert call.metadata == {"plan": "basic", "a": 1}
    assert call.body["max_tokens"] == 500  # within the pro cap
    call.finish(USAGE)
    record = call.record
    assert record is not None
    assert (record.route, record.settlement_amount) == ("standard", Decimal("0.05"))


async def test_binding_reaches_calls_in_tasks(make_meter: MeterFactory) -> None:
    """Calls made in tasks spawned during a request are charged to its caller."""
    meter = make_meter(CONFIG)

    async def work() -> None:
        call = await meter.abegin(BODY)
        await call.afinish(USAGE)

    with bind(account="u1"):
        await asyncio.gather(work(), work())
    assert meter.spent("u1") == Decimal("0.10")


def test_request_totals_accumulate_settled_calls(make_meter: MeterFactory) -> None:
    """The totals bound for a request add up its settled calls, not failed ones."""
    meter = make_meter(CONFIG)
    totals = RequestTotals()
    with bind(totals=totals):
        meter.begin(BODY).finish(USAGE)
        with bind(route="cheap"):
            meter.begin(BODY).finish(USAGE)
        meter.begin(BODY).finish(error=TimeoutError())
    cost = meter.quote("gpt-4o", USAGE).cost  # catalog cost, the same on both routes
    assert cost is not None
    assert (totals.calls, totals.cost, totals.price) == (2, 2 * cost, Decimal("0.06"))


async def test_request_totals_accumulate_async_calls(make_meter: MeterFactory) -> None:
    """Totals bound around async work count every settled call made in its tasks."""
    meter = make_meter(CONFIG)
    totals = RequestTotals()

    async def work() -> None:
        call = await meter.abegin(BODY)
        await call.afinish(USAGE)

    with bind(totals=totals):
        await asyncio.gather(*(work() for _ in range(3)))
    assert (totals.calls, totals.price) == (3, Decimal("0.15"))


# -- the forward of a gateway route --------------------------------------------------------


def test_outside_a_gateway_route_no_call_is_the_forward() -> None:
    """Without a route being served, even a marked call is metered as usual."""
    with forwarding():
        assert not take_route_metering(BODY)


def test_the_route_request_is_taken_once_by_the_call_sending_it() -> None:
    """An unmarked call sending the route's own request is the forward, only once."""
    other = {**BODY, "model": "gpt-4o-mini"}
    with metering_by_route(BODY):
        assert not take_route_metering(other)
        assert take_route_metering(dict(BODY))
        assert not take_route_metering(dict(BODY))


def test_a_marked_call_is_the_forward_whatever_it_sends() -> None:
    """forwarding() makes the call the forward even when its request was changed."""
    changed = {**BODY, "messages": [{"role": "system", "content": "be brief"}, *BODY["messages"]]}
    with metering_by_route(BODY):
        assert not take_route_metering(changed)
        with forwarding():
            assert take_route_metering(changed)
        assert not take_route_metering(BODY)
