"""One worker under the supervisor: what changes compared with a lone server.

The supervisor (:mod:`sipyard.supervisor`) starts ``sipyard serve`` again for
each worker with ``SIPYARD_WORKER=i/N`` and ``SIPYARD_RUN=<dir>`` in the
environment. The worker is the ordinary server plus four things, all wired
from here so the request path of a lone server stays as it is:

* its listening sockets get ``SO_REUSEPORT`` (the kernel spreads packets);
* packets owned by another worker (a hash of the Call-ID, see
  :mod:`~sipyard.cluster.ownership`) are handed to it over
  :class:`~sipyard.cluster.handoff.HandOff` before anything is parsed —
  except the requests that leave no call behind (below), which are handled
  where the kernel delivered them;
* its control socket is private (``<run>/w<i>.ctl``): the supervisor owns
  ``control.sock`` and fans requests out;
* only worker 0 runs the site-wide singletons (web page, metrics, and the
  hook for trunk registrations, ``OpsContext.primary``).

Where a request is handled. A hand-off costs the owner a second wake-up:
measured with sipp at 1 000/s over one socket, handing every other packet
on made a REGISTER cost 1.28 × and a redirected INVITE 1.36 × what they cost
with one worker (``bench/workers.sh``). So the requests that need no owner
stay where they arrived: a REGISTER (its only shared state is the store,
which serialises an AOR's writes across processes itself), and in redirect
mode also INVITE, ACK, CANCEL and OPTIONS (answered at once or after a
suspension of the chain, but never leaving a dialog or a client transaction
behind). Their retransmissions come from the same address and port, hence
the same 4-tuple and the same worker (the kernel's ``SO_REUSEPORT`` hash).
The one packet that may legitimately come from elsewhere is a CANCEL (or a
non-2xx ACK) sent from another port than its INVITE: a CANCEL or ACK that
matches no transaction in the worker that got it is passed round the other
workers in turn (a *probe*), and only the last one to try answers it (481,
or drops the ACK) — so no 481 for a CANCEL whose INVITE lives in another worker.
Everything else — proxied requests, in-dialog requests, SUBSCRIBE/NOTIFY and
every response — goes to the Call-ID's owner as before, because it can start
or touch state (forks, calls, subscriptions) that later packets of the call
must find. The one thing given up: a REGISTER or redirected INVITE whose
*retransmission* comes from another source port than the original (a NAT
that rebound mid-transaction) is answered by the worker that got it, again;
the client's first answer went to the old port, which it no longer hears.

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

#: requests handled where they arrive (module doc): in any mode, and in redirect mode
_LOCAL_ANY = frozenset({b"REGISTER"})
_LOCAL_REDIRECT = frozenset({b"REGISTER", b"INVITE", b"ACK", b"CANCEL", b"OPTIONS"})

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
        self._local = _LOCAL_ANY
        #: the packet being handled and, for a probe, how many workers remain after us
        #: (-1: it came from the network or a plain hand-off)
        self._data: bytes | None = None
        self._left = -1

    def prepare(self) -> None:
        """Before ``app.start()``: sockets, control path, identity."""
        IDENTITY.set(self.index, self.count)
        transports = self.app.transports
        transports.reuse_port = True
        transports.set_conn_id_base(self.index << _CONN_ID_SHIFT)
        ctx = self.app.ops.ctx
        ctx.control_path = self.run_dir / f"w{self.index}.ctl"
        ctx.primary = self.index == 0
        # a source's ports spread over the workers by the kernel's 4-tuple hash, so each
        # allows rate/N (a one-port source is held to that: the safe side)
        self.app.parts.guard.rate_share = self.count
        if getattr(self.app, "proxy", None) is None:
            self._local = _LOCAL_REDIRECT

    async def start(self) -> None:
        """After ``app.start()``: open the hand-off socket and take over the ingress."""
        transports = self.app.transports
        self._inner = transports.handler
        handoff = self.handoff = HandOff(self.run_dir, self.index, self.count,
                                         self._handed, self._probe)
        handoff.open()
        if self.count > 1:
            transports.handler = self.ingress
            self.app.unmatched = self.unmatched
            directory = handoff.directory = ConnDirectory(
                handoff, _CONN_ID_SHIFT, transports.write_conn, transports.tcp_peers)
            transports.elsewhere = directory
            directory.hello()
        self.app.ops.ctx.status_extra = self.status
        parent = os.getppid()
        self._watch = asyncio.ensure_future(self._watch_parent(parent))

    def ingress(self, data: bytes, src: Source) -> None:
        """Every packet from the transports: one of another worker's calls goes to it."""
        sp = data.find(b" ", 0, 10)
        if sp <= 0 or data[:sp] not in self._local:
            owner = owner_of(data, self.count)
            if owner is not None and owner != self.index:
                handoff = self.handoff
                if handoff is not None and handoff.send(owner, data, src):
                    return
        self._handle(data, src, -1)

    def _handed(self, data: bytes, src: Source) -> None:
        self._handle(data, src, -1)

    def _probe(self, data: bytes, src: Source, left: int) -> None:
        self._handle(data, src, left)

    def _handle(self, data: bytes, src: Source, left: int) -> None:
        inner = self._inner
        assert inner is not None
        self._data, self._left = data, left
        try:
            inner(data, src)
        finally:
            self._data, self._left = None, -1

    def unmatched(self, req: object, src: Source) -> bool:
        """The app's hook for a CANCEL or ACK matching no transaction here (module doc):
        pass it to the next worker unless every other one has had it. True = passed on."""
        data, left, handoff = self._data, self._left, self.handoff
        if data is None or handoff is None or left == 0:
            return False
        left = self.count - 2 if left < 0 else left - 1
        return handoff.send_probe((self.index + 1) % self.count, data, src, left)

    def status(self) -> dict[str, Any]:
        h = self.handoff
        d = h.directory if h else None
        return {"worker": self.index, "handoff": {
            "sent": h.sent if h else 0, "received": h.received if h else 0,
            "dropped": h.dropped if h else 0, "local_fallback": h.local_fallback if h else 0,
            "probed": h.probed if h else 0,
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
