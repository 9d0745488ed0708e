"""Tests for metered.meter: the engine's steps 1-5 (begin) and 7-9 (finish), end to end."""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from metered.engine.meter import Call, Meter
from metered.errors import (
    BudgetExceeded,
    ContextOverflow,
    InvalidRequest,
    PolicyDenied,
    UnknownModel,
    UnknownTier,
)
from metered.http.errors import http_error
from metered.ledger import Balance, MemoryLedger
from metered.money import to_nanos
from metered.records import UsageRecord
from metered.telemetry import ATTR
from metered.usage import Usage

MeterFactory = Callable[..., Meter]
HI = [{"role": "user", "content": "hi"}]
# Resale token rates: $0.000001 per input token, $0.00001 per output token.
TOKEN_ROUTE: dict[str, Any] = {
    "routes": {
        "metered": {"models": {"gpt-4o": {"input": "$1 / 1M tokens", "output": "$10 / 1M tokens"}}}
    },
    "default_route": "metered",
}
TINY = {
    "catalog": {
        "overrides": {
            "tiny-model": {
                "input": "$1 / 1M tokens",
                "output": "$2 / 1M tokens",
                "context_window": 200,
            }
        }
    }
}


def chat(model: str = "gpt-4o", messages: Any = None, **extra: Any) -> dict[str, Any]:
    """A chat-completions request body."""
    return {"model": model, "messages": HI if messages is None else messages, **extra}


def usd(text: str) -> Decimal:
    return Decimal(text)


# -- begin: steps 1-5 ------------------------------------------------------------------------


def test_begin_quotes_prompt_and_output_limit(make_meter: MeterFactory) -> None:
    """The maximum price is the counted prompt plus the output limit at the route's rates."""
    meter = make_meter(TOKEN_ROUTE)
    call = meter.begin(chat(max_tokens=100))
    assert call.model == "gpt-4o"
    assert call.prompt_tokens > 0
    assert call.estimate is not None
    assert call.estimate.usage == Usage(
        input_tokens=call.prompt_tokens, output_tokens=100, source="estimated"
    )
    expected = call.prompt_tokens * usd("0.000001") + 100 * usd("0.00001")
    assert call.payment_required == call.estimate.price == expected
    call.finish()


def test_begin_reserves_every_choice_of_n(make_meter: MeterFactory) -> None:
    """n=3 reserves three completions' worth of output."""
    meter = make_meter(TOKEN_ROUTE)
    call = meter.begin(chat(max_tokens=100, n=3))
    assert call.estimate is not None
    assert call.estimate.usage.output_tokens == 300
    call.finish()


def test_begin_does_not_mutate_the_callers_body(make_meter: MeterFactory) -> None:
    """Capping works on a copy: the caller's dict is left as it was."""
    meter = make_meter({"tiers": {"free": {"max_tokens": 50}}})
    body = chat(max_tokens=500)
    call = meter.begin(body, tier="free")
    assert body["max_tokens"] == 500
    assert call.body["max_tokens"] == 50
    call.finish()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HI}, "model"),
        ({"model": ["gpt-4o"], "messages": HI}, "model"),
        ({"model": {"id": "gpt-4o"}, "messages": HI}, "model"),
        ({"model": "gpt-4o", "messages": "hi"}, "messages"),
        ({"model": "gpt-4o", "messages": HI, "max_tokens": 0}, "max_tokens"),
        (
            {"model": "gpt-4o", "messages": HI, "max_completion_tokens": 10**7},
            "max_completion_tokens",
        ),
        ({"model": "gpt-4o", "messages": HI, "stream": "yes"}, "stream"),
        ({"model": "gpt-4o", "messages": HI, "n": 0}, "n"),
    ],
)
def test_begin_refuses_malformed_requests(
    make_meter: MeterFactory, records: list[UsageRecord], body: dict[str, Any], param: str
) -> None:
    """A malformed body is a 400 naming the parameter, and nothing is held."""
    meter = make_meter({"default_budgets": ["$1/total"]})
    with pytest.raises(InvalidRequest) as caught:
        meter.begin(body)
    assert caught.value.param == param
    assert http_error(caught.value)[0] == 400
    assert meter.ledger.balance("anonymous").held_nanos == 0
    assert [r.policy_decision for r in records] == ["denied"]


