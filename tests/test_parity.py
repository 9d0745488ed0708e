"""Cross-door parity: one provider response gives the same usage record at every door.

Each scenario is served by one upstream and driven through (1) the client proxies (the
real OpenAI / Anthropic SDK over HTTP), (2) the ASGI middleware, (3) the WSGI middleware
and (4) the gateway app (``GatewayProxy`` behind the middleware, as ``metered gateway``
builds it). The records must agree on everything but the fields that name the door or
time the call. Only public APIs of the doors are used. Gemini's client door is the
google-genai SDK over the metered transport (``metered.clients.genai``); its HTTP doors
serve ``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from metered.clients import MeteredAnthropic, MeteredOpenAI
from metered.clients.genai import metered_transport
from metered.engine.meter import Meter
from metered.errors import UpstreamError
from metered.gateway import GatewayProxy, Upstream
from metered.http.asgi import MeteredMiddleware
from metered.http.wsgi import MeteredWSGIMiddleware
from metered.records import UsageRecord
from metered.testing import FakeUpstream
from metered.testing.transports import _transport_class

HI = [{"role": "user", "content": "Say something."}]
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "anthropic": "/v1/messages"}
GEMINI_MODEL = "gemini-2.5-flash"
GEMINI_PATHS = (
    "/v1beta/models/{model}:generateContent",
    "/v1beta/models/{model}:streamGenerateContent",
)
ROUTE_PATHS = (*PATHS.values(), *GEMINI_PATHS)
CONFIG: dict[str, Any] = {"routes": {f"POST {path}": {} for path in ROUTE_PATHS}}
# what differs by construction: which door, when, how long, and the exception's class
DOOR_FIELDS = frozenset(
    {
        "timestamp",
        "call_id",
        "route",
        "settlement_latency_ms",
        "upstream_latency_ms",
        "time_to_first_chunk_ms",
        "server_address",
        "error_type",
    }
)


# -- upstreams ----------------------------------------------------------------------------


def sse(data: dict[str, Any], *, named: bool = True) -> bytes:
    """One server-sent event (named after its ``type``, as Anthropic and Responses do)."""
    head = f"event: {data['type']}\n".encode() if named else b""
    return head + b"data: " + json.dumps(data).encode() + b"\n\n"


class Scripted:
    """An upstream that answers every request with the same recorded event stream: for
    what :class:`FakeUpstream` cannot script (thinking and refusal deltas, a stream that
    just stops)."""

    def __init__(self, body: bytes, content_type: str = "text/event-stream") -> None:
        self.body = body
        self.content_type = content_type

    def _reply(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=self.body, headers={"content-type": self.content_type})

    def httpx_transport(self) -> httpx.BaseTransport:
        return httpx.MockTransport(self._reply)

    def async_httpx_transport(self) -> httpx.AsyncBaseTransport:
        return httpx.MockTransport(self._reply)

    def _sdk_http(self, sdk: Any) -> Any:
        """An HTTP client of the library the SDK is built on (httpx or httpx2)."""
        library = importlib.import_module(sdk.DefaultHttpxClient.__mro__[1].__module__)

        def reply(request: Any) -> Any:
            headers = {"content-type": self.content_type}
            return library.Response(200, content=self.body, headers=headers)

        return library.Client(transport=library.MockTransport(reply))

    def openai_client(self) -> openai.OpenAI:
        http = self._sdk_http(openai)
        return openai.OpenAI(api_key="k", base_url="http://up/v1", http_client=http, max_retries=0)

    def anthropic_client(self) -> anthropic.Anthropic:
        http = self._sdk_http(anthropic)
        return anthropic.Anthropic(
            api_key="k", base_url="http://up", http_client=http, max_retries=0
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body", False):
            pass
        headers = [(b"content-type", self.content_type.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


AnyUpstream = FakeUpstream | Scripted


def cut_anthropic_thinking() -> Scripted:
    """An Anthropic stream with thinking and text deltas that stops before message_delta."""
    message = {
        "id": "msg_cut",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "cache_read_input_tokens": 4, "output_tokens": 1},
    }
    thinking = {"type": "thinking", "thinking": "", "signature": ""}
    events = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": thinking},
        *(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": piece},
            }
            for piece in ("Let me weigh ", "the options before ", "answering carefully.")
        ),
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "text_delta", "text": "The answer is"},
        },
    ]
    return Scripted(b"".join(sse(event) for event in events))


def cut_responses_reasoning_refusal() -> Scripted:
    """A Responses stream of reasoning and refusal deltas that stops before it completes."""
    response = {
        "id": "resp_cut",
        "object": "response",
        "created_at": 0,
        "model": "gpt-4o-2024-08-06",
        "status": "in_progress",
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }
    common = {"item_id": "it", "output_index": 0, "content_index": 0}
    events = [
        {"type": "response.created", "response": response, "sequence_number": 0},
        {
            "type": "response.reasoning_summary_text.delta",
            "delta": "Considering whether this is allowed.",
            "summary_index": 0,
            "item_id": "rs",
            "output_index": 0,
            "sequence_number": 1,
        },
        {
            "type": "response.refusal.delta",
            "delta": "I can't help with that request.",
            "sequence_number": 2,
            **common,
        },
    ]
    return Scripted(b"".join(sse(event) for event in events))


def chat_refusal() -> Scripted:
    """A chat stream whose reply is a refusal, from an upstream that ignores include_usage."""
    base = {"id": "chatcmpl-r", "object": "chat.completion.chunk", "created": 0}
    base["model"] = "gpt-4o-2024-08-06"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**base, "choices": [choice]}, named=False)

    pieces = [chunk({"role": "assistant", "content": None, "refusal": ""})]
    pieces += [chunk({"refusal": text}) for text in ("I'm sorry, ", "I can't assist with that.")]
    pieces += [chunk({}, "stop"), b"data: [DONE]\n\n"]
    return Scripted(b"".join(pieces))


# Whole responses from OpenAI-compatible servers that report no usage (vLLM, Ollama, proxies)
TOOL_ARGUMENTS = '{"city": "Paris", "unit": "celsius"}'
NO_USAGE_REPLIES: dict[str, dict[str, Any]] = {
    "chat": {
        "id": "chatcmpl-nu",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "logprobs": None,
                "message": {
                    "role": "assistant",
                    "content": "Let me check the weather for you.",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS},
                        }
                    ],
                },
            }
        ],
    },
    "responses": {
        "id": "resp_nu",
        "object": "response",
        "created_at": 0,
        "model": "gpt-4o-2024-08-06",
        "status": "completed",
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "output": [
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [
                    {"type": "output_text", "text": "Let me check the weather.", "annotations": []}
                ],
            },
            {
                "id": "fc_1",
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": TOOL_ARGUMENTS,
                "status": "completed",
            },
        ],
    },
    "anthropic": {
        "id": "msg_nu",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "content": [
            {"type": "text", "text": "Let me check the weather for you."},
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": json.loads(TOOL_ARGUMENTS),
            },
        ],
    },
}


def no_usage(api: str) -> Callable[[], Scripted]:
    return lambda: Scripted(json.dumps(NO_USAGE_REPLIES[api]).encode(), "application/json")


# -- scenarios ----------------------------------------------------------------------------


@dataclass
class Scenario:
    """One request to one upstream."""

    api: str
    body: dict[str, Any]
    upstream: Callable[[], AnyUpstream] = FakeUpstream
    fault: Callable[[FakeUpstream], None] | None = None
    headers: dict[str, str] = field(default_factory=dict)


ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01"}
CHAT = {"model": "gpt-4o", "messages": HI}
RESPONSES = {"model": "gpt-4o", "input": "Say something."}
MESSAGES = {"model": "claude-sonnet-4-6", "max_tokens": 256, "messages": HI}
THINKING = {**MESSAGES, "thinking": {"type": "enabled", "budget_tokens": 64}}

# Gemini's REST body; "stream" here picks the streaming URL (the body never says it)
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "Say something."}]}]}

SCENARIOS = {
    "chat-json": Scenario("chat", CHAT),
    "chat-stream": Scenario("chat", {**CHAT, "stream": True}),
    "chat-cached-json": Scenario("chat", CHAT, lambda: FakeUpstream(cached_tokens=0.5)),
    "responses-json": Scenario("responses", RESPONSES),
    "responses-stream": Scenario("responses", {**RESPONSES, "stream": True}),
    "responses-reasoning-stream": Scenario(
        "responses",
        {**RESPONSES, "model": "o3-mini", "stream": True},
        lambda: FakeUpstream(reasoning_tokens=9),
    ),
    "anthropic-json": Scenario("anthropic", MESSAGES, headers=ANTHROPIC_HEADERS),
    "anthropic-thinking-json": Scenario(
        "anthropic", THINKING, lambda: FakeUpstream(reasoning_tokens=7), headers=ANTHROPIC_HEADERS
    ),
    "anthropic-thinking-stream": Scenario(
        "anthropic",
        {**THINKING, "stream": True},
        lambda: FakeUpstream(reasoning_tokens=7, cache_write_tokens=0.25),
        headers=ANTHROPIC_HEADERS,
    ),
    "anthropic-cut-thinking-stream": Scenario(
        "anthropic", {**THINKING, "stream": True}, cut_anthropic_thinking, headers=ANTHROPIC_HEADERS
    ),
    "responses-cut-refusal-stream": Scenario(
        "responses", {**RESPONSES, "stream": True}, cut_responses_reasoning_refusal
    ),
    "chat-refusal-stream": Scenario("chat", {**CHAT, "stream": True}, chat_refusal),
    "chat-json-no-usage": Scenario("chat", CHAT, no_usage("chat")),
    "responses-json-no-usage": Scenario("responses", RESPONSES, no_usage("responses")),
    "anthropic-json-no-usage": Scenario(
        "anthropic", MESSAGES, no_usage("anthropic"), headers=ANTHROPIC_HEADERS
    ),
    "chat-upstream-error": Scenario("chat", CHAT, fault=lambda up: up.fail_next(500)),
    "anthropic-upstream-error": Scenario(
        "anthropic", MESSAGES, fault=lambda up: up.fail_next(529), headers=ANTHROPIC_HEADERS
    ),
    "chat-error-mid-stream": Scenario(
        "chat", {**CHAT, "stream": True}, fault=lambda up: up.fail_next(500, after_chunks=3)
    ),
    "chat-disconnect-mid-stream": Scenario(
        "chat", {**CHAT, "stream": True}, fault=lambda up: up.disconnect_next(after_chunks=3)
    ),
    "anthropic-disconnect-mid-stream": Scenario(
        "anthropic",
        {**MESSAGES, "stream": True},
        fault=lambda up: up.disconnect_next(after_chunks=4),
        headers=ANTHROPIC_HEADERS,
    ),
    "responses-error-mid-stream": Scenario(
        "responses",
        {**RESPONSES, "stream": True},
        fault=lambda up: up.fail_next(500, after_chunks=3),
    ),
    "gemini-json": Scenario("gemini", GEMINI),
    "gemini-stream": Scenario("gemini", {**GEMINI, "stream": True}),
    "gemini-thinking-stream": Scenario(
        "gemini", {**GEMINI, "stream": True}, lambda: FakeUpstream(reasoning_tokens=6)
    ),
    "gemini-cached-json": Scenario("gemini", GEMINI, lambda: FakeUpstream(cached_tokens=0.5)),
    "gemini-upstream-error": Scenario("gemini", GEMINI, fault=lambda up: up.fail_next(503)),
}


def request_of(scenario: Scenario) -> tuple[str, dict[str, Any]]:
    """The URL an HTTP door is sent and the JSON body (Gemini's URL names the model and
    whether it streams)."""
    if scenario.api != "gemini":
        return PATHS[scenario.api], scenario.body
    body = {k: v for k, v in scenario.body.items() if k != "stream"}
    action = "streamGenerateContent?alt=sse" if scenario.body.get("stream") else "generateContent"
    return f"/v1beta/models/{GEMINI_MODEL}:{action}", body


def upstream_of(scenario: Scenario) -> AnyUpstream:
    upstream = scenario.upstream()
    if scenario.fault is not None:
        assert isinstance(upstream, FakeUpstream)
        scenario.fault(upstream)
    return upstream


# -- doors --------------------------------------------------------------------------------


def via_genai(meter: Meter, scenario: Scenario, upstream: AnyUpstream) -> None:
    """google-genai over the metered transport (Gemini's client door)."""
    transport = metered_transport(meter, inner=_transport_class("httpx2")(upstream))
    with httpx2.Client(transport=transport) as http:
        client = genai.Client(
            api_key="fake-google-key",
            http_options=types.HttpOptions(
                base_url="http://fake-upstream.test",
                httpx_client=http,
                retry_options=types.HttpRetryOptions(attempts=1),
            ),
        )
        text = scenario.body["contents"][0]["parts"][0]["text"]
        try:
            if scenario.body.get("stream"):
                for _ in client.models.generate_content_stream(model=GEMINI_MODEL, contents=text):
                    pass
            else:
                client.models.generate_content(model=GEMINI_MODEL, contents=text)
        except genai_errors.APIError:
            pass


def via_proxy(meter: Meter, scenario: Scenario, upstream: AnyUpstream) -> None:
    """The SDK client proxies, over HTTP to the upstream."""
    if scenario.api == "gemini":
        via_genai(meter, scenario, upstream)
        return
    if scenario.api == "anthropic":
        create: Any = MeteredAnthropic(upstream.anthropic_client(), meter=meter).messages.create
    else:
        client = MeteredOpenAI(upstream.openai_client(), meter=meter)
        api = client.chat.completions if scenario.api == "chat" else client.responses
        create = api.create
    try:
        result = create(**scenario.body)
        if scenario.body.get("stream"):
            for _ in result:
                pass
    except (openai.APIError, anthropic.APIError, httpx.TransportError, httpx2.TransportError):
        pass  # what the caller's loop sees of an upstream failure


# what an app re-raises when its upstream connection is lost mid-response
UPSTREAM_LOST = (UpstreamError, httpx.TransportError, ConnectionError)


async def _post(app: Any, scenario: Scenario) -> None:
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        with contextlib.suppress(*UPSTREAM_LOST):
            url, body = request_of(scenario)
            await http.post(url, json=body, headers=scenario.headers)


def via_asgi(meter: Meter, scenario: Scenario, upstream: AnyUpstream) -> None:
    """MeteredMiddleware in front of the upstream app."""
    asyncio.run(_post(MeteredMiddleware(upstream, meter=meter), scenario))


def via_gateway(meter: Meter, scenario: Scenario, upstream: AnyUpstream) -> None:
    """The gateway app: GatewayProxy behind MeteredMiddleware, as ``metered gateway``."""
    target = Upstream("fake", "http://fake-upstream.test", (), upstream.async_httpx_transport())
    routes = {("POST", path): target for path in ROUTE_PATHS}
    proxy = GatewayProxy(routes, default=target)
    asyncio.run(_post(MeteredMiddleware(proxy, meter=meter), scenario))


def forwarding_wsgi_app(upstream: AnyUpstream) -> Callable[..., Any]:
    """A WSGI app that relays each request to the upstream, streaming its answer."""
    http = httpx.Client(transport=upstream.httpx_transport(), base_url="http://up")

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_") and key != "HTTP_CONTENT_LENGTH"
        }
        headers["content-type"] = environ.get("CONTENT_TYPE", "application/json")
        request = http.build_request(
            environ["REQUEST_METHOD"], environ["PATH_INFO"], content=body, headers=headers
        )
        response = http.send(request, stream=True)
        start_response(
            f"{response.status_code} {response.reason_phrase}",
            [("content-type", response.headers.get("content-type", ""))],
        )
        try:
            yield from response.iter_bytes()
        finally:
            response.close()

    return app


