"""Tests for metered.engine.settle's eager start of protected settlement: the first step
runs at once (a settlement that never suspends costs no trip round the event loop), one
that suspends goes on in a task that the caller's cancellation cannot interrupt.

Python 3.12+ starts the task with ``eager_start``; ``_eager`` is the 3.11 path, tested
here directly so every Python runs it.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from metered.engine import settle

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="outside")

Start = Callable[[Coroutine[Any, Any, Any]], asyncio.Future[Any]]


def _eager_311(coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
    return settle._eager(coro, asyncio.get_running_loop())


STARTS = [pytest.param(_eager_311, id="3.11-path"), pytest.param(settle.protected, id="protected")]


@pytest.mark.parametrize("start", STARTS)
async def test_a_coroutine_that_never_suspends_is_done_at_once(start: Start) -> None:
    steps: list[str] = []

    async def settle_now() -> int:
        steps.append("ran")
        return 7

    future = start(settle_now())
    assert steps == ["ran"]  # before anything is awaited
    assert future.done()
    assert await asyncio.shield(future) == 7


@pytest.mark.parametrize("start", STARTS)
async def test_the_first_step_runs_in_a_copy_of_the_context(start: Start) -> None:
    async def set_var() -> str:
        VAR.set("inside")
        await asyncio.sleep(0)
        return VAR.get()  # the task that resumes it sees its own change

    assert await asyncio.shield(start(set_var())) == "inside"
    assert VAR.get() == "outside"  # the caller's context is not changed


@pytest.mark.parametrize("start", STARTS)
async def test_a_failure_in_the_first_step_reaches_the_awaiting_caller(start: Start) -> None:
    async def fail() -> None:
        raise LookupError("ledger refused")

    future = start(fail())
    with pytest.raises(LookupError, match="ledger refused"):
        await asyncio.shield(future)


@pytest.mark.parametrize("start", STARTS)
async def test_a_suspended_coroutine_goes_on_and_returns_its_value(start: Start) -> None:
    gate = asyncio.Event()
    seen: list[str] = []

    async def slow() -> str:
        seen.append("first")
        await gate.wait()
        seen.append("second")
        await asyncio.sleep(0)
        return "settled"

    future = start(slow())
    assert seen == ["first"]
    assert not future.done()
    gate.set()
    assert await asyncio.shield(future) == "settled"
    assert seen == ["first", "second"]


@pytest.mark.parametrize("start", STARTS)
async def test_a_cancelled_caller_does_not_interrupt_a_suspended_coroutine(start: Start) -> None:
    gate = asyncio.Event()
    finished: list[str] = []

    async def slow() -> None:
        await gate.wait()
        finished.append("settled")

    future = start(slow())

    async def caller() -> None:
        await asyncio.shield(future)

    waiting = asyncio.ensure_future(caller())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    gate.set()
    await future
    assert finished == ["settled"]


@pytest.mark.parametrize("start", STARTS)
async def test_an_exception_thrown_into_the_task_reaches_the_coroutine(start: Start) -> None:
    """Cancelling the task itself (an event loop shutting down) is delivered where the
    coroutine suspended, so its own handlers and finally blocks run."""
    cleaned: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append("finally")

    future = start(slow())
    await asyncio.sleep(0)
    future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await future
    assert cleaned == ["finally"]


@pytest.mark.parametrize("start", STARTS)
async def test_a_suspended_coroutine_that_fails_later_reports_it(start: Start) -> None:
    async def slow() -> None:
        await asyncio.sleep(0)
        raise ConnectionError("store went away")

    with pytest.raises(ConnectionError, match="store went away"):
        await asyncio.shield(start(slow()))


@pytest.mark.parametrize("start", STARTS)
async def test_a_coroutine_cancelled_in_its_first_step_is_cancelled(start: Start) -> None:
    async def gives_up() -> None:
        raise asyncio.CancelledError

    future = start(gives_up())
    await asyncio.sleep(0)  # a task ends its first step here
    assert future.cancelled()
