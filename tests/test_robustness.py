"""Property tests: bad input never escapes as a traceback.

Whatever a caller, a provider or an HTTP client sends, the library answers with a typed
:class:`~metered.errors.MeteredError` (a JSON error body over HTTP), never a
``TypeError``/``KeyError``/... from deep inside, never a charge for a refused call and
never a hold left behind.
"""

from __future__ import annotations

import asyncio
import copy
import io
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any, NamedTuple

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from metered.clients import MeteredOpenAI
from metered.engine.meter import Api, Call, Meter
from metered.errors import InvalidRequest, MeteredError, UpstreamError
from metered.gateway import GatewayProxy, Upstream
from metered.http.asgi import MeteredMiddleware
from metered.http.wsgi import MeteredWSGIMiddleware
from metered.money import to_nanos
from metered.providers.anthropic import AnthropicStreamUsage, from_anthropic
from metered.providers.openai_chat import from_openai_chat, from_openai_chunk
from metered.providers.openai_responses import from_openai_responses, from_openai_responses_event
from metered.records import UsageRecord
from metered.testing import FakeUpstream
from metered.usage import Usage

# -- strategies -------------------------------------------------------------------------

# Strings the code branches on, so replaced fields also hit the paths behind them.
WORDS = st.sampled_from(
    [
        "text",
        "input_text",
        "refusal",
        "image_url",
        "input_image",
        "image",
        "base64",
        "tool_use",
        "tool_result",
        "document",
        "content",
        "thinking",
        "function",
        "function_call",
        "function_call_output",
        "user",
        "assistant",
        "system",
        "tool",
        "low",
        "high",
        "gpt-4o",
        "o3-mini",
        "claude-sonnet-4-5",
        "vip",
        "gold",
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB",
        "data:image/png;base64,!!",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | WORDS
)
KEYS = st.sampled_from(
    [
        "model",
        "messages",
        "role",
        "content",
        "type",
        "text",
        "name",
        "usage",
        "input_tokens",
        "output_tokens",
        "prompt_tokens",
        "completion_tokens",
        "max_tokens",
        "stream",
    ]
) | st.text(max_size=6)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=12,
)
JSON_OBJECTS = st.dictionaries(KEYS, JSON, max_size=6)

