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

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from operator import attrgetter
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


# A frozen dataclass's __init__ sets every field through object.__setattr__ and then
# validates them all: three times the cost of filling the slots. Counts the library has
# already checked (its own estimates, provider counts after _normalised) are built here.
# (tests compare these Usages with the checked constructor's, all fields included)
_SETTERS: dict[str, Any] = {f.name: vars(Usage)[f.name].__set__ for f in fields(Usage)}
_set_input = _SETTERS["input_tokens"]
_set_output = _SETTERS["output_tokens"]
_set_read = _SETTERS["cache_read_tokens"]
_set_write = _SETTERS["cache_write_tokens"]
_set_write_1h = _SETTERS["cache_write_1h_tokens"]
_set_reasoning = _SETTERS["reasoning_tokens"]
_set_requests = _SETTERS["requests"]
_set_seconds = _SETTERS["seconds"]
_set_source = _SETTERS["source"]


def _valid(
    input_tokens: int,
    output_tokens: int,
    cache_read: int,
    cache_write: int,
    cache_write_1h: int,
    reasoning: int,
    source: UsageSource,
) -> Usage:
    """A one-request ``Usage`` of counts that already satisfy its checks (non-negative
    ints, details within their totals), built without running them again."""
    usage: Usage = object.__new__(Usage)
    _set_input(usage, input_tokens)
    _set_output(usage, output_tokens)
    _set_read(usage, cache_read)
    _set_write(usage, cache_write)
    _set_write_1h(usage, cache_write_1h)
    _set_reasoning(usage, reasoning)
    _set_requests(usage, 1)
    _set_seconds(usage, _ZERO)
    _set_source(usage, source)
    return usage


def estimated(input_tokens: int, output_tokens: int) -> Usage:
    """``Usage(input_tokens=..., output_tokens=..., source="estimated")`` built WITHOUT
    Usage's checks: for the engine's pre-call estimate, whose counts it computed itself
    (non-negative ints). Not exported; anything else should build ``Usage(...)``."""
    return _valid(input_tokens, output_tokens, 0, 0, 0, 0, "estimated")


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _reader(*paths: str) -> Callable[[Any], tuple[Any, ...]]:
    """A reader of several fields at once (dotted paths reach into details), as a tuple;
    a missing field or step reads as ``None``.

    Extraction runs on every metered call: an SDK object (a pydantic model, whose declared
    fields are plain attributes) is read with a single ``attrgetter`` call, nested details
    included. JSON dicts, and objects lacking a field or detail, are walked step by step.
    """
    getter = attrgetter(*paths)
    steps = [path.split(".") for path in paths]

    def walk(obj: Any) -> tuple[Any, ...]:
        values = []
        for names in steps:
            value = obj
            for name in names:
                value = _get(value, name)
            values.append(value)
        return tuple(values)

    def read(obj: Any) -> tuple[Any, ...]:
        if obj is None or isinstance(obj, dict):
            return walk(obj)
        try:
            values: tuple[Any, ...] = getter(obj)
        except AttributeError:
            return walk(obj)
        return values

    return read


def _int(value: Any) -> int:
    if type(value) is int and value > 0:
        return value
    if isinstance(value, float) and value > 0 and value.is_integer():
        return int(value)
    return 0


def _normalised(
    input_total: Any,
    output_total: Any,
    cache_read: Any,
    cache_write: Any,
    reasoning: Any,
    cache_write_1h: Any = 0,
) -> Usage:
    """The Usage of raw provider counts, each read as :func:`_int`, details clamped to totals.

    Runs on every metered call, so the common case (plain non-negative ints, details
    within totals) costs a few comparisons: no call per count, no ``min()``, and the Usage
    is built without re-running its checks.
    """
    counts = (input_total, output_total, cache_read, cache_write, reasoning, cache_write_1h)
    for count in counts:
        if type(count) is not int or count < 0:
            input_total, output_total, cache_read, cache_write, reasoning, cache_write_1h = map(
                _int, counts
            )
            break
    if cache_read > input_total:
        cache_read = input_total
    if cache_write > input_total - cache_read:
        cache_write = input_total - cache_read
    if cache_write_1h > cache_write:
        cache_write_1h = cache_write
    if reasoning > output_total:
        reasoning = output_total
    # every count is now a non-negative int within its total
    return _valid(
        input_total, output_total, cache_read, cache_write, cache_write_1h, reasoning, "actual"
    )


_CHAT_USAGE = _reader(
    "prompt_tokens",
    "completion_tokens",
    "prompt_tokens_details.cached_tokens",
    "prompt_tokens_details.cache_write_tokens",
    "completion_tokens_details.reasoning_tokens",
)
_RESPONSES_USAGE = _reader(
    "input_tokens",
    "output_tokens",
    "input_tokens_details.cached_tokens",
    "input_tokens_details.cache_write_tokens",
    "output_tokens_details.reasoning_tokens",
)


def _chat_usage(usage: Any) -> Usage:
    prompt, completion, cached, cache_write, reasoning = _CHAT_USAGE(usage)
    if prompt is None and _get(usage, "input_tokens") is not None:
        # some OpenAI-compatible servers answer chat calls with Responses-style names
        return _responses_usage(usage)
    return _normalised(prompt, completion, cached, cache_write, reasoning)


def _responses_usage(usage: Any) -> Usage:
    input_total, output_total, cached, cache_write, reasoning = _RESPONSES_USAGE(usage)
    return _normalised(input_total, output_total, cached, cache_write, reasoning)


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


_ANTHROPIC_USAGE = _reader(
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
    "output_tokens_details",
    "cache_creation",
)


def _anthropic_usage(usage: Any) -> Usage:
    base, cache_read, cache_write, output, output_details, cache_creation = _ANTHROPIC_USAGE(usage)
    cache_read = _int(cache_read)
    cache_write = _int(cache_write)
    # Anthropic reports cache tokens beside input_tokens: the total is the sum.
    return _normalised(
        _int(base) + cache_read + cache_write,
        _int(output),
        cache_read,
        cache_write,
        _int(_get(output_details, "thinking_tokens")),
        _int(_get(cache_creation, "ephemeral_1h_input_tokens")),
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