@pytest.mark.parametrize("name", ["config", "ledger", "pricer", "policy", "telemetry"])
def test_a_meter_is_immutable(make_meter: MeterFactory, name: str) -> None:
    """What the engine plans from cannot be swapped under it (its plans would go stale)."""
    meter = make_meter()
    with pytest.raises(AttributeError):
        setattr(meter, name, getattr(meter, name))


def test_a_new_meter_over_the_same_ledger_applies_new_lists(make_meter: MeterFactory) -> None:
    """A kill switch is a new meter on the same ledger: it refuses the model for callers
    the old meter planned, and their spend carries over."""
    meter = make_meter({"default_budgets": ["$1/total"]})
    meter.begin(chat(), account="alice").finish(Usage(input_tokens=10, output_tokens=10))
    spent = meter.spent("alice")
    assert spent > 0
    killed = make_meter(
        {"default_budgets": ["$1/total"], "models": {"deny": ["gpt-4o"]}}, ledger=meter.ledger
    )
    for account in ("alice", "bob"):
        with pytest.raises(PolicyDenied):
            killed.begin(chat(), account=account)
    assert killed.spent("alice") == spent


def test_unknown_model_is_refused_before_anything_is_held(
    make_meter: MeterFactory, records: list[UsageRecord]
) -> None:
    """A route that lists its models refuses others instead of pricing them at cost."""
    meter = make_meter({**TOKEN_ROUTE, "default_budgets": ["$1/total"]})
    with pytest.raises(UnknownModel):
        meter.begin(chat("gpt-4o-mini"))
    assert meter.ledger.balance("anonymous").held_nanos == 0
    assert records[0].policy_reason == "unknown_model"


def test_unknown_route_name_is_refused_not_priced_by_other_rules(
    make_meter: MeterFactory, records: list[UsageRecord]
) -> None:
    """A route name the config does not have (a typo) is a 400, never a silent default."""
    meter = make_meter(TOKEN_ROUTE)
    with pytest.raises(InvalidRequest, match="unknown route 'metred'"):
        meter.begin(chat(), route="metred")
    assert records[-1].policy_decision == "denied"
    assert meter.spent("anonymous") == 0


def test_default_account_pays_when_no_caller_is_bound(make_meter: MeterFactory) -> None:
    """Without an account the meter's default account is charged."""
    meter = make_meter(TOKEN_ROUTE, default_account="house")
    meter.begin(chat(max_tokens=10)).finish(Usage(input_tokens=1, output_tokens=1))
    assert meter.spent("house") == usd("0.000011")


def test_meter_from_yaml(tmp_path: Path) -> None:
    """A YAML file configures the meter like the equivalent mapping."""
    path = tmp_path / "metered.yaml"
    path.write_text('default_budgets: ["$2/day"]\n', encoding="utf-8")
    meter = Meter.from_yaml(path)
    assert meter.remaining("anyone") == usd("2")


def test_begin_responses_api_reserves_max_output_tokens(make_meter: MeterFactory) -> None:
    """A Responses request is counted from its input and reserves max_output_tokens."""
    meter = make_meter(TOKEN_ROUTE)
    call = meter.begin(
        {"model": "gpt-4o", "input": "hello there", "max_output_tokens": 50}, api="responses"
    )
    assert call.prompt_tokens > 0
    assert call.estimate is not None
    assert call.estimate.usage.output_tokens == 50
    call.finish()


def test_begin_anthropic_api_counts_the_system_prompt(make_meter: MeterFactory) -> None:
    """An Anthropic Messages request counts its top-level system prompt too."""
    meter = make_meter()
    messages = [{"role": "user", "content": "hello"}]
    plain = meter.begin(
        {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": messages}, api="anthropic"
    )
    with_system = meter.begin(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "messages": messages,
            "system": "be nice",
        },
        api="anthropic",
    )
    assert with_system.prompt_tokens > plain.prompt_tokens
    assert with_system.estimate is not None
    assert with_system.estimate.provider == "anthropic"
    plain.finish()
    with_system.finish()


