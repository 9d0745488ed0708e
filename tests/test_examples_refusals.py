"""The examples answer metered's refusals as JSON on every route, streaming included.

Over real HTTP (uvicorn for FastAPI, a threaded wsgiref server for Flask), with a plain
HTTP client and with the official ``openai`` SDK: a caller over budget gets a 402 with
OpenAI's error shape and ``Retry-After``, a denied model a 400 — from the app's own
handlers as from the gateway route, never a 500 and never a 200 with an empty body.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from metered.engine.meter import Meter
from tests.harness import serve_asgi, serve_wsgi
from tests.test_examples import ALICE, BOB, HI, example_meter, load

MeterFactory = Callable[..., Meter]
HANDLER_ROUTES = ("/support/answer", "/support/stream")


@contextlib.contextmanager
def served(name: str, make_meter: MeterFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    app = load(name, monkeypatch).create_app(example_meter(make_meter, name))
    if name == "fastapi_app":
        with serve_asgi(app) as url:
            yield url
    else:
        with serve_wsgi(app) as url:
            yield url


def assert_openai_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["code"] == code


def sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


@pytest.mark.parametrize("name", ["fastapi_app", "flask_app"])
def test_a_caller_over_budget_gets_402_json_on_every_route(
    name: str, make_meter: MeterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with served(name, make_meter, monkeypatch) as url, httpx.Client(base_url=url) as http:
        # bob's free tier has $0.05/day: one gateway call at the flat $0.05 spends it
        paid = http.post(
            "/v1/chat/completions", json={"model": "gpt-4o", "messages": HI}, headers=BOB
        )
        assert paid.status_code == 200
        for path in HANDLER_ROUTES:
            refused = http.post(path, json={"question": "Refund?"}, headers=BOB)
            assert_openai_error(refused, 402, "budget_exceeded")
            assert int(refused.headers["retry-after"]) > 0
        with sdk(url, "sk-demo-bob") as client:  # closed: no socket left for the GC
            for stream in (False, True):
                with pytest.raises(openai.APIStatusError) as caught:
                    client.chat.completions.create(model="gpt-4o", messages=HI, stream=stream)  # type: ignore[call-overload]
                assert caught.value.status_code == 402
                assert caught.value.code == "budget_exceeded"
        # alice, with budget left, is still served on the same routes
        answer = http.post("/support/answer", json={"question": "Refund?"}, headers=ALICE)
        streamed = http.post("/support/stream", json={"question": "Refund?"}, headers=ALICE)
        assert (answer.status_code, streamed.status_code) == (200, 200)
        assert streamed.text


@pytest.mark.parametrize("name", ["fastapi_app", "flask_app"])
def test_a_denied_model_gets_400_json_on_every_route(
    name: str, make_meter: MeterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXAMPLE_MODEL", "gpt-4.5-preview")  # the examples' lists deny it
    with served(name, make_meter, monkeypatch) as url, httpx.Client(base_url=url) as http:
        for path in HANDLER_ROUTES:
            refused = http.post(path, json={"question": "Refund?"}, headers=ALICE)
            assert_openai_error(refused, 400, "model_not_allowed")
        with sdk(url, "sk-demo-alice") as client, pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="gpt-4.5-preview", messages=HI, stream=True)
        assert caught.value.status_code == 400


def test_add_exception_handlers_answers_refusals_in_an_app_without_the_middleware(
    make_meter: MeterFactory,
) -> None:
    """The public handlers, for a FastAPI app metered without MeteredMiddleware."""
    from fastapi import FastAPI

    from metered.errors import BudgetExceeded
    from metered.http import add_exception_handlers

    app = FastAPI()
    add_exception_handlers(app)

    @app.get("/broke")
    async def broke() -> Any:
        raise BudgetExceeded(
            "acme",
            limit=Decimal(1),
            spent=Decimal(1),
            required=Decimal(1),
            window="day",
            retry_after=60,
        )

    with serve_asgi(app) as url:
        response = httpx.get(f"{url}/broke")
    assert_openai_error(response, 402, "budget_exceeded")
    assert response.headers["retry-after"] == "60"


def test_add_exception_handlers_refuses_what_it_cannot_serve() -> None:
    from metered.http import add_exception_handlers

    with pytest.raises(TypeError):
        add_exception_handlers(object())
