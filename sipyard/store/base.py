"""The location store contract: the binding record and the backend interface.

The registrar and the redirect pipeline talk only to :class:`LocationStore`;
they never import a backend (DESIGN §5). Everything a backend must agree on
lives here, so the sqlite and redis backends behave the same:

* A binding is *unexpired* while ``expires_at > now``. Reads hide expired
  bindings even before a sweep has deleted them, so readers never depend on
  the timing of :meth:`LocationStore.expire`.
* :meth:`LocationStore.update` is the only write path for an AOR's bindings.
  ``fn`` sees the AOR's unexpired bindings as they are at commit time and
  returns ``(bindings to put, binding_ids to remove)``; a put replaces the
  binding with the same ``binding_id``; an id both put and removed is removed
  (the remove wins, so a contact listed twice with ``expires=0`` once can
  never resurrect). ``fn`` may raise to abort: nothing is written and the
  exception propagates unchanged.
* Lists of bindings come ordered by ``(registered_at, binding_id)`` so both
  backends answer the same order (the redirect pipeline re-sorts by q).
* Strings are stored byte-faithfully: any Python ``str`` round-trips,
  including NUL, non-ASCII and lone surrogates (a parser decoding with
  ``surrogateescape`` must not make a REGISTER fail with 500).
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Protocol

from .binding import Binding, UpdateDone, UpdateFn, normalize_update, sort_key

__all__ = [
    "AnswerBatch",
    "Binding",
    "LocationStore",
    "StoreError",
    "UpdateFn",
    "UpdateDone",
    "normalize_update",
    "sort_key",
]


class StoreError(Exception):
    """The backend failed (disk full, database locked or read-only, redis down).

    The registrar answers 500 and the caller may retry; a failed write never
    leaves a trace in any cache.
    """


class AnswerBatch(Protocol):
    """What the app lends a backend so the answers woken by one commit leave together.

    A commit wakes a burst of callers (group commit) and each sends its 200: sent back to
    back, they wake an idle client once instead of once each (see ``Transports.hold``).
    """

    def hold(self) -> bool:
        """Start holding sends; False if already held (the outer holder sends them)."""

    def send_held(self) -> None:
        """Send what was held, in order."""


class LocationStore(abc.ABC):
    """Bindings per AOR plus a small key/value state table (run state, presence, …).

    All methods are coroutines and must be called from one event loop. Every
    method but :meth:`open` raises :class:`StoreError` when the store is not
    open. Use ``async with store:`` to open and close around a block.
    """

    #: The backend's coroutines need to run inside a Task (redis-py reads under
    #: ``asyncio.timeout``). When False the app starts request handlers eagerly,
    #: outside any Task, until their first wait.
    needs_task: bool = False

    #: Set by the app: a backend that wakes many callers at once holds their answers.
    answers: AnswerBatch | None = None

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect / load; raise StoreError when the backend is unusable."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release the backend; idempotent."""

    @abc.abstractmethod
    async def lookup(self, aor: str, now: float) -> list[Binding]:
        """The AOR's unexpired bindings (a fresh list the caller may keep)."""

    @abc.abstractmethod
    async def update(self, aor: str, now: float, fn: UpdateFn) -> list[Binding]:
        """Atomically apply ``fn`` to the AOR's unexpired bindings (see module doc).

        Returns the AOR's unexpired bindings afterwards. Durable when it
        returns: the caller may send 200 OK.
        """

    def update_soon(self, aor: str, now: float, fn: UpdateFn, done: UpdateDone) -> bool:
        """Start :meth:`update` without a coroutine, when the backend can.

        Returns False when it cannot right now (the AOR is being written, or
        the backend needs I/O to read: redis); the caller then awaits
        :meth:`update`. When True, ``fn`` has run (an exception it raised
        propagates from here, with nothing written) and ``done(bindings,
        None)`` is called from the event loop once the write committed — or
        ``done(None, StoreError)`` when it failed. ``done`` may be called
        before this returns (nothing to write). This is the registrar's fast
        lane: no Task, Future or coroutine per REGISTER, same durability.
        """
        return False

    def lookup_now(self, aor: str, now: float) -> list[Binding] | None:
        """:meth:`lookup` without a coroutine when the bindings are in memory, else None."""
        return None

    @abc.abstractmethod
    async def remove_aor(self, aor: str) -> list[Binding]:
        """Delete every binding of the AOR; return what was deleted."""

    @abc.abstractmethod
    async def expire(self, now: float) -> list[Binding]:
        """Delete and return bindings expired at ``now`` (the app's 1 s tick fires
        ``release`` hooks from the result). Each expired binding is returned once."""

    @abc.abstractmethod
    async def all(self, now: float) -> list[Binding]:
        """Every unexpired binding, grouped by AOR."""

    @abc.abstractmethod
    async def count(self, now: float) -> int:
        """Number of unexpired bindings."""

    @abc.abstractmethod
    async def get_state(self, key: str) -> str | None:
        """A state value, None when unset."""

    @abc.abstractmethod
    async def set_state(self, key: str, value: str | None) -> None:
        """Set a state value durably; None clears it."""

    async def __aenter__(self) -> LocationStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