# -- finish: steps 7-9 -----------------------------------------------------------------------


def test_finish_captures_the_actual_price(make_meter: MeterFactory) -> None:
    """After the call, the actual usage is priced and captured; the hold is gone."""
    meter = make_meter({**TOKEN_ROUTE, "default_budgets": ["$1/total"]})
    call = meter.begin(chat(max_tokens=100), account="u1")
    assert meter.ledger.balance("u1").held_nanos == to_nanos(call.payment_required)
    call.finish(Usage(input_tokens=10, output_tokens=20))
    record = call.record
    assert record is not None
    assert record.settlement_status == "settled"
    assert record.settlement_amount == usd("0.00021")
    assert meter.spent("u1") == usd("0.00021")
    assert meter.ledger.balance("u1").held_nanos == 0
    assert meter.remaining("u1") == usd("1") - usd("0.00021")


def test_before_response_charges_at_begin_and_adjusts_at_finish(
    make_meter: MeterFactory,
) -> None:
    """Prepaid routes spend the quote up front, then correct it to the actual price."""
    config = {**TOKEN_ROUTE, "default_budgets": ["$1/total"]}
    config["routes"] = {
        "metered": {**TOKEN_ROUTE["routes"]["metered"], "settlement": "before-response"}
    }
    meter = make_meter(config)
    call = meter.begin(chat(max_tokens=100), account="u1")
    assert meter.spent("u1") == call.payment_required
    call.finish(Usage(input_tokens=10, output_tokens=20))
    assert meter.spent("u1") == usd("0.00021")


async def test_async_pipeline_settles_like_the_sync_one(make_meter: MeterFactory) -> None:
    """abegin/afinish hold and capture exactly what begin/finish do."""
    meter = make_meter({**TOKEN_ROUTE, "default_budgets": ["$1/total"]})
    usage = Usage(input_tokens=10, output_tokens=20)
    sync_call = meter.begin(chat(max_tokens=100), account="sync")
    async_call = await meter.abegin(chat(max_tokens=100), account="async")
    assert async_call.payment_required == sync_call.payment_required
    sync_call.finish(usage)
    sync_record = sync_call.record
    await async_call.afinish(usage)
    async_record = async_call.record
    assert sync_record is not None
    assert async_record is not None
    assert async_record.settlement_amount == sync_record.settlement_amount
    assert meter.spent("async") == meter.spent("sync")


# -- budgets ---------------------------------------------------------------------------------


def test_over_budget_call_is_refused_with_402_and_charges_nothing(
    make_meter: MeterFactory, records: list[UsageRecord]
) -> None:
    """A call whose maximum price does not fit is refused before upstream, at no charge."""
    meter = make_meter(
        {
            "routes": {"r": {"models": {"gpt-4o": "$0.60"}}},
            "default_route": "r",
            "default_budgets": ["$1/total"],
        }
    )
    meter.begin(chat(), account="u1").finish()
    with pytest.raises(BudgetExceeded) as caught:
        meter.begin(chat(), account="u1")
    status, body = http_error(caught.value)
    assert status == 402
    assert Decimal(body["error"]["metered"]["required_usd"]) == usd("0.60")
    assert meter.spent("u1") == usd("0.60")
    assert meter.ledger.balance("u1").held_nanos == 0
    refused = records[-1]
    assert (refused.policy_decision, refused.settlement_status) == ("denied", "skipped")
    assert refused.settlement_amount == 0
    assert refused.payment_settled is False


