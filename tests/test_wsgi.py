"""Tests for metered.wsgi: the same caller binding and gateway routes for Flask.

Driven through Flask's test client and through the standard library's wsgiref server on
loopback (with the real ``openai`` SDK as the client). The gateway route is a plain Flask
view forwarding to the fake upstream and streaming its answer back.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from flask import Flask, Response, request
from flask.testing import FlaskClient

from harness import Recorder, serve_wsgi
from metered.clients import MeteredOpenAI
from metered.context import current, forwarding
from metered.engine.meter import Meter
from metered.http.wsgi import ApiKeys, MeteredWSGIMiddleware
from metered.records import UsageRecord
from metered.testing import FakeUpstream

MeterFactory = Callable[..., Meter]
CHAT = "POST /v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
CONFIG: dict[str, Any] = {
    "models": {"deny": ["gpt-4.5*"]},
    "routes": {
        CHAT: {
            "models": {"gpt-4o": "$0.05", "gpt-4o-mini": "$0.005"},
            "fallback": "$0.02",
            "max_body_bytes": 4096,
        }
    },
    "tiers": {"free": {"budgets": ["$0.01/day"]}},
    "accounts": {"bob": {"tier": "free"}},
}


def by_header(environ: dict[str, Any]) -> str | None:
    """Identify the caller by an ``x-user`` header (tests only)."""
    return environ.get("HTTP_X_USER")


def make_app(meter: Meter, upstream: FakeUpstream, **options: Any) -> Flask:
    """A Flask app with LLM-calling handlers and a gateway route forwarding upstream."""
    llm = MeteredOpenAI(upstream.openai_client(), meter=meter)
    forward = httpx.Client(transport=upstream.httpx_transport(), base_url="http://upstream")
    app = Flask(__name__)
    options.setdefault("identify", by_header)
    app.wsgi_app = MeteredWSGIMiddleware(app.wsgi_app, meter=meter, **options)  # type: ignore[method-assign]

    def ask(text: str) -> str:
        reply = llm.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
        )
        return reply.choices[0].message.content or ""

    @app.post("/ask")
    def ask_route() -> dict[str, str]:
        return {"answer": ask("hi")}

    @app.post("/stream")
    def stream() -> Response:
        def words() -> Iterator[str]:
            yield "start "
            yield ask("streamed")  # runs while the server iterates the body

        return Response(words(), mimetype="text/plain")

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        return {"account": current().account}

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/v1/chat/completions")
    def chat() -> Response:
        sent = forward.build_request(
            "POST",
            "/v1/chat/completions",
            content=request.get_data(),
            headers={"content-type": "application/json"},
        )
        answer = forward.send(sent, stream=True)

        def body() -> Iterator[bytes]:
            try:
                yield from answer.iter_raw()
            finally:
                answer.close()

        return Response(
            body(), status=answer.status_code, content_type=answer.headers["content-type"]
        )

    return app


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def meter(make_meter: MeterFactory) -> Meter:
    return make_meter(CONFIG)


@pytest.fixture
def client(meter: Meter, upstream: FakeUpstream) -> FlaskClient:
    return make_app(meter, upstream).test_client()


# -- caller binding ---------------------------------------------------------------------


def test_handler_calls_are_charged_to_the_identified_caller(
    client: FlaskClient, meter: Meter, records: list[UsageRecord]
) -> None:
    """A MeteredOpenAI call inside a Flask view is charged to the request's caller."""
    response = client.post("/ask", headers={"x-user": "alice"})
    assert response.status_code == 200
    assert [r.account for r in records] == ["alice"]
    assert meter.spent("alice") == records[0].settlement_amount > 0


def test_non_streamed_response_carries_the_request_totals(
    client: FlaskClient, records: list[UsageRecord]
) -> None:
    """x-metered-cost / x-metered-price equal the call's cost and charged price."""
    response = client.post("/ask", headers={"x-user": "alice"})
    (record,) = records
    assert Decimal(response.headers["x-metered-cost"]) == record.cost
    assert Decimal(response.headers["x-metered-price"]) == record.settlement_amount


def test_streamed_body_calls_are_attributed_and_get_no_totals_headers(
    client: FlaskClient, records: list[UsageRecord]
) -> None:
    """A call made while the server iterates a generator body is charged to the caller."""
    response = client.post("/stream", headers={"x-user": "erin"})
    assert response.get_data(as_text=True).startswith("start This is a reply")
    assert [r.account for r in records] == ["erin"]
    assert "x-metered-price" not in response.headers


