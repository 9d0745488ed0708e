"""Acceptance: no overspend by construction, across OS processes sharing one Redis.

Several worker processes each run many concurrent calls against one tight budget on a
real ``redis-server``: threads through ``MeteredOpenAI`` and async tasks through a
gateway route (``MeteredMiddleware``), JSON and streams, with and without ``max_tokens``,
against a fake upstream that always returns the largest output the limit allows. After
they are done: settled spend <= budget, to the nano-USD; no hold left; and the sum of the
amounts the usage records say were settled equals the ledger's spend exactly.
"""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path
from typing import Any

import httpx

from metered.clients import MeteredOpenAI
from metered.engine.meter import Meter
from metered.errors import BudgetExceeded
from metered.http.asgi import MeteredMiddleware
from metered.http.identity import ApiKeys
from metered.ledger import RedisLedger
from metered.testing import FakeUpstream
from tests.budget_processes import checked_budget, jsonl_sink, run_workers
from tests.redis_server import redis_server_fixture  # noqa: F401

BUDGET = "$2/day"  # calls cost up to $0.16 each: exhausted well before the workers stop
PRICES = {"gpt-4o": {"input": "$1 / 1M tokens", "output": "$10 / 1M tokens"}}
PATH = "/v1/chat/completions"
CONFIG: dict[str, Any] = {
    "routes": {"sdk": {"models": PRICES}, f"POST {PATH}": {"models": PRICES}},
    "default_route": "sdk",
    "accounts": {"shared": {"budgets": [BUDGET]}},
}
LONG_REPLY = "tick tock " * 10_000
WORKERS = 3
THREADS = 4
CALLS_PER_THREAD = 12
GATEWAY_CALLS = 24
PREFIX = "overspend:"


def _body(rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "count " * rng.randint(1, 40)}],
    }
    roll = rng.random()
    if roll < 0.4:
        body["max_tokens"] = rng.randint(200, 6_000)  # often more than is left
    if rng.random() < 0.5:
        body["stream"] = True
    return body


def _worker(redis_url: str, records_path: str, seed: int) -> None:
    """One OS process: threads through MeteredOpenAI, then tasks through a gateway route."""
    sink = jsonl_sink(records_path)
    meter = Meter(CONFIG, ledger=RedisLedger(redis_url, prefix=PREFIX), sink=sink)
    upstream = FakeUpstream(reply=LONG_REPLY, keep_requests=10)

    def sdk_thread(t: int) -> None:
        rng = random.Random(seed * 100 + t)
        api = MeteredOpenAI(upstream.openai_client(), meter=meter, account="shared")
        for _ in range(CALLS_PER_THREAD):
            body = _body(rng)
            try:
                result = api.chat.completions.create(**body)
                if body.get("stream"):
                    for _chunk in result:
                        pass
            except BudgetExceeded:
                pass

    threads = [threading.Thread(target=sdk_thread, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()

    async def gateway() -> None:
        app = MeteredMiddleware(upstream, meter=meter, identify=ApiKeys({"sk-shared": "shared"}))
        transport = httpx.ASGITransport(app)
        rng = random.Random(seed)
        headers = {"authorization": "Bearer sk-shared"}
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            replies = await asyncio.gather(
                *(http.post(PATH, json=_body(rng), headers=headers) for _ in range(GATEWAY_CALLS))
            )
        assert {reply.status_code for reply in replies} <= {200, 402}, [
            reply.text for reply in replies if reply.status_code not in (200, 402)
        ]

    asyncio.run(gateway())
    for thread in threads:
        thread.join()


def test_processes_sharing_a_redis_budget_never_overspend_it(
    redis_server: Any, tmp_path: Path
) -> None:
    records = tmp_path / "records.jsonl"
    run_workers(_worker, redis_server.url, records, WORKERS)
    _, rows = checked_budget(redis_server.url, PREFIX, "shared", BUDGET, records)
    settled = [r for r in rows if r["settlement_status"] == "settled"]
    # the budget, not only the callers, shortened calls near the end
    assert any(r["max_tokens_source"] == "budget" for r in settled)
