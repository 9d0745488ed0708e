"""A FastAPI service metered by ``metered``.

* ``POST /support/answer`` and ``POST /support/stream`` call the LLM through
  ``MeteredAsyncOpenAI``: ``MeteredMiddleware`` charges each call to the request's caller
  (from its API key) and adds ``x-metered-cost`` / ``x-metered-price`` to JSON answers.
* ``POST /v1/chat/completions`` is an OpenAI-compatible endpoint resold to customers: the
  middleware meters the request itself (allowlist, tier caps, trimming, budget → 402,
  price, settlement) and ``GatewayProxy`` forwards it upstream, streams included.
* ``GET /me/usage`` shows the caller's spend and what is left of their budget.

Run from this directory: ``uvicorn app:app --port 8000``. Without ``OPENAI_API_KEY`` every
LLM call is answered by metered's fake upstream; with it, by OpenAI.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import Body, FastAPI
from fastapi.responses import StreamingResponse

from metered.clients import MeteredAsyncOpenAI
from metered.context import current
from metered.engine import Meter
from metered.gateway import GatewayProxy, resolve_upstream
from metered.http.asgi import MeteredMiddleware
from metered.http.identity import ApiKeys

HERE = Path(__file__).parent
MODEL = os.environ.get("EXAMPLE_MODEL", "gpt-4o-mini")
# Used only when METERED_API_KEYS is not set, so the example runs as is.
DEMO_KEYS = "sk-demo-alice=alice,sk-demo-bob=bob"


def setup_tracing() -> None:
    """Export spans over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set (e.g. Jaeger)."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service = os.environ.get("OTEL_SERVICE_NAME", "metered-fastapi-example")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def openai_client() -> Any:
    """The real AsyncOpenAI client with a key, else one wired to the fake upstream."""
    if os.environ.get("OPENAI_API_KEY"):
        from openai import AsyncOpenAI

        return AsyncOpenAI()
    from metered.testing import FakeUpstream

    return FakeUpstream(reply="Refunds arrive within 5 business days.").openai_client(async_=True)


def create_app(meter: Meter | None = None) -> FastAPI:
    """Build the app; tests pass their own meter."""
    setup_tracing()
    meter = meter or Meter.from_yaml(HERE / "metered.yaml")
    llm = MeteredAsyncOpenAI(openai_client(), meter=meter, route="support")
    upstream = resolve_upstream("openai" if os.environ.get("OPENAI_API_KEY") else "fake")
    keys = ApiKeys.from_env(environ={"METERED_API_KEYS": DEMO_KEYS, **os.environ})

    app = FastAPI(title="metered FastAPI example")
    app.add_middleware(
        MeteredMiddleware,
        meter=meter,
        identify=keys,
        unidentified="reject",  # every caller needs a key...
        public_paths={"/health"},  # ...except the health check
    )
    # the gateway route: metered by the middleware, forwarded (and streamed) by the proxy
    app.mount("/v1", GatewayProxy({("POST", "/v1/chat/completions"): upstream}, default=upstream))

    def messages(question: str) -> list[Any]:
        return [
            {"role": "system", "content": "You answer billing questions in one sentence."},
            {"role": "user", "content": question},
        ]

    @app.post("/support/answer")
    async def answer(question: str = Body(embed=True)) -> dict[str, str]:
        reply = await llm.chat.completions.create(model=MODEL, messages=messages(question))
        return {"answer": reply.choices[0].message.content or ""}

    @app.post("/support/stream")
    async def stream(question: str = Body(embed=True)) -> StreamingResponse:
        # Begin the metered call here, before the response starts: a caller over budget
        # (or a denied model) then gets metered's 402/400 JSON from the middleware. Raised
        # inside the generator below, it would come after the 200 had gone out.
        chunks = await llm.chat.completions.create(
            model=MODEL, messages=messages(question), stream=True
        )

        async def tokens() -> Any:
            # still charged to the caller: the middleware's binding covers the generator
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

        return StreamingResponse(tokens(), media_type="text/plain")

    @app.get("/me/usage")
    async def usage() -> dict[str, Any]:
        account = current().account or meter.default_account
        remaining = meter.remaining(account)
        return {
            "account": account,
            "spent_usd": str(meter.spent(account)),
            "remaining_usd": None if remaining is None else str(remaining),
        }

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    return app


app = create_app()