CHAT_BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://x.test/a.png", "detail": "low"},
                },
            ],
            "name": "al",
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ],
    "max_tokens": 50,
    "n": 1,
    "stream": False,
    "stream_options": {"include_usage": True},
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look it up.",
                "parameters": {
                    "type": "object",
                    "properties": {"q": {"type": "string", "enum": ["a", "b"]}},
                },
            },
        }
    ],
    "metadata": {"plan": "gold"},
    "user": "u-1",
}
RESPONSES_BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "instructions": "Be brief.",
    "input": [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "hi"},
                {"type": "input_image", "image_url": "https://x.test/a.png"},
            ],
        },
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
    ],
    "max_output_tokens": 50,
    "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
    "metadata": {"plan": "gold"},
    "user": "u-1",
}
ANTHROPIC_BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 50,
    "system": [{"type": "text", "text": "Be brief."}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {"type": "image", "source": {"type": "base64", "data": "iVBORw0KGgo="}},
                {"type": "document", "source": {"type": "text", "data": "a doc"}},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}],
        },
    ],
    "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
    "metadata": {"user_id": "u-1"},
    "stream": False,
}
BODIES: dict[Api, dict[str, Any]] = {
    "chat": CHAT_BODY,
    "responses": RESPONSES_BODY,
    "anthropic": ANTHROPIC_BODY,
}
Path = tuple[str | int, ...]
# Fields of the valid bodies a door may receive anything in (and a few they lack).
PATHS: dict[Api, list[Path]] = {
    "chat": [
        ("model",),
        ("messages",),
        ("messages", 0),
        ("messages", 1, "role"),
        ("messages", 1, "content"),
        ("messages", 1, "content", 0),
        ("messages", 1, "content", 0, "type"),
        ("messages", 1, "content", 0, "text"),
        ("messages", 1, "content", 1, "image_url"),
        ("messages", 1, "content", 1, "image_url", "url"),
        ("messages", 1, "content", 1, "image_url", "detail"),
        ("messages", 1, "name"),
        ("messages", 2, "tool_calls"),
        ("messages", 2, "tool_calls", 0),
        ("messages", 2, "tool_calls", 0, "function"),
        ("messages", 2, "tool_calls", 0, "function", "name"),
        ("messages", 2, "tool_calls", 0, "function", "arguments"),
        ("messages", 3, "tool_call_id"),
        ("max_tokens",),
        ("max_completion_tokens",),
        ("max_output_tokens",),
        ("n",),
        ("stream",),
        ("stream_options",),
        ("tools",),
        ("tools", 0),
        ("tools", 0, "function"),
        ("tools", 0, "function", "parameters"),
        ("tools", 0, "function", "parameters", "properties"),
        ("tools", 0, "function", "parameters", "properties", "q"),
        ("tools", 0, "function", "parameters", "properties", "q", "type"),
        ("tools", 0, "function", "parameters", "properties", "q", "enum"),
        ("tools", 0, "function", "description"),
        ("functions",),
        ("system",),
        ("input",),
        ("metadata",),
        ("user",),
    ],
    "responses": [
        ("model",),
        ("instructions",),
        ("input",),
        ("input", 0),
        ("input", 0, "content"),
        ("input", 0, "content", 0),
        ("input", 0, "content", 0, "text"),
        ("input", 0, "content", 1, "image_url"),
        ("input", 1, "type"),
        ("input", 1, "arguments"),
        ("input", 2, "output"),
        ("max_output_tokens",),
        ("max_tokens",),
        ("tools",),
        ("tools", 0),
        ("messages",),
        ("prompt",),
        ("stream",),
        ("metadata",),
        ("user",),
    ],
    "anthropic": [
        ("model",),
        ("max_tokens",),
        ("system",),
        ("system", 0),
        ("system", 0, "text"),
        ("messages",),
        ("messages", 0),
        ("messages", 0, "role"),
        ("messages", 0, "content"),
        ("messages", 0, "content", 0),
        ("messages", 0, "content", 0, "text"),
        ("messages", 0, "content", 1, "source"),
        ("messages", 0, "content", 1, "source", "data"),
        ("messages", 0, "content", 2, "source"),
        ("messages", 0, "content", 2, "source", "type"),
        ("messages", 1, "content", 0, "input"),
        ("messages", 2, "content", 0, "content"),
        ("tools",),
        ("tools", 0),
        ("tools", 0, "input_schema"),
        ("metadata",),
        ("stream",),
    ],
}
_DELETE = object()


def replaced(body: dict[str, Any], path: Path, value: object) -> dict[str, Any]:
    """A deep copy of ``body`` with the field at ``path`` set to ``value`` (or deleted)."""
    out = copy.deepcopy(body)
    target: Any = out
    for step in path[:-1]:
        target = target[step]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


@st.composite
def almost_valid(draw: st.DrawFn, api: Api) -> dict[str, Any]:
    """A valid body of ``api`` with one field replaced by any JSON value (or removed)."""
    path = draw(st.sampled_from(PATHS[api]))
    value = draw(JSON | st.just(_DELETE))
    if value is _DELETE and not isinstance(path[-1], str):
        value = None
    body = BODIES[api]
    return replaced(body, path, value) if value is not _DELETE or path[0] in body else body


APIS = st.sampled_from(list(BODIES))


@st.composite
def api_and_body(draw: st.DrawFn) -> tuple[Api, Any]:
    """An API and a body for it: arbitrary JSON, or a nearly valid body."""
    api = draw(APIS)
    body = draw(almost_valid(api) | JSON_OBJECTS | JSON)
    return api, body


# -- meters -----------------------------------------------------------------------------

