"""The examples run as documented: no API key, the fake upstream, their own config."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from metered.config import load_yaml
from metered.engine.meter import Meter
from metered.records import UsageRecord

MeterFactory = Callable[..., Meter]
EXAMPLES = Path(__file__).parent.parent / "examples"
ALICE = {"authorization": "Bearer sk-demo-alice"}
BOB = {"authorization": "Bearer sk-demo-bob"}
HI = [{"role": "user", "content": "hi"}]


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import examples/<name>/app.py as its own module, without an API key."""
    for var in ("OPENAI_API_KEY", "METERED_API_KEYS", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / name / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example_meter(make_meter: MeterFactory, name: str) -> Meter:
    return make_meter(load_yaml(EXAMPLES / name / "metered.yaml"))


@pytest.fixture
async def fastapi_client(
    make_meter: MeterFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    app = load("fastapi_app", monkeypatch).create_app(example_meter(make_meter, "fastapi_app"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://ex") as c:
        yield c


@pytest.fixture
def flask_client(make_meter: MeterFactory, monkeypatch: pytest.MonkeyPatch) -> Any:
    app = load("flask_app", monkeypatch).create_app(example_meter(make_meter, "flask_app"))
    return app.test_client()


async def test_fastapi_example_handler_call_is_charged_to_the_key_owner(
    fastapi_client: httpx.AsyncClient, records: list[UsageRecord]
) -> None:
    """The support handler answers, and its call is priced on the support route for alice."""
    response = await fastapi_client.post(
        "/support/answer", json={"question": "Where is my refund?"}, headers=ALICE
    )
    assert response.json() == {"answer": "Refunds arrive within 5 business days."}
    (record,) = records
    assert (record.account, record.route) == ("alice", "support")
    assert Decimal(response.headers["x-metered-price"]) == record.settlement_amount


async def test_fastapi_example_streams_and_meters_the_gateway_route(
    fastapi_client: httpx.AsyncClient, records: list[UsageRecord]
) -> None:
    """Streamed handler answers and gateway calls are metered; bob's budget ends in a 402."""
    streamed = await fastapi_client.post(
        "/support/stream", json={"question": "Refund?"}, headers=ALICE
    )
    body = {"model": "gpt-4o", "messages": HI}
    paid = await fastapi_client.post("/v1/chat/completions", json=body, headers=BOB)
    refused = await fastapi_client.post("/v1/chat/completions", json=body, headers=BOB)
    usage = await fastapi_client.get("/me/usage", headers=BOB)
    assert streamed.text == "Refunds arrive within 5 business days."
    assert paid.headers["x-metered-price"] == "0.05"
    assert refused.status_code == 402
    assert usage.json() == {"account": "bob", "spent_usd": "0.05", "remaining_usd": "0"}
    assert [r.account for r in records] == ["alice", "bob", "bob"]


async def test_fastapi_example_requires_a_key_except_for_health(
    fastapi_client: httpx.AsyncClient,
) -> None:
    """Callers without a known key get 401; the health check stays open."""
    assert (await fastapi_client.post("/support/answer", json={"question": "?"})).status_code == 401
    assert (await fastapi_client.get("/health")).status_code == 200


def test_flask_example_handler_and_gateway_route(
    flask_client: Any, records: list[UsageRecord]
) -> None:
    """The Flask twin: handler calls attributed, gateway stream metered, 402 when broke."""

    def text(path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, str]:
        # the test client iterates a body only when asked: read it at once
        response = flask_client.post(path, json=body, headers=headers)
        return response.status_code, response.get_data(as_text=True)

    reply = "Refunds arrive within 5 business days."
    status, answer = text("/support/answer", {"question": "?"}, ALICE)
    assert (status, json.loads(answer)) == (200, {"answer": reply})
    assert text("/support/stream", {"question": "?"}, ALICE) == (200, reply)
    status, stream = text(
        "/v1/chat/completions", {"model": "gpt-4o", "messages": HI, "stream": True}, BOB
    )
    assert (status, stream.rstrip().endswith("data: [DONE]")) == (200, True)
    assert text("/v1/chat/completions", {"model": "gpt-4o", "messages": HI}, BOB)[0] == 402
    assert text("/support/answer", {"question": "?"}, {})[0] == 401
    assert [(r.account, r.route, r.settlement_status) for r in records] == [
        ("alice", "support", "settled"),
        ("alice", "support", "settled"),
        ("bob", "POST /v1/chat/completions", "settled"),
        ("bob", "POST /v1/chat/completions", "skipped"),
    ]
