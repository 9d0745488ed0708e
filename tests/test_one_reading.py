"""One reading of a request: what the policy checks is what the upstream gets.

Duplicate keys, bodies that are not UTF-8 JSON and look-alike model ids are refused with
a 400 before any policy, and never reach the upstream, through every HTTP door (the ASGI
and WSGI gateway routes and the ``metered gateway`` app) and the SDK door.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from metered.clients import MeteredOpenAI
from metered.engine.meter import Meter
from metered.errors import PolicyDenied
from metered.gateway import GatewayProxy, Upstream
from metered.http.asgi import MeteredMiddleware
from metered.http.wsgi import MeteredWSGIMiddleware
from metered.testing import FakeUpstream
from tests.test_parity import forwarding_wsgi_app

PATH = "/v1/chat/completions"
CONFIG: dict[str, Any] = {
    "models": {"deny": ["gpt-4.5*"]},
    "routes": {f"POST {PATH}": {}},
}
MESSAGES = '[{"role":"user","content":"hi"}]'
GOOD = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

REFUSED: dict[str, tuple[bytes, str]] = {
    "duplicate model": (
        b'{"model":"gpt-4.5-preview","messages":' + MESSAGES.encode() + b',"model":"gpt-4o-mini"}',
        "duplicate_key",
    ),
    "duplicate max_tokens": (
        b'{"model":"gpt-4o-mini","messages":'
        + MESSAGES.encode()
        + b',"max_tokens":100000,"max_tokens":10}',
        "duplicate_key",
    ),
    "duplicate stream": (
        b'{"model":"gpt-4o-mini","messages":'
        + MESSAGES.encode()
        + b',"stream":false,"stream":true}',
        "duplicate_key",
    ),
    "duplicate nested key": (
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"a","content":"b"}]}',
        "duplicate_key",
    ),
    "utf-8 BOM": (b"\xef\xbb\xbf" + json.dumps(GOOD).encode(), "invalid_request"),
    "utf-16": (json.dumps(GOOD).encode("utf-16"), "invalid_request"),
    "NaN": (
        b'{"model":"gpt-4o-mini","messages":' + MESSAGES.encode() + b',"temperature":NaN}',
        "invalid_request",
    ),
    "fullwidth model": (
        json.dumps({**GOOD, "model": "ｇｐｔ-４ｏ-mini"}).encode(),
        "model_not_allowed",
    ),
    "zero-width model": (
        json.dumps({**GOOD, "model": "gpt-4o\u200b-mini"}).encode(),
        "model_not_allowed",
    ),
}


def via_asgi(meter: Meter, upstream: FakeUpstream, raw: bytes) -> httpx.Response:
    return asyncio.run(_post(MeteredMiddleware(upstream, meter=meter), raw))


def via_gateway(meter: Meter, upstream: FakeUpstream, raw: bytes) -> httpx.Response:
    target = Upstream("fake", "http://fake-upstream.test", (), upstream.async_httpx_transport())
    proxy = GatewayProxy({("POST", PATH): target}, default=target)
    return asyncio.run(_post(MeteredMiddleware(proxy, meter=meter), raw))


def via_wsgi(meter: Meter, upstream: FakeUpstream, raw: bytes) -> httpx.Response:
    app = MeteredWSGIMiddleware(forwarding_wsgi_app(upstream), meter=meter)
    with httpx.Client(transport=httpx.WSGITransport(app), base_url="http://gw") as http:
        return http.post(PATH, content=raw, headers={"content-type": "application/json"})


async def _post(app: Any, raw: bytes) -> httpx.Response:
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        return await http.post(PATH, content=raw, headers={"content-type": "application/json"})


DOORS: dict[str, Callable[[Meter, FakeUpstream, bytes], httpx.Response]] = {
    "asgi": via_asgi,
    "wsgi": via_wsgi,
    "gateway": via_gateway,
}


@pytest.mark.parametrize("door", list(DOORS))
@pytest.mark.parametrize("case", list(REFUSED))
def test_ambiguous_bodies_are_refused_and_never_reach_the_upstream(
    door: str, case: str, make_meter: Callable[..., Meter]
) -> None:
    raw, code = REFUSED[case]
    upstream = FakeUpstream()
    meter = make_meter(CONFIG)
    response = DOORS[door](meter, upstream, raw)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code
    assert upstream.requests == []
    assert meter.spent("anonymous") == 0


@pytest.mark.parametrize("door", list(DOORS))
def test_the_upstream_gets_the_model_id_the_policy_approved(
    door: str, make_meter: Callable[..., Meter]
) -> None:
    upstream = FakeUpstream()
    raw = json.dumps({**GOOD, "model": "  gpt-4o-mini\n"}).encode()
    response = DOORS[door](make_meter(CONFIG), upstream, raw)
    assert response.status_code == 200, response.text
    assert upstream.last_request.body["model"] == "gpt-4o-mini"


def test_a_duplicate_key_names_the_key(make_meter: Callable[..., Meter]) -> None:
    response = via_asgi(make_meter(CONFIG), FakeUpstream(), REFUSED["duplicate model"][0])
    assert response.json()["error"]["param"] == "model"


@pytest.mark.parametrize("model", ["ｇｐｔ-４ｏ-mini", "gpt-4o\u200b-mini", "gpt-4о-mini"])
def test_the_sdk_door_refuses_look_alikes_before_sending(
    model: str, make_meter: Callable[..., Meter]
) -> None:
    upstream = FakeUpstream()
    client = MeteredOpenAI(upstream.openai_client(), meter=make_meter(CONFIG))
    with pytest.raises(PolicyDenied):
        client.chat.completions.create(model=model, messages=GOOD["messages"])
    assert upstream.requests == []


def test_the_openai_sdk_sees_a_typed_400_for_a_look_alike(make_meter: Callable[..., Meter]) -> None:
    from tests.harness import serve_asgi

    upstream = FakeUpstream()
    with serve_asgi(MeteredMiddleware(upstream, meter=make_meter(CONFIG))) as url:
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
        with sdk, pytest.raises(openai.BadRequestError):  # closed: no socket left for the GC
            sdk.chat.completions.create(model="ｇｐｔ-４ｏ-mini", messages=GOOD["messages"])
    assert upstream.requests == []