# SDK providers (recording spans, real metric instruments) so attribute building runs too.
TRACES = TracerProvider()
METRICS = MeterProvider()
BUDGETED = {"default_budgets": ["$100/day"]}
TIERED: dict[str, Any] = {
    "default_budgets": ["$100/day"],
    "tiers": {
        "free": {"max_tokens": 100, "cap_policy": "reject", "budgets": ["$1/day"]},
        "pro": {"max_tokens": 1000},
    },
    "routes": {
        "priced": {
            "models": {"gpt-4o-mini": "$0.01", "claude-sonnet-4-5": "$0.05"},
            "match": [
                {"where": {"body.user": "vip", "metadata.plan": "gold"}, "price": "$0.001"},
                {"where": {"headers.x-cohort": ["canary", "beta"]}, "price": "$0.002"},
                {"where": {"body.metadata.plan": "gold"}, "price": "$0.003"},
            ],
            "fallback": "$0.02",
        }
    },
    "default_route": "priced",
}
PREPAID: dict[str, Any] = {
    "default_budgets": ["$100/day"],
    "routes": {"prepaid": {"settlement": "before-response", "refund_on_failure": True}},
    "default_route": "prepaid",
}
_accounts = itertools.count()


def discard(record: UsageRecord) -> None:
    """A record sink: with one, the engine builds every call's record."""


def make(config: dict[str, Any]) -> Meter:
    """A meter that records telemetry and builds every usage record."""
    return Meter(config, tracer_provider=TRACES, meter_provider=METRICS, sink=discard)


METERS = {
    "plain": make({}),
    "budgeted": make(BUDGETED),
    "tiered": make(TIERED),
    "prepaid": make(PREPAID),
}


@pytest.fixture(scope="module", autouse=True)
def _shutdown_providers() -> Iterator[None]:
    yield
    TRACES.shutdown()
    METRICS.shutdown()


def fresh_account() -> str:
    """A new account per example: one example's spend never refuses the next."""
    return f"acct-{next(_accounts)}"


def held(meter: Meter, account: str) -> int:
    return meter.ledger.balance(account).held_nanos


def spent(meter: Meter, account: str) -> int:
    return meter.ledger.balance(account).spent_nanos


def begin_or_refuse(meter: Meter, body: Any, api: Api, **options: Any) -> Call | None:
    """``meter.begin``; ``None`` when refused with a typed error, which must hold and
    charge nothing. A returned call holds (or prepays) exactly its required payment."""
    account = options.setdefault("account", fresh_account())
    try:
        call = meter.begin(body, api=api, **options)
    except MeteredError:
        assert held(meter, account) == spent(meter, account) == 0
        return None
    reserved = to_nanos(call.payment_required)
    if call.mode == "after-response":
        assert (held(meter, account), spent(meter, account)) == (reserved, 0)
    else:
        assert (held(meter, account), spent(meter, account)) == (0, reserved)
    return call


# -- 1. Meter.begin ---------------------------------------------------------------------


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    api_and_body(),
    st.sampled_from(list(METERS)),
    st.sampled_from([None, "free", "pro", "gold"]),
    st.booleans(),
    st.booleans(),
)
def test_begin_returns_a_call_or_raises_a_typed_error(
    api_body: tuple[Api, Any], which: str, tier: str | None, urgent: bool, fail: bool
) -> None:
    """Any body gives a Call or a MeteredError; a refused call holds and charges nothing, a
    finished one captures or releases its hold."""
    api, body = api_body
    meter = METERS[which]
    call = begin_or_refuse(
        meter, body, api, tier=tier, urgent=urgent, headers={"x-cohort": "canary"}
    )
    if call is None:
        return
    if fail:
        call.finish(error=UpstreamError("upstream failed", status=500))
    else:
        call.finish()
    assert held(meter, call.account) == 0
    assert call.record is not None
    if fail:
        assert call.record.settlement_status in ("released", "refunded")
        assert spent(meter, call.account) == 0
    else:
        assert call.record.settlement_status == "settled"
        assert spent(meter, call.account) == to_nanos(call.payment_required)


@settings(max_examples=100, deadline=None)
@given(api_and_body())
def test_abegin_returns_a_call_or_raises_a_typed_error(api_body: tuple[Api, Any]) -> None:
    """The async door refuses the same bodies the same way, and finishes cleanly."""
    api, body = api_body
    meter = METERS["budgeted"]
    account = fresh_account()

    async def run() -> Call | None:
        try:
            call = await meter.abegin(body, api=api, account=account)
        except MeteredError:
            return None
        await call.afinish()
        return call

    call = asyncio.run(run())
    assert held(meter, account) == 0
    if call is not None:
        assert call.record is not None
        assert call.record.settlement_status == "settled"


