"""What each :class:`~metered.ledger.RedisLedger` script is called with, and how its reply
is read: one :class:`~metered.ledger._redis_scripts.Op` per operation, built after the
arguments are checked the way every ledger checks them. The ledger runs an op through
its sync or async client (``_run`` / ``_arun``): each operation is written once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, TypeVar, cast

from metered.config.budgets import Budget, Window, calendar_periods
from metered.ledger._common import (
    PlanCache,
    check_amount,
    check_balance_args,
    check_floor,
    check_key,
    check_now,
    check_ttl,
)
from metered.ledger._redis_scripts import (
    CALENDAR,
    Op,
    Plan,
    failure,
    receipt_parser,
    text,
    wrong_kind,
)
from metered.ledger.types import Balance, Charge, EntryState, Hold, Receipt

__all__ = ["Operations"]

T = TypeVar("T")


class Operations:
    """The operations of the Redis ledger: arguments in, an :class:`Op` (script, keys,
    arguments, reply parser) out. Mixed into :class:`~metered.ledger.RedisLedger`, which
    sets the attributes below."""

    _plan: PlanCache[Plan]
    _clock: Callable[[], float]
    _fractions: tuple[Decimal, ...]
    _prefix: str
    _retain: float
    _holds_key: str

    def _hold(
        self,
        key: str,
        charges: Sequence[Charge],
        amount: int,
        ttl_seconds: float,
        now: float | None,
        floor: int | None,
    ) -> Op[Hold]:
        check_key(key)
        plan = self._plan(charges)
        check_amount(amount)
        check_floor(floor, amount)
        check_ttl(ttl_seconds)
        now = check_now(now, self._clock)
        expires_at = now + ttl_seconds

        def parse(reply: Any) -> Hold:
            tag = text(reply[0])
            if tag == "held":
                return Hold(key, "held", int(reply[1]), plan.accounts, expires_at)
            if tag == "replay":
                accounts = tuple(text(a) for a in reply[4])
                state = cast(EntryState, text(reply[1]))
                return Hold(key, state, reply[2], accounts, float(reply[3]), replayed=True)
            need = amount if floor is None else floor
            raise failure(key, reply, plan, need, now, wanted="hold")

        args = (amount, expires_at, plan.spec, "" if floor is None else floor)
        return self._op("hold", key, now, args, parse)

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
        floor: int | None,
    ) -> Op[Receipt]:
        check_key(key)
        plan = self._plan(charges)
        check_amount(amount)
        check_floor(floor, amount)
        now = check_now(now, self._clock)
        args = (amount, plan.spec, "1" if enforce else "0", "" if floor is None else floor)
        need = amount if floor is None else floor
        parse = receipt_parser(key, "charge", self._fractions, plan, need, now)
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
