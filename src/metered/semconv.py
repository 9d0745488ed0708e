"""The names metered's spans and metrics use (GenAI semantic conventions v1.41.0 and
``metered.*``), in one table, and the attributes built from a request body and from a
usage record. :mod:`metered.telemetry` emits them.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

from metered.records import UsageRecord

__all__ = [
    "ATTR",
    "DURATION_BUCKETS",
    "EVENT_BUDGET_ALERT",
    "METRIC",
    "SCHEMA_URL",
    "TOKEN_BUCKETS",
    "provider_name",
    "record_attributes",
    "request_attributes",
]


class ATTR:
    """Attribute names (GenAI semconv v1.41.0 + metered.*)."""

    OPERATION = "gen_ai.operation.name"
    PROVIDER = "gen_ai.provider.name"
    REQUEST_MODEL = "gen_ai.request.model"
    REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
    REQUEST_STREAM = "gen_ai.request.stream"
    REQUEST_TEMPERATURE = "gen_ai.request.temperature"
    REQUEST_TOP_P = "gen_ai.request.top_p"
    REQUEST_TOP_K = "gen_ai.request.top_k"
    REQUEST_SEED = "gen_ai.request.seed"
    REQUEST_FREQUENCY_PENALTY = "gen_ai.request.frequency_penalty"
    REQUEST_PRESENCE_PENALTY = "gen_ai.request.presence_penalty"
    REQUEST_STOP_SEQUENCES = "gen_ai.request.stop_sequences"
    REQUEST_CHOICE_COUNT = "gen_ai.request.choice.count"
    # OpenAI's own (the official instrumentation's names); the response ones come from
    # the reader (providers.openai_chat.response_attributes)
    OPENAI_REQUEST_SERVICE_TIER = "openai.request.service_tier"
    RESPONSE_MODEL = "gen_ai.response.model"
    RESPONSE_ID = "gen_ai.response.id"
    FINISH_REASONS = "gen_ai.response.finish_reasons"
    INPUT_TOKENS = "gen_ai.usage.input_tokens"
    OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
    CACHE_READ_TOKENS = "gen_ai.usage.cache_read.input_tokens"
    CACHE_CREATION_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
    REASONING_TOKENS = "gen_ai.usage.reasoning.output_tokens"
    TOKEN_TYPE = "gen_ai.token.type"
    SERVER_ADDRESS = "server.address"
    SERVER_PORT = "server.port"
    INPUT_MESSAGES = "gen_ai.input.messages"
    OUTPUT_MESSAGES = "gen_ai.output.messages"
    SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
    ERROR_TYPE = "error.type"

    PRICING_SOURCE = "metered.pricing.source"
    PRICING_MODE = "metered.pricing.mode"
    MODEL_RESOLVED = "metered.model.resolved"
    COST = "metered.cost.usd"
    # the cost again, where GenAI backends read it (docs/architecture.md, "Telemetry"):
    COST_LANGFUSE = "gen_ai.usage.cost"  # Langfuse: costDetails.total (USD)
    COST_OPENINFERENCE = "llm.cost.total"  # OpenInference / Arize Phoenix (USD)
    PRICE = "metered.price.usd"
    MARGIN = "metered.margin.usd"
    TOKENS_SOURCE = "metered.tokens.source"
    SETTLEMENT_MODE = "metered.settlement.mode"
    SETTLEMENT_STATUS = "metered.settlement.status"
    SETTLEMENT_AMOUNT = "metered.settlement.amount.usd"
    SETTLEMENT_LATENCY = "metered.settlement.latency_ms"
    PAYMENT_REQUIRED = "metered.payment.required.usd"
    ACCOUNT = "metered.account"
    BUDGET_REMAINING = "metered.budget.remaining.usd"
    POLICY_DECISION = "metered.policy.decision"
    POLICY_REASON = "metered.policy.reason"
    TRIM_DROPPED = "metered.trim.messages_dropped"
    MAX_TOKENS_CLAMPED_FROM = "metered.max_tokens.clamped_from"
    MAX_TOKENS_SOURCE = "metered.max_tokens.source"
    ROUTE = "metered.route"
    TIER = "metered.tier"
    FEATURE = "metered.feature"
    CALL_ID = "metered.call.id"
    TTFC = "gen_ai.response.time_to_first_chunk"  # seconds
    UPSTREAM_STATUS = "metered.upstream.status"
    CATALOG_VERSION = "metered.catalog.version"
    COST_SOURCE = "metered.cost.source"
    COST_RESOLUTION = "metered.cost.resolution"
    # on the server span of an HTTP request: totals of the calls made while serving it
    REQUEST_COST = "metered.request.cost.usd"
    REQUEST_PRICE = "metered.request.price.usd"
    REQUEST_CALLS = "metered.request.calls"


class METRIC:
    """Metric names."""

    TOKEN_USAGE = "gen_ai.client.token.usage"
    DURATION = "gen_ai.client.operation.duration"
    TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
    TIME_PER_OUTPUT_CHUNK = "gen_ai.client.operation.time_per_output_chunk"
    COST = "metered.cost"
    PRICE = "metered.price"
    CALLS = "metered.calls"


EVENT_BUDGET_ALERT = "metered.budget.alert"

# semconv advisory buckets
DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
TOKEN_BUCKETS = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)

# semconv well-known provider names, from the names users and catalogs use
_PROVIDERS = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "google": "gcp.gemini",
    "aws": "aws.bedrock",
    "x-ai": "x_ai",
    "mistral": "mistral_ai",
    "deepseek": "deepseek",
    "groq": "groq",
    "cohere": "cohere",
    "perplexity": "perplexity",
}


def provider_name(provider: str | None) -> str | None:
    """The semconv ``gen_ai.provider.name`` for a catalog provider id."""
    if provider is None:
        return None
    return _PROVIDERS.get(provider, provider)


# (span attribute, UsageRecord field) of a finished call, in the order spans show them;
# finish_reasons is added apart (a list, and only when there are some)
_RECORD_ATTRIBUTES = (
    (ATTR.RESPONSE_MODEL, "response_model"),
    (ATTR.RESPONSE_ID, "response_id"),
    (ATTR.REQUEST_MAX_TOKENS, "request_max_tokens"),
    (ATTR.INPUT_TOKENS, "tokens_in"),
    (ATTR.OUTPUT_TOKENS, "tokens_out"),
    (ATTR.CACHE_READ_TOKENS, "cache_read_tokens"),
    (ATTR.CACHE_CREATION_TOKENS, "cache_write_tokens"),
    (ATTR.REASONING_TOKENS, "reasoning_tokens"),
    (ATTR.ERROR_TYPE, "error_type"),
    (ATTR.PRICING_SOURCE, "pricing_source"),
    (ATTR.PRICING_MODE, "resolved_pricing_mode"),
    (ATTR.MODEL_RESOLVED, "resolved_model"),
    (ATTR.COST, "cost"),
    (ATTR.PRICE, "resolved_price"),
    (ATTR.MARGIN, "margin"),
    (ATTR.TOKENS_SOURCE, "tokens_source"),
    (ATTR.SETTLEMENT_MODE, "settlement_mode"),
    (ATTR.SETTLEMENT_STATUS, "settlement_status"),
    (ATTR.SETTLEMENT_AMOUNT, "settlement_amount"),
    (ATTR.SETTLEMENT_LATENCY, "settlement_latency_ms"),
    (ATTR.PAYMENT_REQUIRED, "payment_required"),
    (ATTR.ACCOUNT, "account"),
    (ATTR.BUDGET_REMAINING, "budget_remaining"),
    (ATTR.POLICY_DECISION, "policy_decision"),
    (ATTR.POLICY_REASON, "policy_reason"),
    (ATTR.TRIM_DROPPED, "trimmed_messages"),
    (ATTR.MAX_TOKENS_CLAMPED_FROM, "max_tokens_clamped_from"),
    (ATTR.MAX_TOKENS_SOURCE, "max_tokens_source"),
    (ATTR.ROUTE, "route"),
    (ATTR.TIER, "tier"),
    (ATTR.FEATURE, "feature"),
    (ATTR.CALL_ID, "call_id"),
    (ATTR.TTFC, "time_to_first_chunk_ms"),
    (ATTR.UPSTREAM_STATUS, "upstream_status"),
    (ATTR.CATALOG_VERSION, "catalog_version"),
    (ATTR.COST_SOURCE, "cost_source"),
    (ATTR.COST_RESOLUTION, "cost_resolution"),
)
_RECORD_ATTRIBUTE_NAMES = tuple(name for name, _ in _RECORD_ATTRIBUTES)
# one C call reads every field: ~3x cheaper than reading them one by one on every span
_record_values = operator.attrgetter(*(field for _, field in _RECORD_ATTRIBUTES))
# Decimal amounts, rendered as doubles
_USD_ATTRIBUTES = (
    ATTR.COST,
    ATTR.PRICE,
    ATTR.MARGIN,
    ATTR.SETTLEMENT_AMOUNT,
    ATTR.PAYMENT_REQUIRED,
    ATTR.BUDGET_REMAINING,
)


#: The semconv schema the attribute names follow (the tracer's and meter's schema_url).
SCHEMA_URL = "https://opentelemetry.io/schemas/1.41.0"
_USAGE_ATTRIBUTES = (
    ATTR.INPUT_TOKENS,
    ATTR.OUTPUT_TOKENS,
    ATTR.CACHE_READ_TOKENS,
    ATTR.CACHE_CREATION_TOKENS,
    ATTR.REASONING_TOKENS,
)
# (attribute, body field, type) of the sampling parameters a request may carry
_NUMBERS = (
    (ATTR.REQUEST_TEMPERATURE, "temperature", float),
    (ATTR.REQUEST_TOP_P, "top_p", float),
    (ATTR.REQUEST_TOP_K, "top_k", int),
    (ATTR.REQUEST_SEED, "seed", int),
    (ATTR.REQUEST_FREQUENCY_PENALTY, "frequency_penalty", float),
    (ATTR.REQUEST_PRESENCE_PENALTY, "presence_penalty", float),
)


def request_attributes(body: Mapping[str, Any], api: str = "chat") -> dict[str, Any]:
    """The GenAI request attributes a chat body carries (sampling parameters, stop
    sequences, the choice count; OpenAI's service tier), with the convention's types;
    absent ones left out."""
    attrs: dict[str, Any] = {ATTR.REQUEST_STREAM: body.get("stream") is True}
    for name, field, kind in _NUMBERS:
        value: Any = body.get(field)
        if type(value) in (int, float):  # never a bool, a string or a JSON object
            attrs[name] = kind(value)
    stop = body.get("stop_sequences", body.get("stop"))
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list) and stop and all(isinstance(s, str) for s in stop):
        attrs[ATTR.REQUEST_STOP_SEQUENCES] = stop
    n = body.get("n")
    if type(n) is int and n > 1:
        attrs[ATTR.REQUEST_CHOICE_COUNT] = n
    tier = body.get("service_tier")
    if api != "anthropic" and isinstance(tier, str) and tier:
        attrs[ATTR.OPENAI_REQUEST_SERVICE_TIER] = tier
    return attrs


def record_attributes(record: UsageRecord) -> dict[str, Any]:
    """Span attributes for a finished call (``None`` values are left out, and so is usage
    that did not happen: a call refused before the provider saw it, or one whose usage is
    unknown, carries no ``gen_ai.usage.*`` attribute rather than zeros)."""
    attrs: dict[str, Any] = {
        name: value
        for name, value in zip(_RECORD_ATTRIBUTE_NAMES, _record_values(record), strict=True)
        if value is not None
    }
    ttfc = attrs.get(ATTR.TTFC)
    if ttfc is not None:  # the record keeps milliseconds; the convention wants seconds
        attrs[ATTR.TTFC] = ttfc / 1000
    if record.tokens_source == "unknown":
        for name in _USAGE_ATTRIBUTES:
            attrs.pop(name, None)
    for name in _USD_ATTRIBUTES:
        amount = attrs.get(name)
        if amount is not None:
            attrs[name] = float(amount)
    cost = attrs.get(ATTR.COST)
    if cost is not None:  # known cost only: never a stand-in 0 for a backend to sum
        attrs[ATTR.COST_LANGFUSE] = attrs[ATTR.COST_OPENINFERENCE] = cost
    if record.finish_reasons:
        attrs[ATTR.FINISH_REASONS] = list(record.finish_reasons)
    return attrs
