"""A Flask service metered by ``metered`` (the WSGI twin of the FastAPI example).

* ``POST /support/answer`` and ``POST /support/stream`` call the LLM through
  ``MeteredOpenAI``: ``MeteredWSGIMiddleware`` charges each call to the request's caller
  (from its API key), streamed responses included, and adds ``x-metered-cost`` /
  ``x-metered-price`` to JSON answers.
* ``POST /v1/chat/completions`` is an OpenAI-compatible endpoint resold to customers: the
  middleware meters the request itself (allowlist, tier caps, trimming, budget → 402,
  price, settlement); the view below forwards it upstream and streams the answer back.
* ``GET /me/usage`` shows the caller's spend and what is left of their budget.

Run from this directory: ``flask --app app run --port 8000``. Without ``OPENAI_API_KEY``
every LLM call is answered by metered's fake upstream; with it, by OpenAI.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from flask import Flask, Response, request, stream_with_context

from metered.clients import MeteredOpenAI
from metered.context import current
from metered.engine import Meter
from metered.http.identity import ApiKeys
from metered.http.wsgi import MeteredWSGIMiddleware
from metered.testing import FakeUpstream

HERE = Path(__file__).parent
MODEL = os.environ.get("EXAMPLE_MODEL", "gpt-4o-mini")
# Used only when METERED_API_KEYS is not set, so the example runs as is.
DEMO_KEYS = "sk-demo-alice=alice,sk-demo-bob=bob"
REPLY = "Refunds arrive within 5 business days."


def clients() -> tuple[Any, httpx.Client]:
    """The OpenAI client for handlers and the HTTP client the gateway view forwards with."""
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        from openai import OpenAI

        upstream = httpx.Client(
            base_url="https://api.openai.com",
            headers={"authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(600, connect=10),
        )
        return OpenAI(), upstream
    fake = FakeUpstream(reply=REPLY)
    return fake.openai_client(), httpx.Client(
        base_url="http://fake-upstream.test", transport=fake.httpx_transport()
    )


def create_app(meter: Meter | None = None) -> Flask:
    """Build the app; tests pass their own meter."""
    meter = meter or Meter.from_yaml(HERE / "metered.yaml")
    openai_client, upstream = clients()
    llm = MeteredOpenAI(openai_client, meter=meter, route="support")
    keys = ApiKeys.from_env(environ={"METERED_API_KEYS": DEMO_KEYS, **os.environ})

    app = Flask(__name__)
    app.wsgi_app = MeteredWSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app,
        meter=meter,
        identify=keys,
        unidentified="reject",  # every caller needs a key...
        public_paths={"/health"},  # ...except the health check
    )

    def messages(question: str) -> list[Any]:
        return [
            {"role": "system", "content": "You answer billing questions in one sentence."},
            {"role": "user", "content": question},
        ]

    @app.post("/support/answer")
    def answer() -> dict[str, str]:
        question = request.get_json()["question"]
        reply = llm.chat.completions.create(model=MODEL, messages=messages(question))
        return {"answer": reply.choices[0].message.content or ""}

    @app.post("/support/stream")
    def stream() -> Response:
        question = request.get_json()["question"]
        # Begin the metered call here, before the response starts: a caller over budget
        # (or a denied model) then gets metered's 402/400 JSON. Raised inside the
        # generator below, it would come after the 200 had gone out.
        chunks = llm.chat.completions.create(model=MODEL, messages=messages(question), stream=True)

        def tokens() -> Iterator[str]:
            # runs while the server sends the body: still charged to the caller
            for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

        return Response(stream_with_context(tokens()), mimetype="text/plain")

    @app.post("/v1/chat/completions")
    def chat_completions() -> Response:
        # the middleware has checked, fitted and reserved: forward its body as it is
        sent = upstream.build_request(
            "POST",
            "/v1/chat/completions",
            content=request.get_data(),
            headers={"content-type": "application/json", "accept-encoding": "identity"},
        )
        try:
            answer = upstream.send(sent, stream=True)
        except httpx.HTTPError:
            # the middleware releases the hold on any error status: nothing is charged
            error = {"error": {"message": "the upstream could not be reached", "code": "upstream"}}
            return Response(json.dumps(error), status=502, content_type="application/json")

        def body() -> Iterator[bytes]:
            try:
                yield from answer.iter_raw()
            finally:
                answer.close()

        content_type = answer.headers.get("content-type", "application/json")
        return Response(body(), status=answer.status_code, content_type=content_type)

    @app.get("/me/usage")
    def usage() -> dict[str, Any]:
        account = current().account or meter.default_account
        remaining = meter.remaining(account)
        return {
            "account": account,
            "spent_usd": str(meter.spent(account)),
            "remaining_usd": None if remaining is None else str(remaining),
        }

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    return app


app = create_app()
