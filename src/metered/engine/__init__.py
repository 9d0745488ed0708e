"""The metering engine: :class:`Meter` runs every chat call's pipeline, :class:`Call` is
one call from ``begin`` to its record. See :mod:`metered.engine.meter` for the steps."""

from metered.engine.call import Call
from metered.engine.meter import Meter
from metered.engine.plan import Api

__all__ = ["Api", "Call", "Meter"]
