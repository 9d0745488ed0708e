"""Cached quote latency, as a speed-up over ``genai_prices.calc_price`` in the same run.

A quote is what every metered call pays for: ``Pricer(Config()).route().quote(model,
usage)`` with the resolver, catalog and plan caches warm. The baseline is genai-prices
pricing the same usage for the same model (its own lookup cache warm too). Both must
give the identical Decimal, or the benchmark fails.

Targets: a quote in <= 5 us, and >= 30x faster than ``calc_price``.
Run ``python -m benchmarks.bench_pricing --profile`` to see where quote time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from decimal import Decimal

import genai_prices

from metered.config import Config
from metered.pricing.route import Pricer, RoutePricer
from metered.usage import Usage

TARGET_US = 5.0
TARGET_SPEEDUP = 30.0
REPEATS = 15
BATCH_SECONDS = 0.005  # each timed batch runs at least this long, so timer noise is small

SCENARIOS: tuple[tuple[str, str, Usage], ...] = (
    ("gpt-4o", "cached", Usage(input_tokens=12_000, cache_read_tokens=10_240, output_tokens=400)),
    ("gpt-4o-mini", "plain", Usage(input_tokens=800, output_tokens=200)),
    (
        "o3",
        "reasoning, timed price",
        Usage(input_tokens=3_000, output_tokens=6_000, reasoning_tokens=5_000),
    ),
    (
        "claude-sonnet-4-5",
        ">200k tier, cache r/w",
        Usage(
            input_tokens=250_000,
            cache_read_tokens=150_000,
            cache_write_tokens=20_000,
            output_tokens=2_000,
        ),
    ),
    (
        "gemini-2.5-pro",
        "thinking, cached",
        Usage(
            input_tokens=90_000,
            cache_read_tokens=30_000,
            output_tokens=4_000,
            reasoning_tokens=3_000,
        ),
    ),
)


def _median_us(call: Callable[[], object]) -> float:
    """Median over REPEATS batches of the per-call time, in microseconds."""
    call()  # warm caches
    n = 1
    while True:  # calibrate the batch size like timeit.autorange
        start = time.perf_counter()
        for _ in range(n):
            call()
        if time.perf_counter() - start >= BATCH_SECONDS:
            break
        n *= 2
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(n):
            call()
        samples.append((time.perf_counter() - start) / n)
    return statistics.median(samples) * 1e6


def _genai_usage(usage: Usage) -> genai_prices.Usage:
    return genai_prices.Usage(
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_tokens=usage.output_tokens,
        output_reasoning_tokens=usage.reasoning_tokens,
    )


def _measure(route: RoutePricer, model: str, usage: Usage) -> tuple[float, float, bool, Decimal]:
    """(quote us, calc_price us, identical?, cost) for one scenario."""
    entry = route.entry(model)
    if entry is None:
        raise SystemExit(f"{model} has no catalog entry")
    g_usage = _genai_usage(usage)

    def baseline() -> Decimal:
        return genai_prices.calc_price(
            g_usage, model_ref=entry.model_id, provider_id=entry.provider
        ).total_price

    def quote() -> Decimal | None:
        return route.quote(model, usage).cost

    ours, theirs = quote(), baseline()
    return _median_us(quote), _median_us(baseline), ours == theirs, theirs


def _profile(route: RoutePricer) -> None:
    model, _, usage = SCENARIOS[0]
    route.quote(model, usage)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(20_000):
        route.quote(model, usage)
    profiler.disable()
    print(f"\nprofile of 20,000 cached quotes of {model}:")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


def main(argv: Sequence[str] = ()) -> int:
    """Print the latency table; return 1 if any cost differs from genai-prices."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profile", action="store_true", help="cProfile the quote hot path")
    args = parser.parse_args(argv)

    route = Pricer(Config()).route()
    rows = []
    for model, label, usage in SCENARIOS:
        quote_us, calc_us, same, cost = _measure(route, model, usage)
        rows.append((model, label, quote_us, calc_us, calc_us / quote_us, same, cost))

    header = (
        f"{'model':<18} {'usage':<23} {'quote us':>9} {'calc_price us':>14} "
        f"{'speed-up':>9}  {'same cost':<9} cost"
    )
    print(header)
    print("-" * len(header))
    for model, label, quote_us, calc_us, ratio, same, cost in rows:
        print(
            f"{model:<18} {label:<23} {quote_us:>9.2f} {calc_us:>14.2f} "
            f"{ratio:>8.1f}x  {'yes' if same else 'NO':<9} ${cost:f}"
        )
    median_quote = statistics.median(r[2] for r in rows)
    median_ratio = statistics.median(r[4] for r in rows)
    print("-" * len(header))
    quote_ok = "ok" if median_quote <= TARGET_US else "MISSED"
    ratio_ok = "ok" if median_ratio >= TARGET_SPEEDUP else "MISSED"
    print(f"median quote latency {median_quote:.2f} us (target <= {TARGET_US:g} us: {quote_ok})")
    print(
        f"median speed-up {median_ratio:.1f}x over calc_price "
        f"(target >= {TARGET_SPEEDUP:g}x: {ratio_ok})"
    )
    if args.profile or "MISSED" in (quote_ok, ratio_ok):
        if args.profile:
            _profile(route)
        else:
            print("a target was missed: rerun with --profile to see where quote time goes")
    if not all(r[5] for r in rows):
        print("FAILED: metered's cost differs from genai-prices for some scenario")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
