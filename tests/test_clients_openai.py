"""MeteredOpenAI / MeteredAsyncOpenAI against the fake upstream, with the real SDK over HTTP."""

from __future__ import annotations

import gc
import importlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import openai
import pydantic
import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from metered import BudgetExceeded, PolicyDenied, context, tokens
from metered.clients import MeteredAsyncOpenAI, MeteredOpenAI, default_meter
from metered.telemetry import ATTR
from metered.testing import DEFAULT_REPLY, FakeUpstream
from metered.usage import Usage
from sdk_support import Metering, sdk_http_client

MESSAGES = [{"role": "user", "content": "Say something."}]
CONFIG = {
    "tiers": {"free": {"max_tokens": 16}},
    "accounts": {"student": {"tier": "free"}, "broke": {"budgets": ["$0.000001/day"]}},
    "models": {"deny": ["gpt-4-32k"]},
}


def _http_client(
    upstream: FakeUpstream, *, async_: bool, wrap: Callable[[Any], Any] = lambda t: t
) -> Any:
    return sdk_http_client("openai", upstream, async_=async_, wrap=wrap)


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def metering() -> Metering:
    return Metering(CONFIG)


@pytest.fixture
def raw_client(upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    with upstream.openai_client(http_client=_http_client(upstream, async_=False)) as client:
        yield client


@pytest.fixture
async def raw_async_client(upstream: FakeUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    http_client = _http_client(upstream, async_=True)
    async with upstream.openai_client(async_=True, http_client=http_client) as client:
        yield client


@pytest.fixture
def client(raw_client: openai.OpenAI, metering: Metering) -> Any:
    return MeteredOpenAI(raw_client, meter=metering.meter, account="team-a")


@pytest.fixture
def async_client(raw_async_client: openai.AsyncOpenAI, metering: Metering) -> Any:
    return MeteredAsyncOpenAI(raw_async_client, meter=metering.meter, account="team-a")


def _reply_tokens(model: str = "gpt-4o") -> int:
    return tokens.count_text(DEFAULT_REPLY, model=model)


# -- chat.completions.create ------------------------------------------------------------


def test_create_returns_sdk_response_and_settles_actual_usage(
    client: Any, metering: Metering
) -> None:
    """A plain create returns the SDK's ChatCompletion and charges the provider's usage."""
    response = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert isinstance(response, openai.types.chat.ChatCompletion)
    assert response.choices[0].message.content == DEFAULT_REPLY
    record = metering.record
    assert record.tokens_source == "actual"
    assert record.tokens_in == response.usage.prompt_tokens
    assert record.tokens_out == response.usage.completion_tokens
    assert record.settlement_status == "settled"
    assert record.response_id == response.id
    assert record.finish_reasons == ("stop",)
    assert record.resolved_price is not None
    assert record.resolved_price > 0
    assert metering.meter.spent("team-a") == record.resolved_price


def test_create_span_has_genai_and_metered_attributes(client: Any, metering: Metering) -> None:
    """One CLIENT span per call, named after the operation and model, with usage and money."""
    response = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    (span,) = metering.spans
    assert span.name == "chat gpt-4o"
    assert span.kind is SpanKind.CLIENT
    attrs = metering.attributes
    assert attrs[ATTR.OPERATION] == "chat"
    assert attrs[ATTR.PROVIDER] == "openai"
    assert attrs[ATTR.REQUEST_MODEL] == "gpt-4o"
    assert attrs[ATTR.RESPONSE_MODEL] == response.model
    assert attrs[ATTR.SERVER_ADDRESS] == "fake-upstream.test"
    assert attrs[ATTR.INPUT_TOKENS] == response.usage.prompt_tokens
    assert attrs[ATTR.OUTPUT_TOKENS] == response.usage.completion_tokens
    assert attrs[ATTR.ACCOUNT] == "team-a"
    assert attrs[ATTR.TOKENS_SOURCE] == "actual"
    assert attrs[ATTR.SETTLEMENT_STATUS] == "settled"
    assert attrs[ATTR.PRICE] == pytest.approx(float(metering.record.resolved_price))


def test_fitted_body_is_what_upstream_receives(
    raw_client: openai.OpenAI, upstream: FakeUpstream, metering: Metering
) -> None:
    """The tier's output cap clamps max_tokens in the request actually sent."""
    client = MeteredOpenAI(raw_client, meter=metering.meter, account="student")

    client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1000)

    assert upstream.last_request.body["max_tokens"] == 16
    assert metering.record.max_tokens_clamped_from == 1000


def test_budget_exceeded_raises_before_any_request(
    raw_client: openai.OpenAI, upstream: FakeUpstream, metering: Metering
) -> None:
    """An account that cannot pay is refused before the upstream is called."""
    client = MeteredOpenAI(raw_client, meter=metering.meter, account="broke")

    with pytest.raises(BudgetExceeded) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert caught.value.account == "broke"
    assert upstream.requests == []
    assert metering.record.policy_decision == "denied"
    assert metering.meter.spent("broke") == 0


def test_policy_denied_raises_before_any_request(
    client: Any, upstream: FakeUpstream, metering: Metering
) -> None:
    """A denied model is refused before the upstream is called, and its span says why."""
    with pytest.raises(PolicyDenied):
        client.chat.completions.create(model="gpt-4-32k", messages=MESSAGES)

    assert upstream.requests == []
    (span,) = metering.spans
    assert span.status.status_code is StatusCode.ERROR
    assert metering.attributes[ATTR.POLICY_DECISION] == "denied"


def test_upstream_error_is_reraised_unchanged_and_nothing_is_charged(
    client: Any, upstream: FakeUpstream, metering: Metering
) -> None:
    """The SDK's own exception reaches the caller; the hold is released."""
    upstream.fail_next(429)

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert caught.value.status_code == 429
    record = metering.record
    assert record.error_type == "RateLimitError"
    assert record.upstream_status == 429
    assert record.settlement_status == "released"
    assert metering.meter.spent("team-a") == 0
    assert metering.attributes[ATTR.ERROR_TYPE] == "RateLimitError"


def test_sdk_options_reach_upstream_but_not_the_engine(
    client: Any, upstream: FakeUpstream, metering: Metering
) -> None:
    """extra_headers/extra_body/timeout are passed to the SDK unchanged."""
    client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        extra_headers={"x-trace": "abc"},
        extra_body={"seed_hint": 7},
        timeout=30,
    )

    request = upstream.last_request
    assert request.headers["x-trace"] == "abc"
    assert request.body["seed_hint"] == 7
    assert metering.record.settlement_status == "settled"