def test_requests_do_not_leak_their_caller_into_the_next(client: FlaskClient) -> None:
    """Each request sees only its own caller, and an unidentified one sees none."""
    assert client.get("/whoami", headers={"x-user": "alice"}).get_json() == {"account": "alice"}
    assert client.get("/whoami").get_json() == {"account": None}
    assert current().account is None


def test_unidentified_requests_get_401_when_rejected(meter: Meter, upstream: FakeUpstream) -> None:
    """unidentified="reject" answers 401 JSON; public paths and known keys are served."""
    app = make_app(
        meter,
        upstream,
        identify=ApiKeys({"sk-live-acme": "acme"}),
        unidentified="reject",
        public_paths={"/health"},
    )
    client = app.test_client()
    refused = client.post("/ask", headers={"authorization": "Bearer sk-wrong"})
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "invalid_api_key"
    assert client.get("/health").status_code == 200
    served = client.get("/whoami", headers={"authorization": "Bearer sk-live-acme"})
    assert served.get_json() == {"account": "acme"}


# -- gateway routes ---------------------------------------------------------------------


def test_gateway_json_route_settles_the_reported_usage(
    client: FlaskClient, meter: Meter, records: list[UsageRecord]
) -> None:
    """The forwarded JSON answer is priced from its usage; headers carry the price."""
    response = client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o", "messages": HI},
        headers={"x-user": "alice"},
    )
    body = response.get_json()
    (record,) = records
    assert record.route == CHAT
    assert record.tokens_source == "actual"
    assert record.tokens_out == body["usage"]["completion_tokens"]
    assert response.headers["x-metered-price"] == "0.05"
    assert meter.spent("alice") == Decimal("0.05")


def test_gateway_forwards_the_clients_own_bytes_when_nothing_is_fitted(
    client: FlaskClient, upstream: FakeUpstream
) -> None:
    """A request metering leaves as it is goes upstream byte for byte, not re-encoded."""
    raw = '{ "messages": [{"content": "h\\u00e9llo", "role": "user"}],  "model": "gpt-4o" }'
    response = client.post(
        "/v1/chat/completions", data=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    assert upstream.last_request.content == raw.encode()


def test_gateway_stream_strips_the_usage_chunk_it_asked_for(
    client: FlaskClient, upstream: FakeUpstream, records: list[UsageRecord]
) -> None:
    """The stream passes through without the extra usage chunk; usage is actual."""
    response = client.post(
        "/v1/chat/completions", json={"model": "gpt-4o", "messages": HI, "stream": True}
    )
    events = [
        line[6:]
        for line in response.get_data(as_text=True).splitlines()
        if line.startswith("data:")
    ]
    assert events[-1] == "[DONE]"
    assert all(json.loads(event)["choices"] for event in events[:-1])
    assert upstream.last_request.body["stream_options"] == {"include_usage": True}
    (record,) = records
    assert record.tokens_source == "actual"
    assert record.settlement_status == "settled"


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b'{"model": "gpt-4o", "messages": []}', "text/plain", 415),
        (b'{"model": 7, "messages": []}', "application/json", 400),
        (b'{"model": "gpt-4o", "messages": [], "n": 3}', "application/json", 400),
        (b'{"model": "gpt-4.5-preview", "messages": []}', "application/json", 400),
        (json.dumps({"model": "gpt-4o", "messages": "x" * 5000}).encode(), "application/json", 413),
    ],
    ids=[
        "malformed-json",
        "wrong-content-type",
        "non-string-model",
        "n-above-1",
        "denied",
        "too-big",
    ],
)
def test_bad_requests_get_a_json_4xx_and_are_not_forwarded(
    client: FlaskClient,
    upstream: FakeUpstream,
    meter: Meter,
    content: bytes,
    content_type: str,
    status: int,
) -> None:
    """Refusals are OpenAI-shaped JSON errors; the upstream never sees the request."""
    response = client.post(
        "/v1/chat/completions",
        data=content,
        headers={"content-type": content_type, "x-user": "alice"},
    )
    assert response.status_code == status
    assert response.get_json()["error"]["message"]
    assert upstream.requests == []
    assert meter.spent("alice") == 0


