"""Odd Gemini data never breaks a call: any response or chunk is read without raising,
and any request body gives a call or a typed refusal that holds nothing."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from metered.engine.meter import Meter
from metered.errors import MeteredError
from metered.providers import GEMINI, Bound, Transcript
from metered.providers.gemini import GeminiStream
from metered.usage import Usage

KEYS = st.sampled_from(
    [
        "candidates",
        "content",
        "parts",
        "text",
        "thought",
        "role",
        "finishReason",
        "index",
        "usageMetadata",
        "promptTokenCount",
        "candidatesTokenCount",
        "thoughtsTokenCount",
        "cachedContentTokenCount",
        "toolUsePromptTokenCount",
        "functionCall",
        "functionResponse",
        "inlineData",
        "fileData",
        "name",
        "args",
        "response",
        "mimeType",
        "data",
        "fileUri",
        "promptFeedback",
        "blockReason",
        "modelVersion",
        "responseId",
        "error",
        "message",
        "contents",
        "systemInstruction",
        "generationConfig",
        "generation_config",
        "maxOutputTokens",
        "max_output_tokens",
        "thinkingConfig",
        "thinkingBudget",
        "candidateCount",
        "tools",
        "functionDeclarations",
        "parameters",
        "model",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-5, 3000)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["user", "model", "STOP", "MAX_TOKENS", "SAFETY", "image/png"])
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=30,
)
METER = Meter(
    {
        "routes": {
            "g": {
                "models": {
                    "gemini-2.5-flash": {"input": "$1 / 1M tokens", "output": "$10 / 1M tokens"}
                }
            }
        },
        "default_route": "g",
        "tiers": {"free": {"max_tokens": 200}},
        "accounts": {"acme": {"budgets": ["$1000/day"]}},
    }
)


@settings(max_examples=400, deadline=None)
@given(JSON)
def test_any_response_is_read_without_raising(data: Any) -> None:
    outcome = GEMINI.read(data)
    assert outcome.usage is None or isinstance(outcome.usage, Usage)
    assert isinstance(GEMINI.output_messages(data, Bound(100)), list)
    system, messages = GEMINI.input_messages(data, Bound(100))
    assert isinstance(system, list)
    assert isinstance(messages, list)


@settings(max_examples=300, deadline=None)
@given(st.lists(JSON, max_size=5), st.booleans())
def test_any_chunks_are_read_without_raising(chunks: list[Any], ended: bool) -> None:
    reader = GeminiStream(model="gemini-2.5-flash")
    reader.transcript = Transcript(100)
    for chunk in chunks:
        assert reader.feed(chunk) is True
    usage, _ = reader.measured(10, ended=ended)
    assert isinstance(usage, Usage)
    assert isinstance(reader.transcript.messages(reader.outcome.finish_reasons), list)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(  # a null camelCase config beside the snake_case one: one config goes upstream
    {"model": "gemini-2.5-flash", "generation_config": {}, "generationConfig": None}, None
)
@given(
    st.fixed_dictionaries(
        {"model": st.just("gemini-2.5-flash")},
        optional={
            "contents": JSON,
            "generationConfig": JSON,
            "generation_config": JSON,
            "systemInstruction": JSON,
            "tools": JSON,
        },
    ),
    st.sampled_from([None, "free"]),
)
def test_any_body_gives_a_call_or_a_typed_refusal(body: dict[str, Any], tier: str | None) -> None:
    before = METER.ledger.balance("acme").held_nanos
    try:
        call = METER.begin(body, api="gemini", account="acme", tier=tier)
    except MeteredError:
        assert METER.ledger.balance("acme").held_nanos == before
        return
    config = call.body.get("generationConfig", call.body.get("generation_config"))
    assert isinstance(config, dict)  # a budgeted call always sends its limit
    assert config["maxOutputTokens"] == call.output_limit
    call.finish(error=TimeoutError())
    assert METER.ledger.balance("acme").held_nanos == before
