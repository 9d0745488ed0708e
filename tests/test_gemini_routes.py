"""Gemini through the HTTP doors: ``metered gateway`` serving the real google-genai SDK over
HTTP, and the routes that name the model in their path (``{model}``).

The cross-door parity of Gemini calls (client transport, ASGI, WSGI, gateway) is in
``tests/test_parity.py``.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx
import httpx2
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from harness import serve_asgi
from metered.engine.meter import Meter
from metered.errors import ConfigError
from metered.gateway import GatewayProxy, Upstream, create_app
from metered.http.asgi import MeteredMiddleware
from metered.http.request import gateway_routes
from metered.records import UsageRecord
from metered.testing import FakeUpstream

MODEL = "gemini-2.5-flash"
GENERATE = "POST /v1beta/models/{model}:generateContent"
STREAM = "POST /v1beta/models/{model}:streamGenerateContent"
CONFIG: dict[str, Any] = {
    "routes": {GENERATE: {}, STREAM: {}},
    "accounts": {"acme": {"budgets": ["$5/day"]}},
}


def sdk(url: str, key: str, http: httpx2.Client) -> genai.Client:
    return genai.Client(
        api_key=key,
        http_options=types.HttpOptions(
            base_url=url,
            api_version="v1beta",
            httpx_client=http,
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )


def test_the_gateway_serves_the_genai_sdk_and_charges_its_caller() -> None:
    """google-genai, pointed at ``metered gateway``, with its own key header
    (``x-goog-api-key``) identifying the caller: JSON and streamed answers, charged."""
    records: list[UsageRecord] = []
    meter = Meter(CONFIG, sink=records.append)
    app = create_app(meter, upstream="fake", environ={"METERED_API_KEYS": "gk-acme=acme"})
    with serve_asgi(app) as url, httpx2.Client() as http:
        client = sdk(url, "gk-acme", http)
        reply = client.models.generate_content(model=MODEL, contents="Say something.")
        chunks = list(client.models.generate_content_stream(model=MODEL, contents="Go on."))
        with pytest.raises(genai_errors.ClientError) as refused:
            sdk(url, "gk-unknown", http).models.generate_content(model=MODEL, contents="hi")
    assert reply.text
    assert chunks
    assert refused.value.code == 401
    assert [(r.account, r.stream, r.settlement_status) for r in records] == [
        ("acme", False, "settled"),
        ("acme", True, "settled"),
    ]
    assert {(r.provider, r.requested_model) for r in records} == {("google", MODEL)}
    assert reply.usage_metadata is not None
    assert records[0].tokens_in == reply.usage_metadata.prompt_token_count
    assert meter.spent("acme") == sum((r.settlement_amount for r in records), Decimal(0))


def test_the_url_names_the_model_and_the_stream_the_body_carries_neither() -> None:
    """What goes upstream is the caller's body plus the budget's output limit; the model
    and the stream flag stay in the URL, and of the query only ``alt`` goes on."""
    upstream = FakeUpstream()
    target = Upstream("fake", "http://fake-upstream.test", (), upstream.async_httpx_transport())
    paths = [name.split(" ", 1)[1] for name in CONFIG["routes"]]
    proxy = GatewayProxy({("POST", path): target for path in paths}, default=target)
    app = MeteredMiddleware(proxy, meter=Meter(CONFIG), identify=lambda scope: "acme")
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}

    async def send() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            base = f"/v1beta/models/{MODEL}"
            return [
                await http.post(f"{base}:generateContent?key=caller-secret", json=body),
                await http.post(f"{base}:streamGenerateContent?alt=sse&key=s", json=body),
                await http.post(f"{base}:generateContent", json={**body, "model": MODEL}),
                await http.post(f"{base}:generateContent", json={**body, "stream": True}),
            ]

    plain, streamed, named, flagged = asyncio.run(send())
    assert (plain.status_code, streamed.status_code) == (200, 200)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert (named.status_code, flagged.status_code) == (400, 400)
    assert named.json()["error"]["param"] == "model"
    assert flagged.json()["error"]["param"] == "stream"
    sent = upstream.requests
    assert len(sent) == 2
    for request in sent:
        assert set(request.body) == {"contents", "generationConfig"}
        assert request.body["generationConfig"]["maxOutputTokens"] > 0  # the budget's limit
    assert (sent[0].path, sent[0].query) == (f"/v1beta/models/{MODEL}:generateContent", "")
    assert (sent[1].path, sent[1].query) == (
        f"/v1beta/models/{MODEL}:streamGenerateContent",
        "alt=sse",
    )


@pytest.mark.parametrize(
    "name",
    [
        "POST /v1/chat/{model}/completions",  # only a Gemini route names the model
        "POST /v1beta/models/gemini:generateContent",  # a Gemini route must name it
        "POST /v1beta/models/{model}/{model}:generateContent",
    ],
)
def test_a_route_path_names_the_model_only_where_gemini_does(name: str) -> None:
    with pytest.raises(ConfigError, match="Gemini route"):
        gateway_routes(Meter(), [name])