def test_exhausted_budget_gets_402_with_retry_after(
    client: FlaskClient, upstream: FakeUpstream
) -> None:
    """The third $0.005 call of a $0.01/day account is refused with a reset hint."""
    body = {"model": "gpt-4o-mini", "messages": HI}
    statuses = [
        client.post("/v1/chat/completions", json=body, headers={"x-user": "bob"}).status_code
        for _ in range(2)
    ]
    refused = client.post("/v1/chat/completions", json=body, headers={"x-user": "bob"})
    assert statuses == [200, 200]
    assert refused.status_code == 402
    assert refused.get_json()["error"]["metered"]["account"] == "bob"
    assert int(refused.headers["retry-after"]) > 0
    assert len(upstream.requests) == 2


def test_upstream_error_releases_the_hold(
    client: FlaskClient, upstream: FakeUpstream, meter: Meter, records: list[UsageRecord]
) -> None:
    """An upstream 429 passes through; nothing is charged."""
    upstream.fail_next(429)
    response = client.post(
        "/v1/chat/completions", json={"model": "gpt-4o", "messages": HI}, headers={"x-user": "al"}
    )
    assert response.status_code == 429
    assert response.get_json()["error"]["code"] == "rate_limit_exceeded"
    assert records[-1].settlement_status == "released"
    assert meter.spent("al") == 0


def test_app_failing_on_a_gateway_route_answers_502(
    meter: Meter, records: list[UsageRecord]
) -> None:
    """A view that raises before answering gives the client a 502 JSON error, no charge."""
    app = Flask(__name__)

    @app.post("/v1/chat/completions")
    def broken() -> Response:
        raise RuntimeError("boom")

    app.config["PROPAGATE_EXCEPTIONS"] = True
    app.wsgi_app = MeteredWSGIMiddleware(app.wsgi_app, meter=meter)  # type: ignore[method-assign]
    response = app.test_client().post(
        "/v1/chat/completions", json={"model": "gpt-4o", "messages": HI}
    )
    assert response.status_code == 502
    assert records[-1].settlement_status == "released"


def test_body_closed_before_iteration_releases_the_call_and_closes_the_app_body(
    meter: Meter, records: list[UsageRecord]
) -> None:
    """A server closing the body unread (the client left at once) still settles and closes."""
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"data: [DONE]\n\n"

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [("content-type", "text/event-stream")])
        return Body()

    middleware = MeteredWSGIMiddleware(app, meter=meter)
    body = json.dumps({"model": "gpt-4o", "messages": HI, "stream": True}).encode()
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/v1/chat/completions",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    response = middleware(environ, lambda status, headers, exc_info=None: None)
    response.close()  # type: ignore[attr-defined]
    assert closed == [True]
    (record,) = records
    assert record.settlement_status == "released"


# -- over a real socket -----------------------------------------------------------------


