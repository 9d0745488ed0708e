"""The fake Gemini API, driven by raw HTTP and by the real google-genai SDK: the usage it
reports (thoughts, cached content), truncation at ``maxOutputTokens``, its chunk stream
and its faults in Google's error shape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx2
import pytest

from metered.engine.meter import Meter
from metered.providers import GEMINI
from metered.providers.gemini import GeminiStream
from metered.testing import DEFAULT_REPLY, FakeUpstream
from metered.tokens import count_request
from metered.usage import Usage
from tests.testing_support import reply_tokens

genai = pytest.importorskip("google.genai")
from google.genai import errors, types  # noqa: E402

MODEL = "gemini-2.5-flash"
PATH = f"/v1beta/models/{MODEL}:generateContent"
STREAM_PATH = f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
CONTENTS = [{"role": "user", "parts": [{"text": "What does a meter do?"}]}]


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream(reasoning_tokens=7, cached_tokens=3)


@pytest.fixture
def raw(upstream: FakeUpstream) -> Iterator[httpx2.Client]:
    with httpx2.Client(transport=upstream.httpx2_transport(), base_url="http://fake") as client:
        yield client


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


def test_json_reply_reports_thoughts_and_cached_content(raw: httpx2.Client) -> None:
    body = {"contents": CONTENTS, "systemInstruction": {"parts": [{"text": "Be brief."}]}}
    response = raw.post(PATH, json=body)
    assert response.status_code == 200
    data = response.json()
    prompt = count_request(body, model=MODEL).tokens
    output = len(reply_tokens(model=MODEL))
    assert data["usageMetadata"] == {
        "promptTokenCount": prompt,  # cached content is inside the prompt count
        "cachedContentTokenCount": 3,
        "candidatesTokenCount": output,
        "thoughtsTokenCount": 7,  # beside the candidates
        "totalTokenCount": prompt + output + 7,
    }
    assert data["candidates"][0]["content"]["parts"] == [{"text": DEFAULT_REPLY}]
    assert data["candidates"][0]["finishReason"] == "STOP"
    assert GEMINI.read(data).usage == Usage(
        input_tokens=prompt, cache_read_tokens=3, output_tokens=output + 7, reasoning_tokens=7
    )


def test_max_output_tokens_truncates_thoughts_first_and_a_zero_budget_thinks_not(
    raw: httpx2.Client,
) -> None:
    short = raw.post(PATH, json={"contents": CONTENTS, "generationConfig": {"maxOutputTokens": 9}})
    data = short.json()
    assert data["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert data["usageMetadata"]["thoughtsTokenCount"] == 7
    assert data["usageMetadata"]["candidatesTokenCount"] == 2
    off = {"maxOutputTokens": 100, "thinkingConfig": {"thinkingBudget": 0}}
    plain = raw.post(PATH, json={"contents": CONTENTS, "generationConfig": off}).json()
    assert "thoughtsTokenCount" not in plain["usageMetadata"]


def test_stream_chunks_end_with_the_final_usage(raw: httpx2.Client) -> None:
    whole = raw.post(PATH, json={"contents": CONTENTS}).json()
    streamed = raw.post(STREAM_PATH, json={"contents": CONTENTS})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = _events(streamed.text)
    assert len(events) > 1
    assert "finishReason" not in events[0]["candidates"][0]
    assert events[-1]["usageMetadata"] == whole["usageMetadata"]
    reader = GeminiStream(model=MODEL)
    for event in events:
        reader.feed(event)
    assert reader.measured(0) == (GEMINI.read(whole).usage, False)
    text = "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events)
    assert text == DEFAULT_REPLY


def test_errors_have_googles_shape_and_bad_bodies_are_400s(
    upstream: FakeUpstream, raw: httpx2.Client
) -> None:
    upstream.fail_next(429)
    limited = raw.post(PATH, json={"contents": CONTENTS})
    assert limited.status_code == 429
    assert limited.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert raw.post(PATH, json={"contents": []}).status_code == 400
    bad = {"contents": CONTENTS, "generationConfig": {"maxOutputTokens": 0}}
    assert raw.post(PATH, json=bad).status_code == 400


def test_in_stream_error_event(upstream: FakeUpstream, raw: httpx2.Client) -> None:
    upstream.fail_next(503, after_chunks=2)
    events = _events(raw.post(STREAM_PATH, json={"contents": CONTENTS}).text)
    assert len(events) == 3
    reader = GeminiStream(model=MODEL)
    for event in events:
        reader.feed(event)
    assert reader.outcome.error == "The model is overloaded. Please try again later."
    usage, partial = reader.measured(50)
    assert partial
    assert usage.source == "estimated"


def test_the_genai_sdk_runs_against_the_fake(upstream: FakeUpstream) -> None:
    client = upstream.genai_client()
    config = types.GenerateContentConfig(max_output_tokens=50, system_instruction="Be brief.")
    response = client.models.generate_content(model=MODEL, contents="Hi", config=config)
    assert response.text == DEFAULT_REPLY
    assert response.usage_metadata is not None
    assert response.usage_metadata.thoughts_token_count == 7
    assert GEMINI.read(response).usage == GEMINI.read(response.model_dump(by_alias=True)).usage
    sent = upstream.last_request
    assert sent.body["generationConfig"] == {"maxOutputTokens": 50}
    assert sent.headers["x-goog-api-key"] == "[redacted]"  # credentials never recorded
    chunks = list(client.models.generate_content_stream(model=MODEL, contents="Hi"))
    assert "".join(c.text or "" for c in chunks) == DEFAULT_REPLY
    assert upstream.last_request.query == "alt=sse"

    async def aio() -> str:
        answer = await client.aio.models.generate_content(model=MODEL, contents="Hi")
        return answer.text or ""

    assert asyncio.run(aio()) == DEFAULT_REPLY


def test_the_genai_sdk_raises_its_errors_at_once(upstream: FakeUpstream) -> None:
    client = upstream.genai_client()
    upstream.fail_next(503)
    with pytest.raises(errors.ServerError):
        client.models.generate_content(model=MODEL, contents="Hi")
    assert len(upstream.requests) == 1  # one attempt: no retry


def test_a_budgeted_call_sent_by_hand_never_overspends() -> None:
    """begin → send the fitted body → read the answer with the Gemini reader → finish:
    the limit the budget chose bounds thoughts and answer together, so the spend fits."""
    meter = Meter(
        {
            "routes": {
                "g": {"models": {MODEL: {"input": "$1 / 1M tokens", "output": "$10 / 1M tokens"}}}
            },
            "default_route": "g",
            "accounts": {"acme": {"budgets": ["$0.0005/day"]}},  # ~50 output tokens
        }
    )
    long_upstream = FakeUpstream(reply="word " * 500, reasoning_tokens=20)
    with httpx2.Client(transport=long_upstream.httpx2_transport(), base_url="http://f") as client:
        call = meter.begin({"model": MODEL, "contents": CONTENTS}, api="gemini", account="acme")
        limit = call.body["generationConfig"]["maxOutputTokens"]
        assert call.output_limit_source == "budget"
        sent = {k: v for k, v in call.body.items() if k != "model"}  # the model is in the path
        answer = client.post(PATH, json=sent).json()
    outcome = GEMINI.read(answer)
    call.finish(
        outcome.usage,
        response=answer,
        response_model=outcome.response_model,
        finish_reasons=outcome.finish_reasons,
    )
    assert outcome.finish_reasons == ["MAX_TOKENS"]
    assert outcome.usage is not None
    assert outcome.usage.output_tokens == limit  # 20 thoughts + the answer, cut at the limit
    assert outcome.usage.reasoning_tokens == 20
    assert meter.spent("acme") <= Decimal("0.0005")
