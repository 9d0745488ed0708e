"""Content capture follows the GenAI conventions and their environment variable: off by
default, messages on the span (JSON) or in a ``gen_ai.client.inference.operation.details``
event when asked, the same at every door, bounded, and never a credential."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from metered.clients import MeteredAnthropic, MeteredOpenAI
from metered.engine.meter import Meter
from metered.providers import ANTHROPIC, CHAT, RESPONSES, Bound, Transcript
from metered.testing import FakeUpstream
from test_parity import DOORS, ROUTE_PATHS, SCENARIOS, upstream_of
from test_semconv_official import official_span

ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
CONTENT_KEYS = ("gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions")
ROUTES: dict[str, Any] = {"routes": {f"POST {path}": {} for path in ROUTE_PATHS}}

CONVERSATION: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        {"role": "user", "content": "And tomorrow?", "name": "ann"},
    ],
}


def spans_of(meter_kwargs: dict[str, Any]) -> tuple[InMemorySpanExporter, dict[str, Any]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, {"tracer_provider": provider, **meter_kwargs}


def content(span: Any) -> dict[str, Any]:
    attributes = span.attributes or {}
    return {key: json.loads(attributes[key]) for key in CONTENT_KEYS if key in attributes}


def test_span_content_is_what_the_official_instrumentation_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same call, same JSON (parsed): system and tool turns, tool calls, names."""
    official = official_span(CONVERSATION, env={ENV: "SPAN_ONLY"})["attributes"]
    monkeypatch.setenv(ENV, "SPAN_ONLY")
    exporter, kwargs = spans_of({})
    client = MeteredOpenAI(FakeUpstream().openai_client(), meter=Meter({}, **kwargs))
    client.chat.completions.create(**CONVERSATION)
    (span,) = exporter.get_finished_spans()
    ours = content(span)
    assert ours["gen_ai.input.messages"] == json.loads(official["gen_ai.input.messages"])
    assert ours["gen_ai.output.messages"] == json.loads(official["gen_ai.output.messages"])
    assert ours["gen_ai.input.messages"][3]["parts"] == [
        {"type": "tool_call_response", "id": "call_1", "response": "18C, sunny"}
    ]


@pytest.mark.parametrize("setting", [None, "", "NO_CONTENT", "bogus"])
def test_no_content_anywhere_unless_asked(
    monkeypatch: pytest.MonkeyPatch, setting: str | None
) -> None:
    if setting is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, setting)
    exporter, kwargs = spans_of({})
    logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    meter = Meter({}, logger_provider=logger_provider, **kwargs)
    MeteredOpenAI(FakeUpstream().openai_client(), meter=meter).chat.completions.create(
        **CONVERSATION
    )
    (span,) = exporter.get_finished_spans()
    dumped = json.dumps(dict(span.attributes or {}))
    assert not set(CONTENT_KEYS) & set(span.attributes or {})
    assert "Paris" not in dumped
    assert "terse" not in dumped
    assert logs.get_finished_logs() == ()


@pytest.mark.parametrize(
    ("env", "setting", "captured"),
    [
        ("SPAN_ONLY", False, False),
        (None, "span_only", True),
        (None, True, True),
        ("span_and_event", None, True),
        ("true", None, True),
    ],
)
def test_config_overrides_the_environment(
    monkeypatch: pytest.MonkeyPatch, env: str | None, setting: Any, captured: bool
) -> None:
    if env is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, env)
    exporter, kwargs = spans_of({})
    config = {} if setting is None else {"telemetry": {"capture_content": setting}}
    client = MeteredOpenAI(FakeUpstream().openai_client(), meter=Meter(config, **kwargs))
    client.chat.completions.create(**CONVERSATION)
    (span,) = exporter.get_finished_spans()
    assert ("gen_ai.input.messages" in (span.attributes or {})) is captured


def test_event_mode_emits_the_details_event_under_the_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV, "EVENT_ONLY")
    exporter, kwargs = spans_of({})
    logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    client = MeteredAnthropic(
        FakeUpstream(reply="Bonjour.").anthropic_client(),
        meter=Meter({}, logger_provider=logger_provider, **kwargs),
    )
    client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=64,
        system="Answer in French.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    (span,) = exporter.get_finished_spans()
    assert not set(CONTENT_KEYS) & set(span.attributes or {})  # events only
    (log,) = logs.get_finished_logs()
    record = log.log_record
    assert record.event_name == "gen_ai.client.inference.operation.details"
    assert record.span_id == span.context.span_id
    attributes = dict(record.attributes or {})
    assert attributes["gen_ai.request.model"] == "claude-sonnet-4-6"
    assert attributes["gen_ai.usage.output_tokens"] == span.attributes["gen_ai.usage.output_tokens"]
    assert [dict(p) for p in attributes["gen_ai.system_instructions"]] == [
        {"type": "text", "content": "Answer in French."}
    ]
    (output,) = attributes["gen_ai.output.messages"]
    assert output["finish_reason"] == "stop"
    assert [dict(p) for p in output["parts"]] == [{"type": "text", "content": "Bonjour."}]


