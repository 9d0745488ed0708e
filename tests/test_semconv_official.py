"""metered's chat span carries every attribute the official OpenTelemetry OpenAI
instrumentation (``opentelemetry-instrumentation-genai-openai``) sets for the same call,
with the same value; metered may add more.

Both run against the same fake upstream with the same request: the official one patches
the SDK globally, so it runs in a subprocess and prints its span's attributes.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from harness import run_json
from metered.clients import MeteredOpenAI
from metered.testing import FakeUpstream

REQUEST: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0.2,
    "top_p": 0.9,
    "seed": 3,
    "stop": ["X"],
    "max_tokens": 50,
    "frequency_penalty": 0.1,
    "presence_penalty": 0.2,
    "service_tier": "default",
}

OFFICIAL = """
import json, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.instrumentation.genai.openai import OpenAIInstrumentor
from metered.testing import FakeUpstream

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
OpenAIInstrumentor().instrument(tracer_provider=provider)
FakeUpstream().openai_client().chat.completions.create(**json.loads(sys.argv[1]))
(span,) = exporter.get_finished_spans()
print(json.dumps({"name": span.name, "attributes": dict(span.attributes)}))
"""


def official_span(
    request: dict[str, Any] = REQUEST, *, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """The official instrumentation's span (name and attributes) for ``request``."""
    data: dict[str, Any] = run_json(OFFICIAL, request, env=env)
    return data


def test_metered_sets_every_attribute_the_official_instrumentation_sets(
    make_meter: Any, span_exporter: InMemorySpanExporter
) -> None:
    official = official_span()
    client = MeteredOpenAI(FakeUpstream().openai_client(), meter=make_meter({}))
    client.chat.completions.create(**REQUEST)
    (span,) = span_exporter.get_finished_spans()
    ours = {k: list(v) if isinstance(v, tuple) else v for k, v in (span.attributes or {}).items()}
    assert span.name == official["name"]
    missing = {k: v for k, v in official["attributes"].items() if k not in ours}
    different = {
        k: (v, ours[k]) for k, v in official["attributes"].items() if k in ours and ours[k] != v
    }
    assert missing == {}
    assert different == {}