def chat_with(**fields: Any) -> dict[str, Any]:
    """A minimal chat body with ``fields`` set."""
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **fields}


def nested(depth: int) -> Any:
    """A JSON value ``depth`` lists deep."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("api", "body", "param"),
    [
        ("chat", chat_with(tools=True), "tools"),
        ("responses", {"model": "gpt-4o-mini", "tools": 5, "input": "hi"}, "tools"),
        ("responses", {"model": "gpt-4o-mini", "messages": True}, "messages"),
        (
            "responses",
            {"model": "gpt-4o-mini", "instructions": "Be brief.", "input": None},
            "input",
        ),
        ("responses", {"model": "gpt-4o-mini", "input": 5}, "input"),
        ("chat", chat_with(stream=1), "stream"),
        ("chat", chat_with(stream="yes"), "stream"),
        (
            "chat",
            chat_with(
                messages=[{"role": "user", "content": [{"type": "text", "text": nested(5000)}]}]
            ),
            None,
        ),
        (
            "chat",
            chat_with(
                messages=[
                    {"role": "assistant", "tool_calls": [{"function": {"arguments": nested(5000)}}]}
                ]
            ),
            None,
        ),
    ],
    ids=[
        "tools-not-a-list",
        "responses-tools-not-a-list",
        "responses-messages-not-a-list",
        "responses-input-null-with-instructions",
        "responses-input-a-number",
        "stream-an-int",
        "stream-a-string",
        "content-nested-5000-deep",
        "tool-arguments-nested-5000-deep",
    ],
)
def test_malformed_fields_found_by_the_properties_are_invalid_requests(
    api: Api, body: dict[str, Any], param: str | None
) -> None:
    """Bodies that raised TypeError or RecursionError are refused as InvalidRequest naming the
    field, with nothing held."""
    meter = METERS["budgeted"]
    account = fresh_account()
    with pytest.raises(InvalidRequest) as info:
        meter.begin(body, api=api, account=account)
    assert info.value.param == param
    assert held(meter, account) == 0


@pytest.mark.parametrize(
    ("api", "body"),
    [
        ("chat", chat_with(messages=[{"role": "user", "content": [{"type": [], "text": "hi"}]}])),
        (
            "responses",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [{"type": {}}]}]},
        ),
        (
            "chat",
            chat_with(
                tools=[
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"properties": [1]}},
                    }
                ]
            ),
        ),
    ],
    ids=["content-part-type-a-list", "block-type-an-object", "tool-properties-a-list"],
)
def test_odd_parts_and_schemas_are_counted_not_crashed(api: Api, body: dict[str, Any]) -> None:
    """Content parts and tool schemas of an unknown shape are estimated like other unknown
    parts (they raised TypeError/AttributeError); the call proceeds and settles."""
    meter = METERS["budgeted"]
    call = meter.begin(body, api=api, account=fresh_account())
    call.finish()
    assert call.record is not None
    assert call.record.settlement_status == "settled"
    assert held(meter, call.account) == 0


def test_sdk_door_refuses_messages_that_are_not_a_list() -> None:
    """MeteredOpenAI given messages=5 raises InvalidRequest (it raised TypeError from list())."""
    upstream = FakeUpstream()
    with upstream.openai_client() as sdk:
        client = MeteredOpenAI(sdk, meter=METERS["budgeted"], account=fresh_account())
        with pytest.raises(InvalidRequest) as info:
            client.chat.completions.create(model="gpt-4o-mini", messages=5)
    assert info.value.param == "messages"
    assert upstream.requests == []


# -- 2. Call.finish ----------------------------------------------------------------------

USAGES = st.none() | st.builds(
    lambda i, o: Usage(input_tokens=i, output_tokens=o),
    st.integers(0, 10**7),
    st.integers(0, 10**7),
)


@settings(max_examples=300, deadline=None)
@given(
    usage=USAGES,
    finish_reasons=st.lists(JSON, max_size=3) | JSON,
    response_model=JSON,
    response_id=JSON,
    status=JSON,
    partial=st.booleans(),
    error=st.none() | st.just(UpstreamError("boom", status=502)) | st.just(ValueError("x")),
)
@example(
    usage=None,
    finish_reasons=None,
    response_model=None,
    response_id=None,
    status=None,
    partial=False,
    error=None,
).via("finish_reasons=None raised TypeError after the call was claimed: its hold leaked")
def test_finish_with_odd_arguments_settles_exactly_once(
    usage: Usage | None,
    finish_reasons: Any,
    response_model: Any,
    response_id: Any,
    status: Any,
    partial: bool,
    error: BaseException | None,
) -> None:
    """Whatever a door passes to finish, it never raises, settles the hold once, and the
    record keeps its field types."""
    meter = METERS["budgeted"]
    call = meter.begin(dict(CHAT_BODY), account=fresh_account())
    call.finish(
        usage,
        error=error,
        status=status,
        response_model=response_model,
        response_id=response_id,
        finish_reasons=finish_reasons,
        partial=partial,
    )
    paid = spent(meter, call.account)
    call.finish(Usage(input_tokens=10**6, output_tokens=10**6))  # a second finish: no-op
    assert spent(meter, call.account) == paid
    assert held(meter, call.account) == 0
    assert call.record is not None
    assert call.record.settlement_status in ("settled", "released")
    record = call.record
    assert all(type(reason) is str for reason in record.finish_reasons)
    assert record.response_model is None or type(record.response_model) is str
    assert record.response_id is None or type(record.response_id) is str
    assert record.upstream_status is None or type(record.upstream_status) is int


# -- 3. usage extractors ----------------------------------------------------------------

EXTRACTORS = [
    from_openai_chat,
    from_openai_chunk,
    from_openai_responses,
    from_openai_responses_event,
    from_anthropic,
]
USAGE_KEYS = st.sampled_from(
    [
        "usage",
        "type",
        "response",
        "message",
        "prompt_tokens",
        "completion_tokens",
        "input_tokens",
        "output_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
        "input_tokens_details",
        "output_tokens_details",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "cache_creation",
        "ephemeral_1h_input_tokens",
        "thinking_tokens",
    ]
)
EVENT_TYPES = st.sampled_from(
    ["response.completed", "response.incomplete", "message_start", "message_delta"]
)
PROVIDER_JSON = st.recursive(
    SCALARS | EVENT_TYPES,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(USAGE_KEYS, children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(PROVIDER_JSON)
def test_usage_extractors_never_raise(data: Any) -> None:
    """A provider's odd usage gives a Usage or None, never an exception."""
    for extract in EXTRACTORS:
        result = extract(data)
        assert result is None or isinstance(result, Usage)


