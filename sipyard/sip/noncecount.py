"""The nonce counts a digest server remembers, in pages of 32-bit counters.

Replay protection needs, per nonce that has authenticated someone, the highest
``nc`` accepted, for as long as the nonce is fresh (``nonce_ttl``, 300 s). A
busy registrar uses a new nonce for nearly every REGISTER, so at 150
authenticated requests a second the table holds 45 000 nonces. Kept as a dict
of MAC bytes to int plus a deque of (timestamp, MAC) for the age order, that was
about 250 bytes a nonce, 11 MB, which a long soak showed as RSS climbing for the
first five minutes (issue #16).

What makes it compact: the nonces carry a sequence number (the issuer's counter,
:mod:`sipyard.sip.digest`), and one issuer numbers its nonces in the order it
mints them. So the counts live in pages of :data:`PAGE` consecutive numbers,
each page a 256-byte ``array('I')`` (0 = never used; ``nc`` fits: it is 8 hex
digits) with the newest timestamp of a nonce used in it. Nonces minted
together expire together, so whole pages are dropped by age, oldest first, and
a page is created only when one of its nonces authenticates someone (a flood of
challenges costs nothing). About 8 bytes a nonce when most challenges are
answered, and at worst (one used nonce in a page) about 450 bytes.

The *floor* keeps eviction safe: the newest timestamp of any dropped page.
A nonce not in the table whose timestamp is at or below it is refused as
stale, so neither age, nor the cap, nor a clock jumping back can reopen a
nonce for replay; an honest client just gets a fresh nonce.
"""

from __future__ import annotations

import math
from array import array

__all__ = ["PAGE", "NonceCounts"]

#: nonces per page: small enough that a sparsely used page costs little,
#: large enough that the per-page overhead (≈ 200 bytes) is spread thin
PAGE = 64
_SHIFT = PAGE.bit_length() - 1
_MASK = PAGE - 1
_EMPTY = array("I", bytes(4 * PAGE))
if _EMPTY.itemsize != 4:  # pragma: no cover - every platform CPython runs on today
    raise ImportError("array('I') must hold 32-bit values for nonce counts")


class _Page:
    __slots__ = ("counts", "newest", "used")

    def __init__(self) -> None:
        self.counts = array("I", _EMPTY)
        self.newest = -math.inf
        self.used = 0


class NonceCounts:
    """Highest accepted ``nc`` per nonce sequence number, bounded by age and count."""

    __slots__ = ("ttl", "max_tracked", "floor", "_pages", "_tracked")

    def __init__(self, ttl: float, max_tracked: int, floor: float = -math.inf) -> None:
        self.ttl = ttl
        self.max_tracked = max_tracked
        #: see the module doc; only ever rises
        self.floor = floor
        # insertion order is first-use order, which follows the sequence numbers
        # and so the timestamps closely enough to sweep from the front
        self._pages: dict[int, _Page] = {}
        self._tracked = 0

    def __len__(self) -> int:
        """Nonces whose count is remembered."""
        return self._tracked

    @property
    def pages(self) -> int:
        return len(self._pages)

    def seen(self, seq: int, issued: float) -> int | None:
        """The highest ``nc`` accepted for the nonce; 0 if never used; None if
        it may have been used and forgotten (at or below the floor: stale)."""
        page = self._pages.get(seq >> _SHIFT)
        count = 0 if page is None else page.counts[seq & _MASK]
        if count == 0 and issued <= self.floor:
            return None
        return count

    def accept(self, seq: int, issued: float, nc: int, now: float) -> None:
        """Record ``nc`` (above what :meth:`seen` returned) for the nonce."""
        key = seq >> _SHIFT
        page = self._pages.get(key)
        if page is None or page.counts[seq & _MASK] == 0:
            self.sweep(now)
            while self._tracked >= self.max_tracked and self._pages:
                self._drop(next(iter(self._pages)))
            page = self._pages.get(key)
            if page is None:
                page = self._pages[key] = _Page()
            page.used += 1
            self._tracked += 1
            if issued > page.newest:
                page.newest = issued
        page.counts[seq & _MASK] = nc

    def sweep(self, now: float) -> int:
        """Drop the pages whose every nonce is older than ``ttl``; how many went."""
        cutoff = now - self.ttl
        pages = self._pages
        dropped = 0
        while pages:
            key = next(iter(pages))
            if pages[key].newest >= cutoff:
                break
            self._drop(key)
            dropped += 1
        return dropped

    def _drop(self, key: int) -> None:
        page = self._pages.pop(key)
        self._tracked -= page.used
        if page.newest > self.floor:
            self.floor = page.newest