# every scenario whose call completes: the doors must capture the same content
COMPLETE = [
    name
    for name, s in SCENARIOS.items()
    if s.fault is None and "no-usage" not in name and "cut" not in name
]


def captured_by_door(name: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for door_name, door in DOORS.items():
        exporter, kwargs = spans_of({})
        meter = Meter({**ROUTES, "telemetry": {"capture_content": "span_only"}}, **kwargs)
        door(meter, SCENARIOS[name], upstream_of(SCENARIOS[name]))
        (span,) = exporter.get_finished_spans()
        found[door_name] = content(span)
    return found


@pytest.mark.parametrize("name", [*COMPLETE, "anthropic-cut-thinking-stream"])
def test_every_door_captures_the_same_content(name: str) -> None:
    found = captured_by_door(name)
    assert found["proxy"]["gen_ai.input.messages"]
    assert found["proxy"]["gen_ai.output.messages"][0]["parts"]
    for door, captured in found.items():
        assert captured == found["proxy"], door


def test_a_cut_stream_keeps_what_was_delivered_thinking_apart() -> None:
    found = captured_by_door("anthropic-cut-thinking-stream")["gateway"]
    (output,) = found["gen_ai.output.messages"]
    kinds = [part["type"] for part in output["parts"]]
    assert kinds[0] == "reasoning"
    assert "text" in kinds
    assert output["finish_reason"] == "error"  # no stop reason arrived


def test_content_is_bounded_and_carries_no_credential() -> None:
    body: dict[str, Any] = {
        "model": "gpt-4o",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "x" * 5000},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://u:pw@img.test/a.png?X-Amz-Signature=s3cr3t"},
                    },
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64," + "A" * 900},
                    },
                ],
            }
        ],
    }
    system, messages = CHAT.input_messages(body, bound := Bound(1000))
    parts = messages[0]["parts"]
    assert parts[0]["content"].startswith("x" * 1000)
    assert parts[0]["content"].endswith("…[+4000 chars]")
    assert parts[1] == {
        "type": "uri",
        "mime_type": None,
        "modality": "image",
        "uri": "https://img.test/a.png",
    }
    assert parts[2] == {
        "type": "blob",
        "mime_type": "image/png",
        "modality": "image",
    }  # over budget
    assert bound.left == 0
    assert system == []


def test_stream_transcripts_keep_tool_calls_and_reasoning_apart() -> None:
    chat = CHAT.stream()
    chat.transcript = Transcript(1000)
    for event in [
        {"id": "c", "choices": [{"index": 0, "delta": {"content": "Let me check."}}]},
        {
            "id": "c",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_9",
                                "function": {"name": "weather", "arguments": '{"ci'},
                            }
                        ]
                    },
                }
            ],
        },
        {
            "id": "c",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]
                    },
                    "finish_reason": "tool_calls",
                }
            ],
        },
    ]:
        chat.feed(event)
    assert chat.transcript.messages(chat.outcome.finish_reasons) == [
        {
            "role": "assistant",
            "parts": [
                {"type": "text", "content": "Let me check."},
                {
                    "type": "tool_call",
                    "id": "call_9",
                    "name": "weather",
                    "arguments": {"city": "Oslo"},
                },
            ],
            "finish_reason": "tool_call",
            "name": None,
        }
    ]
    claude = ANTHROPIC.stream()
    claude.transcript = Transcript(1000)
    for event in [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Hmm."},
        },
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "tu_1", "name": "weather"},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"city":"Rome"}'},
        },
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 9},
        },
    ]:
        claude.feed(event)
    assert claude.transcript.messages(claude.outcome.finish_reasons)[0]["parts"] == [
        {"type": "reasoning", "content": "Hmm."},
        {"type": "tool_call", "id": "tu_1", "name": "weather", "arguments": {"city": "Rome"}},
    ]
    responses = RESPONSES.stream()
    responses.transcript = Transcript(1000)
    for event in [
        {
            "type": "response.output_item.added",
            "item": {"type": "function_call", "id": "fc_1", "call_id": "call_2", "name": "weather"},
        },
        {
            "type": "response.function_call_arguments.delta",
            "item_id": "fc_1",
            "delta": '{"city":"Nice"}',
        },
    ]:
        responses.feed(event)  # cut before response.completed
    assert responses.transcript.messages(responses.outcome.finish_reasons) == [
        {
            "role": "assistant",
            "parts": [
                {
                    "type": "tool_call",
                    "id": "call_2",
                    "name": "weather",
                    "arguments": {"city": "Nice"},
                }
            ],
            "finish_reason": "error",
            "name": None,
        }
    ]
