"""One worker under the supervisor: what changes compared with a lone server.

The supervisor (:mod:`sipyard.supervisor`) starts ``sipyard serve`` again for
each worker with ``SIPYARD_WORKER=i/N`` and ``SIPYARD_RUN=<dir>`` in the
environment. The worker is the ordinary server plus four things, all wired
from here so the request path of a lone server stays as it is:

* its listening sockets get ``SO_REUSEPORT`` (the kernel spreads packets);
* UDP packets owned by another worker (a hash of the Call-ID, see
  :mod:`~sipyard.cluster.ownership`) are handed to it over
  :class:`~sipyard.cluster.handoff.HandOff` before anything is parsed;
* its control socket is private (``<run>/w<i>.ctl``): the supervisor owns
  ``control.sock`` and fans requests out;
* only worker 0 runs the site-wide singletons (web page, metrics, and the
  hook for trunk registrations, ``OpsContext.primary``).

TCP messages are handed off the same way: the connection stays with the
worker that accepted it, the message goes to the Call-ID's owner, and what
the owner sends on the connection comes back to the holder to write
(:class:`~sipyard.cluster.handoff.ConnDirectory`, which also tells every
worker which connections the others hold).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..sip.source import Source
from .handoff import ConnDirectory, HandOff
from .ownership import IDENTITY, owner_of

__all__ = ["WorkerRole", "from_env", "ENV_WORKER", "ENV_RUN"]

log = logging.getLogger("sipyard.cluster")

ENV_WORKER = "SIPYARD_WORKER"
ENV_RUN = "SIPYARD_RUN"
#: TCP connection ids of worker i start at i << 40: ids stored in a binding never
#: name another worker's connection by accident
_CONN_ID_SHIFT = 40


def from_env() -> tuple[int, int, Path] | None:
    """``(index, count, run_dir)`` when this process is a worker, else None."""
    raw = os.environ.get(ENV_WORKER)
    run = os.environ.get(ENV_RUN)
    if not raw or not run:
        return None
    index_s, _, count_s = raw.partition("/")
    index, count = int(index_s), int(count_s)
    if not 0 <= index < count:
        raise ValueError(f"{ENV_WORKER}={raw!r}: expected INDEX/COUNT")
    return index, count, Path(run)


class WorkerRole:
    """Turns an app (duck-typed: nothing imports ``app.py``) into worker ``index`` of ``count``."""

    def __init__(self, app: Any, index: int, count: int, run_dir: Path) -> None:
        self.app = app
        self.index = index
        self.count = count
        self.run_dir = run_dir
        self.handoff: HandOff | None = None
        self._inner: Callable[[bytes, Source], None] | None = None
        self._watch: asyncio.Task[None] | None = None

    def prepare(self) -> None:
        """Before ``app.start()``: sockets, control path, identity."""
        IDENTITY.set(self.index, self.count)
        transports = self.app.transports
        transports.reuse_port = True
        transports.set_conn_id_base(self.index << _CONN_ID_SHIFT)
        ctx = self.app.ops.ctx
        ctx.control_path = self.run_dir / f"w{self.index}.ctl"
        ctx.primary = self.index == 0
        self.app.parts.guard.rate_share = self.count  # Call-IDs spread a source's REGISTERs

    async def start(self) -> None:
        """After ``app.start()``: open the hand-off socket and take over the ingress."""
        transports = self.app.transports
        inner = self._inner = transports.handler
        handoff = self.handoff = HandOff(self.run_dir, self.index, self.count, inner)
        handoff.open()
        if self.count > 1:
            transports.handler = self.ingress
            directory = handoff.directory = ConnDirectory(
                handoff, _CONN_ID_SHIFT, transports.write_conn, transports.tcp_peers)
            transports.elsewhere = directory
            directory.hello()
        self.app.ops.ctx.status_extra = self.status
        parent = os.getppid()
        self._watch = asyncio.ensure_future(self._watch_parent(parent))

    def ingress(self, data: bytes, src: Source) -> None:
        """Every packet from the transports: one of another worker's calls goes to it."""
        owner = owner_of(data, self.count)
        if owner is not None and owner != self.index:
            handoff = self.handoff
            if handoff is not None and handoff.send(owner, data, src):
                return
        inner = self._inner
        assert inner is not None
        inner(data, src)

    def status(self) -> dict[str, Any]:
        h = self.handoff
        d = h.directory if h else None
        return {"worker": self.index, "handoff": {
            "sent": h.sent if h else 0, "received": h.received if h else 0,
            "dropped": h.dropped if h else 0, "local_fallback": h.local_fallback if h else 0,
            "lost_writes": d.lost_writes if d else 0}}

    async def _watch_parent(self, parent: int) -> None:
        """A worker whose supervisor is gone (kill -9) stops instead of living on alone."""
        while True:
            await asyncio.sleep(1.0)
            if os.getppid() != parent:
                log.warning("worker %d: supervisor %d is gone; stopping", self.index, parent)
                self.app.request_stop()
                return

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self.handoff is not None:
            self.handoff.close()
