"""Running a coroutine eagerly: up to its first real wait, without a Task.

Most handlers finish without waiting (a challenge, a redirect served from
memory); starting their coroutine at once instead of in a new Task saves the
Task, a loop iteration of latency and several callbacks per request. Only a
coroutine that does wait is handed to a Task, which resumes it where it
stopped (Python 3.12's eager task factory, by hand).
"""

from __future__ import annotations

from types import coroutine
from typing import Any

__all__ = ["resume_started"]


@coroutine
def resume_started(coro: Any, pending: Any) -> Any:
    """Finish, under a Task, a coroutine started eagerly that is waiting on ``pending``.

    It re-yields what the coroutine yielded (a future the Task then waits on,
    or None for a bare yield) and forwards the Task's wake-up or its
    cancellation, exactly as if the Task had run the coroutine from the start.
    """
    while True:
        try:
            yield pending
        except BaseException as exc:
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            pending = coro.send(None)
        except StopIteration as stop:
            return stop.value
