"""What a call consumed, in one type, and extractors from each provider's shapes.

:class:`Usage` counts ``input_tokens`` as the **total** prompt (cached tokens included)
and ``output_tokens`` as the total completion (reasoning tokens included). Providers
disagree: OpenAI reports cached tokens *inside* ``prompt_tokens``; Anthropic reports
``cache_read_input_tokens`` and ``cache_creation_input_tokens`` *beside*
``input_tokens``. The extractors here normalise both to totals, so pricing never
double-counts or drops a cached token.

Extractors accept SDK objects and plain dicts (JSON bodies) alike and never raise on
odd provider data: missing fields count as zero, and details that exceed their total
are clamped to it (a provider bug must not break the user's call).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Literal

__all__ = [
    "AnthropicStreamUsage",
    "Usage",
    "UsageSource",
    "from_anthropic",
    "from_openai_chat",
    "from_openai_chunk",
    "from_openai_responses",
    "from_openai_responses_event",
]

UsageSource = Literal["actual", "estimated", "unknown"]
_SOURCES = ("actual", "estimated", "unknown")
_ZERO = Decimal(0)


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
        seconds: billable compute time, for per-second (self-hosted) prices.
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

    def __post_init__(self) -> None:
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "cache_write_1h_tokens",
            "reasoning_tokens",
            "requests",
        ):
            value = getattr(self, name)
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
        if (
            not isinstance(self.seconds, Decimal)
            or not self.seconds.is_finite()
            or self.seconds < 0
        ):
            raise ValueError(
                f"Usage.seconds must be a finite non-negative Decimal, got {self.seconds!r}"
            )
        if self.source not in _SOURCES:
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
        )


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _int(value: Any) -> int:
    if type(value) is int and value > 0:
        return value
    if isinstance(value, float) and value > 0 and value.is_integer():
        return int(value)
    return 0


def _normalised(
    input_total: int,
    output_total: int,
    cache_read: int,
    cache_write: int,
    reasoning: int,
    cache_write_1h: int = 0,
) -> Usage:
    cache_read = min(cache_read, input_total)
    cache_write = min(cache_write, input_total - cache_read)
    return Usage(
        input_tokens=input_total,
        output_tokens=output_total,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=min(cache_write_1h, cache_write),
        reasoning_tokens=min(reasoning, output_total),
    )


def _chat_usage(usage: Any) -> Usage:
    prompt = _get(usage, "prompt_tokens")
    if prompt is None and _get(usage, "input_tokens") is not None:
        # some OpenAI-compatible servers answer chat calls with Responses-style names
        return _responses_usage(usage)
    details = _get(usage, "prompt_tokens_details")
    return _normalised(
        _int(prompt),
        _int(_get(usage, "completion_tokens")),
        _int(_get(details, "cached_tokens")),
        _int(_get(details, "cache_write_tokens")),
        _int(_get(_get(usage, "completion_tokens_details"), "reasoning_tokens")),
    )


def _responses_usage(usage: Any) -> Usage:
    details = _get(usage, "input_tokens_details")
    return _normalised(
        _int(_get(usage, "input_tokens")),
        _int(_get(usage, "output_tokens")),
        _int(_get(details, "cached_tokens")),
        _int(_get(details, "cache_write_tokens")),
        _int(_get(_get(usage, "output_tokens_details"), "reasoning_tokens")),
    )


def from_openai_chat(response: Any) -> Usage | None:
    """Usage of an OpenAI Chat Completions response (SDK object or JSON dict).

    Returns ``None`` when the response carries no usage.
    """
    usage = _get(response, "usage")
    return None if usage is None else _chat_usage(usage)


def from_openai_chunk(chunk: Any) -> Usage | None:
    """Usage carried by an OpenAI chat stream chunk (the ``include_usage`` final chunk)."""
    return from_openai_chat(chunk)


def from_openai_responses(response: Any) -> Usage | None:
    """Usage of an OpenAI Responses API response (SDK object or JSON dict)."""
    usage = _get(response, "usage")
    return None if usage is None else _responses_usage(usage)


def from_openai_responses_event(event: Any) -> Usage | None:
    """Usage from a Responses stream event (``response.completed`` and friends)."""
    if _get(event, "type") in ("response.completed", "response.incomplete", "response.failed"):
        return from_openai_responses(_get(event, "response"))
    return None


def _anthropic_usage(usage: Any) -> Usage:
    base = _int(_get(usage, "input_tokens"))
    cache_read = _int(_get(usage, "cache_read_input_tokens"))
    cache_write = _int(_get(usage, "cache_creation_input_tokens"))
    # Anthropic reports cache tokens beside input_tokens: the total is the sum.
    return _normalised(
        base + cache_read + cache_write,
        _int(_get(usage, "output_tokens")),
        cache_read,
        cache_write,
        _int(_get(_get(usage, "output_tokens_details"), "thinking_tokens")),
        _int(_get(_get(usage, "cache_creation"), "ephemeral_1h_input_tokens")),
    )


def from_anthropic(message: Any) -> Usage | None:
    """Usage of an Anthropic Messages response (SDK object or JSON dict)."""
    usage = _get(message, "usage")
    return None if usage is None else _anthropic_usage(usage)


class AnthropicStreamUsage:
    """Accumulates usage from Anthropic stream events.

    ``message_start`` carries the input side (and a provisional output count);
    ``message_delta`` carries the cumulative output count, and on newer API versions
    the input side again. The latest value of each field wins.
    """

    __slots__ = ("_fields", "seen")

    def __init__(self) -> None:
        self._fields: dict[str, Any] = {}
        self.seen = False

    def feed(self, event: Any) -> None:
        """Take one stream event (SDK object or dict); other event types are ignored."""
        kind = _get(event, "type")
        if kind == "message_start":
            usage = _get(_get(event, "message"), "usage")
        elif kind == "message_delta":
            usage = _get(event, "usage")
        else:
            return
        if usage is None:
            return
        self.seen = True
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "cache_creation",
            "output_tokens_details",
        ):
            value = _get(usage, name)
            if value is not None:
                self._fields[name] = value

    def usage(self) -> Usage | None:
        """The usage so far, or ``None`` if no usage-bearing event was seen."""
        return _anthropic_usage(self._fields) if self.seen else None
