"""Stream proxies: SDK streams and stream managers that settle their call exactly once.

Iterating, ``close()``, ``with`` and attribute access behave as on the SDK's stream; each
item goes through the call's :class:`~metered.clients.tally.Tally` first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from metered.clients.tally import Owner, Tally, new_owner

if TYPE_CHECKING:

    class BaseObjectProxy:
        """Typing stand-in for :class:`wrapt.BaseObjectProxy` (wrapt ships no stubs)."""

        __wrapped__: Any

        def __init__(self, wrapped: Any) -> None: ...

        def __getattr__(self, name: str) -> Any: ...

else:
    from wrapt import BaseObjectProxy

__all__ = [
    "AsyncMeteredStream",
    "BaseObjectProxy",
    "CollectingStreamManager",
    "MeteredStream",
]

# Streams opened while a stream manager is being entered (see CollectingStreamManager).
_opened: ContextVar[list[Any] | None] = ContextVar("metered.opened_streams", default=None)


class MeteredStream(BaseObjectProxy):
    """A sync SDK stream (``openai.Stream``, ``anthropic.Stream``) that settles its call.

    Iterating, ``close()``, ``with`` and attribute access (``.response`` ...) behave as
    on the SDK's stream; items the observer hides (the injected usage chunk) are skipped.
    """

    def __init__(self, wrapped: Any, tally: Tally, *, owner: Owner | None = None) -> None:
        super().__init__(wrapped)
        self._self_tally = tally
        self._self_owner = owner if owner is not None else new_owner(tally)
        opened = _opened.get()
        if opened is not None:
            opened.append(self)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        tally: Tally = self._self_tally
        advance = self.__wrapped__.__next__
        try:
            while True:
                item = advance()
                if tally.feed(item):
                    return item
        except StopIteration:
            tally.settle(complete=True)
            raise
        except BaseException as exc:
            tally.settle(complete=False, error=exc)
            raise

    def close(self) -> None:
        """Close the response; a stream closed before its end settles what was delivered."""
        try:
            self.__wrapped__.close()
        finally:
            self._self_tally.settle(complete=False)

    def __enter__(self) -> MeteredStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncMeteredStream(BaseObjectProxy):
    """An async SDK stream (``openai.AsyncStream``, ``anthropic.AsyncStream``) that settles."""

    def __init__(self, wrapped: Any, tally: Tally, *, owner: Owner | None = None) -> None:
        super().__init__(wrapped)
        self._self_tally = tally
        self._self_owner = owner if owner is not None else new_owner(tally)
        opened = _opened.get()
        if opened is not None:
            opened.append(self)

    def __aiter__(self) -> AsyncMeteredStream:
        return self

    async def __anext__(self) -> Any:
        tally: Tally = self._self_tally
        advance = self.__wrapped__.__anext__
        try:
            while True:
                item = await advance()
                if tally.feed(item):
                    return item
        except StopAsyncIteration:
            await tally.asettle(complete=True)
            raise
        except BaseException as exc:
            await tally.asettle(complete=False, error=exc)
            raise

    async def close(self) -> None:
        """Close the response; a stream closed before its end settles what was delivered."""
        try:
            await self.__wrapped__.close()
        finally:
            await self._self_tally.asettle(complete=False)

    async def __aenter__(self) -> AsyncMeteredStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class CollectingStreamManager(BaseObjectProxy):
    """An SDK stream manager (``chat.completions.stream()``, ``responses.stream()``).

    The SDK helper is built on the metered proxy, so its request goes through the metered
    ``create``; the helper's own stream closes the HTTP response directly on exit, so the
    metered streams opened while entering are closed (and settled) here too.
    """

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self._self_opened: list[Any] = []

    def __enter__(self) -> Any:
        token = _opened.set(self._self_opened)
        try:
            return self.__wrapped__.__enter__()
        finally:
            _opened.reset(token)

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return self.__wrapped__.__exit__(*exc_info)
        finally:
            for stream in self._self_opened:
                stream.close()

    async def __aenter__(self) -> Any:
        token = _opened.set(self._self_opened)
        try:
            return await self.__wrapped__.__aenter__()
        finally:
            _opened.reset(token)

    async def __aexit__(self, *exc_info: Any) -> Any:
        try:
            return await self.__wrapped__.__aexit__(*exc_info)
        finally:
            for stream in self._self_opened:
                await stream.close()
