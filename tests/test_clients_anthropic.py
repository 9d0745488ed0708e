"""MeteredAnthropic / MeteredAsyncAnthropic against the fake upstream, real SDK over HTTP."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import pytest

from metered import BudgetExceeded, tokens
from metered.clients import MeteredAnthropic, MeteredAsyncAnthropic
from metered.telemetry import ATTR
from metered.testing import DEFAULT_REPLY, FakeUpstream
from sdk_support import Metering as _Metering
from sdk_support import sdk_http_client

MODEL = "claude-sonnet-4-6"
MESSAGES = [{"role": "user", "content": "Say something."}]
CONFIG = {"accounts": {"broke": {"budgets": ["$0.000001/day"]}}}


def _http_client(upstream: FakeUpstream, *, async_: bool) -> Any:
    return sdk_http_client("anthropic", upstream, async_=async_)


class Metering(_Metering):
    """A meter configured with this file's CONFIG, spans and records captured."""

    def __init__(self) -> None:
        super().__init__(CONFIG)


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream(cached_tokens=4, cache_write_tokens=2)


@pytest.fixture
def metering() -> Metering:
    return Metering()


@pytest.fixture
def raw_client(upstream: FakeUpstream) -> Iterator[anthropic.Anthropic]:
    with upstream.anthropic_client(http_client=_http_client(upstream, async_=False)) as client:
        yield client


@pytest.fixture
async def raw_async_client(upstream: FakeUpstream) -> AsyncIterator[anthropic.AsyncAnthropic]:
    http_client = _http_client(upstream, async_=True)
    async with upstream.anthropic_client(async_=True, http_client=http_client) as client:
        yield client


@pytest.fixture
def client(raw_client: anthropic.Anthropic, metering: Metering) -> Any:
    return MeteredAnthropic(raw_client, meter=metering.meter, account="team-a")


@pytest.fixture
def async_client(raw_async_client: anthropic.AsyncAnthropic, metering: Metering) -> Any:
    return MeteredAsyncAnthropic(raw_async_client, meter=metering.meter, account="team-a")


def _reply_tokens() -> int:
    return tokens.count_text(DEFAULT_REPLY, model=MODEL)


def _create(client: Any, **kwargs: Any) -> Any:
    return client.messages.create(model=MODEL, max_tokens=256, messages=MESSAGES, **kwargs)


def test_create_settles_usage_with_cache_tokens(client: Any, metering: Metering) -> None:
    """Anthropic's cache tokens (reported beside input) are counted inside the input total."""
    message = _create(client)

    usage = message.usage
    record = metering.record
    assert record.tokens_in == (
        usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    )
    assert record.cache_read_tokens == usage.cache_read_input_tokens == 4
    assert record.cache_write_tokens == usage.cache_creation_input_tokens == 2
    assert record.tokens_out == usage.output_tokens
    assert record.finish_reasons == ("end_turn",)
    assert metering.meter.spent("team-a") == record.resolved_price


def test_create_span_attributes(client: Any, metering: Metering) -> None:
    """The span names the Anthropic provider, the server and the cache usage."""
    message = _create(client)

    (span,) = metering.spans
    assert span.name == f"chat {MODEL}"
    attrs = metering.attributes
    assert attrs[ATTR.PROVIDER] == "anthropic"
    assert attrs[ATTR.SERVER_ADDRESS] == "fake-upstream.test"
    assert attrs[ATTR.RESPONSE_ID] == message.id
    assert attrs[ATTR.CACHE_READ_TOKENS] == 4
    assert attrs[ATTR.CACHE_CREATION_TOKENS] == 2
    assert attrs[ATTR.ACCOUNT] == "team-a"


def test_budget_exceeded_raises_before_any_request(
    raw_client: anthropic.Anthropic, upstream: FakeUpstream, metering: Metering
) -> None:
    """An account that cannot pay is refused before anything is sent."""
    client = MeteredAnthropic(raw_client, meter=metering.meter, account="broke")

    with pytest.raises(BudgetExceeded):
        _create(client)

    assert upstream.requests == []


