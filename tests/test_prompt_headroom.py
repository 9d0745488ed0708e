"""A budget holds an estimated prompt at the most the provider may count for it.

metered counts Claude and Gemini prompts with ``o200k_base``: an estimate, and Claude's
own tokenizer counts more (Anthropic's newer tokenizer, Opus 4.7 and later, about 30%
more again). A hold of the bare estimate lets the provider's count push the capture over
the budget. The hold therefore counts an estimated prompt at its tokenizer's headroom,
and the guarantee is checked with OS processes sharing a real ``redis-server`` against a
fake Anthropic API whose tokenizer counts 1.3 tokens per estimated one.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from metered.clients import MeteredAnthropic
from metered.engine.meter import Meter
from metered.errors import BudgetExceeded
from metered.ledger import RedisLedger
from metered.testing import FakeUpstream
from metered.tokens import set_model_encoding
from metered.tokens.encodings import ESTIMATE_HEADROOM, tokenizer
from metered.usage import Usage
from tests.budget_processes import checked_budget, jsonl_sink, run_workers
from tests.redis_server import redis_server_fixture  # noqa: F401

CLAUDE = "claude-sonnet-4-5"
PRICES = {
    CLAUDE: {"input": "$3 / 1M tokens", "output": "$15 / 1M tokens"},
    "gpt-4o": {"input": "$2.5 / 1M tokens", "output": "$10 / 1M tokens"},
}
BUDGET = "$0.25/day"
CONFIG: dict[str, Any] = {
    "routes": {"r": {"models": PRICES}},
    "default_route": "r",
    "accounts": {"shared": {"budgets": [BUDGET]}},
}
PREFIX = "headroom:"


@pytest.mark.parametrize(
    ("model", "headroom"),
    [
        ("gpt-4o", Fraction(1)),  # counted with its own encoding
        ("gpt-5-mini", Fraction(1)),
        (CLAUDE, ESTIMATE_HEADROOM),
        ("anthropic/claude-3-5-haiku-20241022", ESTIMATE_HEADROOM),
        ("claude-opus-4-7", Fraction(17, 10)),  # Anthropic's newer tokenizer
        ("us.anthropic.claude-opus-4-7-v1:0", Fraction(17, 10)),  # a Bedrock profile id
        ("claude-sonnet-5-20260301", Fraction(17, 10)),
        ("claude-opus-4-6", ESTIMATE_HEADROOM),
        ("gemini-2.5-flash", ESTIMATE_HEADROOM),
    ],
)
def test_each_tokenizer_has_its_headroom(model: str, headroom: Fraction) -> None:
    assert tokenizer(model).headroom == headroom


def test_an_override_sets_the_headroom() -> None:
    try:
        set_model_encoding("my-llama-", "cl100k_base", headroom="1.5")
        assert tokenizer("my-llama-3").headroom == Fraction(3, 2)
        set_model_encoding("my-llama-", "cl100k_base", exact=True)
        assert tokenizer("my-llama-3").headroom == 1
        with pytest.raises(ValueError, match="at least 1"):
            set_model_encoding("my-llama-", "cl100k_base", headroom="0.9")
    finally:
        set_model_encoding("my-llama-", None)


def _anthropic_body(words: int, max_tokens: int) -> dict[str, Any]:
    return {
        "model": CLAUDE,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "count " * words}],
    }


def test_the_hold_prices_an_estimated_prompt_at_its_headroom() -> None:
    meter = Meter(CONFIG)
    call = meter.begin(_anthropic_body(1000, 100), api="anthropic", account="shared")
    held = math.ceil(call.prompt_tokens * ESTIMATE_HEADROOM)
    expected = meter.quote(CLAUDE, Usage(input_tokens=held, output_tokens=100)).price
    assert call.payment_required == expected
    call.finish(error=TimeoutError())

    body = {"model": "gpt-4o", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    call = meter.begin(body, account="shared")  # an exact count is held as counted
    exact = meter.quote("gpt-4o", Usage(input_tokens=call.prompt_tokens, output_tokens=100))
    assert call.payment_required == exact.price
    call.finish(error=TimeoutError())


def test_a_budget_that_pays_only_the_estimate_shortens_the_call_instead() -> None:
    """The budget covers the bare estimate of the call, not what the provider will count:
    the call is sent with a lower output limit, and its capture stays within the budget
    although the provider counts 1.3 prompt tokens per estimated one."""
    upstream = FakeUpstream(reply="tick tock " * 2000, prompt_scale="1.3")
    probe = Meter(CONFIG).begin(_anthropic_body(3000, 500), api="anthropic", account="x")
    probe.finish(error=TimeoutError())
    bare = (
        Meter(CONFIG)
        .quote(CLAUDE, Usage(input_tokens=probe.prompt_tokens, output_tokens=500))
        .price
    )
    assert bare is not None
    config = {**CONFIG, "accounts": {"tight": {"budgets": [f"${bare}/day"]}}}
    meter = Meter(config)
    with upstream.anthropic_client() as sdk:
        client = MeteredAnthropic(sdk, meter=meter, account="tight")
        reply = client.messages.create(**_anthropic_body(3000, 500))
    assert reply.usage.input_tokens == math.ceil(probe.prompt_tokens * Fraction(13, 10))
    assert reply.usage.output_tokens < 500  # the budget lowered the limit
    assert meter.spent("tight") <= bare


def _worker(redis_url: str, records_path: str, seed: int) -> None:
    """One OS process: threads calling Claude through MeteredAnthropic."""
    sink = jsonl_sink(records_path)
    meter = Meter(CONFIG, ledger=RedisLedger(redis_url, prefix=PREFIX), sink=sink)
    upstream = FakeUpstream(reply="tick tock " * 2000, prompt_scale="1.3", keep_requests=10)

    def thread(t: int) -> None:
        rng = random.Random(seed * 100 + t)
        with upstream.anthropic_client() as sdk:
            client = MeteredAnthropic(sdk, meter=meter, account="shared")
            for _ in range(8):
                body = _anthropic_body(rng.randint(1000, 6000), rng.randint(50, 400))
                with contextlib.suppress(BudgetExceeded):
                    client.messages.create(**body)

    threads = [threading.Thread(target=thread, args=(t,)) for t in range(3)]
    for each in threads:
        each.start()
    for each in threads:
        each.join()


def test_processes_never_overspend_when_the_provider_counts_more_than_the_estimate(
    redis_server: Any, tmp_path: Path
) -> None:
    records = tmp_path / "records.jsonl"
    run_workers(_worker, redis_server.url, records, 3)
    _, rows = checked_budget(redis_server.url, PREFIX, "shared", BUDGET, records)
    # the provider counted more than the estimate on every call
    assert all(r["tokens_in"] > 1.2 * 1000 for r in rows if r["settlement_status"] == "settled")
