"""Prices that match the invoice: (model, usage) cases, each priced at the provider's
published list price (USD per 1M tokens, written in the case with its page), exact to
the Decimal, through the default route (bundled genai-prices snapshot + metered's
corrections). A case whose provider does not publish a price for what the id names is
unpriced: no cost, never another provider's or another region's.

Pages: OpenAI https://platform.openai.com/docs/pricing, Anthropic
https://docs.anthropic.com/en/docs/about-claude/pricing, Bedrock
https://aws.amazon.com/bedrock/pricing/, Vertex
https://cloud.google.com/vertex-ai/generative-ai/pricing, Gemini API
https://ai.google.dev/gemini-api/docs/pricing, DeepSeek
https://api-docs.deepseek.com/quick_start/pricing, xAI https://docs.x.ai/docs/models,
Groq https://groq.com/pricing, Mistral https://mistral.ai/pricing.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, NamedTuple

import pytest

from metered.config import load_config
from metered.pricing.route import Pricer
from metered.usage import Usage

ROUTE = Pricer(load_config({})).route()
M = Decimal(1_000_000)


class Case(NamedTuple):
    model: str
    usage: dict[str, Any]
    # published USD per 1M tokens (web_search: per 1,000 searches); None: unpriced
    rates: dict[str, str] | None
    source: str = ""


def U(i: int = 1000, o: int = 500, **kw: Any) -> dict[str, Any]:
    return {"input_tokens": i, "output_tokens": o, **kw}


def expected(usage: Usage, rates: dict[str, str]) -> Decimal:
    """The published arithmetic: cached reads and writes out of the input at their rates."""
    r = {k: Decimal(v) for k, v in rates.items()}
    written_1h = usage.cache_write_1h_tokens
    written = usage.cache_write_tokens - written_1h
    plain = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
    total = r["input"] * plain + r["output"] * usage.output_tokens
    total += r.get("cache_read", r["input"]) * usage.cache_read_tokens
    total += r.get("cache_write", r["input"]) * written
    total += r.get("cache_write_1h", r.get("cache_write", r["input"])) * written_1h
    total = total / M
    if usage.web_search_requests:
        total += r["web_search"] * usage.web_search_requests / 1000
    return total


GPT4O = {"input": "2.50", "output": "10", "cache_read": "1.25"}
SONNET = {"input": "3", "output": "15", "cache_read": "0.30", "cache_write": "3.75"}
SONNET_LONG = {"input": "6", "output": "22.50", "cache_read": "0.60", "cache_write": "7.50"}
LONG = 250_000  # a prompt over the 200K long-context threshold

CASES = [
    # -- OpenAI, direct ----------------------------------------------------------------
    Case("gpt-4o", U(), GPT4O, "openai: gpt-4o $2.50 / $10"),
    Case("openai/gpt-4o", U(cache_read_tokens=600), GPT4O, "cached input $1.25"),
    Case("gpt-4o-2024-08-06", U(), GPT4O, "the dated snapshot: same price"),
    Case("gpt-4o-2024-05-13", U(), {"input": "5", "output": "15"}, "older snapshot $5 / $15"),
    Case(
        "gpt-4o-mini",
        U(cache_read_tokens=200),
        {"input": "0.15", "output": "0.60", "cache_read": "0.075"},
    ),
    Case("gpt-4.1", U(), {"input": "2", "output": "8", "cache_read": "0.50"}),
    Case("gpt-4.1-mini", U(), {"input": "0.40", "output": "1.60", "cache_read": "0.10"}),
    Case("gpt-4.1-nano", U(), {"input": "0.10", "output": "0.40", "cache_read": "0.025"}),
    Case(
        "o3",
        U(o=2000, reasoning_tokens=1500),
        {"input": "2", "output": "8"},
        "reasoning billed as output",
    ),
    Case("o4-mini", U(), {"input": "1.10", "output": "4.40"}),
    Case("o1", U(), {"input": "15", "output": "60"}),
    Case(
        "gpt-5", U(cache_read_tokens=500), {"input": "1.25", "output": "10", "cache_read": "0.125"}
    ),
    Case("gpt-5-mini", U(), {"input": "0.25", "output": "2"}),
    Case("gpt-3.5-turbo-0125", U(), {"input": "0.50", "output": "1.50"}),
    # service tiers and batch (the tier the response says served the call)
    Case("gpt-4o", U(service_tier="priority"), {"input": "4.25", "output": "17"}, "priority"),
    Case("gpt-4o", U(batch=True), {"input": "1.25", "output": "5"}, "Batch API: half price"),
    Case("gpt-4o", U(service_tier="default"), GPT4O, "the default tier is the standard price"),
    Case("gpt-5", U(service_tier="flex"), {"input": "0.625", "output": "5"}, "flex: half price"),
    Case("gpt-5", U(service_tier="priority"), {"input": "2.50", "output": "20"}, "priority"),
    Case("o3", U(service_tier="flex"), {"input": "1", "output": "4"}, "flex"),
    # fine-tunes: the fine-tune rates, cached input included (corrections)
    Case(
        "ft:gpt-4o-2024-08-06:acme::x1",
        U(cache_read_tokens=400),
        {"input": "3.75", "output": "15", "cache_read": "1.875"},
    ),
    Case(
        "ft:gpt-4o-mini-2024-07-18:acme::x1",
        U(cache_read_tokens=400),
        {"input": "0.30", "output": "1.20", "cache_read": "0.15"},
    ),
    Case(
        "ft:gpt-4.1-2025-04-14:acme::x1",
        U(cache_read_tokens=400),
        {"input": "3", "output": "12", "cache_read": "0.75"},
    ),
    Case("ft:gpt-4.1-mini-2025-04-14:acme::x1", U(), {"input": "0.80", "output": "3.20"}),
    Case(
        "ft:gpt-4.1-nano-2025-04-14:acme::x1",
        U(cache_read_tokens=100),
        {"input": "0.20", "output": "0.80", "cache_read": "0.05"},
    ),
    # partial prices: an embedding model cannot price a chat call's output
    Case("openai/text-embedding-3-small", U(), None, "input price only: unpriced, never $0 output"),
    Case("azure/davinci", U(), None, "input price only"),
    # -- Anthropic, direct ---------------------------------------------------------------
    Case("claude-sonnet-4-5", U(), SONNET),
    Case("claude-sonnet-4-5", U(cache_read_tokens=300, cache_write_tokens=200), SONNET),
    Case(
        "claude-sonnet-4-5",
        U(cache_write_tokens=300, cache_write_1h_tokens=100),
        {**SONNET, "cache_write_1h": "6"},
        "1h cache writes $6",
    ),
    Case("claude-sonnet-4-5", U(i=LONG), SONNET_LONG, "long context: over 200K input"),
    Case(
        "claude-sonnet-4-5",
        U(batch=True),
        {"input": "1.50", "output": "7.50"},
        "Message Batches: half",
    ),
    Case(
        "claude-sonnet-4-5",
        U(web_search_requests=3),
        {**SONNET, "web_search": "10"},
        "web search $10 / 1K",
    ),
    Case(
        "claude-sonnet-4-20250514",
        U(i=LONG),
        {**SONNET_LONG},
        "Sonnet 4 long context (corrections)",
    ),
    Case("anthropic/claude-sonnet-4-20250514", U(), SONNET),
    Case("claude-opus-4-1", U(), {"input": "15", "output": "75"}),
    Case("claude-opus-4-5", U(), {"input": "5", "output": "25"}),
    Case(
        "claude-haiku-4-5",
        U(cache_read_tokens=500),
        {"input": "1", "output": "5", "cache_read": "0.10"},
    ),
    Case("claude-3-5-haiku-20241022", U(), {"input": "0.80", "output": "4"}),
    Case("claude-3-haiku-20240307", U(), {"input": "0.25", "output": "1.25"}),
    Case("claude-3-7-sonnet-20250219", U(), SONNET),
    # -- Bedrock: bare ids, prefixes, cross-region profiles, regions ----------------------
    Case("anthropic.claude-3-5-sonnet-20241022-v2:0", U(), SONNET, "bare Bedrock id"),
    Case("bedrock/anthropic.claude-3-5-sonnet-20241022-v2:0", U(), SONNET),
    Case("bedrock/us-east-1/anthropic.claude-3-5-sonnet-20241022-v2:0", U(), SONNET, "a US region"),
    Case("us.anthropic.claude-sonnet-4-20250514-v1:0", U(), SONNET, "US cross-region profile"),
    Case(
        "us.anthropic.claude-sonnet-4-20250514-v1:0",
        U(i=LONG),
        SONNET_LONG,
        "long context (corrections)",
    ),
    Case(
        "eu.anthropic.claude-sonnet-4-5-20250929-v1:0",
        U(),
        {"input": "3.30", "output": "16.50"},
        "regional +10%",
    ),
    Case("global.anthropic.claude-sonnet-4-5-20250929-v1:0", U(), SONNET, "global endpoint"),
    Case(
        "bedrock/us-gov-west-1/anthropic.claude-3-5-sonnet-20240620-v1:0",
        U(),
        None,
        "GovCloud: no price here, never the commercial rate",
    ),
    Case(
        "bedrock/eu-west-3/anthropic.claude-3-5-sonnet-20240620-v1:0",
        U(),
        None,
        "a region the catalog does not price",
    ),
    # -- Vertex and the Gemini API ----------------------------------------------------------
    Case("vertex_ai/claude-sonnet-4@20250514", U(), SONNET, "Vertex Claude"),
    Case(
        "claude-sonnet-4@20250514",
        U(i=LONG),
        SONNET_LONG,
        "Vertex naming; long context (corrections)",
    ),
    Case("vertex_ai/gemini-2.5-pro", U(), {"input": "1.25", "output": "10"}),
    Case("vertex_ai/gemini-2.5-pro", U(i=LONG), {"input": "2.50", "output": "15"}, "over 200K"),
    Case("vertex_ai/europe-west4/gemini-2.5-pro", U(), None, "a region the catalog does not price"),
    Case(
        "gemini-2.5-flash",
        U(o=1500, reasoning_tokens=1000),
        {"input": "0.30", "output": "2.50"},
        "thinking billed as output",
    ),
    Case(
        "gemini/gemini-2.5-flash",
        U(cache_read_tokens=800),
        {"input": "0.30", "output": "2.50", "cache_read": "0.03"},
        "cached content",
    ),
    Case(
        "gemini-2.5-pro",
        U(cache_read_tokens=500, o=900, reasoning_tokens=400),
        {"input": "1.25", "output": "10", "cache_read": "0.125"},
    ),
    Case("gemini-2.5-flash-lite", U(), {"input": "0.10", "output": "0.40"}),
    Case("models/gemini-2.5-flash", U(), {"input": "0.30", "output": "2.50"}, "resource name"),
    Case(
        "vertex_ai/publishers/google/models/gemini-2.5-pro", U(), {"input": "1.25", "output": "10"}
    ),
    Case("gemini-2.0-flash", U(), {"input": "0.10", "output": "0.40"}),
    # -- Azure: deployments, data zones, models Azure does not sell ---------------------------
    Case("azure/o4-mini", U(), {"input": "1.10", "output": "4.40"}),
    Case("azure/gpt-4o", U(), GPT4O, "Azure sells OpenAI models at OpenAI's global price"),
    Case("azure/eu/o4-mini", U(), None, "EU data zone: +10%, not in the catalog: unpriced"),
    Case("azure/mistral-large-2402", U(), None, "never stripped to Mistral's own price"),
    # -- providers that do not list a model never borrow another's price ----------------------
    Case("groq/gpt-4o", U(), None),
    Case("xai/claude-sonnet-4-5", U(), None),
    Case("groq/llama-3.1-8b-instant", U(), {"input": "0.05", "output": "0.08"}),
    Case("groq/llama-3.3-70b-versatile", U(), {"input": "0.59", "output": "0.79"}),
    Case("xai/grok-3", U(), {"input": "3", "output": "15"}),
    Case("xai/grok-3-mini", U(), {"input": "0.30", "output": "0.50"}),
    Case("mistral/mistral-large-latest", U(), {"input": "2", "output": "6"}),
    # -- DeepSeek: V3.2 prices, no off-peak discount (corrections) ------------------------------
    Case(
        "deepseek-chat",
        U(cache_read_tokens=600),
        {"input": "0.28", "output": "0.42", "cache_read": "0.028"},
    ),
    Case("deepseek/deepseek-reasoner", U(), {"input": "0.28", "output": "0.42"}),
]


def test_the_table_covers_at_least_sixty_cases() -> None:
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", CASES, ids=[f"{c.model}-{i}" for i, c in enumerate(CASES)])
def test_cost_is_the_published_price(case: Case) -> None:
    usage = Usage(**case.usage)
    quote = ROUTE.quote(case.model, usage)
    if case.rates is None:
        assert quote.cost is None, quote.cost_resolution
        assert quote.pricing_source == "unpriced"
        assert quote.cost_resolution.endswith("= no price")
        return
    assert quote.cost == expected(usage, case.rates), quote.cost_resolution


KINDS = {
    "input": Usage(input_tokens=1_000_000, output_tokens=0),
    "output": Usage(input_tokens=0, output_tokens=1_000_000),
    "cache read": Usage(input_tokens=1_000_000, cache_read_tokens=1_000_000, output_tokens=0),
    "cache write": Usage(input_tokens=1_000_000, cache_write_tokens=1_000_000, output_tokens=0),
}


def test_no_catalog_model_is_quoted_a_zero_component() -> None:
    """Every model the bundled catalog prices for chat has a non-zero price for every
    token kind (an entry missing one is unpriced, not billed $0 for it)."""
    entries = list(ROUTE_CATALOG.entries())
    assert len(entries) > 1000
    zero = [
        (entry.provider, entry.model_id, kind)
        for entry in entries
        for kind, usage in KINDS.items()
        if entry.cost(usage) <= 0
    ]
    assert zero == []


ROUTE_CATALOG = Pricer(load_config({})).catalog


# -- the readers carry every billable field; the record says how the cost was found ----


def test_openai_responses_carry_the_tier_that_served_them() -> None:
    from metered.providers.openai_chat import from_openai_chat
    from metered.providers.openai_responses import from_openai_responses

    chat = from_openai_chat(
        {"service_tier": "flex", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    )
    assert chat is not None
    assert (chat.service_tier, chat.batch) == ("flex", False)
    default = from_openai_chat(
        {"service_tier": "default", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    )
    assert default is not None
    assert default.service_tier is None
    responses = from_openai_responses(
        {"service_tier": "priority", "usage": {"input_tokens": 10, "output_tokens": 5}}
    )
    assert responses is not None
    assert responses.service_tier == "priority"


def test_responses_web_search_calls_are_billed_per_call() -> None:
    from metered.providers.openai_responses import from_openai_responses

    usage = from_openai_responses(
        {
            "output": [
                {"type": "web_search_call", "status": "completed"},
                {"type": "web_search_call", "status": "completed"},
                {"type": "message", "content": [{"type": "output_text", "text": "Paris."}]},
            ],
            "usage": {"input_tokens": 1000, "output_tokens": 500},
        }
    )
    assert usage is not None
    assert usage.web_search_requests == 2
    # gpt-4o: $2.50 / $10 per 1M; the web search tool $10 per 1,000 calls (genai-prices)
    expected_cost = (Decimal("2.50") * 1000 + Decimal(10) * 500) / M + Decimal("0.02")
    assert ROUTE.quote("gpt-4o", usage).cost == expected_cost


def test_anthropic_usage_carries_web_searches_and_batch() -> None:
    from metered.providers.anthropic import from_anthropic

    usage = from_anthropic(
        {
            "usage": {
                "input_tokens": 100,
                "output_tokens": 50,
                "server_tool_use": {"web_search_requests": 2},
                "service_tier": "batch",
            }
        }
    )
    assert usage is not None
    assert (usage.web_search_requests, usage.batch, usage.service_tier) == (2, True, None)
    quote = ROUTE.quote("claude-sonnet-4-5", usage)
    # Message Batches: $1.50 / $7.50 per 1M; web search $10 per 1,000 searches
    assert quote.cost == (Decimal("1.50") * 100 + Decimal("7.50") * 50) / M + Decimal("0.02")


def test_the_record_names_the_price_layer_and_the_resolution() -> None:
    from metered.engine.meter import Meter

    records: list[Any] = []
    meter = Meter({}, sink=records.append)
    for model in ("deepseek/deepseek-chat", "gpt-4o", "groq/gpt-4o"):
        call = meter.begin({"model": model, "messages": [{"role": "user", "content": "hi"}]})
        call.finish(Usage(input_tokens=10, output_tokens=5))
    sources = [(r.cost_source, r.cost_resolution) for r in records]
    assert sources == [
        (
            "corrections",
            "deepseek/deepseek-chat > deepseek-chat @deepseek = corrections deepseek/deepseek-chat",
        ),
        ("genai-prices", "gpt-4o @any = genai-prices openai/gpt-4o"),
        (None, "groq/gpt-4o > gpt-4o @groq = no price"),
    ]


def test_a_gemini_response_prices_thinking_and_cached_tokens() -> None:
    """usageMetadata: thoughts are billed as output, cached content at the cached rate."""
    from metered.providers.gemini import from_gemini

    usage = from_gemini(
        {
            "usageMetadata": {
                "promptTokenCount": 2000,
                "cachedContentTokenCount": 1500,
                "candidatesTokenCount": 300,
                "thoughtsTokenCount": 700,
            }
        }
    )
    assert usage is not None
    assert (usage.input_tokens, usage.cache_read_tokens) == (2000, 1500)
    assert (usage.output_tokens, usage.reasoning_tokens) == (1000, 700)
    # gemini-2.5-flash: input $0.30, cached $0.03, output (thinking included) $2.50 per 1M
    expected_cost = (Decimal("0.30") * 500 + Decimal("0.03") * 1500 + Decimal("2.50") * 1000) / M
    assert ROUTE.quote("gemini-2.5-flash", usage).cost == expected_cost