def test_upstream_error_is_reraised_unchanged(
    client: Any, upstream: FakeUpstream, metering: Metering
) -> None:
    """The SDK's exception reaches the caller; nothing is charged."""
    upstream.fail_next(500)

    with pytest.raises(anthropic.InternalServerError):
        _create(client)

    assert metering.record.upstream_status == 500
    assert metering.record.settlement_status == "released"
    assert metering.meter.spent("team-a") == 0


def test_metadata_user_id_is_sent_but_does_not_pick_the_payer(
    client: Any, upstream: FakeUpstream, metering: Metering
) -> None:
    """metadata.user_id goes to Anthropic as is; the proxy's account still pays."""
    _create(client, metadata={"user_id": "end-user-9"})

    assert upstream.last_request.body["metadata"] == {"user_id": "end-user-9"}
    assert metering.record.account == "team-a"


def test_per_call_header_picks_the_payer_and_is_stripped(
    client: Any, upstream: FakeUpstream, metering: Metering
) -> None:
    """x-metered-account works for Anthropic calls too and is not sent upstream."""
    _create(client, extra_headers={"x-metered-account": "user-1", "x-other": "kept"})

    assert metering.record.account == "user-1"
    assert "x-metered-account" not in upstream.last_request.headers
    assert upstream.last_request.headers["x-other"] == "kept"


def test_stream_events_settle_actual_usage(client: Any, metering: Metering) -> None:
    """create(stream=True) yields the SDK's events and settles message_delta's usage."""
    events = list(_create(client, stream=True))

    assert events[0].type == "message_start"
    assert events[-1].type == "message_stop"
    record = metering.record
    assert record.tokens_source == "actual"
    assert record.tokens_out == _reply_tokens()
    assert record.cache_read_tokens == 4
    assert record.time_to_first_chunk_ms is not None


def test_abandoned_stream_settles_input_actual_and_output_counted(
    client: Any, metering: Metering
) -> None:
    """A stream dropped mid-way keeps message_start's input and counts the text delivered."""
    stream = _create(client, stream=True)
    delivered = []
    for event in stream:
        if event.type == "content_block_delta":
            delivered.append(event.delta.text)
            if len(delivered) == 2:
                break

    del stream, event
    gc.collect()

    record = metering.record
    assert record.tokens_source == "estimated"
    assert record.tokens_in == tokens.count_anthropic(MESSAGES, model=MODEL)
    assert record.cache_read_tokens == 4
    assert record.tokens_out == tokens.count_text("".join(delivered), model=MODEL)
    assert len(metering.spans) == 1


def test_stream_manager_text_stream_settles_on_exit(client: Any, metering: Metering) -> None:
    """messages.stream() read through text_stream settles the final usage on exit."""
    with client.messages.stream(model=MODEL, max_tokens=256, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)

    assert text == DEFAULT_REPLY
    record = metering.record
    assert record.tokens_source == "actual"
    assert record.tokens_out == _reply_tokens()
    assert record.time_to_first_chunk_ms is not None


def test_stream_manager_final_message_settles_actual_usage(client: Any, metering: Metering) -> None:
    """get_final_message() reads past the proxy; the SDK's snapshot still gives the usage."""
    with client.messages.stream(model=MODEL, max_tokens=256, messages=MESSAGES) as stream:
        message = stream.get_final_message()

    assert metering.record.tokens_out == message.usage.output_tokens
    assert metering.record.tokens_source == "actual"
    assert metering.record.response_id == message.id


def test_stream_manager_left_early_settles_delivered_text(client: Any, metering: Metering) -> None:
    """Leaving the block after a few events settles an estimate of what was delivered."""
    with client.messages.stream(model=MODEL, max_tokens=256, messages=MESSAGES) as stream:
        for event in stream:
            if event.type == "content_block_delta":
                break

    record = metering.record
    assert record.tokens_source == "estimated"
    assert record.tokens_out == tokens.count_text(event.delta.text, model=MODEL)
    assert len(metering.spans) == 1


