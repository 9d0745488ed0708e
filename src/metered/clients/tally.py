"""Settling one metered call exactly once, whichever way its response ends.

A streamed call ends in one of many ways: the caller exhausts the stream, ``break``\\ s out
of the loop, calls ``close()``, leaves a ``with`` block, the upstream fails mid-way, or the
stream is simply dropped and garbage-collected. Every one of those paths funnels into
:meth:`Tally.settle`, which finishes the engine call once (later paths are no-ops).

What a stream consumed is measured from the items the caller actually pulled through the
proxy, by the format's reader (:mod:`metered.providers`): the provider's usage report
when one arrives, otherwise an estimate counted from the delivered text
(``source="estimated"``; ``partial`` when the stream did not run to its end).

Garbage collection: every proxy sharing a :class:`Tally` also holds one :class:`Owner`;
when the last of them is collected a :func:`weakref.finalize` callback settles the call.
The callback holds the tally, never a proxy, so no reference cycle keeps a stream alive.
It runs synchronously wherever the collector runs, so an *async* stream abandoned without
``close()`` is settled through the ledger's synchronous API (instant for
:class:`~metered.ledger.MemoryLedger`, one blocking round trip for Redis) and its HTTP
response is left to the SDK's own clean-up: nothing can be awaited from a finaliser.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

from metered.clients.observers import StreamObserver
from metered.engine.meter import Call
from metered.errors import UpstreamError

__all__ = ["Owner", "Tally", "error_status", "new_owner"]

logger = logging.getLogger("metered")


def error_status(exc: BaseException) -> int | None:
    """The HTTP status an SDK exception carries (``APIStatusError.status_code``), if any."""
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


class Tally:
    """Settles one metered call exactly once, whichever way its response ends.

    Args:
        call: the engine call.
        observer: what watches the streamed items.
        close: closes the upstream response when the stream is abandoned (sync streams
            only; ``None`` for async ones).
    """

    __slots__ = ("_close", "_done", "call", "observer")

    def __init__(
        self, call: Call, observer: StreamObserver, *, close: Callable[[], object] | None = None
    ) -> None:
        self.call = call
        self.observer = observer
        observer.reader.model = call.model or ""
        observer.reader.transcript = call.transcript()
        self._close = close
        self._done = False

    @property
    def done(self) -> bool:
        """Whether the call was settled."""
        return self._done

    def feed(self, item: Any) -> bool:
        """Observe one item; return whether the caller should see it."""
        observer = self.observer
        if not observer.seen:
            observer.seen = True
            self.call.first_chunk()
        try:
            return observer.feed(item)
        except Exception:
            # an unexpected item shape must not break the caller's loop
            logger.exception("metered: could not read a stream item; usage will be estimated")
            return True

    def claim(self) -> bool:
        """Take the right to settle; ``False`` if the call was already settled."""
        if self._done:
            return False
        self._done = True
        return True

    def settle(self, *, complete: bool, error: BaseException | None = None) -> None:
        """Finish the call from what was observed (no-op after the first time)."""
        if self.claim():
            self.call.finish(**self._outcome(complete, error))

    async def asettle(self, *, complete: bool, error: BaseException | None = None) -> None:
        """Async :meth:`settle`."""
        if self.claim():
            await self.call.afinish(**self._outcome(complete, error))

    def settle_response(self, response: Any, *, status: int | None = 200) -> None:
        """Finish the call from a whole (non-streamed) response."""
        if self.claim():
            self.call.finish(**self.observer.finish_args(self.call, response, status=status))

    async def asettle_response(self, response: Any, *, status: int | None = 200) -> None:
        """Async :meth:`settle_response`."""
        if self.claim():
            await self.call.afinish(**self.observer.finish_args(self.call, response, status=status))

    def abandon(self) -> None:
        """The last proxy was garbage-collected: close the response, settle what was seen."""
        if self._done:
            return
        if self._close is not None:
            try:
                self._close()
            except Exception:
                logger.debug("metered: closing an abandoned stream failed", exc_info=True)
        try:
            self.settle(complete=False)
        except Exception:  # never raise out of a finaliser
            logger.exception("metered: settling an abandoned stream failed")

    def _outcome(self, complete: bool, error: BaseException | None) -> dict[str, Any]:
        observer = self.observer
        try:
            observer.conclude()
        except Exception:
            logger.exception("metered: could not read the stream's final state")
        out = observer.outcome
        # A stream exists only once the upstream answered 2xx: an error inside it (an SDK
        # exception or an error event) keeps that status, as the HTTP doors record it.
        status = error_status(error) if error is not None else None
        if status is None:
            status = 200
        if error is None and out.error is not None:
            error = UpstreamError(out.error, status=status)
        usage = None
        partial = False
        if not observer.opaque:
            try:
                usage, partial = observer.reader.measured(self.call.prompt_tokens, ended=complete)
            except Exception:
                logger.exception(
                    "metered: could not count the delivered text; settling the estimate"
                )
        return {
            "usage": usage,
            "error": error,
            "status": status,
            "response_model": out.response_model,
            "response_id": out.response_id,
            "finish_reasons": tuple(out.finish_reasons),
            "partial": partial,
            "attributes": out.attributes,
            "output": None if observer.opaque else observer.reader,
        }


class Owner:
    """Kept by every proxy of one call; its collection means the call was abandoned."""

    __slots__ = ("__weakref__",)


def new_owner(tally: Tally) -> Owner:
    """A new owner of ``tally``: when it is collected, the call is settled as abandoned."""
    kept = Owner()
    finalizer = weakref.finalize(kept, tally.abandon)
    finalizer.atexit = False  # at interpreter exit the ledger and exporters may be gone
    return kept
