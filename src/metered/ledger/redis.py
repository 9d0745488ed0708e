"""The Redis ledger: budgets shared by every process and replica of an app.

Same rules and results as :class:`~metered.ledger.MemoryLedger` (see
:mod:`metered.ledger`), with the state in Redis. Every operation is ONE Lua script, so
it is atomic across processes: a hold checks and reserves on every account of the call
with no other caller in between. One addition for many clocks: spend dated in a period
that another replica has already closed (its clock ran ahead) lands in ``total`` only,
never moving the account back into the old period.

Time comes from the caller, never from Redis. Python passes ``now`` (the ledger's
clock), the UTC day, week and month period ids of ``now`` (:func:`calendar_periods`),
the hold expiry and the retention; the script only does arithmetic on them (a rolling
bucket starts at ``at - at mod width``; a key is forgotten at ``finished + retain``).
Clock skew between the app and Redis therefore cannot shift a period, and tests can
drive the clock.

Layout, all under ``prefix`` (default ``"metered:"``):

* ``{prefix}holds`` -- sorted set of the active holds' entry keys by expiry time (one
  for the ledger rather than one per account: the sweep is a single range read, and
  :meth:`RedisLedger.sweep` needs no index of accounts). Every script first expires the
  due ones (returning their amounts to their accounts), so an account's held total is
  exact whenever it is read and a crashed process never locks budget for longer than
  its holds' TTL.
* ``{prefix}e:{key}`` -- one msgpack string per idempotency key: kind, state, amounts,
  when the spend was dated and its periods, and the charges (accounts, budgets, threshold
  marks) as JSON, so adjust and refund know where the spend landed (~0.4 KB for a call
  charged to one account). While held it has no Redis TTL (only the sweep may end it);
  once finished it is forgotten ``retain_seconds`` later by the callers' clock, and Redis
  drops it a minute after that by its own. Redis memory for keys is therefore about
  calls per second x ``retain_seconds`` x 0.4 KB.
* ``{prefix}a:{account}`` -- hash per account, like MemoryLedger's account record: active
  held nanos, lifetime total, the current day/week/month period ids with their spend,
  and which thresholds fired in which period. It keeps only the current periods, so
  it stays small and needs no expiry (a counter key per period, as the sketch in
  :mod:`metered.ledger` has it, would cost a key per window and read).
* ``{prefix}r:{seconds}:{account}`` -- hash per account and rolling window: spend per
  bucket start with a running total and the oldest and newest bucket, expiring when its
  newest bucket has aged out.

Deployment: Redis 6 or later, a single primary (or a Sentinel-managed one: pass
``client=sentinel.master_for(...)``). Spend lives as long as Redis keeps it: enable
persistence (AOF) if budgets must survive a Redis restart. A call may charge
several accounts in one script, so on Redis Cluster every key must live in one slot:
put a hash tag in the prefix (``prefix="{metered}:"``); every key starts with it.
Processes sharing a ledger must use the same prefix and thresholds.

Arithmetic inside Redis Lua is double precision: amounts are refused above 2**53
nano-USD (~$9M per call), and balances stay exact while each counter is below that
(about $9M of spend per account and window); Redis itself keeps counters as exact
64-bit integers.

Connection and server failures raise :class:`~metered.errors.LedgerError` (the
engine answers 503, or records the settlement as ``failed``); never a raw redis error.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Any, Generic, NamedTuple, TypeVar, cast, overload

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.commands.core import AsyncScript, Script
from redis.exceptions import RedisClusterException, RedisError

from metered.config.budgets import Budget, Window, WindowKind, calendar_periods
from metered.errors import BudgetExceeded, LedgerError
from metered.ledger._common import PlanCache, threshold_fractions
from metered.ledger.protocol import Ledger
from metered.ledger.types import (
    DEFAULT_THRESHOLDS,
    Balance,
    Charge,
    EntryState,
    Hold,
    Receipt,
    ReceiptStatus,
    Threshold,
)
from metered.money import from_nanos

__all__ = ["RedisLedger"]

T = TypeVar("T")

# What the ledger calls Redis with: a client, or a cluster client (see ``prefix``).
_SyncClient = redis.Redis | redis.cluster.RedisCluster
_AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

_DEFAULT_URL = "redis://localhost:6379/0"
# Redis and redis-py errors (a cluster client's own errors are not RedisErrors).
_STORE_ERRORS = (RedisError, RedisClusterException, OSError)
# Lua numbers are doubles: integers are exact below 2**53.
_MAX_AMOUNT = 2**53 - 1
_PLAN_CACHE_SIZE = 1024
# Calendar index of a window kind in calendar_periods(); 0 = total, -1 = rolling.
_CALENDAR = {"day": 1, "week": 2, "month": 3, "total": 0, "rolling": -1}
_KIND_OF: dict[int, WindowKind] = {1: "day", 2: "week", 3: "month", 0: "total", -1: "rolling"}

# --- Lua ----------------------------------------------------------------------------------

_SCRIPT_NAMES = ("hold", "capture", "release", "charge", "correct", "balance", "sweep")


@lru_cache(maxsize=1)
def _script_sources() -> dict[str, str]:
    """Each script's source: the shared prelude, then its own body.

    The scripts are package files (``ledger/scripts/*.lua``, shipped in the wheel), so
    they read, diff and lint as Lua.
    """
    folder = importlib.resources.files("metered.ledger") / "scripts"
    prelude = (folder / "prelude.lua").read_text(encoding="utf-8")
    return {
        name: prelude + (folder / f"{name}.lua").read_text(encoding="utf-8")
        for name in _SCRIPT_NAMES
    }


# --- Python side --------------------------------------------------------------------------


class _Plan:
    """A validated charges tuple, encoded once for the scripts."""

    __slots__ = ("accounts", "budgets", "charges", "spec")

    def __init__(self, charges: tuple[Charge, ...], marks: Callable[[int], list[int]]) -> None:
        self.charges = charges
        self.accounts = tuple(c.account for c in charges)
        self.budgets = tuple(c.budgets for c in charges)
        self.spec = json.dumps(
            [[c.account, [_encode_budget(b, marks) for b in c.budgets]] for c in charges],
            separators=(",", ":"),
            ensure_ascii=False,
        )


def _encode_budget(budget: Budget, marks: Callable[[int], list[int]]) -> list[object]:
    window = budget.window
    limit = budget.limit_nanos
    ci = _CALENDAR[window.kind]
    seconds = window.seconds or 0
    return [
        str(limit),  # a string, so a limit above 2**53 comes back to Python exact
        ci,
        seconds,
        window.granule,
        window.period(0).id if ci <= 0 else "",
        marks(limit),
    ]


class _Op(NamedTuple, Generic[T]):
    """One script call: what to run and how to read its reply."""

    script: str
    keys: tuple[str, str]
    args: tuple[str | int | float, ...]
    parse: Callable[[Any], T]


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
        if clustered and not _has_hash_tag(prefix):
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
        sources = _script_sources()
        self._scripts: dict[str, Script] = (
            {n: client.register_script(s) for n, s in sources.items()} if client else {}
        )
        self._ascripts: dict[str, AsyncScript] = (
            {n: aclient.register_script(s) for n, s in sources.items()} if aclient else {}
        )
        self._plan = PlanCache(lambda charges: _Plan(charges, self._marks), size=_PLAN_CACHE_SIZE)

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
        return self._run(self._correct(key, _checked(amount_nanos), False, now))

    async def aadjust(self, key: str, amount_nanos: int, *, now: float | None = None) -> Receipt:
        return await self._arun(self._correct(key, _checked(amount_nanos), False, now))

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
    ) -> _Op[Hold]:
        plan = self._plan(charges)
        _checked(amount)
        if not 0 < ttl_seconds < math.inf:
            raise ValueError(f"ttl_seconds must be a positive number, got {ttl_seconds!r}")
        now = self._clock() if now is None else now
        expires_at = now + ttl_seconds

        def parse(reply: Any) -> Hold:
            tag = _text(reply[0])
            if tag == "held":
                return Hold(key, "held", amount, plan.accounts, expires_at)
            if tag == "replay":
                accounts = tuple(_text(a) for a in reply[4])
                state = cast(EntryState, _text(reply[1]))
                return Hold(key, state, reply[2], accounts, float(reply[3]), replayed=True)
            raise self._failure(key, reply, plan, amount, now, wanted="hold")

        return self._op("hold", key, now, (amount, expires_at, plan.spec), parse)

    def _capture(
        self, key: str, amount: int, charges: Sequence[Charge] | None, now: float | None
    ) -> _Op[Receipt]:
        _checked(amount)
        fallback = "" if charges is None else self._plan(charges).spec
        now = self._clock() if now is None else now
        return self._op("capture", key, now, (amount, fallback), self._receipt(key, "hold"))

    def _release(self, key: str, now: float | None) -> _Op[None]:
        now = self._clock() if now is None else now

        def parse(reply: Any) -> None:
            if _text(reply[0]) == "!":
                raise _wrong_kind(key, _text(reply[1]), "hold")

        return self._op("release", key, now, (), parse)

    def _charge(
        self,
        key: str,
        charges: Sequence[Charge],
        amount: int,
        enforce: bool,
        now: float | None,
    ) -> _Op[Receipt]:
        plan = self._plan(charges)
        _checked(amount)
        now = self._clock() if now is None else now
        args = (amount, plan.spec, "1" if enforce else "0")
        return self._op("charge", key, now, args, self._receipt(key, "charge", plan, amount, now))

    def _correct(self, key: str, amount: int, refund: bool, now: float | None) -> _Op[Receipt]:
        now = self._clock() if now is None else now
        args = (amount, "1" if refund else "0")
        return self._op("correct", key, now, args, self._receipt(key, "correct"))

    def _balance(
        self, account: str, budget: Budget | Window | None, now: float | None
    ) -> _Op[Balance]:
        if budget is None:
            window, limit = Window("total"), None
        elif isinstance(budget, Window):
            window, limit = budget, None
        else:
            window, limit = budget.window, budget.limit_nanos
        now = self._clock() if now is None else now

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

        args = (account, _CALENDAR[window.kind], window.seconds or 0, window.granule)
        return self._op("balance", account, now, args, parse, entry=False)

    def _sweep(self, now: float | None) -> _Op[int]:
        now = self._clock() if now is None else now
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
    ) -> _Op[T]:
        day, week, month = calendar_periods(now)
        key = self._prefix + ("e:" if entry else "a:") + name
        common = (self._prefix, now, self._retain, day.id, week.id, month.id)
        return _Op(script, (self._holds_key, key), common + args, parse)

    def _run(self, op: _Op[T]) -> T:
        if not self._scripts:
            raise RuntimeError("this RedisLedger has no sync client: pass client= or url=")
        try:
            reply = self._scripts[op.script](keys=op.keys, args=op.args)
        except _STORE_ERRORS as exc:
            raise _unavailable(op.script, exc) from exc
        return op.parse(reply)

    async def _arun(self, op: _Op[T]) -> T:
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

    def _receipt(
        self,
        key: str,
        wanted: str,
        plan: _Plan | None = None,
        amount: int = 0,
        now: float = 0.0,
    ) -> Callable[[Any], Receipt]:
        """A parser of a receipt reply (``plan``/``amount``/``now``: for budget failures)."""

        def parse(reply: Any) -> Receipt:
            status = _text(reply[0])
            if status == "unknown":
                return Receipt(key, "unknown", None)
            if status == "!":
                if plan is None:
                    raise _wrong_kind(key, _text(reply[1]), wanted)
                raise self._failure(key, reply, plan, amount, now, wanted=wanted)
            crossed = tuple(
                Threshold(
                    _text(name),
                    _budget(_text(limit), ci, seconds),
                    self._fractions[level - 1],
                    spent,
                    _text(period),
                )
                for name, limit, ci, seconds, level, spent, period in reply[5]
                if level <= len(self._fractions)  # a process with other thresholds wrote it
            )
            return Receipt(
                key,
                cast(ReceiptStatus, status),
                cast(EntryState, _text(reply[1])),
                reply[2],
                reply[3],
                crossed,
                tuple(None if left < 0 else left for left in reply[4]),
            )

        return parse

    def _failure(
        self, key: str, reply: Any, plan: _Plan, amount: int, now: float, *, wanted: str
    ) -> Exception:
        """The exception a script's failure reply stands for."""
        reason = _text(reply[1])
        if reason != "exceeded":
            return _wrong_kind(key, reason, wanted)
        payer, index, used, rolling_retry = reply[2:6]
        budget = plan.budgets[payer - 1][index - 1]
        window = budget.window
        retry_after: int | None = None
        if window.kind == "rolling":
            retry_after = None if rolling_retry < 0 else rolling_retry
        else:  # calendar windows reset when their period ends; total never does
            ends_at = window.period(now).ends_at
            if ends_at is not None and amount <= budget.limit_nanos:
                retry_after = max(1, math.ceil(ends_at - now))
        return BudgetExceeded(
            plan.accounts[payer - 1],
            limit=budget.limit,
            spent=from_nanos(used),
            required=from_nanos(amount),
            window=str(window),
            retry_after=retry_after,
        )


def _has_hash_tag(prefix: str) -> bool:
    # Redis hashes only the part between the first "{" and the next "}" when non-empty.
    start = prefix.find("{")
    return start >= 0 and prefix.find("}", start + 1) > start + 1


def _text(value: bytes | str) -> str:
    # replies are bytes unless the caller's client was built with decode_responses=True
    return value.decode() if isinstance(value, bytes) else value


@lru_cache(maxsize=256)
def _budget(limit: str, ci: int, seconds: int) -> Budget:
    kind = _KIND_OF[ci]
    return Budget(int(limit), Window(kind, seconds if kind == "rolling" else None))


def _checked(amount: int) -> int:
    if type(amount) is not int or amount < 0:
        raise ValueError(f"amounts are int nano-USD >= 0, got {amount!r}")
    if amount > _MAX_AMOUNT:
        raise ValueError(f"RedisLedger amounts are at most 2**53 - 1 nano-USD, got {amount}")
    return amount


def _wrong_kind(key: str, reason: str, wanted: str) -> ValueError:
    if reason == "active":
        return ValueError(f"hold {key!r} is still active: capture or release it first")
    return ValueError(f"key {key!r} belongs to a {reason}, not a {wanted}")


def _unavailable(operation: str, exc: Exception) -> LedgerError:
    return LedgerError(f"redis ledger {operation} failed: {type(exc).__name__}: {exc}")