class InvariantLedger(MemoryLedger):
    """A MemoryLedger that checks, after every operation, that no account overspends."""

    def __init__(self, limit_nanos: int, accounts: tuple[str, ...]) -> None:
        super().__init__()
        self.limit_nanos = limit_nanos
        self.accounts = accounts
        self.violations: list[Balance] = []

    def _verify(self) -> None:
        for account in self.accounts:
            balance = self.balance(account)
            if balance.spent_nanos + balance.held_nanos > self.limit_nanos:
                self.violations.append(balance)

    def hold(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().hold(*args, **kwargs)
        finally:
            self._verify()

    def capture(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().capture(*args, **kwargs)
        finally:
            self._verify()

    def release(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().release(*args, **kwargs)
        finally:
            self._verify()


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Make the interpreter switch threads far more often, to provoke races."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


@pytest.mark.usefixtures("fast_switching")
async def test_concurrent_calls_never_overspend_one_dollar(
    make_meter: MeterFactory, records: list[UsageRecord]
) -> None:
    """500 async tasks and 8 threads x 100 sync calls share $1: no overspend, no leaked hold."""
    ledger = InvariantLedger(to_nanos(usd("1")), ("shared",))
    meter = make_meter({**TOKEN_ROUTE, "default_budgets": ["$1/total"]}, ledger=ledger)
    refused: list[BudgetExceeded] = []
    max_output = 900  # with the prompt, every call's maximum price is under $0.01

    def outcome(call: Call, rng: random.Random) -> dict[str, Any]:
        assert call.payment_required <= usd("0.01")
        roll = rng.random()
        if roll < 0.2:
            return {"error": TimeoutError("upstream timed out")}
        if roll < 0.3:
            return {}  # no usage reported: the estimate is settled
        # a provider that honours the limit it is sent (the budget may have lowered it)
        output = rng.randint(0, call.output_limit)
        return {"usage": Usage(input_tokens=call.prompt_tokens, output_tokens=output)}

    async def async_call(i: int) -> None:
        rng = random.Random(i)
        try:
            call = await meter.abegin(chat(max_tokens=max_output), account="shared")
        except BudgetExceeded as exc:
            refused.append(exc)
            return
        await asyncio.sleep(0)  # the upstream call: other tasks run meanwhile
        await call.afinish(**outcome(call, rng))

    start = threading.Barrier(9)

    def sync_worker(w: int) -> None:
        start.wait()
        for j in range(100):
            rng = random.Random(10_000 + w * 100 + j)
            try:
                call = meter.begin(chat(max_tokens=max_output), account="shared")
            except BudgetExceeded as exc:
                refused.append(exc)
                continue
            time.sleep(0)
            call.finish(**outcome(call, rng))

    threads = [threading.Thread(target=sync_worker, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    start.wait()
    await asyncio.gather(*(async_call(i) for i in range(500)))
    for thread in threads:
        thread.join()

    assert ledger.violations == []
    balance = ledger.balance("shared")
    assert balance.held_nanos == 0
    settled = [r for r in records if r.settlement_status == "settled"]
    assert balance.spent_nanos == sum(to_nanos(r.settlement_amount) for r in settled)
    assert balance.spent_nanos <= to_nanos(usd("1"))
    assert len(records) == 1300
    assert settled
    # the budget really was contended, and every settlement path ran
    assert refused
    assert {http_error(exc)[0] for exc in refused} == {402}
    by_status = {
        s: [r for r in records if r.settlement_status == s] for s in ("skipped", "released")
    }
    assert len(by_status["skipped"]) == len(refused)
    assert all(r.policy_decision == "denied" for r in by_status["skipped"])
    assert by_status["released"]
    assert all(r.settlement_amount == 0 for r in by_status["skipped"] + by_status["released"])
    assert all(r.settlement_amount <= r.payment_required for r in settled)


def test_parent_account_is_charged_with_the_caller(make_meter: MeterFactory) -> None:
    """A call by alice is charged to alice and to her team, team-a."""
    meter = make_meter(
        {
            "routes": {"r": {"models": {"gpt-4o": "$0.02"}}},
            "default_route": "r",
            "accounts": {"alice": {"parents": ["team-a"]}, "team-a": {"budgets": ["$0.05/day"]}},
        }
    )
    call = meter.begin(chat(), account="alice")
    call.finish()
    record = call.record
    assert record is not None
    assert record.accounts == ("alice", "team-a")
    assert meter.spent("alice") == meter.spent("team-a") == usd("0.02")


def test_exhausted_parent_refuses_the_call_without_holding_on_the_caller(
    make_meter: MeterFactory,
) -> None:
    """When team-a cannot pay, alice's call is refused and nothing is held on alice."""
    meter = make_meter(
        {
            "routes": {"r": {"models": {"gpt-4o": "$0.02"}}},
            "default_route": "r",
            "accounts": {
                "alice": {"parents": ["team-a"]},
                "bob": {"parents": ["team-a"]},
                "team-a": {"budgets": ["$0.05/day"]},
            },
        }
    )
    meter.begin(chat(), account="alice").finish()
    meter.begin(chat(), account="bob").finish()
    with pytest.raises(BudgetExceeded) as caught:
        meter.begin(chat(), account="alice")
    assert caught.value.account == "team-a"
    assert meter.ledger.balance("alice").held_nanos == 0
    assert meter.ledger.balance("team-a").held_nanos == 0
    assert meter.spent("alice") == usd("0.02")
    assert meter.spent("team-a") == usd("0.04")


def test_feature_tag_is_tracked_as_its_own_account(make_meter: MeterFactory) -> None:
    """feature="search" adds the account feature:search to the charge."""
    meter = make_meter({"routes": {"r": {"models": {"gpt-4o": "$0.02"}}}, "default_route": "r"})
    call = meter.begin(chat(), account="u1", feature="search")
    call.finish()
    record = call.record
    assert record is not None
    assert record.accounts == ("u1", "feature:search")
    assert meter.spent("feature:search") == usd("0.02")


# -- token fit -------------------------------------------------------------------------------


def test_tier_cap_clamps_max_tokens(
    make_meter: MeterFactory, span_exporter: InMemorySpanExporter
) -> None:
    """A free-tier call asking for 500 output tokens is sent with 200, and that is recorded."""
    meter = make_meter({"tiers": {"free": {"max_tokens": 200}}})
    call = meter.begin(chat(max_tokens=500), tier="free")
    assert call.body["max_tokens"] == 200
    assert call.clamped_from == 500
    assert call.estimate is not None
    assert call.estimate.usage.output_tokens == 200
    call.finish()
    record = call.record
    assert record is not None
    assert record.max_tokens_clamped_from == 500
    [span] = span_exporter.get_finished_spans()
    assert (span.attributes or {})[ATTR.MAX_TOKENS_CLAMPED_FROM] == 500


def test_tier_cap_fills_in_a_missing_limit(make_meter: MeterFactory) -> None:
    """A free-tier call with no output limit gets the cap, so the reservation is bounded."""
    meter = make_meter({"tiers": {"free": {"max_tokens": 200}}})
    call = meter.begin(chat(), tier="free")
    assert call.body["max_tokens"] == 200
    assert call.clamped_from is None
    call.finish()


def test_tier_cap_uses_the_models_parameter_name(make_meter: MeterFactory) -> None:
    """Reasoning models get max_completion_tokens, never max_tokens."""
    meter = make_meter({"tiers": {"free": {"max_tokens": 200}}})
    call = meter.begin(chat("o3-mini", max_tokens=500), tier="free")
    assert call.body["max_completion_tokens"] == 200
    assert "max_tokens" not in call.body
    call.finish()


def test_account_tier_applies_without_an_explicit_tier(make_meter: MeterFactory) -> None:
    """An account configured on the free tier is capped when it calls."""
    meter = make_meter(
        {"tiers": {"free": {"max_tokens": 200}}, "accounts": {"u1": {"tier": "free"}}}
    )
    call = meter.begin(chat(max_tokens=500), account="u1")
    assert call.tier == "free"
    assert call.body["max_tokens"] == 200
    call.finish()


def test_urgent_call_gets_the_tier_multiplier(make_meter: MeterFactory) -> None:
    """urgent=True raises the cap by the tier's urgent multiplier."""
    meter = make_meter({"tiers": {"free": {"max_tokens": 200, "urgent_multiplier": 2}}})
    call = meter.begin(chat(max_tokens=500), tier="free", urgent=True)
    assert call.body["max_tokens"] == 400
    call.finish()


def test_an_unknown_tier_is_refused_with_a_typed_400(
    make_meter: MeterFactory, records: list[UsageRecord]
) -> None:
    """A tier name that is not configured is refused (400 ``unknown_tier``, nothing held,
    a refused record), never mapped to another tier: a typo must neither unlock more nor
    silently give a paying caller less."""
    meter = make_meter({"tiers": {"free": {"max_tokens": 200}, "pro": {"max_tokens": 1000}}})
    with pytest.raises(UnknownTier) as refused:
        meter.begin(chat(max_tokens=5000), tier="enterprize")
    assert (refused.value.status_code, refused.value.code) == (400, "unknown_tier")
    assert refused.value.param == "tier"
    assert "free, pro" in refused.value.message
    (record,) = records
    assert (record.policy_decision, record.settlement_status) == ("denied", "skipped")
    meter.begin(chat(max_tokens=5000), tier="pro").finish()  # a configured tier is served


def test_with_no_tiers_configured_a_tier_is_only_a_label(make_meter: MeterFactory) -> None:
    call = make_meter({}).begin(chat(), tier="whatever")
    assert call.tier == "whatever"
    call.finish()


def test_tier_budgets_apply_to_accounts_on_the_tier(make_meter: MeterFactory) -> None:
    """An account without budgets of its own gets its tier's budgets."""
    meter = make_meter(
        {
            "routes": {"r": {"models": {"gpt-4o": "$0.60"}}},
            "default_route": "r",
            "tiers": {"free": {"budgets": ["$1/day"]}},
        }
    )
    meter.begin(chat(), account="u1", tier="free").finish()
    with pytest.raises(BudgetExceeded):
        meter.begin(chat(), account="u1", tier="free")
    meter.begin(chat(), account="u1").finish()  # no tier: no budget
    assert meter.spent("u1") == usd("1.20")


def test_tier_cap_reject_policy_refuses_the_call(
    make_meter: MeterFactory, records: list[UsageRecord]
) -> None:
    """cap_policy reject refuses an over-cap limit with PolicyDenied instead of clamping."""
    meter = make_meter({"tiers": {"free": {"max_tokens": 200, "cap_policy": "reject"}}})
    with pytest.raises(PolicyDenied) as caught:
        meter.begin(chat(max_tokens=500), tier="free")
    assert caught.value.reason == "max_tokens_over_cap"
    assert records[0].policy_reason == "max_tokens_over_cap"


def test_history_is_trimmed_to_the_context_window(
    make_meter: MeterFactory, span_exporter: InMemorySpanExporter
) -> None:
    """Old turns are dropped so prompt + output limit fit a 200-token window."""
    meter = make_meter(TINY)
    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 30}
        for i in range(9)
    ]
    messages = [{"role": "system", "content": "be brief"}, *turns]
    call = meter.begin(chat("tiny-model", messages, max_tokens=50))
    sent = call.body["messages"]
    assert call.trimmed == len(messages) - len(sent) > 0
    assert sent[0] == messages[0]  # the system message is kept
    assert sent[-1] == messages[-1]  # the newest turn is kept
    assert call.prompt_tokens + 50 <= 200
    call.finish()
    record = call.record
    assert record is not None
    assert record.trimmed_messages == call.trimmed
    [span] = span_exporter.get_finished_spans()
    assert (span.attributes or {})[ATTR.TRIM_DROPPED] == call.trimmed


def test_prompt_that_cannot_fit_is_refused(make_meter: MeterFactory) -> None:
    """A last message larger than the window is a ContextOverflow, not a truncated prompt."""
    meter = make_meter(TINY)
    with pytest.raises(ContextOverflow):
        meter.begin(chat("tiny-model", [{"role": "user", "content": "word " * 400}], max_tokens=50))


# -- review fixes ----------------------------------------------------------------------------


class _AsyncOnlyLedger(MemoryLedger):
    """A ledger whose sync API must not be used from async code (like a Redis ledger that
    was given only an async client)."""

    def balance(self, *args: Any, **kwargs: Any) -> Balance:
        raise AssertionError("sync balance() called from async code")

    async def abalance(self, *args: Any, **kwargs: Any) -> Balance:
        return MemoryLedger.balance(self, *args, **kwargs)


async def test_afinish_reads_the_ledger_through_its_async_api(make_meter: MeterFactory) -> None:
    """A released async call reads the remaining budget with abalance(), not balance()."""
    meter = make_meter({**TOKEN_ROUTE, "default_budgets": ["$1/day"]}, ledger=_AsyncOnlyLedger())
    call = await meter.abegin(chat(max_tokens=10))
    await call.afinish(error=TimeoutError("upstream timed out"))
    record = call.record
    assert record is not None
    assert record.settlement_status == "released"
    assert record.budget_remaining == usd("1")


class _SlowLedger(MemoryLedger):
    """A subclass whose capture awaits (an audit write, say)."""

    async def acapture(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.05)
        return super().capture(*args, **kwargs)


class _ForwardingLedger:
    """Forwards the ledger API to a MemoryLedger; its capture awaits."""

    def __init__(self) -> None:
        self.inner = MemoryLedger()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def acapture(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.05)
        return self.inner.capture(*args, **kwargs)


def _patched_ledger() -> MemoryLedger:
    """A MemoryLedger whose acapture was replaced on the instance (mocks, instrumentation)."""
    ledger = MemoryLedger()

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.05)
        return MemoryLedger.capture(ledger, *args, **kwargs)

    ledger.acapture = slow  # type: ignore[method-assign]
    return ledger


@pytest.mark.parametrize(
    "make_ledger", [_SlowLedger, _ForwardingLedger, _patched_ledger], ids=lambda f: f.__name__
)
async def test_cancelled_afinish_still_settles_the_call(
    make_meter: MeterFactory, make_ledger: Callable[[], Any]
) -> None:
    """A task cancelled while settling (the client left) still captures: nothing leaks,
    whether the ledger that awaits is a subclass, a wrapper or a patched instance."""
    meter = make_meter({**TOKEN_ROUTE, "default_budgets": ["$1/day"]}, ledger=make_ledger())
    call = await meter.abegin(chat(max_tokens=10))
    task = asyncio.ensure_future(call.afinish(Usage(input_tokens=10, output_tokens=10)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if call.record is not None:
            break
        await asyncio.sleep(0.01)
    assert call.record is not None
    assert call.record.settlement_status == "settled"
    assert meter.spent("anonymous") == usd("0.00011")
    assert meter.ledger.balance("anonymous").held_nanos == 0


def test_second_finish_after_a_failed_first_one_does_not_hang(
    make_meter: MeterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the first finish fails unexpectedly, a second one returns at once."""
    meter = make_meter(TOKEN_ROUTE)
    call = meter.begin(chat(max_tokens=10))

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(Call, "_price", boom)
    with pytest.raises(RuntimeError):
        call.finish()
    started = time.monotonic()
    call.finish()
    assert time.monotonic() - started < 1
    assert call.record is None  # nothing was settled, so there is no record


def test_explicit_unpriced_route_passes_an_unlisted_model_with_no_money(
    make_meter: MeterFactory, records: list[UsageRecord]
) -> None:
    """unknown_model: unpriced on a reselling route: an unlisted catalog model passes
    unpriced (no cost, price or margin on the record, never $0); nothing held or spent."""
    meter = make_meter(
        {"routes": {"resale": {"models": {"gpt-4o": "$0.05"}, "unknown_model": "unpriced"}}}
    )
    call = meter.begin(chat("gpt-4o-mini"), route="resale")
    assert call.payment_required == 0
    call.finish(Usage(input_tokens=1_000, output_tokens=100))
    (record,) = records
    assert record.pricing_source == "unpriced"
    assert (record.cost, record.resolved_price, record.margin) == (None, None, None)
    assert (record.settlement_status, record.settlement_amount) == ("settled", 0)
    assert meter.spent("anonymous") == 0