def test_messages_iterable_is_sent_in_full(client: Any, upstream: FakeUpstream) -> None:
    """A one-shot iterable of messages is counted and still sent (read once)."""
    client.chat.completions.create(model="gpt-4o", messages=iter(MESSAGES))

    assert upstream.last_request.body["messages"] == MESSAGES


def test_tools_iterable_is_counted_and_sent_in_full(
    client: Any, upstream: FakeUpstream, metering: Metering
) -> None:
    """Tools given as a generator or dict.values() (the SDK takes any iterable) are
    counted and sent upstream whole, not refused or used up by counting."""
    tools = {
        "weather": {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Get the weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    }
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=tools.values())
    assert upstream.last_request.body["tools"] == list(tools.values())
    client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, tools=(t for t in tools.values())
    )
    assert upstream.last_request.body["tools"] == list(tools.values())
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    as_values, as_generator, without = (r.payment_required for r in metering.records)
    assert as_values == as_generator > without  # the tools were counted both times


# -- who pays -------------------------------------------------------------------------


def test_per_call_header_overrides_proxy_account_and_is_not_sent(
    client: Any, upstream: FakeUpstream, metering: Metering
) -> None:
    """x-metered-account picks the payer for one call and never reaches the provider."""
    client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        extra_headers={"X-Metered-Account": "user-42", "x-metered-feature": "search"},
    )

    assert metering.record.account == "user-42"
    assert metering.record.feature == "search"
    assert not any(name.startswith("x-metered-") for name in upstream.last_request.headers)
    assert metering.meter.spent("user-42") > 0
    assert metering.meter.spent("team-a") == 0


