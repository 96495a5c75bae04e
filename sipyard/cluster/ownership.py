"""Which worker owns a packet: a hash of its Call-ID.

Why the Call-ID and not a worker id in our Via branch: every packet that can
belong to a transaction or call of ours carries the Call-ID of that call —
retransmissions, the ACK, a CANCEL sent from another port, a callee's
response to a request we forked (a proxy keeps the Call-ID), in-dialog BYEs
in either direction, NOTIFYs of a subscription. So one number computed from
the packet alone sends all of them to one process, without any state shared
between workers and without trusting anything a peer could forge: a packet
with a made-up Call-ID merely lands on some worker, which treats it like
any packet from the network (its branch is just an unknown transaction
there). The only packets whose Call-ID we choose are requests the server
itself originates (MESSAGE, NOTIFY, pick-up SUBSCRIBE, NAT pings); those get
a Call-ID that hashes to the worker sending them (:func:`new_call_id`), so
their responses come home too.

The hash is CRC-32 (stable across processes, unlike ``hash()``), taken over
the raw Call-ID value found by a byte search in the header section, so a
packet that is handed on is parsed only by its owner.
"""

from __future__ import annotations

import re
import secrets
import zlib

__all__ = ["Identity", "IDENTITY", "call_id_of", "owner_of", "new_call_id"]

_CALL_ID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


class Identity:
    """This process's place among the workers of one host (one object per process).

    ``count == 1`` (no supervisor) makes every function here a no-op, so the
    single-process server pays nothing.
    """

    __slots__ = ("index", "count")

    def __init__(self) -> None:
        self.index = 0
        self.count = 1

    def set(self, index: int, count: int) -> None:
        if not 0 <= index < count:
            raise ValueError(f"worker {index} of {count}")
        self.index, self.count = index, count


#: The process-wide identity: set once by a worker at start (sipyard.cluster.worker).
IDENTITY = Identity()


def call_id_of(data: bytes) -> bytes | None:
    """The raw Call-ID value of a SIP message (header section only), or None."""
    end = data.find(b"\r\n\r\n")
    m = _CALL_ID.search(data, 0, end + 2 if end >= 0 else len(data))
    if m is None:
        return None
    value = m.group(1).strip()
    return value or None


def owner_of(data: bytes, count: int) -> int | None:
    """The worker (0 … count-1) that owns this packet; None when it has no Call-ID."""
    cid = call_id_of(data)
    if cid is None:
        return None
    return zlib.crc32(cid) % count


def _owner_of_value(value: str, count: int) -> int:
    return zlib.crc32(value.encode("utf-8", "surrogateescape")) % count


def new_call_id(suffix: str = "", nbytes: int = 12) -> str:
    """A fresh random Call-ID whose owner is this worker (``count`` tries on average)."""
    ident = IDENTITY
    while True:
        value = secrets.token_hex(nbytes) + suffix
        if ident.count == 1 or _owner_of_value(value, ident.count) == ident.index:
            return value
