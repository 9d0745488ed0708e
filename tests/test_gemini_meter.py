"""``api="gemini"`` through the engine: the output limit lives in
``generationConfig.maxOutputTokens`` (read from there, written there), a thinking budget
stays below it, ``contents`` are counted and trimmed, the usage Gemini reports is priced
at the catalog's rates, and the allow/deny lists refuse as for every other API."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from metered.engine.meter import Meter
from metered.errors import InvalidRequest, PolicyDenied
from metered.pricing.catalog import Catalog
from metered.providers import GEMINI
from metered.records import UsageRecord
from metered.tokens import count_request
from metered.usage import Usage

MODEL = "gemini-2.5-flash"
CONTENTS = [{"role": "user", "parts": [{"text": "Write a long story about a lighthouse."}]}]
MARKUP_ROUTE: dict[str, Any] = {"routes": {"g": {"markup": "0%"}}, "default_route": "g"}
# $1/M input, $10/M output: an input token costs 1,000 nano-USD, an output token 10,000
RESALE_ROUTE: dict[str, Any] = {
    "routes": {"g": {"models": {MODEL: {"input": "$1 / 1M tokens", "output": "$10 / 1M tokens"}}}},
    "default_route": "g",
}


def body(**generation: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"model": MODEL, "contents": CONTENTS}
    if generation:
        out["generationConfig"] = generation
    return out


def budgeted(route: dict[str, Any], budget: str, **extra: Any) -> Meter:
    return Meter({**route, "accounts": {"acme": {"budgets": [budget]}}, **extra})


def test_a_budgeted_call_is_sent_with_generation_config_max_output_tokens() -> None:
    meter = budgeted(MARKUP_ROUTE, "$10/day")
    sent = body(temperature=0.2)
    call = meter.begin(sent, api="gemini", provider="google", account="acme")
    # the catalog names no maximum output for the model: the default is held and sent
    assert call.body["generationConfig"] == {"temperature": 0.2, "maxOutputTokens": 4096}
    assert "max_tokens" not in call.body
    assert "max_output_tokens" not in call.body
    assert sent["generationConfig"] == {"temperature": 0.2}  # the caller's body is untouched
    assert call.output_limit_source == "model"
    call.finish(error=TimeoutError())


def test_the_budget_lowers_the_limit_and_the_thinking_budget_below_it() -> None:
    meter = budgeted(RESALE_ROUTE, "$0.03/day")  # 30,000,000 nanos: ~3,000 output tokens
    sent = body(maxOutputTokens=60_000, thinkingConfig={"thinkingBudget": 24_000})
    original = copy.deepcopy(sent)
    call = meter.begin(sent, api="gemini", account="acme")
    config = call.body["generationConfig"]
    assert config["maxOutputTokens"] == (3 * 10**7 - 1_000 * call.prompt_tokens) // 10_000
    assert 0 < config["thinkingConfig"]["thinkingBudget"] < config["maxOutputTokens"]
    assert call.output_limit_source == "budget"
    assert sent == original
    call.finish(error=TimeoutError())


def test_dynamic_thinking_is_left_alone() -> None:
    meter = budgeted(RESALE_ROUTE, "$0.03/day")
    call = meter.begin(
        body(maxOutputTokens=60_000, thinkingConfig={"thinkingBudget": -1}),
        api="gemini",
        account="acme",
    )
    assert call.body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": -1}
    call.finish(error=TimeoutError())


def test_the_caller_limit_is_read_from_generation_config_and_capped_by_the_tier() -> None:
    meter = Meter({**RESALE_ROUTE, "tiers": {"free": {"max_tokens": 100}}})
    call = meter.begin(body(maxOutputTokens=500), api="gemini", tier="free")
    assert call.body["generationConfig"] == {"maxOutputTokens": 100}
    assert call.output_limit == 100
    assert call.clamped_from == 500
    call.finish(error=TimeoutError())
    within = meter.begin(body(maxOutputTokens=50), api="gemini", tier="free")
    assert within.output_limit == 50
    assert within.output_limit_source == "caller"
    within.finish(error=TimeoutError())


def test_a_snake_case_limit_is_read_and_replaced_not_left_beside_the_cap() -> None:
    """The API takes proto field names too: a snake_case limit must not bypass the cap."""
    meter = Meter({**RESALE_ROUTE, "tiers": {"free": {"max_tokens": 100}}})
    sent = {"model": MODEL, "contents": CONTENTS, "generation_config": {"max_output_tokens": 900}}
    call = meter.begin(sent, api="gemini", tier="free")
    assert call.body["generation_config"] == {"maxOutputTokens": 100}
    assert call.clamped_from == 900
    call.finish(error=TimeoutError())
    with pytest.raises(InvalidRequest):
        meter.begin({**sent, "generationConfig": {"maxOutputTokens": 5}}, api="gemini", tier="free")


def test_candidate_count_multiplies_the_estimate() -> None:
    meter = Meter(RESALE_ROUTE)
    one = meter.begin(body(maxOutputTokens=100), api="gemini")
    three = meter.begin(body(maxOutputTokens=100, candidateCount=3), api="gemini")
    assert one.estimate is not None
    assert three.estimate is not None
    output_price = Decimal(100 * 10) / 10**6
    assert three.estimate.checked_price() - one.estimate.checked_price() == 2 * output_price
    for call in (one, three):
        call.finish(error=TimeoutError())


def test_invalid_limits_and_contents_are_400s() -> None:
    meter = Meter(RESALE_ROUTE)
    with pytest.raises(InvalidRequest) as bad_limit:
        meter.begin(body(maxOutputTokens="lots"), api="gemini")
    assert bad_limit.value.param == "generationConfig.maxOutputTokens"
    with pytest.raises(InvalidRequest) as bad_contents:
        meter.begin({"model": MODEL, "contents": "hi"}, api="gemini")
    assert bad_contents.value.param == "contents"


def test_usage_from_a_json_response_is_priced_at_the_catalog_rates() -> None:
    records: list[UsageRecord] = []
    meter = Meter(
        {**MARKUP_ROUTE, "accounts": {"acme": {"budgets": ["$10/day"]}}}, sink=records.append
    )
    call = meter.begin(body(), api="gemini", provider="google", account="acme")
    response = {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": "Once"}]}, "finishReason": "STOP"}
        ],
        "usageMetadata": {
            "promptTokenCount": 1200,
            "cachedContentTokenCount": 1000,
            "candidatesTokenCount": 50,
            "thoughtsTokenCount": 400,
            "totalTokenCount": 1650,
        },
        "modelVersion": MODEL,
        "responseId": "abc",
    }
    outcome = GEMINI.read(response)
    call.finish(
        outcome.usage,
        response=response,
        response_model=outcome.response_model,
        response_id=outcome.response_id,
        finish_reasons=outcome.finish_reasons,
    )
    [record] = records
    entry = Catalog().lookup(MODEL, provider="google")
    assert entry is not None
    rates = entry.current_rates()
    assert rates.input is not None
    assert rates.output is not None
    assert rates.cache_read is not None
    # thoughts are billed as output, cached content at the cache-read rate
    expected = 200 * rates.input + 1000 * rates.cache_read + 450 * rates.output
    assert record.cost == expected == Decimal("0.001215")  # $0.30, $0.03, $2.50 per 1M
    assert record.provider == "google"
    assert (record.tokens_in, record.tokens_out) == (1200, 450)
    assert record.finish_reasons == ("STOP",)
    assert meter.spent("acme") == expected


@pytest.mark.parametrize("deny", ["gemini-2.5-*", "google/gemini-2.5-flash"])
def test_the_denylist_refuses_gemini_models(deny: str) -> None:
    meter = Meter({**RESALE_ROUTE, "models": {"deny": [deny]}})
    with pytest.raises(PolicyDenied) as refused:
        meter.begin(body(), api="gemini")
    assert refused.value.reason == "denylist"


def test_contents_are_counted_with_system_instruction_and_tools() -> None:
    request = {
        "model": MODEL,
        "systemInstruction": {"parts": [{"text": "You are terse."}]},
        "contents": CONTENTS,
        "tools": [{"functionDeclarations": [{"name": "lookup", "description": "Find a word."}]}],
    }
    bare = count_request({"contents": CONTENTS}, model=MODEL)
    full = count_request(request, model=MODEL)
    assert not full.exact  # Gemini's tokenizer is not public: an estimate
    assert full.tokens > bare.tokens > 0
    image = {"inlineData": {"mimeType": "image/png", "data": "aGVsbG8="}}
    with_image = [{"role": "user", "parts": [*CONTENTS[0]["parts"], image]}]
    assert count_request({"contents": with_image}, model=MODEL).tokens == bare.tokens + 258
    meter = Meter(RESALE_ROUTE)
    call = meter.begin(request, api="gemini")
    assert call.prompt_tokens == full.tokens
    call.finish(error=TimeoutError())


def test_history_is_trimmed_over_contents_keeping_function_turns_whole() -> None:
    tiny = {
        "catalog": {
            "overrides": {
                "gemini-tiny": {
                    "input": "$1 / 1M tokens",
                    "output": "$2 / 1M tokens",
                    "context_window": 200,
                }
            }
        }
    }
    turns: list[dict[str, Any]] = []
    for i in range(6):
        turns.append({"role": "user", "parts": [{"text": f"turn {i} " + "word " * 30}]})
        turns.append({"role": "model", "parts": [{"text": f"reply {i} " + "word " * 30}]})
    call_turn = {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"x": 1}}}]}
    answer = {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"y": 2}}}]}
    contents = [*turns, {"role": "user", "parts": [{"text": "go"}]}, call_turn, answer]
    meter = Meter(tiny)
    call = meter.begin(
        {"model": "gemini-tiny", "contents": contents, "generationConfig": {"maxOutputTokens": 50}},
        api="gemini",
    )
    sent = call.body["contents"]
    assert call.trimmed == len(contents) - len(sent) > 0
    assert sent[-2:] == [call_turn, answer]  # the function call and its answer, whole
    assert sent[0]["role"] == "user"  # the history opens with a user turn
    assert call.prompt_tokens + 50 <= 200
    call.finish(Usage(input_tokens=call.prompt_tokens, output_tokens=10))