def test_proxy_account_overrides_bound_context(client: Any, metering: Metering) -> None:
    """The proxy's account wins over the middleware's bound caller."""
    with context.bind(account="from-context", feature="chat-ui"):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert metering.record.account == "team-a"
    assert metering.record.feature == "chat-ui"


def test_bound_context_is_used_when_the_proxy_sets_nothing(
    raw_client: openai.OpenAI, metering: Metering
) -> None:
    """Without proxy kwargs the bound context decides who pays."""
    client = MeteredOpenAI(raw_client, meter=metering.meter)

    with context.bind(account="user-7", tier="free"):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert metering.record.account == "user-7"
    assert metering.record.tier == "free"


def test_default_meter_is_shared_by_proxies_without_meter(raw_client: openai.OpenAI) -> None:
    """Two proxies built without meter= charge the same default meter."""
    before = default_meter().spent("anonymous")
    prompt = tokens.count_chat(MESSAGES, model="gpt-4o")
    one_call = default_meter().quote("gpt-4o", Usage(prompt, _reply_tokens())).price

    MeteredOpenAI(raw_client).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    MeteredOpenAI(raw_client).chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert one_call > 0
    assert default_meter().spent("anonymous") - before == 2 * one_call


# -- transparency -----------------------------------------------------------------------


def test_proxy_is_an_instance_of_the_sdk_client(client: Any, raw_client: openai.OpenAI) -> None:
    """isinstance checks in user code keep working."""
    assert isinstance(client, openai.OpenAI)
    assert client.api_key == raw_client.api_key
    assert client.__wrapped__ is raw_client


def test_with_options_returns_a_metered_client(client: Any, metering: Metering) -> None:
    """with_options()/copy() keep metering, with the same meter and account."""
    copied = client.with_options(timeout=12)

    assert isinstance(copied, MeteredOpenAI)
    assert copied.timeout == 12
    copied.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert metering.record.account == "team-a"


def test_unmetered_methods_pass_through_without_spans(client: Any, metering: Metering) -> None:
    """models.list() is the SDK's own call: no span, no record, no charge."""
    models = client.models.list()

    assert "gpt-4o" in [model.id for model in models.data]
    assert metering.spans == []
    assert metering.records == []


def test_wrapping_patches_nothing_and_other_clients_stay_unmetered(
    upstream: FakeUpstream, metering: Metering
) -> None:
    """The SDK classes are untouched; a second, unwrapped client emits nothing."""
    completions = importlib.import_module("openai.resources.chat.completions").Completions
    classes = (completions, openai.OpenAI, openai.Stream)
    before = [dict(vars(cls)) for cls in classes]
    with (
        upstream.openai_client(http_client=_http_client(upstream, async_=False)) as wrapped,
        upstream.openai_client(http_client=_http_client(upstream, async_=False)) as other,
    ):
        MeteredOpenAI(wrapped, meter=metering.meter).chat.completions.create(
            model="gpt-4o", messages=MESSAGES
        )
        other.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        for _ in other.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True):
            pass

        assert [dict(vars(cls)) for cls in classes] == before
        assert type(other.chat.completions) is completions
    assert len(metering.spans) == 1
    assert len(metering.records) == 1
    assert "stream_options" not in upstream.last_request.body


def test_wrapping_the_wrong_kind_of_client_is_refused(
    raw_client: openai.OpenAI, raw_async_client: openai.AsyncOpenAI
) -> None:
    """A sync proxy around an async client (or twice-metering) fails at construction."""
    with pytest.raises(TypeError, match="async SDK client"):
        MeteredAsyncOpenAI(raw_client)
    with pytest.raises(TypeError, match="sync SDK client"):
        MeteredOpenAI(raw_async_client)
    with pytest.raises(TypeError, match="metered already"):
        MeteredOpenAI(MeteredOpenAI(raw_client))


