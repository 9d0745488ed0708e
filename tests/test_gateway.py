"""Tests for metered.gateway: the metered OpenAI-compatible reverse proxy and its CLI."""

from __future__ import annotations

import argparse
import itertools
import json
import socket
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from harness import Recorder, serve_asgi
from metered.cli.gateway import add_gateway_parser
from metered.config import KNOWN_UPSTREAMS, load_config
from metered.engine.meter import Meter
from metered.errors import ConfigError, UpstreamError
from metered.gateway import (
    DEFAULT_ROUTES,
    GatewayProxy,
    Upstream,
    create_app,
    resolve_upstream,
)
from metered.http.asgi import ApiKeys, MeteredMiddleware
from metered.records import UsageRecord
from metered.testing import FakeUpstream

MeterFactory = Callable[..., Meter]
CHAT = ("POST", "/v1/chat/completions")
HI = [{"role": "user", "content": "hi"}]
CONFIG: dict[str, Any] = {
    "routes": {"POST /v1/chat/completions": {"models": {"gpt-4o": "$0.05"}, "fallback": "$0.02"}},
}


def fake(upstream: FakeUpstream | None = None) -> Upstream:
    """An Upstream backed by a fake, in process."""
    upstream = upstream or FakeUpstream()
    return Upstream("fake", "http://fake-upstream.test", (), upstream.async_httpx_transport())


def metered_proxy(meter: Meter, upstream: Upstream, **options: Any) -> MeteredMiddleware:
    """The gateway app built by hand around a given upstream."""
    proxy = GatewayProxy({CHAT: upstream}, default=upstream)
    return MeteredMiddleware(proxy, meter=meter, total_headers=("price",), **options)


@pytest.fixture
def meter(make_meter: MeterFactory) -> Meter:
    return make_meter(CONFIG)


@pytest.fixture
async def client(meter: Meter) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(meter, upstream="fake", unidentified="allow", environ={})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as c:
        yield c


# -- serving ----------------------------------------------------------------------------


