"""Step 1 of the pipeline, identify: who pays for a call, under which tier, with which
budgets.

A caller is ``(account, tier, feature)``. What it resolves to depends only on the config,
so it is worked out once per caller and kept (:class:`Payer`); account names are user
input, so the cache is bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, NamedTuple

from metered.config import Config
from metered.engine.plan import Api
from metered.errors import MeteredError, UnknownTier
from metered.ledger import Budget, Charge, parse_budget

__all__ = ["Accounts", "Payer", "Request"]

_MAX_CACHED = 10_000


class Payer(NamedTuple):
    """What a caller resolves to.

    Attributes:
        tier: the tier whose caps and budgets apply.
        charges: the accounts charged, first the caller's own, then its parents, then
            its feature tag.
        budgets: the caller's own budgets (what :meth:`Meter.remaining` reads).
        refusal: builds the error refusing every call of this caller (an unknown tier),
            else ``None``.
    """

    tier: str | None
    charges: tuple[Charge, ...]
    budgets: tuple[Budget, ...]
    refusal: Callable[[], MeteredError] | None = None


class Accounts:
    """The accounts, tiers and budgets of a config (immutable once built)."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._budgets = _parse_budgets(config)
        self._payers: dict[tuple[str, str | None, str | None], Payer] = {}

    def payer(self, account: str, tier: str | None, feature: str | None) -> Payer:
        """The tier, charges and budgets of a caller (``tier=None``: the account's own)."""
        key = (account, tier, feature)
        payer = self._payers.get(key)
        if payer is None:
            effective = tier or self._tier_of(account)
            payer = Payer(
                effective,
                self.charges_for(account, tier=effective, feature=feature),
                self.budgets_of(account, effective),
                None if self.known_tier(effective) else partial(self.unknown_tier, effective),
            )
            if len(self._payers) >= _MAX_CACHED:
                self._payers.clear()
            self._payers[key] = payer
        return payer

    def charges_for(
        self, account: str, *, tier: str | None = None, feature: str | None = None
    ) -> tuple[Charge, ...]:
        """The accounts a call by ``account`` is charged to, with their budgets.

        A configured account brings its own budgets (else its tier's, else the default
        budgets) and its ``parents`` (a team); a feature tag is tracked as the account
        ``feature:<name>``.
        """
        configured = self._config.accounts.get(account)
        tier = tier or (configured.tier if configured else None)
        charges = [Charge(account, self.budgets_of(account, tier))]
        seen = {account}
        for parent in configured.parents if configured else ():
            if parent not in seen:
                seen.add(parent)
                charges.append(Charge(parent, self.budgets_of(parent, self._tier_of(parent))))
        if feature:
            name = f"feature:{feature}"
            if name not in seen:
                charges.append(Charge(name, self._budgets.get(name, ())))
        return tuple(charges)

    def budgets_of(self, account: str, tier: str | None) -> tuple[Budget, ...]:
        """The budgets enforced on ``account``: its own, else its tier's, else the default."""
        own = self._budgets.get(account)
        if own:
            return own
        if tier is not None:
            tiered = self._budgets.get(f"@tier:{tier}")
            if tiered:
                return tiered
        return self._budgets["@default"]

    def known_tier(self, tier: str | None) -> bool:
        """Whether ``tier`` may be used: no tier, a configured one, or any name when the
        config defines no tiers (a label then, with nothing attached). A caller with an
        unknown tier is refused (:class:`~metered.errors.UnknownTier`), never mapped to
        another tier: a typo or a stale tier from an identity provider must neither
        unlock more nor silently give a paying caller less."""
        tiers = self._config.tiers
        return tier is None or tier in tiers or not tiers

    def unknown_tier(self, tier: str | None) -> UnknownTier:
        """The error refusing a caller whose tier is not configured."""
        return UnknownTier(str(tier), tuple(self._config.tiers))

    def _tier_of(self, account: str) -> str | None:
        configured = self._config.accounts.get(account)
        return configured.tier if configured else None


def _parse_budgets(config: Config) -> dict[str, tuple[Budget, ...]]:
    def parse(items: Iterable[str], key: str) -> tuple[Budget, ...]:
        return tuple(parse_budget(raw, key=f"{key}[{i}]") for i, raw in enumerate(items))

    out = {"@default": parse(config.default_budgets, "default_budgets")}
    for name, tier in config.tiers.items():
        out[f"@tier:{name}"] = parse(tier.budgets, f"tiers.{name}.budgets")
    for name, account in config.accounts.items():
        out[name] = parse(account.budgets, f"accounts.{name}.budgets")
    return out


class Request(NamedTuple):
    """An identified request (step 1): the body and who makes the call."""

    body: dict[str, Any]
    is_mapping: bool  # the door passed a mapping (anything else is refused in step 2)
    api: Api
    provider: str | None
    server_address: str | None
    server_port: int | None
    account: str
    payer: Payer
    feature: str | None
    route: str | None
    urgent: bool
    headers: Mapping[str, str]
    metadata: Mapping[str, Any]
