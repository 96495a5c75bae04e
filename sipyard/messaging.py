"""Sending requests to registered phones: text messages and the like.

A binding is reached where its REGISTER came from (RFC 3581: source address,
port and transport, the same TCP connection while it lives), because the
Contact of a phone behind NAT is often unreachable — unless that flow lives on
another host sharing the store (or behind an edge proxy): then the request goes
there, with the binding's Path as its Route set (:mod:`sipyard.flowtoken`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .forwarder import uri_dest
from .proxy.routing import route_uri
from .sip.errors import ParseError
from .sip.source import Source
from .store.base import Binding, LocationStore
from .transport import Transports
from .uac import Uac

if TYPE_CHECKING:
    from .flowtoken import EdgePath
    from .parts import Current

__all__ = ["Sender"]


class Sender:
    """Out-of-dialog requests from the server to phones (MESSAGE, NOTIFY, OPTIONS)."""

    def __init__(self, transports: Transports, uac: Uac, store: LocationStore,
                 current: Current) -> None:
        self.transports = transports
        self.uac = uac
        self.store = store
        self.current = current
        #: proxy mode: this host as edge proxy (which Path values are ours; set by the app)
        self.edge: EdgePath | None = None

    async def binding_dest(self, b: Binding) -> Source:
        tr = self.transports
        if b.transport == "udp":
            return Source("udp", b.source_ip, b.source_port, None, tr.udp_local(b.source_ip))
        cid = int(b.conn_id) if b.conn_id and b.conn_id.isdigit() else None
        if cid is not None and tr.has_connection(cid):
            return Source("tcp", b.source_ip, b.source_port, cid, tr.local_for("tcp", 5060))
        return await tr.connect_tcp(b.source_ip, b.source_port)

    def route(self, path: Sequence[str]) -> tuple[Source | None, tuple[str, ...]]:
        """For a request of ours to a binding with this Path: (its first hop when that is
        another host or proxy, else None: the binding's flow; the Route set it carries).

        Our own Path value on top is dropped (we hold the flow); anything else in front
        of the phone is visited first, with the Path as the Route set (RFC 3327).
        """
        edge = self.edge
        if not path or edge is None:
            return None, tuple(path)
        if edge.own(path[0])[0]:
            return None, tuple(path[1:])
        try:
            first = route_uri(path[0])
        except ParseError:
            return None, tuple(path)
        return uri_dest(first, self.transports.udp_local), tuple(path)

    async def send_to_binding(self, b: Binding, method: str, *,
                              headers: Sequence[tuple[str, str]], body: bytes = b"",
                              from_uri: str | None = None, call_id: str | None = None,
                              timeout: float | None = None) -> int:
        hop, routes = self.route(b.path)
        try:
            dest = hop if hop is not None else await self.binding_dest(b)
        except (TimeoutError, OSError, ConnectionError, socket.gaierror):
            return 503
        if routes:
            headers = [*(("Route", v) for v in routes), *headers]
        cfg = self.current.config
        result = await self.uac.request(
            method, b.contact, dest,
            from_uri=from_uri or f"sip:{cfg.server.system}@{cfg.server.realm}", to_uri=b.aor,
            headers=headers, body=body, call_id=call_id, timeout=timeout)
        return result.status

    async def send_text(self, lines: Sequence[str], text: str, *, subject: str | None = None,
                        from_uri: str | None = None, timeout: float | None = None,
                        now: float) -> list[dict[str, Any]]:
        """MESSAGE to every binding of each line; one result per line.

        A result is ``{"target", "status", "detail"}``: status "delivered" when at least one
        binding answered 2xx, "failed" when none did (detail lists each binding's final
        status, 408 when it did not answer within ``timeout``), "not registered" when the
        line has no binding. Lines are reached in parallel, so one dead phone delays nobody
        else.
        """
        store = self.store
        realm = self.current.config.server.realm
        body = text.encode("utf-8")
        headers: list[tuple[str, str]] = [("Content-Type", "text/plain;charset=UTF-8")]
        if subject:
            headers.append(("Subject", subject))

        async def one(line: str) -> dict[str, Any]:
            bindings = await store.lookup(f"sip:{line}@{realm}", now)
            if not bindings:
                return {"target": line, "status": "not registered", "detail": ""}
            codes = await asyncio.gather(*(self.send_to_binding(
                b, "MESSAGE", headers=headers, body=body, from_uri=from_uri, timeout=timeout)
                for b in bindings))
            ok = [c for c in codes if 200 <= c < 300]
            detail = ", ".join(str(c) for c in codes)
            return {"target": line, "status": "delivered" if ok else "failed", "detail": detail}

        return list(await asyncio.gather(*(one(n) for n in dict.fromkeys(lines))))

    async def send_replies(self, line: str, replies: Sequence[str], from_uri: str,
                           now: float) -> None:
        """Each of the sender's bindings gets the reply lines in order, the bindings in
        parallel: a phone that is gone (no answer for 64*T1) holds up only itself, and gets
        no more lines after the first it did not take."""
        bindings = await self.store.lookup(
            f"sip:{line}@{self.current.config.server.realm}", now)
        headers = [("Content-Type", "text/plain;charset=UTF-8")]

        async def one(b: Binding) -> None:
            for reply in replies:
                status = await self.send_to_binding(b, "MESSAGE", headers=headers,
                                                    body=reply.encode("utf-8"), from_uri=from_uri)
                if not 200 <= status < 300:
                    return

        await asyncio.gather(*(one(b) for b in bindings))