class SpanRecordingTransport:
    """Delegates to the fake upstream's transport, noting the current span of each request."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.spans: list[Any] = []

    def handle_request(self, request: Any) -> Any:
        self.spans.append(trace.get_current_span().get_span_context())
        return self._transport.handle_request(request)

    def close(self) -> None:
        self._transport.close()


def test_upstream_request_runs_under_the_call_span(
    upstream: FakeUpstream, metering: Metering
) -> None:
    """HTTP instrumentation sees the metered span as its parent."""
    recordings: list[SpanRecordingTransport] = []

    def wrap(transport: Any) -> SpanRecordingTransport:
        recordings.append(SpanRecordingTransport(transport))
        return recordings[-1]

    http_client = _http_client(upstream, async_=False, wrap=wrap)
    with upstream.openai_client(http_client=http_client) as raw:
        MeteredOpenAI(raw, meter=metering.meter).chat.completions.create(
            model="gpt-4o", messages=MESSAGES
        )

    (span,) = metering.spans
    assert [s.span_id for s in recordings[0].spans] == [span.context.span_id]
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_azure_client_is_reported_as_azure(upstream: FakeUpstream, metering: Metering) -> None:
    """An AzureOpenAI client's spans name the Azure provider."""
    http_client = _http_client(upstream, async_=False)
    with openai.AzureOpenAI(
        api_key="x",
        api_version="2024-10-21",
        azure_endpoint="http://fake-upstream.test",
        azure_deployment="prod-4o",
        http_client=http_client,
        max_retries=0,
    ) as raw:
        client = MeteredOpenAI(raw, meter=metering.meter)
        with pytest.raises(openai.NotFoundError):  # the fake serves no Azure routes
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert metering.attributes[ATTR.PROVIDER] == "azure.ai.openai"
    assert metering.attributes[ATTR.SERVER_ADDRESS] == "fake-upstream.test"


# -- streams ----------------------------------------------------------------------------


def test_stream_user_loop_works_with_injected_usage(
    client: Any, upstream: FakeUpstream, metering: Metering
) -> None:
    """chunk.choices[0] never fails: the usage-only chunk metered asked for is hidden."""
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)

    assert text == DEFAULT_REPLY
    assert upstream.last_request.body["stream_options"] == {"include_usage": True}
    record = metering.record
    assert record.tokens_source == "actual"
    assert record.tokens_out == _reply_tokens()
    assert record.stream is True
    assert record.finish_reasons == ("stop",)
    assert metering.attributes[ATTR.OUTPUT_TOKENS] == _reply_tokens()


def test_stream_usage_chunk_is_kept_when_the_caller_asked_for_it(
    client: Any, metering: Metering
) -> None:
    """A caller that sets include_usage itself sees the usage chunk, as without metered."""
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )

    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == _reply_tokens()
    assert metering.record.tokens_source == "actual"


def test_stream_without_usage_counts_the_delivered_text(client: Any, metering: Metering) -> None:
    """include_usage=False is respected; the output is estimated from the text delivered."""
    for _ in client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": False}
    ):
        pass

    record = metering.record
    assert record.tokens_source == "estimated"
    assert record.tokens_out == _reply_tokens()
    assert record.settlement_status == "settled"


def test_stream_records_time_to_first_chunk(client: Any, metering: Metering) -> None:
    """The span carries the time to the first streamed chunk."""
    for _ in client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True):
        pass

    ttfc = metering.record.time_to_first_chunk_ms
    assert ttfc is not None
    assert 0 < ttfc <= metering.record.upstream_latency_ms
    assert metering.attributes[ATTR.TTFC] == ttfc / 1000  # the convention's seconds


