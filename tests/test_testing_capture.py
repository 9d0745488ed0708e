"""capture_spend(): the usage records of the calls finished inside a block."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from metered.engine.meter import Meter
from metered.testing import capture_spend
from metered.usage import Usage


def test_capture_spend_collects_calls_finished_in_the_block() -> None:
    """capture_spend() sees every call finished inside it, and none outside."""
    meter = Meter({"routes": {"r": {"models": {"gpt-4o": "$0.05"}}}, "default_route": "r"})
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    meter.begin(body).finish(Usage(input_tokens=8, output_tokens=5))  # outside: not captured
    with capture_spend() as spend:
        meter.begin(body).finish(Usage(input_tokens=8, output_tokens=5))
        meter.begin(body).finish(error=TimeoutError("upstream timed out"))  # released
    assert spend.calls == 2
    assert spend.price == Decimal("0.05")
    assert spend.by_model() == {"gpt-4o": Decimal("0.05")}
    assert spend.cost == Decimal("2.50") * 8 / 10**6 + Decimal(10) * 5 / 10**6


async def test_capture_spend_follows_asyncio_tasks() -> None:
    """Calls finished in tasks started inside the block are captured too."""
    meter = Meter()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

    async def one() -> None:
        call = await meter.abegin(body)
        await call.afinish(Usage(input_tokens=8, output_tokens=3))

    with capture_spend() as spend:
        await asyncio.gather(one(), one(), one())
    assert spend.calls == 3
    assert all(r.settlement_status == "settled" for r in spend.records)