@settings(max_examples=300, deadline=None)
@given(st.lists(PROVIDER_JSON, max_size=5))
def test_anthropic_stream_usage_never_raises(events: list[Any]) -> None:
    """Odd Anthropic stream events give a Usage or None, never an exception."""
    acc = AnthropicStreamUsage()
    for event in events:
        acc.feed(event)
    result = acc.usage()
    assert result is None or isinstance(result, Usage)


# -- 4. over HTTP -----------------------------------------------------------------------

CHAT_PATH = "/v1/chat/completions"
HTTP_PATHS: dict[Api, str] = {
    "chat": CHAT_PATH,
    "responses": "/v1/responses",
    "anthropic": "/v1/messages",
}
HTTP_CONFIG: dict[str, Any] = {
    "default_budgets": ["$100/day"],
    "routes": {f"POST {path}": TIERED["routes"]["priced"] for path in HTTP_PATHS.values()},
}
JSON_TYPE = {"content-type": "application/json"}


def deep_body(depth: int, where: str) -> bytes:
    """A chat body with a value ``depth`` arrays deep in ``where`` (or just the arrays)."""
    deep = b"[" * depth + b"1" + b"]" * depth
    if where == "metadata":
        return b'{"model": "gpt-4o", "messages": [], "metadata": ' + deep + b"}"
    if where == "content":
        return b'{"model": "gpt-4o", "messages": [{"role": "user", "content": ' + deep + b"}]}"
    return deep


