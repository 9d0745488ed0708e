"""The Redis ledger: budgets shared by every process and replica of an app.

Same rules and results as :class:`~metered.ledger.MemoryLedger` (see
:mod:`metered.ledger`), with the state in Redis. Every operation is ONE Lua script, so
it is atomic across processes: a hold checks and reserves on every account of the call
with no other caller in between. One addition for many clocks: spend dated in a period
that another replica has already closed (its clock ran ahead) lands in ``total`` only,
never moving the account back into the old period.

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
from typing import Any, TypeVar, cast, overload

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.commands.core import AsyncScript, Script
from redis.exceptions import RedisClusterException, RedisError

from metered.config.budgets import Budget, Window, calendar_periods
from metered.errors import LedgerError
from metered.ledger._common import (
    PlanCache,
    check_amount,
    check_balance_args,
    check_key,
    check_now,
    check_ttl,
    threshold_fractions,
)
from metered.ledger._redis_scripts import (
    CALENDAR,
    Op,
    Plan,
    failure,
    has_hash_tag,
    receipt_parser,
    script_sources,
    text,
    wrong_kind,
)
from metered.ledger.protocol import Ledger
from metered.ledger.types import DEFAULT_THRESHOLDS, Balance, Charge, EntryState, Hold, Receipt

__all__ = ["RedisLedger"]

T = TypeVar("T")

# What the ledger calls Redis with: a client, or a cluster client (see ``prefix``).
_SyncClient = redis.Redis | redis.cluster.RedisCluster
_AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

_DEFAULT_URL = "redis://localhost:6379/0"
# Redis and redis-py errors (a cluster client's own errors are not RedisErrors).
_STORE_ERRORS = (RedisError, RedisClusterException, OSError)
_PLAN_CACHE_SIZE = 1024


class RedisLedger(Ledger):
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
    ) -> Hold:
        return self._run(self._hold(key, charges, amount_nanos, ttl_seconds, now))

    async def ahold(
        self,
        key: str,
        charges: Sequence[Charge],
        amount_nanos: int,
        *,
        ttl_seconds: float,
        now: float | None = None,
    ) -> Hold:
        return await self._arun(self._hold(key, charges, amount_nanos, ttl_seconds, now))

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
    ) -> Receipt:
        return self._run(self._charge(key, charges, amount_nanos, enforce, now))

    async def acharge(
        self,
        key: str,
        charges: Sequence[Charge],
        amount_nanos: int,
        *,
        enforce: bool = True,
        now: float | None = None,
    ) -> Receipt:
        return await self._arun(self._charge(key, charges, amount_nanos, enforce, now))

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

    # --- operations: arguments in, reply parser out -----------------------------------

    def _hold(
        self,
        key: str,
        charges: Sequence[Charge],
        amount: int,
        ttl_seconds: float,
        now: float | None,
    ) -> Op[Hold]:
        check_key(key)
        plan = self._plan(charges)
        check_amount(amount)
        check_ttl(ttl_seconds)
        now = check_now(now, self._clock)
        expires_at = now + ttl_seconds

        def parse(reply: Any) -> Hold:
            tag = text(reply[0])
            if tag == "held":
                return Hold(key, "held", amount, plan.accounts, expires_at)
            if tag == "replay":
                accounts = tuple(text(a) for a in reply[4])
                state = cast(EntryState, text(reply[1]))
                return Hold(key, state, reply[2], accounts, float(reply[3]), replayed=True)
            raise failure(key, reply, plan, amount, now, wanted="hold")

        return self._op("hold", key, now, (amount, expires_at, plan.spec), parse)

    def _capture(
        self, key: str, amount: int, charges: Sequence[Charge] | None, now: float | None
    ) -> Op[Receipt]:
        check_key(key)
        fallback = "" if charges is None else self._plan(charges).spec
        check_amount(amount)
        now = check_now(now, self._clock)
        parse = receipt_parser(key, "hold", self._fractions)
        return self._op("capture", key, now, (amount, fallback), parse)

    def _release(self, key: str, now: float | None) -> Op[None]:
        check_key(key)
        now = check_now(now, self._clock)

        def parse(reply: Any) -> None:
            if text(reply[0]) == "!":
                raise wrong_kind(key, text(reply[1]), "hold")

        return self._op("release", key, now, (), parse)

    def _charge(
        self,
        key: str,
        charges: Sequence[Charge],
        amount: int,
        enforce: bool,
        now: float | None,
    ) -> Op[Receipt]:
        check_key(key)
        plan = self._plan(charges)
        check_amount(amount)
        now = check_now(now, self._clock)
        args = (amount, plan.spec, "1" if enforce else "0")
        parse = receipt_parser(key, "charge", self._fractions, plan, amount, now)
        return self._op("charge", key, now, args, parse)

    def _correct(self, key: str, amount: int, refund: bool, now: float | None) -> Op[Receipt]:
        check_key(key)
        check_amount(amount)
        now = check_now(now, self._clock)
        args = (amount, "1" if refund else "0")
        return self._op("correct", key, now, args, receipt_parser(key, "correct", self._fractions))

    def _balance(
        self, account: str, budget: Budget | Window | None, now: float | None
    ) -> Op[Balance]:
        window, limit = check_balance_args(account, budget)
        now = check_now(now, self._clock)

        def parse(reply: Any) -> Balance:
            spent, held = reply
            return Balance(
                account=account,
                window=window,
                spent_nanos=spent,
                held_nanos=held,
                limit_nanos=limit,
                remaining_nanos=None if limit is None else max(0, limit - spent - held),
                resets_at=window.period(now).ends_at,
            )

        args = (account, CALENDAR[window.kind], window.seconds or 0, window.granule)
        return self._op("balance", account, now, args, parse, entry=False)

    def _sweep(self, now: float | None) -> Op[int]:
        now = check_now(now, self._clock)
        return self._op("sweep", "", now, (), int)

    # --- internals ----------------------------------------------------------------------

    def _op(
        self,
        script: str,
        name: str,
        now: float,
        args: tuple[str | int | float, ...],
        parse: Callable[[Any], T],
        *,
        entry: bool = True,
    ) -> Op[T]:
        day, week, month = calendar_periods(now)
        key = self._prefix + ("e:" if entry else "a:") + name
        common = (self._prefix, now, self._retain, day.id, week.id, month.id)
        return Op(script, (self._holds_key, key), common + args, parse)

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
    return LedgerError(f"redis ledger {operation} failed: {type(exc).__name__}: {exc}")
