"""``capture_spend()``: the usage records of the calls made inside a block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from decimal import Decimal

from metered import context as _context_vars
from metered.records import UsageRecord


class SpendCapture:
    """The usage records of the metered calls finished inside :func:`capture_spend`."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    @property
    def calls(self) -> int:
        """Calls finished (settled, released, refused ...)."""
        return len(self.records)

    @property
    def cost(self) -> Decimal:
        """Upstream cost of the settled calls (calls with an unknown cost add nothing)."""
        return sum((r.cost for r in self.records if r.cost is not None), Decimal(0))

    @property
    def price(self) -> Decimal:
        """What the settled calls were charged."""
        return sum((r.settlement_amount for r in self.records if r.payment_settled), Decimal(0))

    def by_model(self) -> dict[str, Decimal]:
        """Charged amount per requested model."""
        out: dict[str, Decimal] = {}
        for r in self.records:
            if r.payment_settled and r.requested_model is not None:
                out[r.requested_model] = (
                    out.get(r.requested_model, Decimal(0)) + r.settlement_amount
                )
        return out


@contextlib.contextmanager
def capture_spend() -> Iterator[SpendCapture]:
    """Collect the usage record of every metered call finished in this context.

    Works with any meter and any door (client proxies, middleware), including calls made
    in asyncio tasks started inside the block::

        with capture_spend() as spend:
            client.chat.completions.create(model="gpt-4o", messages=[...])
        assert spend.calls == 1 and spend.price > 0
    """
    capture = SpendCapture()
    token = _context_vars._captured.set(capture.records)
    try:
        yield capture
    finally:
        _context_vars._captured.reset(token)
