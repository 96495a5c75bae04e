"""The registration loops of all trunks, started only where the app says so.

Why a manager object the app may leave unstarted: a provider wants one registration
per trunk per site. When several workers share a store (the scale-out work), exactly
one of them calls :meth:`TrunkManager.start`; the others still route trunk calls
(their :class:`~sipyard.trunks.routing.TrunkRouter` reads the addresses the board got
from the configuration, resolved by :meth:`TrunkManager.resolve_all`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from ..sip.source import Source
from .board import TrunkBoard
from .registration import Registration, Reply

if TYPE_CHECKING:
    from ..config import TrunkConfig
    from ..transport import Transports
    from ..uac import Uac

__all__ = ["TrunkManager", "AsyncIO"]

log = logging.getLogger("sipyard.trunks")


class AsyncIO:
    """:class:`~sipyard.trunks.registration.RegistrationIO` over the server's transports."""

    def __init__(self, transports: Transports, uac: Uac, now: Callable[[], float],
                 udp_local: Callable[[str], tuple[str, int]]) -> None:
        self.transports = transports
        self.uac = uac
        self.now = now
        self.udp_local = udp_local

    def sleep(self, seconds: float) -> Awaitable[None]:
        return asyncio.sleep(seconds)

    async def resolve(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        return list(dict.fromkeys(str(i[4][0]) for i in infos))

    async def open_flow(self, transport: str, ip: str, port: int) -> Source:
        if transport == "udp":
            return Source("udp", ip, port, None, self.udp_local(ip))
        return await self.transports.connect_tcp(ip, port)

    def flow_alive(self, flow: Source) -> bool:
        return self.transports.has_connection(flow.conn_id)

    def send_raw(self, flow: Source, data: bytes) -> bool:
        return self.transports.send(flow, data)

    def local(self, transport: str) -> tuple[str, int]:
        if transport == "udp":
            return self.udp_local("127.0.0.1")
        return self.transports.local_for("tcp", 5060)

    async def request(self, method: str, ruri: str, dest: Source, *, from_uri: str, to_uri: str,
                      headers: Sequence[tuple[str, str]], call_id: str,
                      timeout: float) -> Reply:
        return await self.uac.request(method, ruri, dest, from_uri=from_uri, to_uri=to_uri,
                                      headers=headers, call_id=call_id, timeout=timeout)


class TrunkManager:
    """Starts, changes and stops one :class:`Registration` per trunk with ``register``."""

    def __init__(self, board: TrunkBoard, io: AsyncIO, *, site: str) -> None:
        self.board = board
        self.io = io
        self.site = site  # stable per data dir: the +sip.instance of each trunk derives from it
        self._running: dict[str, tuple[TrunkConfig, Registration, asyncio.Task[None]]] = {}
        self.started = False

    def instance(self, name: str) -> str:
        digest = hashlib.sha256(f"{self.site}\0{name}".encode()).digest()[:16]
        return str(uuid.UUID(bytes=digest, version=4))

    async def resolve_all(self, trunks: Mapping[str, TrunkConfig]) -> None:
        """Fill in every trunk's addresses (inbound requests are recognised by them)."""
        self.board.sync(dict(trunks))
        for name, tc in trunks.items():
            st = self.board.get(name)
            if st is None:
                continue
            ips: set[str] = set()
            for host, port in ((tc.host, tc.port), (tc.proxy_host, tc.proxy_port)):
                if host is None:
                    continue
                try:
                    ips.update(await self.io.resolve(host, port or 5060))
                except OSError as exc:
                    log.warning("trunk %s: cannot resolve %s: %s", name, host, exc)
            st.addresses = frozenset(ips)

    async def start(self, trunks: Mapping[str, TrunkConfig]) -> None:
        self.started = True
        await self.update(trunks)

    async def update(self, trunks: Mapping[str, TrunkConfig]) -> None:
        """Reload: removed or changed trunks stop (un-register), new ones start; the rest
        keep their registration untouched."""
        for name in list(self._running):
            cfg, _reg, _task = self._running[name]
            if trunks.get(name) != cfg:
                await self._stop_one(name)
        await self.resolve_all(trunks)
        if not self.started:
            return
        for name, tc in trunks.items():
            if name in self._running or not tc.register:
                continue
            st = self.board.get(name)
            assert st is not None
            reg = Registration(tc, st, self.io, instance=self.instance(name))
            task = asyncio.ensure_future(reg.run())
            task.add_done_callback(self._done)
            self._running[name] = (tc, reg, task)
            log.info("trunk %s: registering at %s", name, st.registrar)

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("trunk loop failed: %r", task.exception(), exc_info=task.exception())

    async def _stop_one(self, name: str) -> None:
        _cfg, reg, task = self._running.pop(name)
        reg.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        try:
            await asyncio.wait_for(reg.unregister(), 4.0)
        except (TimeoutError, OSError) as exc:
            log.warning("trunk %s: un-register failed: %s", name, exc)

    async def stop(self) -> None:
        """Clean stop: every trunk un-registers (in parallel, a few seconds at most)."""
        names = list(self._running)
        await asyncio.gather(*(self._stop_one(n) for n in names), return_exceptions=True)
        self.started = False
