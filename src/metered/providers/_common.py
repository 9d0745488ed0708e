"""What the wire-format readers share: one accessor for JSON dicts and SDK objects, the
normalisation of raw provider counts into :class:`~metered.usage.Usage`, the
:class:`Outcome` of a response and the :class:`StreamReader` base.

Every reader accepts a JSON dict (the HTTP doors decode bodies and server-sent events)
or an SDK object (a pydantic model, what the client proxies see) through :func:`get`, so
one function reads both and the doors cannot drift apart. Readers never raise on odd
provider data: missing fields count as zero and details that exceed their total are
clamped to it (a provider bug must not break the user's call).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal

from metered.tokens import count_text
from metered.usage import Usage

if TYPE_CHECKING:
    from metered.providers.messages import Transcript

__all__ = [
    "Outcome",
    "StreamReader",
    "WireFormat",
    "add_text",
    "as_int",
    "error_message",
    "get",
    "normalised",
    "reader",
    "served_tier",
    "settled_usage",
    "string",
    "whole",
]

#: The wire formats metered reads (the engine's ``Api`` values).
WireFormat = Literal["chat", "responses", "anthropic", "gemini"]

# Delivered stream text is counted in batches of this many characters: constant memory,
# one tokenizer call per batch instead of one per chunk.
_COUNT_BATCH = 4096


def get(obj: Any, name: str) -> Any:
    """Field ``name`` of a JSON dict or an SDK object; ``None`` when it is missing."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def string(value: object) -> str | None:
    """``value`` if it is a string, else ``None``."""
    return value if isinstance(value, str) else None


def reader(*paths: str) -> Callable[[Any], tuple[Any, ...]]:
    """A reader of several fields at once (dotted paths reach into details), as a tuple;
    a missing field or step reads as ``None``.

    An SDK object (a pydantic model, whose declared fields are plain attributes) is read
    with a single ``attrgetter`` call, nested details included; JSON dicts, and objects
    lacking a field or detail, are walked step by step.
    """
    getter = attrgetter(*paths)
    steps = [path.split(".") for path in paths]

    def walk(obj: Any) -> tuple[Any, ...]:
        values = []
        for names in steps:
            value = obj
            for name in names:
                value = get(value, name)
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


def as_int(value: Any) -> int:
    """A provider count as a non-negative int (anything else counts as zero)."""
    if type(value) is int and value > 0:
        return value
    if isinstance(value, float) and value > 0 and value.is_integer():
        return int(value)
    return 0


#: Service tiers billed at the standard rates (each provider's name for its default).
STANDARD_TIERS = frozenset({"default", "standard", "auto", "on_demand", "standard_only"})


def normalised(
    input_total: Any,
    output_total: Any,
    cache_read: Any,
    cache_write: Any,
    reasoning: Any,
    cache_write_1h: Any = 0,
    *,
    web_searches: Any = 0,
    service_tier: Any = None,
) -> Usage:
    """The actual Usage of raw provider counts, each read as :func:`as_int`, details
    clamped to their totals; ``service_tier`` is the tier the provider says served the
    call (a standard one is left out, ``batch`` marks a batch call)."""
    input_total = as_int(input_total)
    output_total = as_int(output_total)
    cache_read = min(as_int(cache_read), input_total)
    cache_write = min(as_int(cache_write), input_total - cache_read)
    return Usage(
        input_tokens=input_total,
        output_tokens=output_total,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=min(as_int(cache_write_1h), cache_write),
        reasoning_tokens=min(as_int(reasoning), output_total),
        web_search_requests=as_int(web_searches),
        service_tier=tier if (tier := served_tier(service_tier)) != "batch" else None,
        batch=tier == "batch",
    )


def served_tier(value: Any) -> str | None:
    """The non-standard service tier a response names (``flex``, ``priority``, ``batch``),
    else ``None``."""
    if isinstance(value, str) and value and value not in STANDARD_TIERS:
        return value
    return None


def error_message(error: object) -> str:
    """The message of a provider error object (``{"message": ...}``, nested or not)."""
    message = get(error, "message")
    if isinstance(message, str):
        return message
    inner = get(error, "error")
    if inner is not None and inner is not error:
        return error_message(inner)
    return "the upstream reported an error in the stream"


@dataclass(slots=True)
class Outcome:
    """What a response said about the call (``usage`` is ``None`` when it said nothing).

    Attributes:
        usage: the provider's usage report (for a stream, its final one).
        response_model: the model that answered.
        response_id: the provider's response id.
        finish_reasons: why generation stopped, in the format's one vocabulary.
        error: an error the response reported in its body (in-stream errors).
        complete: the response ran to its natural end.
        delivered: the billed output of a whole response that reports no usage (text,
            refusals, reasoning, tool-call names and arguments), to count instead.
        attributes: provider-specific span attributes the response carries (OpenAI's
            ``openai.response.service_tier`` and ``system_fingerprint``).
    """

    usage: Usage | None = None
    response_model: str | None = None
    response_id: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    error: str | None = None
    complete: bool = False
    delivered: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)