def test_gateway_serves_the_openai_sdk_over_http(meter: Meter) -> None:
    """With the fake upstream, the unmodified SDK gets completions, streams and the model list."""
    app = create_app(meter, upstream="fake", environ={"METERED_API_KEYS": "sk-x=acme"})
    with (
        serve_asgi(app) as url,
        openai.OpenAI(api_key="sk-x", base_url=f"{url}/v1", max_retries=0) as sdk,
    ):
        raw = sdk.chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
        stream = sdk.chat.completions.create(model="gpt-4o", messages=HI, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        models = [m.id for m in sdk.models.list()]
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-metered-price"] == "0.05"
    assert "x-metered-cost" not in raw.headers  # the gateway keeps its upstream cost private
    assert text.startswith("This is a reply")
    assert "gpt-4o" in models


async def test_unknown_paths_get_a_json_404(client: httpx.AsyncClient) -> None:
    """A path the gateway does not serve is refused in OpenAI's error shape."""
    response = await client.post("/v1/embeddings", json={"model": "x", "input": "hi"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_default_routes_when_the_config_names_none(make_meter: MeterFactory) -> None:
    """With no METHOD /path routes configured, chat completions and responses are served."""
    meter = make_meter({})
    app = create_app(meter, upstream="fake", unidentified="allow", environ={})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://g") as c:
        chat = await c.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": HI})
        responses = await c.post("/v1/responses", json={"model": "gpt-4o", "input": "hi"})
    assert chat.status_code == responses.status_code == 200
    assert DEFAULT_ROUTES == ("POST /v1/chat/completions", "POST /v1/responses")
    assert meter.spent("anonymous") > 0


async def test_require_key_rejects_unknown_callers(meter: Meter) -> None:
    """unidentified="reject" with keys from the environment: 401 without a known key."""
    app = create_app(
        meter, upstream="fake", unidentified="reject", environ={"METERED_API_KEYS": "sk-a=acme"}
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://g") as c:
        body = {"model": "gpt-4o", "messages": HI}
        refused = await c.post("/v1/chat/completions", json=body)
        served = await c.post(
            "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-a"}
        )
    assert refused.status_code == 401
    assert served.status_code == 200
    assert meter.spent("acme") == Decimal("0.05")


async def test_caller_credentials_are_replaced_by_the_upstream_key(meter: Meter) -> None:
    """The caller's key stays at the gateway; the upstream gets the gateway's own key."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        completion = {
            "id": "chatcmpl-1",
            "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1},
        }
        return httpx.Response(200, json=completion)

    upstream = Upstream(
        "test",
        "https://llm.example/v1",
        (("authorization", "Bearer sk-upstream"),),
        httpx.MockTransport(answer),
    )
    app = metered_proxy(meter, upstream, identify=ApiKeys({"sk-caller": "acme"}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://g") as c:
        response = await c.post(
            "/v1/chat/completions?api-version=1",
            json={"model": "gpt-4o", "messages": HI},
            headers={
                "authorization": "Bearer sk-caller",
                "cookie": "session=1",
                "x-goog-api-key": "caller-gemini-key",
            },
        )
    assert response.status_code == 200
    (request,) = seen
    # the caller's query string is dropped (no route here forwards it: test_secrets)
    assert str(request.url) == "https://llm.example/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-upstream"
    assert "cookie" not in request.headers
    assert "x-goog-api-key" not in request.headers
    assert request.headers["accept-encoding"] == "identity"
    assert meter.spent("acme") == Decimal("0.05")


# -- upstream failures ------------------------------------------------------------------


async def test_upstream_timeout_answers_504_and_charges_nothing(
    meter: Meter, records: list[UsageRecord]
) -> None:
    """An upstream that does not answer in time gives a 504 JSON error; the hold is released."""
    upstream = FakeUpstream()
    upstream.timeout_next()
    app = metered_proxy(meter, fake(upstream))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://g") as c:
        response = await c.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": HI})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert records[-1].settlement_status == "released"
    assert meter.spent("anonymous") == 0


async def test_unreachable_upstream_answers_502(meter: Meter, records: list[UsageRecord]) -> None:
    """A refused connection gives a 502 JSON error; nothing is charged."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = metered_proxy(meter, Upstream("down", f"http://127.0.0.1:{port}"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://g") as c:
        response = await c.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": HI})
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"
    assert records[-1].settlement_status == "released"


async def test_unreachable_upstream_url_credentials_stay_out_of_the_answer_and_the_log(
    meter: Meter, caplog: pytest.LogCaptureFixture
) -> None:
    """A URL upstream's user info, path and query never reach the 502 body or the log."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = resolve_upstream(f"http://gw:s3cret-pw@127.0.0.1:{port}/v1?key=s3cret-q", environ={})
    assert target.name == f"http://127.0.0.1:{port}"
    app = metered_proxy(meter, target)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://g") as c:
        response = await c.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": HI})
    assert response.status_code == 502
    assert f"127.0.0.1:{port}" in response.json()["error"]["message"]
    assert "s3cret" not in response.text
    assert caplog.records
    assert "s3cret" not in caplog.text


async def test_upstream_failing_mid_stream_cuts_the_stream_and_releases(
    meter: Meter, records: list[UsageRecord]
) -> None:
    """A connection lost mid-stream is surfaced to the client as an error; nothing charged."""
    upstream = FakeUpstream()
    upstream.disconnect_next(after_chunks=3)
    app = metered_proxy(meter, fake(upstream))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://g") as c:
        with pytest.raises(UpstreamError, match="failed mid-response"):
            await c.post(
                "/v1/chat/completions", json={"model": "gpt-4o", "messages": HI, "stream": True}
            )
    (record,) = records
    assert record.settlement_status == "released"
    assert record.error_type == "UpstreamError"


def test_client_leaving_mid_stream_stops_the_upstream_and_settles_the_delivered_part(
    make_meter: MeterFactory,
) -> None:
    """The proxy notices the disconnect, closes the upstream stream, settles what was sent."""
    recorder = Recorder()
    meter = make_meter(
        {"routes": {"POST /v1/chat/completions": {"models": {"gpt-4o": {"markup": "20%"}}}}},
        sink=recorder,
    )
    slow = FakeUpstream(reply="word " * 400, chunk_latency=0.005)
    with serve_asgi(metered_proxy(meter, fake(slow))) as url, httpx.Client(base_url=url) as http:
        with http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": HI, "stream": True},
        ) as response:
            lines = itertools.islice(response.iter_lines(), 40)
            received = [line for line in lines if line.startswith("data:")]
        (record,) = recorder.wait_for(1)
    assert len(received) == 20  # the role chunk, then 19 one-token chunks
    assert record.tokens_source == "estimated"
    assert 19 <= record.tokens_out < 400
    assert record.settlement_status == "settled"
    assert record.resolved_price is not None
    assert record.resolved_price < record.payment_required


# -- upstream selection -----------------------------------------------------------------


def test_known_upstream_needs_its_api_key() -> None:
    """openai without OPENAI_API_KEY is a startup error naming the variable and the way out."""
    with pytest.raises(ConfigError, match="OPENAI_API_KEY") as error:
        resolve_upstream("openai", environ={})
    assert "--upstream fake" in str(error.value)


def test_known_upstreams_carry_their_credentials() -> None:
    """OpenAI gets a bearer token, Anthropic an x-api-key; URLs take METERED_UPSTREAM_API_KEY."""
    env = {"OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-a", "METERED_UPSTREAM_API_KEY": "k"}
    assert resolve_upstream("openai", environ=env).headers == (("authorization", "Bearer sk-o"),)
    assert resolve_upstream("anthropic", environ=env).headers == (("x-api-key", "sk-a"),)
    local = resolve_upstream("http://localhost:8000/v1", environ=env)
    assert local.headers == (("authorization", "Bearer k"),)
    assert resolve_upstream("http://localhost:8000", environ={}).headers == ()


def test_upstream_url_does_not_double_the_v1_prefix() -> None:
    """A base URL ending in /v1 (as SDKs write it) maps /v1/... paths once."""
    assert (
        Upstream("x", "http://h:1/v1").url("/v1/chat/completions", "")
        == "http://h:1/v1/chat/completions"
    )
    assert Upstream("x", "http://h:1").url("/v1/models", "a=1") == "http://h:1/v1/models?a=1"


async def statuses_by_key(meter: Meter, *keys: str | None) -> list[httpx.Response]:
    """One chat call through ``metered gateway``'s app per caller key (``None``: no key),
    with ``sk-a`` the one known key (account ``acme``)."""
    app = create_app(meter, upstream="fake", environ={"METERED_API_KEYS": "sk-a=acme"})
    body = {"model": "gpt-4o", "messages": HI}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://g") as c:
        return [
            await c.post(
                "/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {key}"} if key else {},
            )
            for key in keys
        ]


async def test_callers_without_a_known_key_are_refused_by_default(meter: Meter) -> None:
    """The gateway fails closed: no key, or a key it does not know, is a 401."""
    anonymous, unknown, known = await statuses_by_key(meter, None, "sk-nope", "sk-a")
    assert (anonymous.status_code, unknown.status_code, known.status_code) == (401, 401, 200)
    assert anonymous.json()["error"]["code"] == "invalid_api_key"
    assert meter.spent("anonymous") == 0


async def test_the_config_can_name_the_account_unidentified_callers_pay_as(
    make_meter: MeterFactory,
) -> None:
    meter = make_meter({**CONFIG, "gateway": {"unidentified_account": "trial"}})
    served, known = await statuses_by_key(meter, None, "sk-a")
    assert (served.status_code, known.status_code) == (200, 200)
    assert (meter.spent("trial"), meter.spent("acme")) == (Decimal("0.05"), Decimal("0.05"))
    assert meter.spent("anonymous") == 0


def test_a_route_without_an_upstream_is_a_config_error_not_the_fake(
    make_meter: MeterFactory,
) -> None:
    """The built-in fake answers only when asked for."""
    with pytest.raises(ConfigError, match="no upstream"):
        create_app(make_meter(CONFIG), environ={})
    with pytest.raises(ConfigError, match="no upstream"):
        create_app(make_meter({}), environ={})  # the default routes too


def test_a_route_naming_an_unknown_upstream_fails_at_load() -> None:
    with pytest.raises(ConfigError, match="upstream"):
        load_config({"routes": {"POST /v1/chat/completions": {"upstream": "opnai"}}})
    load_config({"routes": {"POST /v1/chat/completions": {"upstream": "https://llm.internal/v1"}}})


def test_the_upstream_names_the_config_accepts_are_the_ones_the_gateway_serves() -> None:
    from metered.http.upstreams import KNOWN

    assert {*KNOWN, "fake"} == set(KNOWN_UPSTREAMS)


def test_unknown_upstream_name_is_a_config_error() -> None:
    """Anything but openai, anthropic, gemini, fake or an http(s) URL is refused."""
    with pytest.raises(ConfigError, match="upstream"):
        resolve_upstream("ftp://nope", environ={})


def test_route_upstream_from_the_config_is_used(make_meter: MeterFactory) -> None:
    """A route's upstream: openai needs OPENAI_API_KEY unless --upstream overrides it."""
    meter = make_meter({"routes": {"POST /v1/chat/completions": {"upstream": "openai"}}})
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        create_app(meter, environ={})
    assert isinstance(create_app(meter, upstream="fake", environ={}), MeteredMiddleware)


# -- CLI --------------------------------------------------------------------------------


def test_gateway_subcommand_runs_the_app_with_uvicorn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`metered gateway --config ... --upstream fake` builds the app and serves it."""
    import uvicorn

    config = tmp_path / "metered.yaml"
    config.write_text(json.dumps(CONFIG), encoding="utf-8")
    served: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    parser = argparse.ArgumentParser()
    add_gateway_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["gateway", "--config", str(config), "--upstream", "fake", "--port", "9999"]
    )
    assert args.func(args) == 0
    assert isinstance(served["app"], MeteredMiddleware)
    assert (served["host"], served["port"]) == ("127.0.0.1", 9999)
