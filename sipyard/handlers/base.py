"""What a handler may ask of the app: answer, drop, run later.

A handler's ``handle(req, src, tx)`` answers at once through the responder
and returns None (the fast lane: no coroutine, Task or Future), or returns a
coroutine for the app to run when it must wait (a suspended redirector, a
store that needs I/O). The app starts such a coroutine eagerly and only hands
it to a Task if it really waits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from ..sip.message import Request
from ..sip.source import Source
from ..sip.transaction import ServerTransaction

__all__ = ["Responder", "Handle", "Cancel"]

Headers = Sequence[tuple[str, str]]
#: a handler's entry point: None when answered (or answering later by callback)
Handle = Callable[[Request, Source, ServerTransaction], Awaitable[None] | None]


class Cancel(Protocol):
    def cancel(self) -> None: ...


class Responder(Protocol):
    """The app's side of a request: answers go through the transaction's cache."""

    def respond(self, tx: ServerTransaction, req: Request, status: int, reason: str,
                headers: Headers = (), body: bytes = b"") -> None:
        """Send a response on ``tx`` (a second final is dropped and logged)."""

    def drop(self, tx: ServerTransaction) -> None:
        """End ``tx`` without an answer (a banned source hears nothing)."""

    def now(self) -> float:
        """Wall-clock seconds (bindings expire on it)."""

    def call_later(self, delay: float, fn: Callable[[], Any]) -> Cancel:
        """Run ``fn`` after ``delay`` seconds unless cancelled (100 Trying)."""

    def options(self, tx: ServerTransaction, req: Request) -> None:
        """Answer an OPTIONS addressed to the server itself."""
