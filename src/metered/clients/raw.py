"""Raw SDK responses (``with_raw_response`` / ``with_streaming_response``), metered.

A raw response settles its call from whatever the caller reads: ``parse()`` (a metered
stream for streamed calls), the body (``read()``, ``text()``, ``json()``) or, failing
all, ``close()``. A streamed body read raw (``iter_lines()`` ...) passes the proxy by, so
its call settles the pre-call estimate.
"""

from __future__ import annotations

from typing import Any

from metered.clients.streams import AsyncMeteredStream, BaseObjectProxy, MeteredStream
from metered.clients.tally import Tally, new_owner

__all__ = ["AsyncRawResponse", "RawResponse", "body_read"]


def body_read(raw: Any) -> bool:
    """Whether the raw response's body was read already (``content`` is available)."""
    try:
        raw.http_response.content  # noqa: B018 - raises ResponseNotRead otherwise
    except Exception:
        return False
    return True


def _is_stream(value: Any) -> bool:
    kind = type(value)
    return hasattr(kind, "__next__") or hasattr(kind, "__anext__")


class _RawBase(BaseObjectProxy):
    def __init__(self, wrapped: Any, tally: Tally, *, stream: bool) -> None:
        super().__init__(wrapped)
        self._self_tally = tally
        self._self_owner = new_owner(tally)
        self._self_stream = stream
        self._self_parsed: Any = None

    def _self_stream_of(self, parsed: Any) -> Any:
        if not _is_stream(parsed):
            return parsed
        current = self._self_parsed
        if current is not None and current.__wrapped__ is parsed:
            return current
        cls = AsyncMeteredStream if hasattr(type(parsed), "__anext__") else MeteredStream
        self._self_parsed = cls(parsed, self._self_tally, owner=self._self_owner)
        return self._self_parsed

    def _self_raw(self) -> None:
        if self._self_stream:
            # the SSE body is read as bytes, past the proxy: the usage cannot be seen
            self._self_tally.observer.opaque = True

    def _self_pending(self) -> bool:
        """A non-streamed call whose body is still to be settled."""
        return not self._self_stream and not self._self_tally.done

    # plain methods on both response kinds: they return (async) iterators
    def iter_bytes(self, *args: Any, **kwargs: Any) -> Any:
        """The SDK's ``iter_bytes()``; a streamed body read this way settles the estimate."""
        self._self_raw()
        return self.__wrapped__.iter_bytes(*args, **kwargs)

    def iter_text(self, *args: Any, **kwargs: Any) -> Any:
        """The SDK's ``iter_text()``; a streamed body read this way settles the estimate."""
        self._self_raw()
        return self.__wrapped__.iter_text(*args, **kwargs)

    def iter_lines(self, *args: Any, **kwargs: Any) -> Any:
        """The SDK's ``iter_lines()``; a streamed body read this way settles the estimate."""
        self._self_raw()
        return self.__wrapped__.iter_lines(*args, **kwargs)


class RawResponse(_RawBase):
    """A raw SDK response (``with_raw_response`` / ``with_streaming_response``).

    ``parse()`` returns the metered stream for streamed calls and settles non-streamed
    ones; reading the body settles from it; ``close()`` settles whatever is left. A
    streamed body read raw (``iter_lines()`` ...) settles the pre-call estimate.
    """

    def parse(self, **kwargs: Any) -> Any:
        """The SDK's ``parse()``, metered."""
        parsed = self.__wrapped__.parse(**kwargs)
        if self._self_stream:
            return self._self_stream_of(parsed)
        self._self_settle(parsed if not kwargs else None)
        return parsed

    def _self_settle(self, parsed: Any = None) -> None:
        if self._self_pending():
            raw = self.__wrapped__
            if parsed is None:
                parsed = raw.parse()  # cached by the SDK: the caller's own parse() is free
            self._self_tally.settle_response(parsed, status=raw.status_code)

    def read(self) -> Any:
        """The SDK's ``read()``, metered."""
        self._self_raw()
        data = self.__wrapped__.read()
        self._self_settle()
        return data

    def text(self) -> Any:
        """The SDK's ``text()``, metered."""
        self._self_raw()
        data = self.__wrapped__.text()
        self._self_settle()
        return data

    def json(self, **kwargs: Any) -> Any:
        """The SDK's ``json()``, metered."""
        self._self_raw()
        data = self.__wrapped__.json(**kwargs)
        self._self_settle()
        return data

    def close(self) -> None:
        """Close the response and settle the call if nothing else did."""
        try:
            self.__wrapped__.close()
        finally:
            if self._self_pending() and body_read(self.__wrapped__):
                self._self_settle()
            else:
                self._self_tally.settle(complete=False)


class AsyncRawResponse(_RawBase):
    """Async :class:`RawResponse` (``AsyncAPIResponse``: ``parse()`` and reads are awaited)."""

    async def parse(self, **kwargs: Any) -> Any:
        """The SDK's ``parse()``, metered."""
        parsed = await self.__wrapped__.parse(**kwargs)
        if self._self_stream:
            return self._self_stream_of(parsed)
        await self._self_settle(parsed if not kwargs else None)
        return parsed

    async def _self_settle(self, parsed: Any = None) -> None:
        if self._self_pending():
            raw = self.__wrapped__
            if parsed is None:
                parsed = await raw.parse()
            await self._self_tally.asettle_response(parsed, status=raw.status_code)

    async def read(self) -> Any:
        """The SDK's ``read()``, metered."""
        self._self_raw()
        data = await self.__wrapped__.read()
        await self._self_settle()
        return data

    async def text(self) -> Any:
        """The SDK's ``text()``, metered."""
        self._self_raw()
        data = await self.__wrapped__.text()
        await self._self_settle()
        return data

    async def json(self, **kwargs: Any) -> Any:
        """The SDK's ``json()``, metered."""
        self._self_raw()
        data = await self.__wrapped__.json(**kwargs)
        await self._self_settle()
        return data

    async def close(self) -> None:
        """Close the response and settle the call if nothing else did."""
        try:
            await self.__wrapped__.close()
        finally:
            if self._self_pending() and body_read(self.__wrapped__):
                await self._self_settle()
            else:
                await self._self_tally.asettle(complete=False)
