"""Handlers started eagerly (App._run_handler) and finished under a Task (resume_started)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sipyard.eager import resume_started


async def _started(coro: Any) -> tuple[bool, Any]:
    """Step ``coro`` once as App._run_handler does: (finished, value or what it waits on)."""
    try:
        pending = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, pending


def test_a_coroutine_that_never_waits_finishes_in_its_first_step() -> None:
    async def body() -> None:
        done_fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        done_fut.set_result("answered")

        async def handler() -> str:
            return await done_fut  # awaiting a finished future does not wait

        done, value = await _started(handler())
        assert done and value == "answered"

    asyncio.run(body())


def test_resume_started_finishes_a_waiting_coroutine_under_a_task() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        trace: list[str] = []

        async def handler() -> int:
            trace.append("start")
            got = await fut  # the first real wait: the eager step stops here
            trace.append(f"got {got}")
            await asyncio.sleep(0)  # a bare yield is forwarded too
            more: asyncio.Future[int] = loop.create_future()
            loop.call_soon(more.set_result, 2)
            return got + await more

        coro = handler()
        done, pending = await _started(coro)
        assert not done and pending is fut and trace == ["start"]
        task = asyncio.ensure_future(resume_started(coro, pending))
        await asyncio.sleep(0)
        assert not task.done()
        fut.set_result(40)
        assert await task == 42
        assert trace == ["start", "got 40"]

    asyncio.run(body())


def test_cancelling_the_task_reaches_the_coroutine_where_it_waits() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        cleaned: list[str] = []

        async def handler() -> None:
            try:
                await fut
            except asyncio.CancelledError:
                cleaned.append("cancelled at its await")
                raise

        coro = handler()
        done, pending = await _started(coro)
        assert not done
        task = asyncio.ensure_future(resume_started(coro, pending))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned == ["cancelled at its await"] and fut.cancelled()

    asyncio.run(body())


def test_an_exception_after_the_first_wait_fails_the_task() -> None:
    async def body() -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def handler() -> None:
            await fut
            raise ValueError("broken after the wait")

        coro = handler()
        _, pending = await _started(coro)
        task = asyncio.ensure_future(resume_started(coro, pending))
        fut.set_result(None)
        with pytest.raises(ValueError, match="broken after the wait"):
            await task

    asyncio.run(body())
