"""Living beside other producers of GenAI spans: one chat span per call, one copy of the
GenAI metrics.

Two set-ups put a second producer next to metered:

* **Inside** metered's span: the official ``opentelemetry-instrumentation-genai-*``
  packages patch the SDK that a ``MeteredOpenAI`` proxy calls. Their helper library
  (``opentelemetry-util-genai``) suppresses an inner call's span, metrics and events when
  the context carries an outer inference (its ``InferenceData`` under its context key):
  :func:`upstream_context` puts one there while metered's span is current, so the call
  keeps metered's span, which carries every attribute the official one would (tested
  side by side) and the ``metered.*`` facts.
* **Around** metered's call: a framework or the user's own code already opened a GenAI
  CLIENT span (``gen_ai.operation.name`` set) and calls metered within it. metered then
  starts no span of its own: :class:`JoinedSpan` adds its attributes to that span
  (never overwriting one the producer set), adds its events, and never ends it; the
  producer's GenAI metrics stand and metered records only its ``metered.*`` ones.

``telemetry.genai_spans: separate`` in the config turns both off (two spans, two copies
of the metrics, as before 0.x).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context, set_value
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util.types import Attributes, AttributeValue

from metered.semconv import ATTR

__all__ = ["JoinedSpan", "enclosing_genai_span", "upstream_context"]

logger = logging.getLogger("metered")

_UTIL_GENAI = "opentelemetry.util.genai.handler"


def upstream_context(span: Span) -> Context:
    """The context to call the upstream in: ``span`` current and, when the official
    GenAI helper library is loaded, an outer inference marked so it suppresses its own."""
    ctx = trace.set_span_in_context(span)
    if _UTIL_GENAI not in sys.modules:  # nothing installed that would make a second span
        return ctx
    try:
        from opentelemetry.util.genai.invocation import (
            CLIENT_INFERENCE_CONTEXT_KEY,
            InferenceData,
        )
    except ImportError:  # another version of the helper: two spans rather than none
        return ctx
    return set_value(CLIENT_INFERENCE_CONTEXT_KEY, InferenceData(), ctx)


def enclosing_genai_span() -> Span | None:
    """The current span if another producer's GenAI CLIENT span, else ``None``."""
    span = trace.get_current_span()
    if not span.is_recording() or getattr(span, "kind", None) is not SpanKind.CLIENT:
        return None
    scope = getattr(span, "instrumentation_scope", None)
    if getattr(scope, "name", None) == "metered":
        return None
    attributes = getattr(span, "attributes", None)
    if not isinstance(attributes, Mapping) or ATTR.OPERATION not in attributes:
        return None
    return span


class JoinedSpan(Span):
    """Another producer's GenAI span that a metered call reports on (see the module doc):
    attributes it already has are kept, and ending is left to its owner."""

    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    @property
    def wrapped(self) -> Span:
        """The producer's span."""
        return self._span

    def _has(self, key: str) -> bool:
        attributes = getattr(self._span, "attributes", None)
        return isinstance(attributes, Mapping) and key in attributes

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        self._span.set_attributes({k: v for k, v in attributes.items() if not self._has(k)})

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if not self._has(key):
            self._span.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        self._span.add_event(name, attributes, timestamp)

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        self._span.add_link(context, attributes)

    def get_span_context(self) -> SpanContext:
        return self._span.get_span_context()

    def is_recording(self) -> bool:
        return self._span.is_recording()

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        self._span.set_status(status, description)

    def update_name(self, name: str) -> None:
        """The producer named its span: left as it is."""

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        self._span.record_exception(exception, attributes, timestamp, escaped)

    def end(self, end_time: int | None = None) -> None:
        """The producer ends its span."""
