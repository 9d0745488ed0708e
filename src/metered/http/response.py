"""A gateway response on its way back to the client: the I/O-free core both servers drive,
and the totals headers and span attributes of a request.
"""

from __future__ import annotations

from collections.abc import Collection
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal

from metered.context import RequestTotals
from metered.errors import (
    ConfigError,
    UpstreamError,
)
from metered.http.wire import (
    MAX_JSON_RESPONSE,
    Outcome,
    StreamMeter,
    finish_args,
    json_outcome,
)

if TYPE_CHECKING:
    from metered.engine.meter import Api, Call

__all__ = [
    "COST_HEADER",
    "PRICE_HEADER",
    "GatewayResponse",
    "TotalHeader",
    "annotate_request_span",
    "check_total_headers",
    "total_headers",
]


#: Response header with the upstream cost (USD) of the metered calls a request made.
COST_HEADER: Final = "x-metered-cost"
#: Response header with the price (USD) charged for the metered calls a request made.
PRICE_HEADER: Final = "x-metered-price"
TotalHeader = Literal["cost", "price"]


def check_total_headers(names: Collection[str]) -> tuple[TotalHeader, ...]:
    """Validate the ``total_headers`` option.

    Raises:
        ConfigError: an entry is not ``"cost"`` or ``"price"``.
    """
    out: list[TotalHeader] = []
    for name in names:
        if name not in ("cost", "price"):
            raise ConfigError("total_headers", "entries must be 'cost' or 'price'", name)
        out.append("cost" if name == "cost" else "price")
    return tuple(out)


def total_headers(totals: RequestTotals, which: Collection[TotalHeader]) -> list[tuple[str, str]]:
    """The ``x-metered-cost`` / ``x-metered-price`` headers for a request's totals."""
    out: list[tuple[str, str]] = []
    if "cost" in which:
        out.append((COST_HEADER, _plain(totals.cost)))
    if "price" in which:
        out.append((PRICE_HEADER, _plain(totals.price)))
    return out


def _plain(amount: Decimal) -> str:
    # fixed-point: "0.00012", never "1.2E-4"
    return format(amount.normalize(), "f") if amount else "0"


class GatewayResponse:
    """The I/O-free core of a gateway response on its way back to the client.

    The ASGI and WSGI shells report the response start and each body chunk; this decides
    what to forward and when, and computes the ``call.finish`` arguments:

    * error statuses pass through as they come (the call failed: nothing is charged);
    * event streams pass through chunk by chunk while :class:`StreamMeter` reads them;
    * JSON bodies are held (up to :data:`MAX_JSON_RESPONSE`) with the response start,
      so the call settles first and the start can carry the totals headers.

    Args:
        call: the call begun for the request.
        api: the route's wire format.
        strip_usage: remove the usage chunk the gateway asked for (:func:`prepare_stream`).
    """

    __slots__ = ("_buffer", "_size", "_strip", "api", "call", "held", "status", "stream")

    def __init__(self, call: Call, api: Api, *, strip_usage: bool) -> None:
        self.call = call
        self.api = api
        self._strip = strip_usage
        self.status: int | None = None
        self.stream: StreamMeter | None = None
        self.held = False
        self._buffer: list[bytes] | None = None
        self._size = 0

    def start(self, status: int, content_type: str) -> bool:
        """The response starts; ``True`` when its start goes to the client now.

        Otherwise the shell holds it until :attr:`held` turns false (the body was too
        large to hold) or :meth:`end`.
        """
        self.status = status
        if status >= 400:
            return True
        if content_type.partition(";")[0].strip().lower() == "text/event-stream":
            self.stream = StreamMeter(
                self.api, model=self.call.model or "", strip_usage=self._strip
            )
            self.stream.reader.transcript = self.call.transcript()
            return True
        self._buffer = []
        self.held = True
        return False

    def body(self, chunk: bytes) -> bytes:
        """A body chunk; returns the bytes to forward now."""
        stream = self.stream
        if stream is not None:
            if chunk and not stream.started:
                self.call.first_chunk()
            return stream.feed(chunk)
        buffer = self._buffer
        if buffer is None:
            return chunk
        buffer.append(chunk)
        self._size += len(chunk)
        if self._size <= MAX_JSON_RESPONSE:
            return b""
        # too big to hold: forward it all from now on, settle without a usage
        self._buffer = None
        self.held = False
        return b"".join(buffer)

    def end(self, chunk: bytes = b"") -> tuple[bytes, dict[str, Any]]:
        """The last chunk; returns the bytes to forward and the ``call.finish`` arguments."""
        out = self.body(chunk)
        stream = self.stream
        whole = None
        if stream is not None:
            out += stream.close()
            outcome = stream.outcome
        elif self._buffer is not None:
            out = whole = b"".join(self._buffer)
            self._buffer = None
            self.held = False
            outcome = json_outcome(out, self.api)
        else:
            outcome = Outcome()
        args = finish_args(self.call, stream, outcome, status=self.status)
        if whole is not None:
            args["output"] = whole  # decoded again only if content is captured
        return out, args

    def cut(self, error: BaseException | None, *, client_left: bool = False) -> dict[str, Any]:
        """``call.finish`` arguments for a response that did not end.

        Args:
            error: what the app raised, if it raised.
            client_left: the client went away (the request was cancelled or closed).
        """
        stream = self.stream
        if stream is not None and stream.started:
            # settle what was delivered (estimated), unless the upstream failed
            args = finish_args(self.call, stream, stream.outcome, status=self.status)
            if error is not None and not client_left:
                args["error"] = error
            return args
        if error is None:
            error = UpstreamError("the response ended before its body was complete")
        return {"status": self.status, "error": error}


def annotate_request_span(totals: RequestTotals) -> None:
    """The request is done: its totals are on its server span if one was found
    (:class:`~metered.context.RequestTotals`), else they go on the current span, if one is
    recording."""
    totals.annotate()
