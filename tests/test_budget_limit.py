"""The budget-aware output limit: a budgeted call is sent with at most the output its
budget can pay for, so a provider that honours the limit can never overspend it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from metered.clients import MeteredOpenAI
from metered.engine.meter import Meter
from metered.errors import BudgetExceeded
from metered.ledger import MemoryLedger
from metered.records import UsageRecord
from metered.testing import FakeUpstream

# $1/M input, $10/M output: an input token costs 1,000 nano-USD, an output token 10,000
ROUTE: dict[str, Any] = {
    "routes": {
        "metered": {"models": {"gpt-4o": {"input": "$1 / 1M tokens", "output": "$10 / 1M tokens"}}}
    },
    "default_route": "metered",
}
HI = [{"role": "user", "content": "Write a very long story."}]
LONG_REPLY = "once upon a time " * 20_000  # far more than any limit below: truncated at it


def config(budget: str | None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {**ROUTE, **extra}
    if budget is not None:
        out["accounts"] = {"acme": {"budgets": [budget]}}
    return out


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream(reply=LONG_REPLY)


def client(meter: Meter, upstream: FakeUpstream) -> Any:
    return MeteredOpenAI(upstream.openai_client(), meter=meter, account="acme")


def test_a_call_without_max_tokens_is_sent_with_what_the_budget_pays_for(
    upstream: FakeUpstream,
) -> None:
    records: list[UsageRecord] = []
    meter = Meter(config("$0.03/day"), sink=records.append)  # 30,000,000 nanos
    client(meter, upstream).chat.completions.create(model="gpt-4o", messages=HI)

    sent = upstream.last_request.body
    record = records[-1]
    prompt = record.tokens_in
    # the largest output whose price fits: 1,000 * prompt + 10,000 * limit <= 3 * 10**7 nanos
    assert sent["max_tokens"] == (3 * 10**7 - 1_000 * prompt) // 10_000
    assert record.max_tokens_source == "budget"
    assert record.tokens_out == sent["max_tokens"]  # the upstream used all of it
    assert record.settlement_amount == Decimal(prompt * 1_000 + sent["max_tokens"] * 10_000) / 10**9
    assert meter.spent("acme") <= Decimal("0.03")


def test_a_caller_asking_for_more_than_it_can_afford_gets_the_affordable_limit(
    upstream: FakeUpstream,
) -> None:
    records: list[UsageRecord] = []
    meter = Meter(config("$0.03/day"), sink=records.append)
    client(meter, upstream).chat.completions.create(model="gpt-4o", messages=HI, max_tokens=90_000)
    sent = upstream.last_request.body
    assert sent["max_tokens"] == (3 * 10**7 - 1_000 * records[-1].tokens_in) // 10_000
    assert records[-1].max_tokens_source == "budget"


def test_calls_until_the_budget_is_gone_never_overspend_and_the_last_sends_nothing(
    upstream: FakeUpstream,
) -> None:
    meter = Meter(config("$0.5/day"))
    api = client(meter, upstream).chat.completions
    sent = 0
    refused: BudgetExceeded | None = None
    for _ in range(50):
        try:
            api.create(model="gpt-4o", messages=HI, max_tokens=3_000)
        except BudgetExceeded as exc:
            refused = exc
            break
        sent += 1
    assert refused is not None
    assert sent >= 2  # the first calls fit whole, the last ones were shortened
    assert len(upstream.requests) == sent  # the refused call never reached the upstream
    assert refused.status_code == 402
    assert meter.spent("acme") <= Decimal("0.5")
    assert meter.remaining("acme") is not None


def test_a_call_that_cannot_afford_the_minimum_output_is_a_402_before_sending(
    upstream: FakeUpstream,
) -> None:
    # 1,000 output tokens cost $0.01: the $0.005 budget cannot pay them
    meter = Meter(config("$0.005/day", min_output_tokens=1_000))
    with pytest.raises(BudgetExceeded):
        client(meter, upstream).chat.completions.create(model="gpt-4o", messages=HI)
    assert upstream.requests == []
    assert meter.spent("acme") == 0
    assert meter.remaining("acme") == Decimal("0.005")  # nothing left held


def test_a_caller_limit_the_budget_can_pay_is_kept(upstream: FakeUpstream) -> None:
    records: list[UsageRecord] = []
    meter = Meter(config("$1/day"), sink=records.append)
    client(meter, upstream).chat.completions.create(model="gpt-4o", messages=HI, max_tokens=50)
    assert upstream.last_request.body["max_tokens"] == 50
    assert records[-1].max_tokens_source == "caller"


def test_a_budgeted_call_without_a_limit_is_sent_the_models_maximum(
    upstream: FakeUpstream,
) -> None:
    """The hold covers the model's maximum output (the catalog's, else 4096): the provider
    is told that limit, so it cannot return more than was held."""
    records: list[UsageRecord] = []
    meter = Meter(config("$100/day"), sink=records.append)
    call = meter.begin({"model": "gpt-4o", "messages": HI}, account="acme")
    call.finish(error=TimeoutError())
    assert call.body["max_tokens"] == call.output_limit == 4096
    assert records[-1].max_tokens_source == "model"


def test_an_unbudgeted_call_is_sent_as_the_caller_wrote_it(upstream: FakeUpstream) -> None:
    records: list[UsageRecord] = []
    meter = Meter(config(None), sink=records.append)
    client(meter, upstream).chat.completions.create(model="gpt-4o", messages=HI)
    assert "max_tokens" not in upstream.last_request.body
    assert records[-1].max_tokens_source is None


def test_reasoning_models_and_the_responses_api_get_their_own_limit_parameter() -> None:
    meter = Meter(
        {
            "routes": {
                "metered": {
                    "models": {
                        "o3-mini": {"input": "$1 / 1M tokens", "output": "$10 / 1M tokens"},
                        "gpt-4o": {"input": "$1 / 1M tokens", "output": "$10 / 1M tokens"},
                    }
                }
            },
            "default_route": "metered",
            "accounts": {"acme": {"budgets": ["$0.03/day"]}},
        }
    )
    chat = meter.begin({"model": "o3-mini", "messages": HI}, account="acme")
    assert "max_tokens" not in chat.body
    assert chat.body["max_completion_tokens"] == chat.output_limit
    chat.finish(error=TimeoutError())
    responses = meter.begin({"model": "gpt-4o", "input": "hi"}, api="responses", account="acme")
    assert responses.body["max_output_tokens"] == responses.output_limit
    assert responses.output_limit == (3 * 10**7 - 1_000 * responses.prompt_tokens) // 10_000
    responses.finish(error=TimeoutError())


def test_a_prepaid_route_charges_what_the_budget_leaves(upstream: FakeUpstream) -> None:
    prepaid = {
        "routes": {"metered": {**ROUTE["routes"]["metered"], "settlement": "before-response"}},
        "default_route": "metered",
        "accounts": {"acme": {"budgets": ["$0.03/day"]}},
    }
    records: list[UsageRecord] = []
    meter = Meter(prepaid, sink=records.append)
    client(meter, upstream).chat.completions.create(model="gpt-4o", messages=HI)
    record = records[-1]
    assert record.max_tokens_source == "budget"
    assert record.payment_required == Decimal("0.03")
    assert meter.spent("acme") <= Decimal("0.03")


def test_the_limit_is_shared_by_the_parent_budget() -> None:
    """A team's budget limits its member's call even when the member has room."""
    meter = Meter(
        {
            **ROUTE,
            "accounts": {
                "team": {"budgets": ["$0.02/day"]},
                "alice": {"budgets": ["$1/day"], "parents": ["team"]},
            },
        },
        ledger=MemoryLedger(),
    )
    call = meter.begin({"model": "gpt-4o", "messages": HI}, account="alice")
    assert call.output_limit == (2 * 10**7 - 1_000 * call.prompt_tokens) // 10_000
    call.finish(error=TimeoutError())


def test_a_budget_lowered_anthropic_limit_keeps_the_thinking_budget_below_it() -> None:
    """Anthropic refuses max_tokens <= thinking.budget_tokens: the budget lowers both."""
    meter = Meter(
        {
            "routes": {
                "r": {
                    "models": {
                        "claude-sonnet-4-5": {
                            "input": "$1 / 1M tokens",
                            "output": "$10 / 1M tokens",
                        }
                    }
                }
            },
            "default_route": "r",
            "accounts": {"acme": {"budgets": ["$0.03/day"]}},  # ~3,000 output tokens
        }
    )
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 16_000,
        "thinking": {"type": "enabled", "budget_tokens": 8_000},
        "messages": HI,
    }
    call = meter.begin(body, api="anthropic", account="acme")
    assert call.body["max_tokens"] < 3_000
    assert 1_024 <= call.body["thinking"]["budget_tokens"] < call.body["max_tokens"]
    assert body["thinking"]["budget_tokens"] == 8_000  # the caller's own body is untouched
    call.finish(error=TimeoutError())
