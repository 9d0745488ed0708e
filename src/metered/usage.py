"""What a call consumed, in one type.

:class:`Usage` counts ``input_tokens`` as the **total** prompt (cached tokens included)
and ``output_tokens`` as the total completion (reasoning tokens included). Providers
disagree on that: their readers in :mod:`metered.providers` normalise each wire format to
these totals, so pricing never double-counts or drops a cached token.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Literal

__all__ = ["Usage", "UsageSource", "estimated"]

UsageSource = Literal["actual", "estimated", "unknown"]
_INT_ONLY = {int}
_SOURCES = ("actual", "estimated", "unknown")
_ZERO = Decimal(0)
_COUNTS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "requests",
    "web_search_requests",
)


def _valid_seconds(seconds: object) -> bool:
    return isinstance(seconds, Decimal) and seconds.is_finite() and seconds >= 0


@dataclass(frozen=True, slots=True)
class Usage:
    """Resources one call consumed.

    Attributes:
        input_tokens: total prompt tokens, cached reads and cache writes included.
        output_tokens: total completion tokens, reasoning included.
        cache_read_tokens: prompt tokens served from the provider's cache.
        cache_write_tokens: prompt tokens written to the provider's cache (all TTLs).
        cache_write_1h_tokens: the part of ``cache_write_tokens`` written with a one-hour
            TTL (Anthropic bills those above the default five-minute writes).
        reasoning_tokens: output tokens spent on hidden reasoning.
        requests: number of billable requests (1 for a chat call).
        web_search_requests: server-side web searches the provider ran for the call
            (Anthropic ``server_tool_use.web_search_requests``), billed per search.
        seconds: billable compute time, for per-second (self-hosted) prices.
        service_tier: the tier that served the call when it is not the standard one
            (OpenAI ``flex`` / ``priority``, Google ``flex`` / ``priority``), priced at
            that tier's rates.
        batch: the call ran through a batch API (half price at most providers).
        source: ``actual`` (provider-reported), ``estimated`` (counted locally) or
            ``unknown``.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    requests: int = 1
    seconds: Decimal = _ZERO
    source: UsageSource = "actual"
    web_search_requests: int = 0
    service_tier: str | None = None
    batch: bool = False

    def __post_init__(self) -> None:
        counts = (
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.cache_write_1h_tokens,
            self.reasoning_tokens,
            self.requests,
            self.web_search_requests,
        )
        # Every call builds a few Usages: the common case (plain ints within their totals,
        # the default seconds and a known source) is decided by one pass of cheap tests;
        # only a failing value goes on to the checks that name it.
        if (
            set(map(type, counts)) == _INT_ONLY  # plain ints: no bool, float or str
            and min(counts) >= 0
            and self.cache_read_tokens + self.cache_write_tokens <= self.input_tokens
            and self.cache_write_1h_tokens <= self.cache_write_tokens
            and self.reasoning_tokens <= self.output_tokens
            and (self.seconds is _ZERO or _valid_seconds(self.seconds))
            and self.source in _SOURCES
            and (self.service_tier is None or type(self.service_tier) is str)
            and type(self.batch) is bool
        ):
            return
        self._explain(counts)

    def _explain(self, counts: tuple[object, ...]) -> None:
        """Raise the ValueError naming the first broken invariant."""
        for name, value in zip(_COUNTS, counts, strict=True):
            if type(value) is not int or value < 0:
                raise ValueError(f"Usage.{name} must be a non-negative int, got {value!r}")
        if self.cache_read_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError(
                "Usage: cache_read_tokens + cache_write_tokens "
                f"({self.cache_read_tokens} + {self.cache_write_tokens}) exceed input_tokens "
                f"({self.input_tokens}); input_tokens is the total, cached included"
            )
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise ValueError(
                f"Usage: cache_write_1h_tokens ({self.cache_write_1h_tokens}) exceed "
                f"cache_write_tokens ({self.cache_write_tokens}), which count every cache write"
            )
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError(
                f"Usage: reasoning_tokens ({self.reasoning_tokens}) exceed output_tokens "
                f"({self.output_tokens}); output_tokens is the total, reasoning included"
            )
        if self.service_tier is not None and type(self.service_tier) is not str:
            raise ValueError(f"Usage.service_tier must be a str or None, got {self.service_tier!r}")
        if type(self.batch) is not bool:
            raise ValueError(f"Usage.batch must be a bool, got {self.batch!r}")
        if not _valid_seconds(self.seconds):
            raise ValueError(
                f"Usage.seconds must be a finite non-negative Decimal, got {self.seconds!r}"
            )
        raise ValueError(f"Usage.source must be one of {_SOURCES}, got {self.source!r}")

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def with_source(self, source: UsageSource) -> Usage:
        """A copy marked with another source."""
        return replace(self, source=source)

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        source: UsageSource = self.source if self.source == other.source else "estimated"
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            cache_write_1h_tokens=self.cache_write_1h_tokens + other.cache_write_1h_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            requests=self.requests + other.requests,
            seconds=self.seconds + other.seconds,
            source=source,
            web_search_requests=self.web_search_requests + other.web_search_requests,
            service_tier=self.service_tier if self.service_tier == other.service_tier else None,
            batch=self.batch and other.batch,
        )


def estimated(input_tokens: int, output_tokens: int) -> Usage:
    """An estimated one-request ``Usage`` (the engine's pre-call estimate)."""
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens, source="estimated")
