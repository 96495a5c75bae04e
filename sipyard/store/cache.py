"""In-memory binding index and per-AOR locks shared by the backends.

:class:`BindingCache` is the sqlite backend's authoritative copy of the table
(every read is served from it) and the redis backend's "known set" (bindings
it can report from :meth:`expire`). It is only ever touched from the event
loop thread.

Memory matters (a registrar holds every device): an AOR with one binding
maps to the Binding itself, not a 1-tuple, and expiry uses a one-second
timer wheel, ``second -> {aor: None}`` (a dict: its str-keyed entries are
smaller than a set's slots), kept exact on every change (an AOR sits in
bucket ``s`` iff one of its bindings has ``int(expires_at) == s``). A heap
would keep a stale entry per refresh; the wheel costs one small dict entry
per binding, finds the due bindings of a one-second tick without scanning
the other 100 000, and lets :meth:`count` subtract the few
expired-but-unswept bindings instead of counting everything.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable, Iterator

from .base import Binding, sort_key

__all__ = ["BindingCache", "KeyedLocks"]


class BindingCache:
    """``aor -> bindings`` (sorted by :func:`sort_key`) plus an expiry wheel."""

    __slots__ = ("_aors", "_wheel", "_cursor", "_total")

    def __init__(self) -> None:
        #: a lone binding is stored as itself, several as a tuple
        self._aors: dict[str, Binding | tuple[Binding, ...]] = {}
        self._wheel: dict[int, dict[str, None]] = {}
        #: no wheel bucket below this second holds anything (None: wheel empty)
        self._cursor: int | None = None
        self._total = 0

    # -- reads -------------------------------------------------------------

    def get(self, aor: str) -> tuple[Binding, ...]:
        """All cached bindings of the AOR, expired ones included."""
        v = self._aors.get(aor)
        if v is None:
            return ()
        return (v,) if isinstance(v, Binding) else v

    def visible(self, aor: str, now: float) -> list[Binding]:
        v = self._aors.get(aor)
        if v is None:
            return []
        if isinstance(v, Binding):
            return [v] if v.expires_at > now else []
        return [b for b in v if b.expires_at > now]

    def all(self, now: float) -> list[Binding]:
        out: list[Binding] = []
        for v in self._aors.values():
            if isinstance(v, Binding):
                if v.expires_at > now:
                    out.append(v)
            else:
                out.extend(b for b in v if b.expires_at > now)
        return out

    def count(self, now: float) -> int:
        return self._total - sum(1 for _ in self._due(now))

    def expired(self, now: float) -> list[Binding]:
        """Cached bindings with ``expires_at <= now`` (not removed: see :meth:`discard`)."""
        return list(self._due(now, advance=True))

    def __len__(self) -> int:
        """Cached bindings, expired ones included."""
        return self._total

    def __iter__(self) -> Iterator[Binding]:
        for aor in self._aors:
            yield from self.get(aor)

    # -- writes ------------------------------------------------------------

    def load(self, bindings: Iterable[Binding]) -> None:
        """Bulk insert (start-up): one pass, no per-AOR bookkeeping calls."""
        if self._aors:  # not the start-up case: take the general path
            grouped: dict[str, list[Binding]] = {}
            for b in bindings:
                grouped.setdefault(b.aor, []).append(b)
            for aor, bs in grouped.items():
                bs.extend(self.get(aor))
                self._set(aor, tuple(sorted(bs, key=sort_key)))
            return
        aors = self._aors
        wheel = self._wheel
        several: list[str] = []
        n = 0
        for b in bindings:
            aor = b.aor
            prev = aors.get(aor)
            if prev is None:
                aors[aor] = b
            elif isinstance(prev, Binding):
                aors[aor] = (prev, b)
                several.append(aor)
            else:
                aors[aor] = (*prev, b)
            sec = int(b.expires_at)
            bucket = wheel.get(sec)
            if bucket is None:
                wheel[sec] = {aor: None}
            else:
                bucket[aor] = None
            n += 1
        for aor in several:
            aors[aor] = tuple(sorted(self.get(aor), key=sort_key))
        self._total = n
        self._cursor = min(wheel) if wheel else None

    def apply(self, aor: str, puts: Iterable[Binding], remove_ids: Iterable[str]) -> None:
        """Put (replace by binding_id) and remove, as a committed update did."""
        puts = tuple(puts)
        drop = set(remove_ids)
        drop.update(b.binding_id for b in puts)
        new = [b for b in self.get(aor) if b.binding_id not in drop]
        new.extend(puts)
        new.sort(key=sort_key)
        self._set(aor, tuple(new))

    def pop_aor(self, aor: str) -> tuple[Binding, ...]:
        old = self.get(aor)
        self._set(aor, ())
        return old

    def discard(self, bindings: Iterable[Binding]) -> list[Binding]:
        """Remove these exact objects where still cached; return those removed.

        Identity, not equality: a binding refreshed since it was picked as
        expired is a new object and stays.
        """
        by_aor: dict[str, list[Binding]] = {}
        for b in bindings:
            by_aor.setdefault(b.aor, []).append(b)
        removed: list[Binding] = []
        for aor, gone in by_aor.items():
            ids = {id(b) for b in gone}
            old = self.get(aor)
            keep = tuple(b for b in old if id(b) not in ids)
            if len(keep) != len(old):
                removed.extend(b for b in old if id(b) in ids)
                self._set(aor, keep)
        return removed

    # -- internals ---------------------------------------------------------

    def _set(self, aor: str, new: tuple[Binding, ...]) -> None:
        """Replace the AOR's tuple, keeping the wheel and the total exact."""
        wheel = self._wheel
        old = self.get(aor)
        for b in old:
            sec = int(b.expires_at)
            bucket = wheel.get(sec)
            if bucket is not None:
                bucket.pop(aor, None)
                if not bucket:
                    del wheel[sec]
        for b in new:
            sec = int(b.expires_at)
            bucket = wheel.get(sec)
            if bucket is None:
                wheel[sec] = {aor: None}
            else:
                bucket[aor] = None
            if self._cursor is None or sec < self._cursor:
                self._cursor = sec
        if len(new) == 1:
            self._aors[aor] = new[0]
        elif new:
            self._aors[aor] = new
        else:
            self._aors.pop(aor, None)
        self._total += len(new) - len(old)
        if not wheel:
            self._cursor = None

    def _due(self, now: float, advance: bool = False) -> Iterator[Binding]:
        """Bindings with ``expires_at <= now``, from the wheel buckets up to ``now``.

        With ``advance`` the cursor moves to the first bucket still holding a
        due binding (buckets before ``int(now)`` only hold due ones), so a
        failed delete is found again on the next tick.
        """
        cursor = self._cursor
        if cursor is None:
            return
        wheel = self._wheel
        limit = int(now)
        if limit - cursor <= 2 * len(wheel) + 64:
            secs: Iterable[int] = range(cursor, limit + 1)
        else:  # a clock far ahead of the buckets: walk the buckets instead
            secs = sorted(s for s in wheel if s <= limit)
        first_left: int | None = None
        for sec in secs:
            bucket = wheel.get(sec)
            if bucket is None:
                continue
            if first_left is None:
                first_left = sec
            for aor in tuple(bucket):
                for b in self.get(aor):
                    if int(b.expires_at) == sec and b.expires_at <= now:
                        yield b
        if advance:
            self._cursor = min(first_left if first_left is not None else limit, limit)


class KeyedLocks:
    """A FIFO lock per key, held while the key is in the dict.

    ``release`` may be called from any callback on the loop (not only by the
    acquiring task), which lets a backend hold an AOR locked until its write
    is applied even when the caller was cancelled meanwhile. An uncontended
    :meth:`try_acquire` is one dict lookup and needs no ``await``: every
    REGISTER takes this lock, so it must not cost an ``asyncio.Lock`` and a
    coroutine per request. A release hands the lock straight to the oldest
    waiter, so no request can be overtaken forever.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        # key -> waiters (None while nobody waits)
        self._held: dict[str, deque[asyncio.Future[None]] | None] = {}

    def try_acquire(self, key: str) -> bool:
        held = self._held
        if key in held:
            return False
        held[key] = None
        return True

    async def acquire(self, key: str) -> None:
        if self.try_acquire(key):
            return
        held = self._held
        waiters = held[key]
        if waiters is None:
            waiters = held[key] = deque()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release(key)  # handed over just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    waiters.remove(fut)
            raise

    def release(self, key: str) -> None:
        waiters = self._held[key]
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the lock passes to this waiter, still held
                return
        del self._held[key]

    def __len__(self) -> int:
        return len(self._held)