def test_openai_sdk_through_a_real_wsgi_server(make_meter: MeterFactory) -> None:
    """The real SDK calls the Flask gateway route over HTTP: JSON, stream and a 402."""
    recorder = Recorder()
    meter = make_meter(CONFIG, sink=recorder)
    app = make_app(meter, FakeUpstream())
    with serve_wsgi(app) as url:
        sdk = openai.OpenAI(api_key="sk-x", base_url=f"{url}/v1", max_retries=0)
        with sdk:
            raw = sdk.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=HI, extra_headers={"x-user": "al"}
            )
            stream = sdk.chat.completions.create(
                model="gpt-4o", messages=HI, stream=True, extra_headers={"x-user": "al"}
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            with pytest.raises(openai.APIStatusError) as refused:
                sdk.chat.completions.create(
                    model="gpt-4o", messages=HI, extra_headers={"x-user": "bob"}
                )
    assert raw.headers["x-metered-price"] == "0.05"
    assert text.startswith("This is a reply")
    assert refused.value.status_code == 402
    records = recorder.wait_for(3)
    assert [r.settlement_status for r in records] == ["settled", "settled", "skipped"]
    assert meter.spent("al") == Decimal("0.10")


def test_client_leaving_mid_stream_settles_what_was_delivered(make_meter: MeterFactory) -> None:
    """When the client hangs up, the server closes the body: delivered tokens are settled."""
    recorder = Recorder()
    meter = make_meter(CONFIG, sink=recorder)
    slow = FakeUpstream(reply="word " * 200, chunk_latency=0.01)
    app = make_app(meter, slow)
    with serve_wsgi(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        with http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": HI, "stream": True},
        ) as response:
            next(response.iter_raw())
        (record,) = recorder.wait_for(1, timeout=10)
    assert record.tokens_source == "estimated"
    assert 0 < record.tokens_out < 200
    assert record.settlement_status == "settled"


def test_gateway_route_forwarding_from_a_lazy_body_is_charged_once(
    make_meter: MeterFactory, records: list[UsageRecord]
) -> None:
    """A route whose body generator forwards with MeteredOpenAI charges the caller once."""
    upstream = FakeUpstream()
    meter = make_meter(CONFIG)
    llm = MeteredOpenAI(upstream.openai_client(), meter=meter)
    app = Flask(__name__)

    @app.post("/v1/chat/completions")
    def forward() -> Response:
        body = request.get_json()

        def relay() -> Iterator[str]:  # runs while the server iterates the body
            completion = llm.chat.completions.create(**body)
            yield completion.model_dump_json()

        return Response(relay(), mimetype="application/json")

    app.wsgi_app = MeteredWSGIMiddleware(app.wsgi_app, meter=meter, identify=by_header)  # type: ignore[method-assign]
    response = app.test_client().post(
        "/v1/chat/completions", json={"model": "gpt-4o", "messages": HI}, headers={"x-user": "al"}
    )
    assert response.status_code == 200
    assert [r.pricing_source for r in records] == ["route.models"]
    assert meter.spent("al") == Decimal("0.05")


def test_a_side_call_before_the_forward_is_metered_and_the_forward_is_not(
    make_meter: MeterFactory, records: list[UsageRecord]
) -> None:
    """The forward is recognised by its request, not by coming first: a moderation call
    made before it is charged to its own account, and the caller pays once, by the route."""
    upstream = FakeUpstream()
    meter = make_meter(CONFIG)
    llm = MeteredOpenAI(upstream.openai_client(), meter=meter)
    app = Flask(__name__)

    @app.post("/v1/chat/completions")
    def forward() -> Any:
        body = request.get_json()
        llm.chat.completions.create(  # a side call first: metered as usual
            model="gpt-4o-mini", messages=HI, extra_headers={"x-metered-account": "moderation"}
        )
        return llm.chat.completions.create(**body).model_dump()

    app.wsgi_app = MeteredWSGIMiddleware(app.wsgi_app, meter=meter, identify=by_header)  # type: ignore[method-assign]
    response = app.test_client().post(
        "/v1/chat/completions", json={"model": "gpt-4o", "messages": HI}, headers={"x-user": "al"}
    )
    assert response.status_code == 200
    assert sorted((r.account or "", r.requested_model) for r in records) == [
        ("al", "gpt-4o"),
        ("moderation", "gpt-4o-mini"),
    ]
    assert meter.spent("al") == Decimal("0.05")
    assert len(upstream.requests) == 2


def test_a_marked_forward_from_a_lazy_body_is_charged_once(
    make_meter: MeterFactory, records: list[UsageRecord]
) -> None:
    """A forward marked with forwarding() inside the body generator passes through even
    though the handler changed the request."""
    upstream = FakeUpstream()
    meter = make_meter(CONFIG)
    llm = MeteredOpenAI(upstream.openai_client(), meter=meter)
    app = Flask(__name__)

    @app.post("/v1/chat/completions")
    def forward() -> Response:
        body = request.get_json()
        body["messages"] = [{"role": "system", "content": "be brief"}, *body["messages"]]

        def relay() -> Iterator[str]:  # runs while the server iterates the body
            with forwarding():
                completion = llm.chat.completions.create(**body)
            yield completion.model_dump_json()

        return Response(relay(), mimetype="application/json")

    app.wsgi_app = MeteredWSGIMiddleware(app.wsgi_app, meter=meter, identify=by_header)  # type: ignore[method-assign]
    response = app.test_client().post(
        "/v1/chat/completions", json={"model": "gpt-4o", "messages": HI}, headers={"x-user": "al"}
    )
    assert response.status_code == 200
    assert [r.pricing_source for r in records] == ["route.models"]
    assert meter.spent("al") == Decimal("0.05")
    assert len(upstream.requests) == 1