def test_stream_manager_refuses_on_enter_and_never_entered_sends_nothing(
    raw_client: anthropic.Anthropic, upstream: FakeUpstream, metering: Metering
) -> None:
    """Metering starts when the block is entered, like the SDK's request."""
    client = MeteredAnthropic(raw_client, meter=metering.meter, account="broke")
    manager = client.messages.stream(model=MODEL, max_tokens=256, messages=MESSAGES)
    assert metering.records == []

    with pytest.raises(BudgetExceeded), manager:
        pass

    assert upstream.requests == []
    assert len(metering.records) == 1


def test_with_raw_response_keeps_headers_and_parse(client: Any, metering: Metering) -> None:
    """with_raw_response still gives headers and parse(), metered."""
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=256, messages=MESSAGES)

    assert raw.headers["request-id"].startswith("req_fake")
    assert raw.parse().usage.output_tokens == metering.record.tokens_out


def test_beta_messages_are_metered(client: Any, metering: Metering) -> None:
    """beta.messages.create goes through the meter as well."""
    client.beta.messages.create(model=MODEL, max_tokens=256, messages=MESSAGES)

    assert metering.record.tokens_source == "actual"


def test_transparency_and_no_patching(
    client: Any, raw_client: anthropic.Anthropic, upstream: FakeUpstream, metering: Metering
) -> None:
    """isinstance holds, un-metered calls pass through, other clients stay unmetered."""
    classes = (type(raw_client.messages), anthropic.Anthropic, anthropic.Stream)
    before = [dict(vars(cls)) for cls in classes]

    assert isinstance(client, anthropic.Anthropic)
    assert isinstance(client.with_options(max_retries=1), MeteredAnthropic)
    assert [m.id for m in client.models.list().data]
    raw_client.messages.create(model=MODEL, max_tokens=256, messages=MESSAGES)

    assert [dict(vars(cls)) for cls in classes] == before
    assert metering.spans == []
    assert metering.records == []
    assert len(upstream.requests) == 2


async def test_async_create_is_metered(async_client: Any, metering: Metering) -> None:
    """AsyncAnthropic create settles the actual usage."""
    message = await async_client.messages.create(model=MODEL, max_tokens=256, messages=MESSAGES)

    assert metering.record.tokens_out == message.usage.output_tokens
    assert isinstance(async_client, anthropic.AsyncAnthropic)


async def test_async_stream_is_metered(async_client: Any, metering: Metering) -> None:
    """async for over create(stream=True) settles message_delta's usage."""
    stream = await async_client.messages.create(
        model=MODEL, max_tokens=256, messages=MESSAGES, stream=True
    )
    kinds = [event.type async for event in stream]

    assert kinds[-1] == "message_stop"
    assert metering.record.tokens_source == "actual"


async def test_async_stream_manager_is_metered(async_client: Any, metering: Metering) -> None:
    """async with messages.stream() settles the final usage on exit."""
    async with async_client.messages.stream(
        model=MODEL, max_tokens=256, messages=MESSAGES
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])

    assert text == DEFAULT_REPLY
    assert metering.record.tokens_out == _reply_tokens()
    assert metering.record.tokens_source == "actual"


async def test_async_stream_manager_refuses_before_request(
    raw_async_client: anthropic.AsyncAnthropic, upstream: FakeUpstream, metering: Metering
) -> None:
    """The async stream manager refuses on enter, before sending."""
    client = MeteredAsyncAnthropic(raw_async_client, meter=metering.meter, account="broke")

    with pytest.raises(BudgetExceeded):
        async with client.messages.stream(model=MODEL, max_tokens=256, messages=MESSAGES):
            pass

    assert upstream.requests == []
