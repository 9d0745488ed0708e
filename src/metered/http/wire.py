"""Provider responses as they pass through the gateway routes: JSON bodies and
server-sent-event framing. What the bodies and events *say* (usage, model, id, finish
reasons, delivered text) is read by :mod:`metered.providers`, the same readers the client
proxies use.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Final

from metered.errors import UpstreamError
from metered.providers import FORMATS, Outcome, StreamReader, settled_usage
from metered.usage import Usage

if TYPE_CHECKING:
    from metered.engine.meter import Api, Call

__all__ = [
    "MAX_JSON_RESPONSE",
    "MAX_SSE_LINE",
    "Outcome",
    "StreamMeter",
    "finish_args",
    "json_outcome",
]

logger = logging.getLogger("metered")

#: A gateway JSON response larger than this is passed through unparsed (usage unknown).
MAX_JSON_RESPONSE: Final = 8 * 1024 * 1024
#: Longest SSE line kept while looking for usage (a Responses ``response.completed``
#: event repeats the whole output); longer lines are skipped.
MAX_SSE_LINE: Final = 8 * 1024 * 1024


def json_outcome(data: bytes, api: Api) -> Outcome:
    """Read usage, model, id and finish reasons from a JSON (non-streamed) response."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return Outcome()
    if not isinstance(body, dict):
        return Outcome()
    return FORMATS[api].read(body)


class StreamMeter:
    """Reads usage from a server-sent-event response as it passes through.

    Chunks are forwarded as they come (never held for a whole event, let alone the
    stream); only the last incomplete line is kept, and each decoded event goes to the
    format's :class:`~metered.providers.StreamReader`, which counts delivered text in
    small batches, so memory stays constant however long the stream. With
    ``strip_usage`` the usage-only chunk the gateway asked for is removed from what the
    client sees; the chunks around it pass unchanged.

    Args:
        api: the wire format (``chat``, ``responses`` or ``anthropic``).
        model: the requested model, to count delivered text with its tokenizer.
        strip_usage: drop the chat usage chunk (see :func:`prepare_stream`).
    """

    __slots__ = ("_drop_blank", "_partial", "_skipping", "_strip", "reader", "started")

    def __init__(self, api: Api, *, model: str, strip_usage: bool = False) -> None:
        self._strip = strip_usage
        self._partial = b""
        self._skipping = False
        self._drop_blank = False
        self.reader: StreamReader = FORMATS[api].stream(model=model, strip_usage=strip_usage)
        self.started = False

    @property
    def outcome(self) -> Outcome:
        """What the stream said so far."""
        return self.reader.outcome

    @property
    def delivered_tokens(self) -> int:
        """Output tokens of the text delivered so far, counted locally."""
        return self.reader.delivered_tokens()

    def feed(self, chunk: bytes) -> bytes:
        """Take one body chunk; return the bytes to forward to the client."""
        if not chunk:
            return chunk
        self.started = True
        lines = chunk.split(b"\n")
        lines[0] = self._partial + lines[0]
        tail = lines.pop()
        overflow = len(tail) > MAX_SSE_LINE
        self._partial = b"" if overflow else tail
        if not self._strip:
            for line in lines:
                self._line(line)
            if overflow:
                self._skipping = True
            return chunk
        # Stripping: forward whole lines only, so a dropped event never leaves a fragment.
        kept = [line + b"\n" for line in lines if self._line(line)]
        if overflow:
            # too long to hold: it cannot be the usage chunk, forward it as it comes
            kept.append(tail)
            self._skipping = True
        return b"".join(kept)

    def close(self) -> bytes:
        """End of the body: handle and return the last line if it had no newline."""
        tail, self._partial = self._partial, b""
        if tail and self._line(tail) and self._strip:
            return tail
        return b""

    def _line(self, line: bytes) -> bool:
        """Handle one complete line; ``False`` when it must not be forwarded."""
        if self._skipping:
            self._skipping = False
            return True
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if self._drop_blank:
                self._drop_blank = False
                return False
            return True
        if not line.startswith(b"data:"):
            return True
        payload = line[5:].lstrip(b" ")
        if payload == b"[DONE]":
            self.reader.outcome.complete = True
            return True
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return True
        if not isinstance(data, dict):
            return True
        try:
            forward = self.reader.feed(data)
        except Exception:
            # an unexpected event shape must not break the client's stream
            logger.exception("metered: could not read a stream event; usage will be estimated")
            return True
        if forward:
            return True
        self._drop_blank = True  # the event's blank line goes with it
        return False

    def delivered(self, prompt_tokens: int) -> Usage:
        """An estimate of what the stream delivered so far (for streams cut short)."""
        return self.reader.delivered(prompt_tokens)


def finish_args(
    call: Call, stream: StreamMeter | None, outcome: Outcome, *, status: int | None
) -> dict[str, Any]:
    """Keyword arguments for ``call.finish`` once a gateway response has ended."""
    args: dict[str, Any] = {
        "status": status,
        "response_model": outcome.response_model,
        "response_id": outcome.response_id,
        "finish_reasons": outcome.finish_reasons,
        "attributes": outcome.attributes,
    }
    if status is not None and status >= 400:
        args["error"] = UpstreamError(f"the upstream answered HTTP {status}", status=status)
        return args
    if outcome.error is not None:
        args["error"] = UpstreamError(outcome.error, status=status)
    usage = settled_usage(outcome, call.model or "", call.prompt_tokens)
    if stream is not None:
        args["output"] = stream.reader
        usage, partial = stream.reader.measured(call.prompt_tokens)
        if partial:
            args["partial"] = True
    args["usage"] = usage
    return args
