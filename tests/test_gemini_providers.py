"""The Gemini reader: usage, model, id and finish reasons of ``generateContent``
responses and ``streamGenerateContent`` chunks, JSON and google-genai SDK objects alike,
and the content-capture shape of requests and responses."""

from __future__ import annotations

from typing import Any

import pytest

from metered.providers import FORMATS, GEMINI, Bound, Transcript
from metered.providers.gemini import GeminiStream, from_gemini
from metered.usage import Usage

genai_types = pytest.importorskip("google.genai.types")

USAGE_JSON = {
    "promptTokenCount": 1200,
    "cachedContentTokenCount": 1000,
    "toolUsePromptTokenCount": 30,
    "candidatesTokenCount": 50,
    "thoughtsTokenCount": 400,
    "totalTokenCount": 1680,
}
RESPONSE_JSON: dict[str, Any] = {
    "candidates": [
        {
            "content": {"role": "model", "parts": [{"text": "Hello there"}]},
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": USAGE_JSON,
    "modelVersion": "gemini-2.5-flash",
    "responseId": "resp-123",
}
EXPECTED = Usage(
    input_tokens=1230,
    cache_read_tokens=1000,
    output_tokens=450,
    reasoning_tokens=400,
)


def test_json_usage_maps_thoughts_to_output_and_cache_inside_input() -> None:
    assert from_gemini(RESPONSE_JSON) == EXPECTED


def test_sdk_object_reads_the_same_as_json() -> None:
    sdk = genai_types.GenerateContentResponse.model_validate(RESPONSE_JSON)
    assert sdk.usage_metadata is not None  # the SDK object uses snake_case attributes
    json_outcome = GEMINI.read(RESPONSE_JSON)
    sdk_outcome = GEMINI.read(sdk)
    assert sdk_outcome.usage == json_outcome.usage == EXPECTED
    assert sdk_outcome.finish_reasons == json_outcome.finish_reasons == ["STOP"]
    assert sdk_outcome.response_model == json_outcome.response_model == "gemini-2.5-flash"
    assert sdk_outcome.response_id == json_outcome.response_id == "resp-123"


def test_response_without_usage_delivers_its_text_and_calls() -> None:
    body = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "thinking...", "thought": True},
                        {"text": "answer"},
                        {"functionCall": {"name": "lookup", "args": {"q": "x"}}},
                    ],
                },
                "finishReason": "STOP",
            }
        ]
    }
    outcome = GEMINI.read(body)
    assert outcome.usage is None
    assert outcome.delivered == ["thinking...", "answer", "lookup", '{"q":"x"}']


def test_blocked_prompt_reports_its_block_reason() -> None:
    body = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 9}}
    outcome = GEMINI.read(body)
    assert outcome.finish_reasons == ["SAFETY"]
    assert outcome.usage == Usage(input_tokens=9)


def _chunks() -> list[dict[str, Any]]:
    def chunk(text: str, usage: dict[str, int], finish: str | None = None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
        if finish:
            candidate["finishReason"] = finish
        return {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": "gemini-2.5-flash",
            "responseId": "r1",
        }

    return [
        chunk("Hel", {"promptTokenCount": 12, "totalTokenCount": 12}),
        chunk("lo", {"promptTokenCount": 12, "candidatesTokenCount": 1}),
        chunk(
            " world",
            {"promptTokenCount": 12, "candidatesTokenCount": 3, "thoughtsTokenCount": 7},
            "MAX_TOKENS",
        ),
    ]


@pytest.mark.parametrize("sdk", [False, True], ids=["json", "sdk"])
def test_stream_last_chunk_usage_is_final(sdk: bool) -> None:
    reader = GeminiStream(model="gemini-2.5-flash")
    reader.transcript = Transcript(1000)
    for chunk in _chunks():
        event = genai_types.GenerateContentResponse.model_validate(chunk) if sdk else chunk
        assert reader.feed(event) is True
    usage, partial = reader.measured(99)
    assert not partial
    assert usage == Usage(input_tokens=12, output_tokens=10, reasoning_tokens=7)
    assert reader.outcome.finish_reasons == ["MAX_TOKENS"]
    assert reader.outcome.response_model == "gemini-2.5-flash"
    assert reader.outcome.response_id == "r1"
    messages = reader.transcript.messages(reader.outcome.finish_reasons)
    assert messages[0]["parts"] == [{"type": "text", "content": "Hello world"}]
    assert messages[0]["finish_reason"] == "length"  # the conventions' name for MAX_TOKENS


def test_streamed_function_call_is_captured_as_a_tool_call() -> None:
    reader = GeminiStream(model="gemini-2.5-flash")
    reader.transcript = Transcript(1000)
    call = {"functionCall": {"name": "lookup", "args": {"q": "x"}, "id": "c1"}}
    reader.feed({"candidates": [{"content": {"role": "model", "parts": [call]}}]})
    reader.feed(
        {
            "candidates": [{"content": {"parts": [{"text": ""}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 4},
        }
    )
    [message] = reader.transcript.messages(reader.outcome.finish_reasons)
    assert message["finish_reason"] == "tool_call"
    assert message["parts"] == [
        {"type": "tool_call", "id": "c1", "name": "lookup", "arguments": {"q": "x"}}
    ]
    assert reader.measured(0) == (Usage(input_tokens=5, output_tokens=4), False)


def test_cut_stream_is_estimated_on_the_reported_input_side() -> None:
    reader = GeminiStream(model="gemini-2.5-flash")
    for chunk in _chunks()[:2]:
        reader.feed(chunk)
    usage, partial = reader.measured(99)
    assert partial
    assert usage.source == "estimated"
    assert usage.input_tokens == 12  # the provider's prompt count, not the engine's 99
    assert usage.output_tokens >= 1


def test_in_stream_error_is_reported() -> None:
    reader = GeminiStream(model="gemini-2.5-flash")
    reader.feed({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})
    assert reader.outcome.error == "overloaded"


def test_content_capture_shape() -> None:
    body = {
        "model": "gemini-2.5-flash",
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "What is in this picture?"},
                    {"inlineData": {"mimeType": "image/png", "data": "aGVsbG8="}},
                    {"fileData": {"mimeType": "video/mp4", "fileUri": "https://x.test/v?sig=1"}},
                ],
            },
            {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"r": 2}}}]},
        ],
    }
    system, messages = FORMATS["gemini"].input_messages(body, Bound(1000))
    assert system == [{"type": "text", "content": "Be brief."}]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    user = messages[0]["parts"]
    assert user[1] == {
        "type": "blob",
        "mime_type": "image/png",
        "modality": "image",
        "content": "aGVsbG8=",
    }
    assert user[2]["uri"] == "https://x.test/v"  # the query string (a signature) is dropped
    assert messages[1]["parts"][0] == {
        "type": "tool_call",
        "id": None,
        "name": "f",
        "arguments": {"a": 1},
    }
    assert messages[2]["parts"][0]["response"] == {"r": 2}
    out = FORMATS["gemini"].output_messages(RESPONSE_JSON, Bound(1000))
    assert out == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "Hello there"}],
            "finish_reason": "stop",
            "name": None,
        }
    ]
