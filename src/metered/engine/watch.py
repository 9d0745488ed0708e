"""What a call shows of itself while it runs: its span, the events for it, stream timing
and what content capture reads at the end. :class:`~metered.engine.call.Call` keeps one
:class:`Watch`; :meth:`Watch.emit` hands the finished call to telemetry and the sinks."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import Span

from metered.engine.accounts import Request
from metered.engine.record import emit
from metered.engine.settle import Runtime
from metered.providers import StreamReader, Transcript
from metered.records import UsageRecord
from metered.telemetry.content import content_of

__all__ = ["Watch"]


class Watch:
    """A call's telemetry state.

    Attributes:
        span: the call's span (``INVALID_SPAN`` while no SDK is installed).
        started: when the call began (``perf_counter``).
        first_chunk: when its first streamed chunk arrived, if it streamed.
        output: what came back, for content capture and stream timing: the stream reader,
            or the whole response (SDK object, JSON dict or bytes).
    """

    __slots__ = ("_attributes", "_events", "_runtime", "first_chunk", "output", "span", "started")

    def __init__(self, runtime: Runtime, request: Request, body: Mapping[str, Any]) -> None:
        self._runtime = runtime
        self.started = time.perf_counter()
        self.first_chunk: float | None = None
        self.output: Any = None
        self._events: list[tuple[str, Mapping[str, Any]]] | None = None
        self._attributes: Mapping[str, Any] | None = None
        model = body.get("model")
        self.span: Span = runtime.telemetry.start(
            operation="chat",
            model=model if isinstance(model, str) else None,
            provider=request.provider,
            server_address=request.server_address,
            server_port=request.server_port,
            body=body,
            api=request.api,
        )

    def mark_first_chunk(self) -> None:
        """Mark the first streamed chunk (time to first chunk)."""
        if self.first_chunk is None:
            self.first_chunk = time.perf_counter()

    def event(self, name: str, attributes: Mapping[str, Any]) -> None:
        """Add a span event."""
        if self._events is None:
            self._events = []
        self._events.append((name, attributes))

    def describe(self, attributes: Mapping[str, Any]) -> None:
        """Keep provider-specific attributes for the span, set with the record's at the
        end (one ``set_attributes`` call: each costs the SDK a lock and a pass)."""
        self._attributes = attributes

    def transcript(self) -> Transcript | None:
        """A transcript for the call's stream reader while content capture is on."""
        telemetry = self._runtime.telemetry
        if not telemetry.captures(self.span):
            return None
        return Transcript(telemetry.content_max_chars)

    def upstream_context(self) -> Context | None:
        """The OpenTelemetry context to call the upstream in (``None``: as it is)."""
        return self._runtime.telemetry.upstream_context(self.span)

    def keep(self, output: Any) -> None:
        """Keep what came back for :meth:`emit`: a stream reader always (its chunk
        timing), a whole response only while its content is captured."""
        if isinstance(output, StreamReader) or self._runtime.telemetry.captures(self.span):
            self.output = output

    def emit(
        self,
        record: Callable[[], UsageRecord | None],
        error: BaseException | None,
        api: str,
        body: Mapping[str, Any],
    ) -> None:
        """Hand the finished call to its span, metrics and sinks."""
        runtime = self._runtime
        telemetry = runtime.telemetry
        output = self.output
        emit(
            record,
            telemetry,
            runtime.sink,
            self.span,
            events=self._events or (),
            attributes=self._attributes,
            error=error,
            started=self.started,
            # read only when captured: no work on the common path
            content=partial(content_of, api, body, output, telemetry.content_max_chars)
            if telemetry.captures(self.span)
            else None,
            gaps=output.gaps if isinstance(output, StreamReader) else (),
        )