def test_abandoned_stream_settles_once_when_collected(client: Any, metering: Metering) -> None:
    """break after 2 chunks, drop the stream: one estimated settlement, one span."""
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    delivered = []
    for chunk in stream:
        delivered.append(chunk.choices[0].delta.content or "")
        if len(delivered) == 2:
            break
    assert metering.records == []

    del stream, chunk
    gc.collect()
    gc.collect()

    record = metering.record
    assert len(metering.spans) == 1
    assert record.tokens_source == "estimated"
    assert record.tokens_out == tokens.count_text("".join(delivered), model="gpt-4o")
    assert metering.meter.spent("team-a") == record.settlement_amount


def test_closed_stream_settles_once_and_stays_settled(client: Any, metering: Metering) -> None:
    """close() mid-stream settles; reading on and closing again change nothing."""
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    next(stream)
    next(stream)

    stream.close()
    stream.close()
    assert list(stream) == []

    assert len(metering.records) == 1
    assert len(metering.spans) == 1


def test_stream_context_manager_exit_settles(client: Any, metering: Metering) -> None:
    """Leaving a with block around the stream settles the call."""
    with client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True) as stream:
        assert next(stream).choices[0].delta.role == "assistant"

    assert len(metering.records) == 1
    assert metering.record.tokens_source == "estimated"


def test_stream_error_midway_is_reraised_and_settles_once(
    client: Any, upstream: FakeUpstream, metering: Metering
) -> None:
    """An in-stream error reaches the caller; the call is settled once, as failed."""
    upstream.fail_next(500, after_chunks=3)
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)

    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    stream.close()

    record = metering.record
    assert record.error_type == "APIError"
    assert record.tokens_source == "estimated"  # what was delivered before the error
    assert metering.meter.spent("team-a") == record.settlement_amount
    assert len(metering.spans) == 1


# -- raw and streaming responses ------------------------------------------------------


def test_with_raw_response_keeps_headers_and_parse(client: Any, metering: Metering) -> None:
    """with_raw_response still gives headers and parse(); the call is metered."""
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)

    assert raw.headers["x-request-id"].startswith("req_fake")
    completion = raw.parse()
    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert metering.record.tokens_out == completion.usage.completion_tokens
    assert metering.record.tokens_source == "actual"


def test_client_level_with_raw_response_is_metered(client: Any, metering: Metering) -> None:
    """client.with_raw_response.chat.completions.create goes through the meter too."""
    raw = client.with_raw_response.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert raw.parse().choices[0].message.content == DEFAULT_REPLY
    assert metering.record.tokens_source == "actual"


def test_with_raw_response_stream_parses_to_a_metered_stream(
    client: Any, metering: Metering
) -> None:
    """A raw streamed response's parse() yields the chunks, usage chunk hidden."""
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse())

    assert text == DEFAULT_REPLY
    assert metering.record.tokens_source == "actual"


def test_with_streaming_response_settles_on_parse(client: Any, metering: Metering) -> None:
    """with_streaming_response: the body is read on parse(), and settled from it."""
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=MESSAGES
    ) as response:
        assert response.headers["content-type"].startswith("application/json")
        assert metering.records == []
        completion = response.parse()

    assert metering.record.tokens_out == completion.usage.completion_tokens
    assert len(metering.spans) == 1


def test_with_streaming_response_stream_settles_actual_usage(
    client: Any, metering: Metering
) -> None:
    """A streamed with_streaming_response parsed to chunks settles the provider's usage."""
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=MESSAGES, stream=True
    ) as response:
        chunks = [chunk.choices[0].delta.content for chunk in response.parse()]

    assert "".join(c or "" for c in chunks) == DEFAULT_REPLY
    assert metering.record.tokens_source == "actual"


def test_with_streaming_response_read_raw_settles_the_estimate(
    client: Any, metering: Metering
) -> None:
    """SSE lines read raw cannot be seen: the pre-call estimate is settled."""
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=MESSAGES, stream=True
    ) as response:
        lines = [line for line in response.iter_lines() if line]

    assert lines[-1] == "data: [DONE]"
    record = metering.record
    assert record.tokens_source == "estimated"
    assert record.settlement_amount == record.payment_required


