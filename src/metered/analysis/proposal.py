"""What ``metered propose`` proposes: per-entry proposals and the route's YAML block.

The numbers come from :func:`metered.analysis.propose.propose_prices`; these types hold
them, render them as JSON-ready dicts and as the ``models:`` block to paste in a config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from metered.analysis.numbers import nano, pct
from metered.analysis.records import ReadStats
from metered.money import Rate, format_usd

__all__ = ["ROUNDING", "SIG_DIGITS", "Bound", "ModelProposal", "PriceProposal"]

#: What limited a proposed change (``none``: the target itself).
Bound = Literal["up", "down", "floor", "ceiling", "none"]
#: Proposed prices keep this many significant digits (more only where a bound needs them).
SIG_DIGITS = 3
#: The rounding rule, in words (JSON output and the table's footer say it).
ROUNDING = (
    f"rounded up to {SIG_DIGITS} significant digits (more where that would cross the "
    "upper bound); never down, so never below cost"
)


@dataclass(frozen=True, slots=True)
class ModelProposal:
    """The proposal for one ``route.models`` entry.

    Attributes:
        model: the entry's key as written in the config.
        kind: ``flat`` (per request), ``token`` (token rates) or ``markup``.
        calls: settled calls with a known cost this entry priced (the sample).
        unknown_cost_calls: settled calls it priced whose cost is unknown (left out).
        current: the entry as configured (USD per request or per token, by rate name).
        proposed: the new rates, ``None`` when nothing is proposed (see ``reason``).
        mean_cost / p90_cost: observed cost per call.
        current_price / proposed_price: mean price per sampled call at those rates.
        current_margin_pct / proposed_margin_pct: margin over mean cost, in % of price.
        change_pct: change of the mean price per call, in %.
        bound: what limited the change; ``None`` when nothing is proposed.
        reason: why, in words.
    """

    model: str
    kind: Literal["flat", "token", "markup"]
    calls: int
    unknown_cost_calls: int
    current: dict[str, Decimal]
    proposed: dict[str, Decimal] | None
    mean_cost: Decimal | None
    p90_cost: Decimal | None
    current_price: Decimal | None
    proposed_price: Decimal | None
    current_margin_pct: Decimal | None
    proposed_margin_pct: Decimal | None
    change_pct: Decimal | None
    bound: Bound | None
    reason: str

    def config_value(self, *, proposed: bool = True) -> str | dict[str, str]:
        """The entry as YAML would write it: ``"$0.0123"`` or a mapping of rates."""
        rates = self.proposed if proposed and self.proposed is not None else self.current
        if self.kind == "flat":
            return format_usd(rates["request"])
        if self.kind == "markup":
            return {"markup": f"{rates['markup'].normalize():f}x"}
        return {
            name: str(Rate(usd=usd, unit="request" if name == "request" else "token"))
            for name, usd in rates.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "model": self.model,
            "kind": self.kind,
            "calls": self.calls,
            "unknown_cost_calls": self.unknown_cost_calls,
            "current": self.config_value(proposed=False),
            "proposed": None if self.proposed is None else self.config_value(),
            "mean_cost_usd": nano(self.mean_cost),
            "p90_cost_usd": self.p90_cost,
            "current_price_usd": nano(self.current_price),
            "proposed_price_usd": nano(self.proposed_price),
            "current_margin_pct": self.current_margin_pct,
            "proposed_margin_pct": self.proposed_margin_pct,
            "change_pct": self.change_pct,
            "bound": self.bound,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class PriceProposal:
    """Proposed ``models:`` prices for one route (never written anywhere by metered)."""

    route: str
    target_margin: Decimal
    max_up: Decimal
    max_down: Decimal
    min_calls: int
    models: list[ModelProposal]
    read: ReadStats

    def yaml(self) -> str:
        """The route's ``models:`` block with the proposed prices, ready to paste.

        Every entry is listed (unchanged ones with the reason as a comment), so the block
        can replace the route's ``models:`` as a whole.
        """
        lines = [f"# routes.{json.dumps(self.route)}.models", "models:"]
        for p in self.models:
            value = p.config_value()
            note = "" if p.proposed is not None else f"  # unchanged: {p.reason}"
            if isinstance(value, str):
                lines.append(f"  {json.dumps(p.model)}: {json.dumps(value)}{note}")
                continue
            lines.append(f"  {json.dumps(p.model)}:{note}")
            lines += [f"    {name}: {json.dumps(text)}" for name, text in value.items()]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "route": self.route,
            "target_margin_pct": pct(self.target_margin, 1),
            "max_up_pct": pct(self.max_up, 1),
            "max_down_pct": pct(self.max_down, 1),
            "min_calls": self.min_calls,
            "rounding": ROUNDING,
            **self.read.to_dict(),
            "models": [p.to_dict() for p in self.models],
            "yaml": self.yaml(),
        }