HTTP_REQUESTS = APIS.flatmap(
    lambda api: st.tuples(
        st.just(HTTP_PATHS[api]),
        st.binary(max_size=64)
        | st.builds(lambda body: json.dumps(body).encode(), almost_valid(api) | JSON_OBJECTS | JSON)
        | st.just(b"[" * 100_000),
    )
)


def assert_answer(status: int, body: bytes, meter: Meter, paid: int) -> None:
    """Never a 500; a refusal is an OpenAI-shaped JSON error and charges nothing; no hold
    remains either way."""
    assert status != 500
    if status >= 400:
        error = json.loads(body)["error"]
        assert isinstance(error, dict)
        assert error["message"]
        assert spent(meter, "anonymous") == paid
    assert held(meter, "anonymous") == 0


class Gateway(NamedTuple):
    """The ASGI gateway of the HTTP properties, with its event loop and client."""

    runner: asyncio.Runner
    client: httpx.AsyncClient
    meter: Meter
    app: MeteredMiddleware


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    """One event loop, ASGI gateway and client for every example."""
    meter = make(HTTP_CONFIG)
    upstream = FakeUpstream()
    target = Upstream("fake", "http://fake", (), upstream.async_httpx_transport())
    proxy = GatewayProxy({("POST", path): target for path in HTTP_PATHS.values()}, default=target)
    app = MeteredMiddleware(proxy, meter=meter)
    with asyncio.Runner() as runner:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw")
        yield Gateway(runner, client, meter, app)
        runner.run(client.aclose())
        runner.run(proxy.aclose())


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(HTTP_REQUESTS)
def test_asgi_gateway_answers_any_body_without_a_500(
    gateway: Gateway, path_and_body: tuple[str, bytes]
) -> None:
    """Any bytes or JSON on the ASGI chat route get a non-500 answer, refusals a JSON error
    body, and leave no hold."""
    runner, client, meter, _ = gateway
    paid = spent(meter, "anonymous")
    path, content = path_and_body
    response = runner.run(client.post(path, content=content, headers=JSON_TYPE))
    assert_answer(response.status_code, response.content, meter, paid)


def forward_to(upstream: FakeUpstream) -> tuple[Callable[..., Iterable[bytes]], httpx.Client]:
    """A WSGI app forwarding each request to ``upstream``, and its client to close."""
    http = httpx.Client(transport=upstream.httpx_transport(), base_url="http://fake")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        content = environ["wsgi.input"].read(length)
        answer = http.post(environ["PATH_INFO"], content=content, headers=JSON_TYPE)
        start_response(
            f"{answer.status_code} X", [("content-type", answer.headers["content-type"])]
        )
        return [answer.content]

    return app, http


class WsgiGateway(NamedTuple):
    """The WSGI gateway of the HTTP properties."""

    app: MeteredWSGIMiddleware
    meter: Meter


@pytest.fixture(scope="module")
def wsgi_gateway() -> Iterator[WsgiGateway]:
    """A WSGI gateway forwarding each route to the fake upstream."""
    meter = make(HTTP_CONFIG)
    app, http = forward_to(FakeUpstream())
    with http:
        yield WsgiGateway(MeteredWSGIMiddleware(app, meter=meter), meter)


def wsgi_post(
    app: MeteredWSGIMiddleware,
    path: str,
    content: bytes,
    *,
    content_type: str = "application/json",
    length: str | None = None,
    terminated: bool = False,
) -> tuple[int, bytes]:
    """Drive ``app`` with one POST as a WSGI server would; the status and body it answers.
    ``length`` is the raw CONTENT_LENGTH (default: the body's length)."""
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(content)) if length is None else length,
        "wsgi.input": io.BytesIO(content),
        "wsgi.input_terminated": terminated,
    }
    started: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None, /) -> Any:
        started.append(status)

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return int(started[0].split()[0]), body


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(HTTP_REQUESTS)
def test_wsgi_gateway_answers_any_body_without_a_500(
    wsgi_gateway: WsgiGateway, path_and_body: tuple[str, bytes]
) -> None:
    """The WSGI door answers the same bodies the same way."""
    app, meter = wsgi_gateway
    paid = spent(meter, "anonymous")
    status, body = wsgi_post(app, *path_and_body)
    assert_answer(status, body, meter, paid)