class StreamReader:
    """Reads one stream of one wire format, event by event (SSE-decoded dict or SDK event).

    Subclasses implement :meth:`read`; this base keeps the outcome, the input side known
    before the end, the delivered text, counted in batches so memory stays constant, and
    the time between events (the ``time_per_output_chunk`` metric).

    Args:
        model: the requested model, whose tokenizer counts the delivered text.
        strip_usage: report the usage-only chunk metered asked for as not to forward.

    Attributes:
        outcome: what the stream said so far.
        input_usage: the input side reported before the end (Anthropic ``message_start``).
        model: see Args (the client proxies set it once the call is known).
        transcript: the output collected for content capture (``None``: capture is off).
        gaps: seconds between each event and the one before it.
    """

    __slots__ = (
        "_batch",
        "_batch_chars",
        "_last",
        "_tokens",
        "gaps",
        "input_usage",
        "model",
        "outcome",
        "strip",
        "transcript",
    )

    def __init__(self, *, model: str = "", strip_usage: bool = False) -> None:
        self.model = model
        self.strip = strip_usage
        self.outcome = Outcome()
        self.input_usage: Usage | None = None
        self.transcript: Transcript | None = None
        self.gaps = array("d")
        self._last = 0.0
        self._batch: list[str] = []
        self._batch_chars = 0
        self._tokens = 0

    def feed(self, event: Any) -> bool:
        """Take one event; ``False`` when it must not be forwarded to the caller."""
        now = perf_counter()
        if self._last:
            self.gaps.append(now - self._last)
        self._last = now
        return self.read(event)

    def read(self, event: Any) -> bool:
        """Read one event (the format's own part of :meth:`feed`)."""
        raise NotImplementedError

    def add(self, text: object) -> None:
        """Count ``text`` as delivered output (non-strings and empty strings are ignored)."""
        if isinstance(text, str) and text:
            self._batch.append(text)
            self._batch_chars += len(text)
            if self._batch_chars >= _COUNT_BATCH:
                self._count()

    def _count(self) -> None:
        if self._batch:
            self._tokens += count_text("".join(self._batch), model=self.model)
            self._batch.clear()
            self._batch_chars = 0

    def delivered_tokens(self) -> int:
        """Output tokens of the text delivered so far, counted locally."""
        self._count()
        return self._tokens

    def delivered(self, prompt_tokens: int) -> Usage:
        """An estimate of what the stream delivered so far (for streams cut short).

        The input side is the provider's when it reported one before the end, else
        ``prompt_tokens`` (the engine's count of the request).
        """
        output = self.delivered_tokens()
        base = self.input_usage
        if base is None:
            return Usage(input_tokens=prompt_tokens, output_tokens=output, source="estimated")
        return Usage(
            input_tokens=base.input_tokens,
            cache_read_tokens=base.cache_read_tokens,
            cache_write_tokens=base.cache_write_tokens,
            cache_write_1h_tokens=base.cache_write_1h_tokens,
            output_tokens=output,
            source="estimated",
        )

    def measured(self, prompt_tokens: int, *, ended: bool = False) -> tuple[Usage, bool]:
        """The usage to settle and whether the stream was cut short (``partial``).

        The provider's final usage report wins whenever it arrived; otherwise what was
        delivered is counted, partial unless the stream ran to its end (``ended`` is the
        door's own knowledge of that, e.g. the SDK iterator stopped).
        """
        usage = self.outcome.usage
        if usage is not None:
            return usage, False
        return self.delivered(prompt_tokens), not (ended or self.outcome.complete)


def whole(
    response: Any,
    usage: Usage | None,
    finish_reasons: list[str],
    delivered: Callable[[Any], list[str]],
) -> Outcome:
    """The :class:`Outcome` of a whole (non-streamed) response: what every format reads the
    same way (model, id), with the format's own usage, finish reasons and, only when the
    response reports no usage, its ``delivered`` output pieces."""
    return Outcome(
        usage=usage,
        response_model=string(get(response, "model")),
        response_id=string(get(response, "id")),
        finish_reasons=finish_reasons,
        complete=True,
        delivered=delivered(response) if usage is None else [],
    )


def settled_usage(outcome: Outcome, model: str, prompt_tokens: int) -> Usage | None:
    """The usage to settle a whole response on.

    The provider's report when there is one. A response read whole that reports none
    (vLLM, Ollama and other OpenAI-compatible servers may omit it) is counted, like a
    stream without a usage chunk: the engine's prompt count plus the delivered output,
    marked ``estimated``, never the pre-call maximum. ``None`` only for a body that could
    not be read at all.
    """
    if outcome.usage is not None or not outcome.complete:
        return outcome.usage
    text = "".join(outcome.delivered)
    output = count_text(text, model=model) if text else 0
    return Usage(input_tokens=prompt_tokens, output_tokens=output, source="estimated")


def add_text(pieces: list[str], value: object) -> None:
    """Append ``value`` to ``pieces`` when it is a non-empty string."""
    if isinstance(value, str) and value:
        pieces.append(value)
