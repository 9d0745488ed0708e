"""The Redis ledger: budgets shared by every process and replica of an app.

Same rules and results as :class:`~metered.ledger.MemoryLedger` (see
:mod:`metered.ledger`), with the state in Redis. Every operation is ONE Lua script, so
it is atomic across processes: a hold checks and reserves on every account of the call
with no other caller in between. For many clocks, the rule of :mod:`metered.ledger`: a
period another replica has already entered is the current one for every replica.

How the state is laid out in Redis, and why time always comes from the caller: see
:mod:`metered.ledger._redis_scripts`.

Deployment: Redis 6 or later, a single primary (or a Sentinel-managed one: pass
``client=sentinel.master_for(...)``). Spend lives as long as Redis keeps it: enable
persistence (AOF) if budgets must survive a Redis restart. A call may charge
several accounts in one script, so on Redis Cluster every key must live in one slot:
put a hash tag in the prefix (``prefix="{metered}:"``); every key starts with it.
Processes sharing a ledger must use the same prefix and thresholds.

Arithmetic inside Redis Lua is double precision: amounts are refused above 2**53
nano-USD (~$9M per call; MemoryLedger refuses the same), and balances stay exact while
each counter is below that (about $9M of spend per account and window); Redis itself
keeps counters as exact 64-bit integers.

Connection and server failures raise :class:`~metered.errors.LedgerError` (the
engine answers 503, or records the settlement as ``failed``); never a raw redis error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import TypeVar, overload

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.commands.core import AsyncScript, Script
from redis.exceptions import RedisClusterException, RedisError

from metered.config.budgets import Budget, Window
from metered.errors import LedgerError
from metered.ledger._common import (
    PlanCache,
    threshold_fractions,
)
from metered.ledger._redis_ops import Operations
from metered.ledger._redis_scripts import (
    Op,
    Plan,
    has_hash_tag,
    script_sources,
)
from metered.ledger.protocol import Ledger
from metered.ledger.types import DEFAULT_THRESHOLDS, Balance, Charge, Hold, Receipt

__all__ = ["RedisLedger"]

T = TypeVar("T")

# What the ledger calls Redis with: a client, or a cluster client (see ``prefix``).
_SyncClient = redis.Redis | redis.cluster.RedisCluster
_AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

_DEFAULT_URL = "redis://localhost:6379/0"
# Redis and redis-py errors (a cluster client's own errors are not RedisErrors).
_STORE_ERRORS = (RedisError, RedisClusterException, OSError)
_PLAN_CACHE_SIZE = 1024


class RedisLedger(Operations, Ledger):
    """:class:`~metered.ledger.Ledger` in Redis, shared by processes and replicas.

    The rules and results of :class:`~metered.ledger.MemoryLedger`; each operation is one
    atomic Lua script, one round trip (see the module docstring for the key layout, the
    Redis Cluster note and the limits). Needs the ``redis`` extra
    (``pip install metered[redis]``).

    Args:
        url: a ``redis://`` (or ``rediss://``, ``unix://``) URL; the ledger builds and
            owns a sync and an async client from it, each with a blocking pool of 50
            connections (``?max_connections=`` in the URL to change): under load a call
            waits for a connection rather than failing. Default
            ``redis://localhost:6379/0``.
        client: a ``redis.Redis`` (or ``RedisCluster``) for the sync methods instead; its
            owner closes it.
        aclient: a ``redis.asyncio.Redis`` (or ``RedisCluster``) for the async methods,
            likewise. Given only one of the two, the other kind of method raises
            :class:`RuntimeError`.
        prefix: prepended to every key. On Redis Cluster it must hold a hash tag
            (``"{metered}:"``), else :class:`ValueError`.
        thresholds: budget fractions reported in :attr:`Receipt.crossed`.
        retain_seconds: how long finished keys are remembered (idempotency window).
        clock: the default ``now`` (epoch seconds), injectable for tests.

    The async client's connections belong to the event loop that opened them: await
    :meth:`aclose` before that loop ends (:meth:`close` only closes the sync client).

    Example::

        ledger = RedisLedger("redis://redis:6379/0")
        meter = Meter.from_yaml("metered.yaml", ledger=ledger)
    """

    @overload
    def __init__(
        self,
        url: str = ...,
        *,
        prefix: str = ...,
        thresholds: Iterable[Decimal | float | str] = ...,
        retain_seconds: float = ...,
        clock: Callable[[], float] = ...,
    ) -> None: ...

    @overload
    def __init__(
        self,
        *,
        client: _SyncClient | None = ...,
        aclient: _AsyncClient | None = ...,
        prefix: str = ...,
        thresholds: Iterable[Decimal | float | str] = ...,
        retain_seconds: float = ...,
        clock: Callable[[], float] = ...,
    ) -> None: ...

    def __init__(
        self,
        url: str | None = None,
        *,
        client: _SyncClient | None = None,
        aclient: _AsyncClient | None = None,
        prefix: str = "metered:",
        thresholds: Iterable[Decimal | float | str] = DEFAULT_THRESHOLDS,
        retain_seconds: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if url is not None and (client is not None or aclient is not None):
            raise TypeError("pass either url= or client=/aclient=, not both")
        clustered = isinstance(client, redis.cluster.RedisCluster) or isinstance(
            aclient, redis.asyncio.cluster.RedisCluster
        )
        if clustered and not has_hash_tag(prefix):
            raise ValueError(
                "on Redis Cluster the prefix needs a hash tag, so that the keys of a call "
                f"are in one slot: for example prefix='{{metered}}:', got {prefix!r}"
            )
        fractions = threshold_fractions(thresholds, retain_seconds)
        self._fractions = fractions
        self._ratios = tuple(f.as_integer_ratio() for f in fractions)
        self._retain = float(retain_seconds)
        self._clock = clock
        self._prefix = prefix
        self._holds_key = prefix + "holds"
        owned = client is None and aclient is None
        if owned:
            url = _DEFAULT_URL if url is None else url
            # Blocking pools: under load a caller waits for a free connection (50 by
            # default, ?max_connections= in the URL) instead of failing the LLM call.
            client = redis.Redis.from_pool(redis.BlockingConnectionPool.from_url(url))
            aclient = redis.asyncio.Redis.from_pool(
                redis.asyncio.BlockingConnectionPool.from_url(url)
            )
        self._owned = owned
        self._client = client
        self._aclient = aclient
        sources = script_sources()
        self._scripts: dict[str, Script] = (
            {n: client.register_script(s) for n, s in sources.items()} if client else {}
        )
        self._ascripts: dict[str, AsyncScript] = (
            {n: aclient.register_script(s) for n, s in sources.items()} if aclient else {}
        )
        self._plan = PlanCache(lambda charges: Plan(charges, self._marks), size=_PLAN_CACHE_SIZE)

    def __repr__(self) -> str:
        return f"RedisLedger(prefix={self._prefix!r})"

    # --- the Ledger protocol ----------------------------------------------------------

    def hold(
        self,
        key: str,
        charges: Sequence[Charge],
        amount_nanos: int,
        *,
        ttl_seconds: float,
        now: float | None = None,
        floor_nanos: int | None = None,
    ) -> Hold:
        return self._run(self._hold(key, charges, amount_nanos, ttl_seconds, now, floor_nanos))

    async def ahold(
        self,
        key: str,
        charges: Sequence[Charge],
        amount_nanos: int,
        *,
        ttl_seconds: float,
        now: float | None = None,
        floor_nanos: int | None = None,
    ) -> Hold:
        return await self._arun(
            self._hold(key, charges, amount_nanos, ttl_seconds, now, floor_nanos)
        )

    def capture(
        self,
        key: str,
        amount_nanos: int,
        *,
        charges: Sequence[Charge] | None = None,
        now: float | None = None,
    ) -> Receipt:
        return self._run(self._capture(key, amount_nanos, charges, now))

    async def acapture(
        self,
        key: str,
        amount_nanos: int,
        *,
        charges: Sequence[Charge] | None = None,
        now: float | None = None,
    ) -> Receipt:
        return await self._arun(self._capture(key, amount_nanos, charges, now))

    def release(self, key: str, *, now: float | None = None) -> None:
        self._run(self._release(key, now))

    async def arelease(self, key: str, *, now: float | None = None) -> None:
        await self._arun(self._release(key, now))

    def charge(
        self,
        key: str,
        charges: Sequence[Charge],
        amount_nanos: int,
        *,
        enforce: bool = True,
        now: float | None = None,
        floor_nanos: int | None = None,
    ) -> Receipt:
        return self._run(self._charge(key, charges, amount_nanos, enforce, now, floor_nanos))

    async def acharge(
        self,
        key: str,
        charges: Sequence[Charge],
        amount_nanos: int,
        *,
        enforce: bool = True,
        now: float | None = None,
        floor_nanos: int | None = None,
    ) -> Receipt:
        op = self._charge(key, charges, amount_nanos, enforce, now, floor_nanos)
        return await self._arun(op)

    def adjust(self, key: str, amount_nanos: int, *, now: float | None = None) -> Receipt:
        return self._run(self._correct(key, amount_nanos, False, now))

    async def aadjust(self, key: str, amount_nanos: int, *, now: float | None = None) -> Receipt:
        return await self._arun(self._correct(key, amount_nanos, False, now))

    def refund(self, key: str, *, now: float | None = None) -> Receipt:
        return self._run(self._correct(key, 0, True, now))

    async def arefund(self, key: str, *, now: float | None = None) -> Receipt:
        return await self._arun(self._correct(key, 0, True, now))

    def balance(
        self, account: str, budget: Budget | Window | None = None, *, now: float | None = None
    ) -> Balance:
        return self._run(self._balance(account, budget, now))

    async def abalance(
        self, account: str, budget: Budget | Window | None = None, *, now: float | None = None
    ) -> Balance:
        return await self._arun(self._balance(account, budget, now))

    def sweep(self, *, now: float | None = None) -> int:
        """Expire due holds now; returns the holds expired.

        Finished keys need no sweeping here: they are forgotten by the clock when read,
        and Redis deletes them itself shortly after.
        """
        return self._run(self._sweep(now))

    async def asweep(self, *, now: float | None = None) -> int:
        """Async :meth:`sweep`."""
        return await self._arun(self._sweep(now))

    def close(self) -> None:
        """Close the sync connections the ledger opened from ``url`` (not given clients)."""
        if self._owned and self._client is not None:
            self._client.close()

    async def aclose(self) -> None:
        """Close every connection the ledger opened from ``url`` (not given clients)."""
        if self._owned and self._aclient is not None:
            await self._aclient.aclose()
        self.close()

    # --- the round trip ---------------------------------------------------------------

    def _run(self, op: Op[T]) -> T:
        if not self._scripts:
            raise RuntimeError("this RedisLedger has no sync client: pass client= or url=")
        try:
            reply = self._scripts[op.script](keys=op.keys, args=op.args)
        except _STORE_ERRORS as exc:
            raise _unavailable(op.script, exc) from exc
        return op.parse(reply)

    async def _arun(self, op: Op[T]) -> T:
        if not self._ascripts:
            raise RuntimeError("this RedisLedger has no async client: pass aclient= or url=")
        try:
            reply = await self._ascripts[op.script](op.keys, op.args)
        except _STORE_ERRORS as exc:
            raise _unavailable(op.script, exc) from exc
        return op.parse(reply)

    def _marks(self, limit: int) -> list[int]:
        # Spend reaches fraction n/d of the limit when spent >= ceil(limit * n / d): the
        # exact integer comparison happens in Python, the script only compares integers.
        return [-(-limit * n // d) for n, d in self._ratios]


def _unavailable(operation: str, exc: Exception) -> LedgerError:
    # the exception's text may name the server's address: it stays in the chained cause
    return LedgerError(f"budget store unavailable ({operation}: {type(exc).__name__})")