def test_with_streaming_response_never_entered_sends_nothing(
    client: Any, upstream: FakeUpstream, metering: Metering
) -> None:
    """Like the SDK, nothing is sent (or metered) until the block is entered."""
    client.chat.completions.with_streaming_response.create(model="gpt-4o", messages=MESSAGES)

    assert upstream.requests == []
    assert metering.records == []


# -- parse and stream helpers -----------------------------------------------------------


class Answer(pydantic.BaseModel):
    answer: int


def test_parse_structured_output_is_metered(metering: Metering) -> None:
    """chat.completions.parse returns the parsed model and settles its usage."""
    upstream = FakeUpstream(reply='{"answer": 42}')
    with upstream.openai_client(http_client=_http_client(upstream, async_=False)) as raw:
        client = MeteredOpenAI(raw, meter=metering.meter)

        completion = client.chat.completions.parse(
            model="gpt-4o", messages=MESSAGES, response_format=Answer
        )

    assert completion.choices[0].message.parsed == Answer(answer=42)
    assert metering.record.tokens_out == completion.usage.completion_tokens
    assert "json_schema" in str(upstream.last_request.body["response_format"])


def test_chat_stream_helper_is_metered(client: Any, metering: Metering) -> None:
    """chat.completions.stream() events flow; the call settles the provider's usage."""
    if not hasattr(openai.resources.chat.Completions, "stream"):
        pytest.skip("this SDK line has no chat.completions.stream()")
    with client.chat.completions.stream(model="gpt-4o", messages=MESSAGES) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]

    assert "".join(deltas) == DEFAULT_REPLY
    assert metering.record.tokens_source == "actual"


def test_chat_stream_helper_left_early_settles_on_exit(client: Any, metering: Metering) -> None:
    """Leaving the stream() block after one event settles what was delivered."""
    if not hasattr(openai.resources.chat.Completions, "stream"):
        pytest.skip("this SDK line has no chat.completions.stream()")
    with client.chat.completions.stream(model="gpt-4o", messages=MESSAGES) as stream:
        next(iter(stream))
        assert metering.records == []

    assert len(metering.records) == 1
    assert metering.record.tokens_source == "estimated"


# -- Responses API ----------------------------------------------------------------------


def test_responses_create_is_metered(client: Any, metering: Metering) -> None:
    """responses.create settles the Responses usage, with its own span."""
    response = client.responses.create(model="gpt-4o", input="Say something.")

    assert response.output_text == DEFAULT_REPLY
    record = metering.record
    assert record.tokens_out == response.usage.output_tokens
    assert record.tokens_in == response.usage.input_tokens
    assert record.response_id == response.id
    assert metering.attributes[ATTR.OUTPUT_TOKENS] == response.usage.output_tokens


def test_responses_stream_events_are_metered(client: Any, metering: Metering) -> None:
    """A streamed Responses call settles from response.completed."""
    events = list(client.responses.create(model="gpt-4o", input="Say something.", stream=True))

    assert events[-1].type == "response.completed"
    record = metering.record
    assert record.tokens_source == "actual"
    assert record.tokens_out == events[-1].response.usage.output_tokens
    assert record.response_id == events[-1].response.id


def test_responses_stream_helper_is_metered(client: Any, metering: Metering) -> None:
    """responses.stream() settles with the final response's usage."""
    with client.responses.stream(model="gpt-4o", input="Say something.") as stream:
        final = stream.get_final_response()

    assert final.output_text == DEFAULT_REPLY
    assert metering.record.tokens_out == final.usage.output_tokens


def test_responses_budget_exceeded_before_request(
    raw_client: openai.OpenAI, upstream: FakeUpstream, metering: Metering
) -> None:
    """The Responses API is refused before sending, like chat."""
    client = MeteredOpenAI(raw_client, meter=metering.meter, account="broke")

    with pytest.raises(BudgetExceeded):
        client.responses.create(model="gpt-4o", input="Say something.")

    assert upstream.requests == []


