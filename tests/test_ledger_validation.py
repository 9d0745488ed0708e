"""Argument checks every ledger shares (ledger/_common.py), run against BOTH ledgers.

A bad argument must fail the same way whichever store is configured: the same
``ValueError``, raised before anything is read or recorded, whether or not the ledger
happens to remember the key.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest
import redis

from metered.ledger import Budget, Charge, Ledger, MemoryLedger, Window
from metered.ledger.redis import RedisLedger
from tests.redis_server import RedisServer, redis_server_fixture  # noqa: F401
from tests.test_ledger import NOW, TTL, usd, user


@pytest.fixture(name="ledger", params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def both_ledgers(request: pytest.FixtureRequest) -> AsyncIterator[Ledger]:
    """A MemoryLedger, then a RedisLedger on the session's redis-server (emptied)."""
    if request.param == "memory":
        yield MemoryLedger(clock=lambda: NOW)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    with redis.Redis.from_url(server.url) as client:
        client.flushall()
    built = RedisLedger(server.url, clock=lambda: NOW)
    yield built
    await built.aclose()


BAD_KEYS = [pytest.param(k, id=repr(k)) for k in ("", 5, None, b"k1")]
BAD_AMOUNTS = [pytest.param(a, id=repr(a)) for a in (-1, 1.5, True, "5", Decimal(5), None, 2**53)]
BAD_CHARGES = [
    pytest.param([], id="empty"),
    pytest.param([Charge("a"), Charge("a")], id="duplicate"),
    pytest.param(["a"], id="str-item"),
    pytest.param([None], id="None-item"),
    pytest.param("a", id="str"),
    pytest.param(Charge("a"), id="bare-Charge"),
    pytest.param(None, id="None"),
]
BAD_NOWS = [pytest.param(n, id=repr(n)) for n in ("x", math.nan, math.inf, True)]

USER = (user(),)
# Every operation, with valid defaults; a test replaces one argument by keyword.
OPERATIONS: dict[str, Callable[..., Any]] = {
    "hold": lambda lg, key="k9", charges=USER, amount=5, ttl=TTL, now=None: lg.hold(
        key, charges, amount, ttl_seconds=ttl, now=now
    ),
    "capture": lambda lg, key="k9", amount=5, now=None: lg.capture(key, amount, now=now),
    "release": lambda lg, key="k9", now=None: lg.release(key, now=now),
    "charge": lambda lg, key="k9", charges=USER, amount=5, now=None: lg.charge(
        key, charges, amount, now=now
    ),
    "adjust": lambda lg, key="k9", amount=5, now=None: lg.adjust(key, amount, now=now),
    "refund": lambda lg, key="k9", now=None: lg.refund(key, now=now),
    "balance": lambda lg, now=None: lg.balance("user", now=now),
    "sweep": lambda lg, now=None: lg.sweep(now=now),
}
WITH_KEY = ["hold", "capture", "release", "charge", "adjust", "refund"]
WITH_AMOUNT = ["hold", "capture", "charge", "adjust"]


def assert_untouched(ledger: Ledger) -> None:
    """Nothing was held or spent, and key k9 is still free."""
    balance = ledger.balance("user")
    assert (balance.spent_nanos, balance.held_nanos) == (0, 0)
    assert ledger.capture("k9", 1).status == "unknown"


@pytest.mark.parametrize("operation", WITH_KEY)
@pytest.mark.parametrize("key", BAD_KEYS)
def test_a_key_that_is_not_a_non_empty_str_is_refused(
    ledger: Ledger, operation: str, key: object
) -> None:
    """Every keyed operation refuses a key that is not a non-empty str."""
    with pytest.raises(ValueError, match="key"):
        OPERATIONS[operation](ledger, key=key)
    assert_untouched(ledger)


@pytest.mark.parametrize("operation", WITH_AMOUNT)
@pytest.mark.parametrize("amount", BAD_AMOUNTS)
def test_an_amount_that_is_not_int_nanos_in_range_is_refused(
    ledger: Ledger, operation: str, amount: object
) -> None:
    """Amounts are ints (not bool) from 0 to 2**53 - 1 nano-USD in every ledger."""
    ledger.charge("k1", [user()], 5)  # adjust then finds a real entry to correct
    with pytest.raises(ValueError, match="nano-USD"):
        OPERATIONS[operation](ledger, key="k1" if operation == "adjust" else "k9", amount=amount)
    assert ledger.balance("user").spent_nanos == 5


@pytest.mark.parametrize("amount", [0, 2**53 - 1])
def test_the_amount_range_is_inclusive(ledger: Ledger, amount: int) -> None:
    """Zero and 2**53 - 1 nano-USD are both accepted."""
    assert ledger.charge("k1", [user()], amount).amount_nanos == amount


