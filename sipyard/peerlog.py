"""What the server logs about peers and requests, at a cost a flood cannot raise.

A fault of one peer (a malformed datagram, a refused request) is logged at most
once a minute per kind; a line per answered request goes to ``sipyard.request``
only when that logger is enabled at INFO.
"""

from __future__ import annotations

import logging
import time

from .sip.message import Request
from .sip.source import Source

__all__ = ["PeerLog", "log_request", "reqlog"]

log = logging.getLogger("sipyard")
reqlog = logging.getLogger("sipyard.request")

#: past this many (peer, kind) entries the table is emptied: a line may repeat, memory may not grow
_MAX_ENTRIES = 10000


class PeerLog:
    """Log a peer's fault at most once a minute per kind, never per packet.

    The message is formatted only when it is logged: a flood of bad packets from
    one peer costs a dict lookup each, not a string per packet. The table is
    keyed by source address, so it is emptied when it grows past its cap.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[tuple[str, object], float] = {}

    def once(self, ip: str, kind: object, fmt: str, *args: object) -> None:
        now = time.monotonic()
        key = (ip, kind)
        last = self._last.get(key)
        if last is not None and now - last < 60:
            return
        if len(self._last) > _MAX_ENTRIES:
            self._last.clear()
        self._last[key] = now
        log.warning(fmt, *args)


def log_request(req: Request, dest: Source, status: int) -> None:
    reqlog.info("%s from=%s to=%s src=%s:%s/%s status=%d", req.method,
                _uri_of(req.get("from")), _uri_of(req.get("to")), dest.ip, dest.port,
                dest.transport, status)


def _uri_of(value: str | None) -> str:
    if not value:
        return "-"
    lt = value.find("<")
    if lt >= 0:
        gt = value.find(">", lt)
        if gt > lt:
            return value[lt + 1:gt]
    return value.split(";", 1)[0].strip()
