"""Engine overhead per call (Meter.begin + Call.finish), next to baselines from the same run.

Every scenario meters one chat call with a budget on (``after-response``: hold, then
capture) and prints microseconds per call, best of ``ROUNDS``.

Baselines:

* **bare quote** — ``meter.pricer.route().quote(model, usage)``: pricing alone, the least
  a metered call can cost.
* **bare SDK span** — ``tracer.start_span`` + ``set_attributes`` (as many attributes as
  the engine's call span ends with) + ``end``, on the same SDK pipeline (simple processor,
  in-memory exporter): the least a traced call can cost.

The async shells (``abegin`` + ``afinish`` on an event loop) are timed too: settlement
runs in a task the caller's cancellation cannot interrupt (started eagerly on 3.12+).

Prompt estimation (tiktoken counting) is reported on its own: counting a 1K-token prompt
never seen before (``cold``) and the same prompt again (``warm``: per-text counts are
cached), and a metered call with a tiny prompt, whose estimation costs next to nothing.

No absolute target (issue 10 replaced them with the client ratios of ``bench_clients``);
the no-op figure (the 1K-prompt call minus counting that prompt, warm; and the tiny-prompt
call) is compared with the figures before the redesign in ``benchmarks/README.md``
(stop 8: 13.9 us), which it should not exceed by more than 10%. The table also
shows what tracing adds on its own (traced call minus no-op call) against the bare span,
and a third baseline: the engine's own span (its attribute values and settlement event)
emitted bare through the SDK. The no-op call is profiled and the engine's hottest
functions are printed.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from metered.engine.meter import Meter
from metered.telemetry import ATTR
from metered.tokens import count_chat
from metered.usage import Usage

ROUNDS = 7
CALLS = 2_000
MODEL = "gpt-4o"
CONFIG: dict[str, Any] = {"default_budgets": ["$1000000/total"]}
USAGE = Usage(input_tokens=1_000, output_tokens=200)
# the no-op figure before the redesign (stop 8), for the 10% regression check
STOP8_NOOP_US = 13.9
_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "hex",
]

Run = Callable[[], None]
# what Telemetry.start gives the span (the rest is set when the call finishes)
_START_ATTRIBUTES = (
    ATTR.OPERATION,
    ATTR.REQUEST_STREAM,
    ATTR.REQUEST_MODEL,
    ATTR.PROVIDER,
    ATTR.SERVER_ADDRESS,
)


def _prompt(tag: str, tokens: int = 1_000) -> list[dict[str, str]]:
    """A system message and a user message of about ``tokens`` tokens, unique per ``tag``."""
    words = [_WORDS[(i * 7) % len(_WORDS)] for i in range(tokens - 12)]
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"[{tag}] " + " ".join(words)},
    ]


def _best_us(make_run: Callable[[int], Run], calls: int = CALLS) -> float:
    """Best of ROUNDS in microseconds per call; ``make_run(round)`` builds a round untimed."""
    best = float("inf")
    for r in range(ROUNDS):
        run = make_run(r)
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def _metered(meter: Meter, bodies: Callable[[int], list[dict[str, Any]]]) -> Callable[[int], Run]:
    """Rounds of begin + finish over the request bodies ``bodies(round)``."""

    def make_run(r: int) -> Run:
        batch = bodies(r)

        def run() -> None:
            for body in batch:
                meter.begin(body).finish(USAGE)

        return run

    return make_run


def _metered_async(
    meter: Meter, bodies: Callable[[int], list[dict[str, Any]]], loop: asyncio.AbstractEventLoop
) -> Callable[[int], Run]:
    """Rounds of abegin + afinish, awaited one after the other on ``loop``."""

    def make_run(r: int) -> Run:
        batch = bodies(r)

        async def calls() -> None:
            for body in batch:
                call = await meter.abegin(body)
                await call.afinish(USAGE)

        return lambda: loop.run_until_complete(calls())

    return make_run


def _cold_bodies(r: int) -> list[dict[str, Any]]:
    # a 1K-token prompt never counted before: every call pays for tiktoken
    return [
        {"model": MODEL, "messages": _prompt(f"r{r}-{i}"), "max_tokens": 200} for i in range(CALLS)
    ]


def _same_bodies(messages: list[dict[str, str]]) -> Callable[[int], list[dict[str, Any]]]:
    body = {"model": MODEL, "messages": messages, "max_tokens": 200}
    return lambda r: [body] * CALLS


def _counting(bodies: Callable[[int], list[dict[str, Any]]]) -> Callable[[int], Run]:
    def make_run(r: int) -> Run:
        batch = bodies(r)

        def run() -> None:
            for body in batch:
                count_chat(body["messages"], model=MODEL)

        return run

    return make_run


def _bare_quote(meter: Meter) -> Callable[[int], Run]:
    route = meter.pricer.route()

    def make_run(_: int) -> Run:
        def run() -> None:
            for _i in range(CALLS):
                route.quote(MODEL, USAGE)

        return run

    return make_run


def _bare_span(
    provider: TracerProvider, exporter: InMemorySpanExporter, n_attrs: int
) -> Callable[[int], Run]:
    tracer = provider.get_tracer("bench")
    attrs = {f"bench.attr.{i}": i for i in range(n_attrs)}

    def make_run(_: int) -> Run:
        exporter.clear()

        def run() -> None:
            for _i in range(CALLS):
                span = tracer.start_span("chat gpt-4o", kind=trace.SpanKind.CLIENT)
                span.set_attributes(attrs)
                span.end()

        return run

    return make_run


def _same_span(
    provider: TracerProvider, exporter: InMemorySpanExporter, like: ReadableSpan
) -> Callable[[int], Run]:
    """The engine's span as it is exported (start attributes, end attributes, events),
    emitted straight through the SDK: what the span costs without any metering."""
    tracer = provider.get_tracer("bench")
    attrs = dict(like.attributes or {})
    start = {k: attrs.pop(k) for k in _START_ATTRIBUTES if k in attrs}
    events = [(e.name, dict(e.attributes or {})) for e in like.events]

    def make_run(_: int) -> Run:
        exporter.clear()

        def run() -> None:
            for _i in range(CALLS):
                span = tracer.start_span(like.name, kind=trace.SpanKind.CLIENT, attributes=start)
                span.set_attributes(attrs)
                for name, event in events:
                    span.add_event(name, event)
                span.end()

        return run

    return make_run


def _clearing(
    exporter: InMemorySpanExporter, make_run: Callable[[int], Run]
) -> Callable[[int], Run]:
    """Empty the in-memory exporter before each round so memory does not grow."""

    def wrapped(r: int) -> Run:
        exporter.clear()
        return make_run(r)

    return wrapped


def _profile(meter: Meter, bodies: Callable[[int], list[dict[str, Any]]], top: int = 15) -> str:
    profiler = cProfile.Profile()
    run = _metered(meter, bodies)(ROUNDS)
    profiler.enable()
    run()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats("metered", top)
    return out.getvalue()


def main() -> None:
    tiny = _same_bodies([{"role": "user", "content": "hi"}])
    warm = _same_bodies(_prompt("warm"))
    print(
        f"prompt: {count_chat(_prompt('x'), model=MODEL)} tokens; {CALLS} calls x best of {ROUNDS}"
    )

    noop = Meter(CONFIG)  # no SDK installed: the global OTel API is a no-op
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    traced = Meter(CONFIG, tracer_provider=tracer_provider)
    metered_sdk = Meter(
        CONFIG,
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
    )
    traced.begin(tiny(0)[0]).finish(USAGE)
    ours = exporter.get_finished_spans()[-1]
    n_attrs = len(ours.attributes or {})

    quote = _best_us(_bare_quote(noop))
    span = _best_us(_bare_span(tracer_provider, exporter, n_attrs))
    same_span = _best_us(_same_span(tracer_provider, exporter, ours))
    count_warm = _best_us(_counting(warm))
    rows: list[tuple[str, float, str]] = [
        ("baseline: bare quote", quote, ""),
        (f"baseline: bare SDK span ({n_attrs} attrs)", span, ""),
        ("baseline: the engine's span, emitted bare", same_span, f"{same_span / span:.2f}x span"),
        ("estimation: count 1K prompt, cold", _best_us(_counting(_cold_bodies)), ""),
        ("estimation: count 1K prompt, warm", count_warm, ""),
    ]
    noop_tiny = _best_us(_metered(noop, tiny))
    noop_warm = _best_us(_metered(noop, warm))
    noop_cold = _best_us(_metered(noop, _cold_bodies))
    loop = asyncio.new_event_loop()
    noop_async = _best_us(_metered_async(noop, tiny, loop))
    loop.close()
    sdk_tiny = _best_us(_clearing(exporter, _metered(traced, tiny)))
    sdk_warm = _best_us(_clearing(exporter, _metered(traced, warm)))
    sdk_metrics = _best_us(_clearing(exporter, _metered(metered_sdk, tiny)))
    noop_excl = noop_warm - count_warm
    tracing = sdk_tiny - noop_tiny
    rows += [
        ("no-op OTel: begin+finish, tiny prompt", noop_tiny, f"{noop_tiny / quote:.1f}x quote"),
        ("no-op OTel: begin+finish, 1K prompt warm", noop_warm, f"{noop_warm / quote:.1f}x quote"),
        ("no-op OTel: begin+finish, 1K prompt cold", noop_cold, f"{noop_cold / quote:.1f}x quote"),
        ("no-op OTel: abegin+afinish, tiny prompt", noop_async, f"{noop_async / quote:.1f}x quote"),
        ("SDK tracing: begin+finish, tiny prompt", sdk_tiny, f"{sdk_tiny / span:.2f}x span"),
        ("SDK tracing: begin+finish, 1K prompt warm", sdk_warm, f"{sdk_warm / span:.2f}x span"),
        ("SDK tracing+metrics: tiny prompt", sdk_metrics, f"{sdk_metrics / span:.2f}x span"),
        (
            "no-op OTel, estimation excluded: 1K warm - count",
            noop_excl,
            f"{noop_excl / quote:.1f}x quote",
        ),
        (
            "tracing alone: SDK tiny - no-op tiny",
            tracing,
            f"{tracing / span:.2f}x span, {tracing / same_span:.2f}x the engine's span bare",
        ),
    ]
    width = max(len(name) for name, _, _ in rows)
    print(f"{'scenario':{width}s}  {'us/call':>8s}  vs baseline")
    for name, us, ratio in rows:
        print(f"{name:{width}s}  {us:8.2f}  {ratio}")

    print(
        f"no-op, estimation excluded: {noop_excl:.1f} us (tiny prompt {noop_tiny:.1f} us), "
        f"{noop_excl / STOP8_NOOP_US:.2f}x stop 8's {STOP8_NOOP_US} us (another run: compare "
        f"on a quiet machine); SDK {sdk_tiny / span:.2f}x bare span "
        f"(tracing alone {tracing / span:.2f}x)"
    )
    print("\nhot spots in metered, no-op OTel, tiny prompt (cProfile, by own time):")
    print(_profile(noop, tiny))
    noop.close()
    traced.close()
    metered_sdk.close()
    tracer_provider.shutdown()


if __name__ == "__main__":
    main()