@pytest.mark.parametrize("where", ["metadata", "content", ""])
@pytest.mark.parametrize("door", ["asgi", "wsgi"])
def test_bodies_nested_near_the_recursion_limit_get_a_json_400(
    gateway: Gateway, wsgi_gateway: WsgiGateway, door: str, where: str
) -> None:
    """Bodies nested just under or past the interpreter's recursion limit are refused with a
    JSON 400: RecursionError escaped both doors, from decoding them or from counting or
    re-encoding one that barely decoded. (Hypothesis raises the recursion limit while it
    runs, so these depths are swept here.)"""
    for depth in range(700, 1001, 3):
        content = deep_body(depth, where)
        if door == "asgi":
            runner, client, meter, _ = gateway
            response = runner.run(client.post(CHAT_PATH, content=content, headers=JSON_TYPE))
            status, body = response.status_code, response.content
        else:
            meter = wsgi_gateway.meter
            status, body = wsgi_post(wsgi_gateway.app, CHAT_PATH, content)
        assert status == 400, depth
        assert json.loads(body)["error"]["message"]
        assert held(meter, "anonymous") == 0


# Raw requests, as a server hands them over: any content-type and content-length header
# values (latin-1, as HTTP allows), the body in any number of chunks.
LATIN1 = st.text(st.characters(max_codepoint=255), max_size=6)
CONTENT_TYPES = (
    st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "application/x+json", "text/plain"]
    )
    | LATIN1
)
CONTENT_LENGTHS = st.none() | st.just("²") | LATIN1 | st.integers(0, 10**9).map(str)


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[str, str, str | None, list[bytes]]:
    """A path, content-type and content-length header values, and the body in chunks."""
    path, content = draw(HTTP_REQUESTS)
    cuts = sorted(draw(st.lists(st.integers(0, len(content)), max_size=3)))
    chunks = [content[a:b] for a, b in itertools.pairwise([0, *cuts, len(content)])]
    return path, draw(CONTENT_TYPES), draw(CONTENT_LENGTHS), chunks


async def asgi_post(
    app: MeteredMiddleware, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[int, bytes]:
    """Drive ``app`` with one POST as an ASGI server would; the status and body sent."""
    pending = [
        {"type": "http.request", "body": chunk, "more_body": i + 1 < len(chunks)}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[MutableMapping[str, Any]] = []
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await done.wait()  # the client stays until the response is complete
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    await app({**scope, "query_string": b""}, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw_requests())
@example(("/v1/chat/completions", "application/json", "²", [b"{}"])).via(
    "a content-length of '²' passed isdigit() and raised ValueError from int()"
)
def test_asgi_gateway_answers_any_raw_request_without_a_500(
    gateway: Gateway, request_parts: tuple[str, str, str | None, list[bytes]]
) -> None:
    """Odd content-type and content-length headers and chunked bodies never escape the ASGI
    door as an exception or a 500."""
    runner, _, meter, app = gateway
    path, content_type, length, chunks = request_parts
    headers = [(b"content-type", content_type.encode("latin-1"))]
    if length is not None:
        headers.append((b"content-length", length.encode("latin-1")))
    paid = spent(meter, "anonymous")
    status, body = runner.run(asgi_post(app, path, headers, chunks))
    assert_answer(status, body, meter, paid)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw_requests(), st.booleans())
@example(("/v1/chat/completions", "application/json", "²", [b"{}"]), False).via(
    "a CONTENT_LENGTH of '²' passed isdigit() and raised ValueError from int()"
)
def test_wsgi_gateway_answers_any_raw_request_without_a_500(
    wsgi_gateway: WsgiGateway,
    request_parts: tuple[str, str, str | None, list[bytes]],
    terminated: bool,
) -> None:
    """Odd CONTENT_TYPE and CONTENT_LENGTH values never escape the WSGI door as an
    exception or a 500."""
    app, meter = wsgi_gateway
    path, content_type, length, chunks = request_parts
    paid = spent(meter, "anonymous")
    status, body = wsgi_post(
        app,
        path,
        b"".join(chunks),
        content_type=content_type,
        length=length or "",
        terminated=terminated,
    )
    assert_answer(status, body, meter, paid)