def via_wsgi(meter: Meter, scenario: Scenario, upstream: AnyUpstream) -> None:
    """MeteredWSGIMiddleware in front of a WSGI app relaying to the upstream."""
    app = MeteredWSGIMiddleware(forwarding_wsgi_app(upstream), meter=meter)
    http = httpx.Client(transport=httpx.WSGITransport(app), base_url="http://gw")
    with http, contextlib.suppress(*UPSTREAM_LOST):
        url, body = request_of(scenario)
        http.post(url, json=body, headers=scenario.headers)


DOORS = {"proxy": via_proxy, "asgi": via_asgi, "wsgi": via_wsgi, "gateway": via_gateway}


def records_of(scenario: Scenario) -> dict[str, dict[str, Any]]:
    """The one record each door produced for the scenario, without its door fields."""
    out: dict[str, dict[str, Any]] = {}
    for name, door in DOORS.items():
        records: list[UsageRecord] = []
        door(Meter(CONFIG, sink=records.append), scenario, upstream_of(scenario))
        assert len(records) == 1, f"{name}: {len(records)} records"
        out[name] = {k: v for k, v in asdict(records[0]).items() if k not in DOOR_FIELDS}
    return out


def differences(found: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    reference = found["proxy"]
    return {
        key: {door: record[key] for door, record in found.items()}
        for key in reference
        if any(record[key] != reference[key] for record in found.values())
    }


# -- the suite ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_door_records_the_same_call(name: str) -> None:
    """The proxy, ASGI, WSGI and gateway doors agree on the usage record of one response."""
    found = records_of(SCENARIOS[name])
    assert differences(found) == {}


def test_responses_finish_reasons_use_one_vocabulary() -> None:
    """A completed Responses call records finish reason "stop" at every door."""
    found = records_of(SCENARIOS["responses-stream"])
    assert {door: r["finish_reasons"] for door, r in found.items()} == dict.fromkeys(
        DOORS, ("stop",)
    )


def test_cut_anthropic_stream_counts_thinking_as_output() -> None:
    """A cut Anthropic stream bills its thinking deltas at every door, on the reported input."""
    found = records_of(SCENARIOS["anthropic-cut-thinking-stream"])
    for record in found.values():
        assert record["tokens_source"] == "estimated"
        assert record["tokens_out"] > 8  # the thinking, not only "The answer is"
        assert (record["tokens_in"], record["cache_read_tokens"]) == (16, 4)


def test_cut_responses_stream_counts_reasoning_and_refusal() -> None:
    """Reasoning-summary and refusal deltas of a cut Responses stream are billed output."""
    found = records_of(SCENARIOS["responses-cut-refusal-stream"])
    assert {r["tokens_out"] for r in found.values()} == {found["proxy"]["tokens_out"]}
    assert found["proxy"]["tokens_out"] > 10
    assert found["proxy"]["response_id"] == "resp_cut"


@pytest.mark.parametrize("api", ["chat", "responses", "anthropic"])
def test_a_response_without_usage_is_counted_not_billed_at_the_maximum(api: str) -> None:
    """A whole response with no usage block settles the prompt count plus the counted
    output (text and tool call), marked estimated, at every door; never the hold's
    maximum output."""
    found = records_of(SCENARIOS[f"{api}-json-no-usage"])
    record = found["proxy"]
    assert record["tokens_source"] == "estimated"
    assert record["settlement_status"] == "settled"
    # "Let me check the weather..." + get_weather + its JSON arguments: ~20 tokens
    assert 15 <= record["tokens_out"] <= 40
    assert record["tokens_in"] > 0
    assert record["settlement_amount"] < record["payment_required"]


def test_upstream_error_releases_at_every_door() -> None:
    """An upstream error settles nothing at any door."""
    found = records_of(SCENARIOS["chat-error-mid-stream"])
    assert {r["settlement_status"] for r in found.values()} == {"released"}
