"""Settlement: when money moves, and what happens when the upstream call fails.

Two modes (per route, ``settlement:`` in the config):

``after-response`` (default; callers are never billed for failures)
    Before the call the maximum price is **held**. On success the actual price is
    **captured** (``settled``). On an upstream error or timeout the hold is **released**
    (``released``: refund protection). An ``on_response`` hook that vetoes settlement
    (an empty completion, an HTTP 429 passed through as a response) also releases
    (``skipped``).

``before-response`` (prepaid)
    The quoted price is **charged** before the call. On success the charge is
    **adjusted** to the actual price (``settled``). On failure the charge is kept
    (``settled``) unless the route sets ``refund_on_failure``, which **refunds** it
    (``refunded``). A veto refunds (``refunded``).

A stream the caller cuts short (``break``, ``close()``, garbage collection) settles the
tokens actually delivered (estimated) unless the route sets
``settle_partial_streams: false``, in which case nothing is charged (a prepaid charge is
refunded). A stream cut by an *upstream* error is a failure like any other: refund
protection wins over the tokens already delivered. A
ledger fault during settlement parks a capture, adjustment or refund in the outbox
(``pending``: it lands when the store answers again, see :mod:`metered.engine.outbox`);
a release that fails is ``failed``, and the hold expires on its own, so a crashed or
failing settlement never locks budget.

The decision is made once, here (:func:`decide`); the engine runs it against the sync or
async ledger API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Action", "SettlementMode", "SettlementStatus", "decide"]

SettlementMode = Literal["after-response", "before-response"]
SettlementStatus = Literal["settled", "refunded", "released", "skipped", "failed", "pending"]
ActionKind = Literal["capture", "release", "adjust", "refund", "keep"]


@dataclass(frozen=True, slots=True)
class Action:
    """What to do to the ledger entry of a call, and the status that results."""

    kind: ActionKind
    status: SettlementStatus


_CAPTURE = Action("capture", "settled")
_RELEASE = Action("release", "released")
_SKIP = Action("release", "skipped")
_ADJUST = Action("adjust", "settled")
_KEEP = Action("keep", "settled")
_REFUND = Action("refund", "refunded")


def decide(
    mode: SettlementMode,
    *,
    succeeded: bool,
    vetoed: bool = False,
    refund_on_failure: bool = False,
) -> Action:
    """The settlement action for a finished call.

    Args:
        mode: the route's settlement mode.
        succeeded: the upstream answered with a usable response (a partial stream that
            is settled counts as success).
        vetoed: an ``on_response`` hook declined settlement.
        refund_on_failure: ``before-response`` only: refund the prepaid charge on failure.
    """
    if mode == "after-response":
        if vetoed:
            return _SKIP
        return _CAPTURE if succeeded else _RELEASE
    if vetoed:
        return _REFUND
    if succeeded:
        return _ADJUST
    return _REFUND if refund_on_failure else _KEEP
