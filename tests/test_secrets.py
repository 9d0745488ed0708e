"""No secret leaves: not the gateway's upstream key, not a caller's credentials, not an
internal address — in no error body, log line, span or record, from any door."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from metered.clients import MeteredOpenAI
from metered.engine.call import Call
from metered.engine.meter import Meter
from metered.errors import ConfigError
from metered.gateway import GatewayProxy, Upstream
from metered.http.asgi import MeteredMiddleware
from metered.ledger import RedisLedger
from metered.records import UsageRecord
from metered.testing import FakeUpstream
from tests.redis_server import free_port

UPSTREAM_KEY = "sk-upstream-SECRET-0123456789"
PATH = "/v1/chat/completions"
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
CONFIG: dict[str, Any] = {"routes": {f"POST {PATH}": {}}}


def echoing(status: int) -> httpx.MockTransport:
    """An upstream that answers an error echoing the request it got, headers included."""

    def answer(request: httpx.Request) -> httpx.Response:
        echoed = dict(request.headers)
        body = {
            "error": {
                "message": f"bad request: {json.dumps(echoed)}",
                "type": "invalid_request_error",
                "code": UPSTREAM_KEY,
            },
            "debug": {"headers": echoed, "url": str(request.url)},
        }
        headers = {"x-echo-authorization": request.headers.get("authorization", "")}
        return httpx.Response(status, json=body, headers=headers)

    return httpx.MockTransport(answer)


def gateway(transport: httpx.AsyncBaseTransport, meter: Meter, **options: Any) -> Any:
    target = Upstream(
        "https://llm.internal:8443", "https://llm.internal:8443",
        (("authorization", f"Bearer {UPSTREAM_KEY}"),), transport,
    )  # fmt: skip
    proxy = GatewayProxy({("POST", PATH): target}, default=target, **options)
    return MeteredMiddleware(proxy, meter=meter)


async def post(app: Any, url: str = PATH, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        return await http.post(url, json=BODY, **kwargs)


@pytest.mark.parametrize("status", [400, 401, 429, 500])
def test_an_echoing_upstream_cannot_hand_the_gateway_key_to_the_caller(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    records: list[UsageRecord] = []
    caplog.set_level(logging.DEBUG)
    app = gateway(echoing(status), Meter(CONFIG, sink=records.append))
    response = asyncio.run(post(app))
    assert response.status_code == status
    error = response.json()["error"]
    assert set(response.json()) == {"error"}  # nothing else of the upstream's body
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"  # what cannot carry headers is kept
    assert UPSTREAM_KEY not in response.text
    assert UPSTREAM_KEY not in json.dumps(dict(response.headers))
    assert "llm.internal" not in response.text
    assert UPSTREAM_KEY not in caplog.text
    assert UPSTREAM_KEY not in json.dumps(records[-1].to_dict())


def test_an_upstream_error_message_without_secrets_is_kept() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        body = {"error": {"message": "model overloaded", "type": "server_error", "code": "x"}}
        return httpx.Response(503, json=body, headers={"retry-after": "7"})

    response = asyncio.run(post(gateway(httpx.MockTransport(answer), Meter(CONFIG))))
    assert response.status_code == 503
    assert response.json()["error"] == {
        "message": "model overloaded",
        "type": "server_error",
        "param": None,
        "code": "x",
    }
    assert response.headers["retry-after"] == "7"


def test_the_callers_query_string_is_dropped_unless_the_route_forwards_it() -> None:
    seen: list[httpx.URL] = []
    upstream = FakeUpstream()

    async def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return await upstream.async_httpx_transport().handle_async_request(request)

    transport = httpx.MockTransport(answer)
    asyncio.run(post(gateway(transport, Meter(CONFIG)), url=f"{PATH}?api_key=sk-caller"))
    asyncio.run(
        post(
            gateway(transport, Meter(CONFIG), forward_query=[("POST", PATH)]),
            url=f"{PATH}?api-version=2024-10-21",
        )
    )
    assert seen[0].query == b""
    assert seen[1].query == b"api-version=2024-10-21"


def test_the_config_names_the_routes_that_forward_their_query(make_meter: Any) -> None:
    from metered.gateway import create_app

    meter = make_meter({"routes": {f"POST {PATH}": {"forward_query": True}}})
    app = create_app(meter, upstream="fake", unidentified="allow", environ={})
    assert isinstance(app, MeteredMiddleware)
    assert app.app._query == frozenset({("POST", PATH)})  # type: ignore[attr-defined]


#: What real upstreams put on a successful answer that tells the operator's account,
#: limits and network (OpenAI, Anthropic, Azure, a CDN, a service mesh).
LEAKY = {
    "openai-organization": "org-operator-secret",
    "openai-project": "proj_operator",
    "anthropic-organization-id": "0d3c-operator",
    "x-ratelimit-remaining-tokens": "149000",
    "set-cookie": "__cf_bm=operator-cookie; path=/",
    "via": "1.1 llm.internal:8443",
    "x-envoy-upstream-service-time": "412",
    "x-ms-region": "East US 2",
    "openai-processing-ms": "311",
}


def leaky(stream: bool) -> httpx.MockTransport:
    """A successful upstream answer carrying :data:`LEAKY` headers besides its own."""
    upstream = FakeUpstream()

    async def answer(request: httpx.Request) -> httpx.Response:
        real = await upstream.async_httpx_transport().handle_async_request(request)
        content = await real.aread()
        headers = {**LEAKY, "x-request-id": "req_123", "cache-control": "no-cache"}
        headers["content-type"] = real.headers["content-type"]
        return httpx.Response(real.status_code, content=content, headers=headers)

    return httpx.MockTransport(answer)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_successful_answer_keeps_the_operators_headers_from_the_caller(stream: bool) -> None:
    body = {**BODY, "stream": True} if stream else BODY
    app = gateway(leaky(stream), Meter(CONFIG))

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            return await http.post(PATH, json=body)

    response = asyncio.run(send())
    assert response.status_code == 200
    assert not set(LEAKY) & set(response.headers)
    assert "operator" not in json.dumps(dict(response.headers))
    assert response.headers["x-request-id"] == "req_123"
    assert response.headers["cache-control"] == "no-cache"
    kind = "text/event-stream" if stream else "application/json"
    assert response.headers["content-type"].startswith(kind)
    assert ("[DONE]" in response.text) is stream


def test_the_config_adds_response_headers_callers_get(make_meter: Any) -> None:
    from metered.gateway import create_app

    meter = make_meter({"gateway": {"response_headers": ["OpenAI-Processing-Ms"]}})
    app = create_app(meter, upstream="fake", unidentified="allow", environ={})
    assert app.app._response_headers == frozenset({"openai-processing-ms"})  # type: ignore[attr-defined]
    app = gateway(leaky(False), Meter(CONFIG), response_headers=["openai-processing-ms", "te"])
    response = asyncio.run(post(app))
    assert response.headers["openai-processing-ms"] == "311"
    assert "openai-organization" not in response.headers
    with pytest.raises(ConfigError, match="response_headers"):
        make_meter({"gateway": {"response_headers": ["x-bad header"]}})


def test_credential_headers_given_to_the_sdk_are_invisible_to_hooks_and_rules() -> None:
    seen: list[dict[str, str]] = []

    def hook(call: Call, response: Any) -> bool:
        seen.append(dict(call.headers))
        return True

    meter = Meter(on_response=hook)
    client = MeteredOpenAI(FakeUpstream().openai_client(), meter=meter)
    client.chat.completions.create(
        **BODY,
        extra_headers={
            "Authorization": "Bearer sk-from-extra-headers",
            "X-Api-Key": "sk-x",
            "api-key": "sk-azure",
            "Cookie": "session=1",
            "X-Request-Tag": "kept",
        },
    )
    assert seen == [{"x-request-tag": "kept"}]


def test_a_ledger_outage_answers_503_without_the_stores_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    meter = Meter(
        {**CONFIG, "accounts": {"acme": {"budgets": ["$1/day"]}}},
        ledger=RedisLedger(f"redis://:hunter2@127.0.0.1:{port}/0"),
        default_account="acme",
    )
    app = MeteredMiddleware(FakeUpstream(), meter=meter)
    response = asyncio.run(post(app))
    assert response.status_code == 503
    assert "budget store unavailable" in response.json()["error"]["message"]
    for text in (response.text, caplog.text):
        assert str(port) not in text
        assert "127.0.0.1" not in text
        assert "hunter2" not in text


def test_spans_carry_no_credentials(span_exporter: InMemorySpanExporter, make_meter: Any) -> None:
    meter = make_meter({})
    client = MeteredOpenAI(FakeUpstream().openai_client(), meter=meter)
    client.chat.completions.create(**BODY, extra_headers={"Authorization": "Bearer sk-span"})
    for span in span_exporter.get_finished_spans():
        assert "sk-span" not in json.dumps(dict(span.attributes or {}), default=str)