# -- async ----------------------------------------------------------------------------


async def test_async_create_is_metered(async_client: Any, metering: Metering) -> None:
    """AsyncOpenAI create settles the actual usage."""
    response = await async_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert metering.record.tokens_out == response.usage.completion_tokens
    assert metering.meter.spent("team-a") == metering.record.resolved_price
    assert isinstance(async_client, openai.AsyncOpenAI)


async def test_async_stream_user_loop_and_usage(
    async_client: Any, upstream: FakeUpstream, metering: Metering
) -> None:
    """async for over a metered stream works unchanged and settles the actual usage."""
    stream = await async_client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True
    )
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])

    assert text == DEFAULT_REPLY
    assert upstream.last_request.body["stream_options"] == {"include_usage": True}
    assert metering.record.tokens_source == "actual"


async def test_async_stream_closed_early_settles_once(
    async_client: Any, metering: Metering
) -> None:
    """Closing an async stream mid-way settles the delivered text, once."""
    stream = await async_client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True
    )
    async with stream:
        await stream.__anext__()
        await stream.__anext__()

    await stream.close()
    assert len(metering.records) == 1
    assert metering.record.tokens_source == "estimated"


async def test_async_abandoned_stream_settles_when_collected(
    async_client: Any, metering: Metering
) -> None:
    """An async stream dropped mid-way is settled synchronously by the finaliser."""
    stream = await async_client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True
    )
    await stream.__anext__()

    del stream
    gc.collect()

    assert len(metering.records) == 1
    assert len(metering.spans) == 1


async def test_async_upstream_error_is_reraised(
    async_client: Any, upstream: FakeUpstream, metering: Metering
) -> None:
    """An async upstream failure is the SDK's exception, and nothing is charged."""
    upstream.fail_next(503)

    with pytest.raises(openai.InternalServerError):
        await async_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert metering.record.settlement_status == "released"
    assert metering.meter.spent("team-a") == 0


async def test_async_budget_exceeded_before_request(
    raw_async_client: openai.AsyncOpenAI, upstream: FakeUpstream, metering: Metering
) -> None:
    """The async path refuses before sending, too."""
    client = MeteredAsyncOpenAI(raw_async_client, meter=metering.meter, account="broke")

    with pytest.raises(BudgetExceeded):
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert upstream.requests == []


async def test_async_with_raw_response_is_metered(async_client: Any, metering: Metering) -> None:
    """Async with_raw_response keeps headers and parse()."""
    raw = await async_client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES
    )

    assert raw.headers["x-request-id"].startswith("req_fake")
    assert raw.parse().usage.completion_tokens == metering.record.tokens_out


async def test_async_with_streaming_response_is_metered(
    async_client: Any, metering: Metering
) -> None:
    """Async with_streaming_response settles when its stream is parsed and read."""
    async with async_client.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=MESSAGES, stream=True
    ) as response:
        stream = await response.parse()
        chunks = [chunk async for chunk in stream]

    assert all(chunk.choices for chunk in chunks)
    assert metering.record.tokens_source == "actual"


async def test_async_stream_helper_is_metered(async_client: Any, metering: Metering) -> None:
    """Async chat.completions.stream() settles the actual usage."""
    if not hasattr(openai.resources.chat.AsyncCompletions, "stream"):
        pytest.skip("this SDK line has no chat.completions.stream()")
    async with async_client.chat.completions.stream(model="gpt-4o", messages=MESSAGES) as stream:
        async for _ in stream:
            pass

    assert metering.record.tokens_source == "actual"


async def test_async_responses_stream_is_metered(async_client: Any, metering: Metering) -> None:
    """Async streamed Responses settle from response.completed."""
    stream = await async_client.responses.create(
        model="gpt-4o", input="Say something.", stream=True
    )
    async for _ in stream:
        pass

    assert metering.record.tokens_source == "actual"
    assert metering.record.tokens_out == _reply_tokens()