@pytest.mark.parametrize("operation", ["hold", "charge"])
@pytest.mark.parametrize("charges", BAD_CHARGES)
def test_charges_that_name_no_account_once_each_are_refused(
    ledger: Ledger, operation: str, charges: object
) -> None:
    """Charges are a non-empty sequence of Charge, each account at most once."""
    with pytest.raises(ValueError, match=r"charges|account"):
        OPERATIONS[operation](ledger, charges=charges)
    assert_untouched(ledger)


@pytest.mark.parametrize("charges", [c for c in BAD_CHARGES if c.id != "None"])
def test_capture_checks_fallback_charges_for_an_unknown_key(
    ledger: Ledger, charges: object
) -> None:
    """A capture's fallback charges are checked when the key is unknown."""
    with pytest.raises(ValueError, match=r"charges|account"):
        ledger.capture("k9", 5, charges=charges)  # type: ignore[arg-type]
    assert_untouched(ledger)


@pytest.mark.parametrize("charges", [c for c in BAD_CHARGES if c.id != "None"])
def test_capture_checks_fallback_charges_for_a_known_key_too(
    ledger: Ledger, charges: object
) -> None:
    """The same capture fails the same way whether or not the ledger knows the key."""
    ledger.hold("k1", [user()], 50, ttl_seconds=TTL)
    with pytest.raises(ValueError, match=r"charges|account"):
        ledger.capture("k1", 50, charges=charges)  # type: ignore[arg-type]
    assert ledger.balance("user").held_nanos == 50  # the hold is still live


async def test_async_capture_checks_fallback_charges_for_a_known_key(ledger: Ledger) -> None:
    """The async twin refuses the same empty charges as the sync method."""
    await ledger.ahold("k1", [user()], 50, ttl_seconds=TTL)
    with pytest.raises(ValueError, match="at least one account"):
        await ledger.acapture("k1", 50, charges=[])


def test_a_charges_list_changed_since_the_last_call_is_checked_again(ledger: Ledger) -> None:
    """A list is checked on every call (only a tuple, which cannot change, is reused)."""
    charges = [user()]
    ledger.hold("k1", charges, 5, ttl_seconds=TTL)
    charges.append(user())
    with pytest.raises(ValueError, match="once"):
        ledger.capture("k1", 5, charges=charges)


@pytest.mark.parametrize("ttl", [0, -1, math.inf, math.nan, True, "60", None])
def test_a_ttl_that_is_not_a_positive_finite_number_is_refused(ledger: Ledger, ttl: object) -> None:
    """A hold's ttl_seconds is a finite number of seconds above zero."""
    with pytest.raises(ValueError, match="ttl_seconds"):
        OPERATIONS["hold"](ledger, ttl=ttl)
    assert_untouched(ledger)


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("now", BAD_NOWS)
def test_a_now_that_is_not_finite_epoch_seconds_is_refused(
    ledger: Ledger, operation: str, now: object
) -> None:
    """``now``, when given, is a finite number of epoch seconds in every operation."""
    with pytest.raises(ValueError, match="now"):
        OPERATIONS[operation](ledger, now=now)
    assert_untouched(ledger)


@pytest.mark.parametrize(
    ("account", "budget", "message"),
    [
        ("", None, "account"),
        (5, None, "account"),
        (None, None, "account"),
        ("user", "$5/day", "budget"),
        ("user", 5, "budget"),
    ],
)
def test_balance_refuses_a_bad_account_or_budget(
    ledger: Ledger, account: object, budget: object, message: str
) -> None:
    """balance takes an account name and a Budget, a Window or None."""
    with pytest.raises(ValueError, match=message):
        ledger.balance(account, budget)  # type: ignore[arg-type]


@pytest.mark.parametrize("budget", [None, Window("day"), Budget(usd("5"), Window("day"))])
def test_balance_accepts_a_budget_a_window_or_none(ledger: Ledger, budget: object) -> None:
    """The three shapes of the balance question all answer."""
    assert ledger.balance("user", budget).spent_nanos == 0  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        ("charge", "hold", "belongs to a charge"),
        ("charge", "capture", "belongs to a charge"),
        ("charge", "release", "belongs to a charge"),
        ("hold", "charge", "belongs to a hold"),
        ("hold", "adjust", "still active"),
        ("hold", "refund", "still active"),
    ],
)
def test_a_key_used_for_the_wrong_kind_of_entry_is_refused(
    ledger: Ledger, first: str, second: str, message: str
) -> None:
    """One key names one entry: using it as the other kind is a programming error."""
    OPERATIONS[first](ledger, key="k1")
    with pytest.raises(ValueError, match=message):
        OPERATIONS[second](ledger, key="k1")
