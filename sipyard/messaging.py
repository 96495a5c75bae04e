"""Sending requests to registered phones: text messages and the like.

A binding is reached where its REGISTER came from (RFC 3581: source address,
port and transport, the same TCP connection while it lives), because the
Contact of a phone behind NAT is often unreachable.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .store.base import Binding
from .transport import Source

if TYPE_CHECKING:
    from .app import App

__all__ = ["send_text", "binding_dest", "send_to_binding"]


async def binding_dest(app: App, b: Binding) -> Source:
    tr = app.transports
    if b.transport == "udp":
        fam_v6 = ":" in b.source_ip
        local = next((x for x in tr.bound if x.transport == "udp" and (":" in x.host) == fam_v6),
                     None)
        loc = (local.host, local.port) if local is not None else tr.local_for("udp", 5060)
        return Source("udp", b.source_ip, b.source_port, None, loc)
    cid = int(b.conn_id) if b.conn_id and b.conn_id.isdigit() else None
    if cid is not None and tr.has_connection(cid):
        return Source("tcp", b.source_ip, b.source_port, cid, tr.local_for("tcp", 5060))
    return await tr.connect_tcp(b.source_ip, b.source_port)


async def send_to_binding(app: App, b: Binding, method: str, *, headers: Sequence[tuple[str, str]],
                          body: bytes = b"", from_uri: str | None = None,
                          call_id: str | None = None, timeout: float | None = None) -> int:
    try:
        dest = await binding_dest(app, b)
    except (TimeoutError, OSError, ConnectionError, socket.gaierror):
        return 503
    cfg = app.config
    result = await app.uac.request(
        method, b.contact, dest,
        from_uri=from_uri or f"sip:{cfg.server.system}@{cfg.server.realm}", to_uri=b.aor,
        headers=headers, body=body, call_id=call_id, timeout=timeout)
    return result.status


async def send_text(app: App, lines: Sequence[str], text: str, *, subject: str | None = None,
                    from_uri: str | None = None, timeout: float | None = None
                    ) -> list[dict[str, Any]]:
    """MESSAGE to every binding of each line; one result per line.

    A result is ``{"target", "status", "detail"}``: status "delivered" when at least one
    binding answered 2xx, "failed" when none did (detail lists each binding's final status,
    408 when it did not answer within ``timeout``), "not registered" when the line has no
    binding. Lines are reached in parallel, so one dead phone delays nobody else.
    """
    store = app.features["store"]
    realm = app.config.server.realm
    now = app.now()
    body = text.encode("utf-8")
    headers: list[tuple[str, str]] = [("Content-Type", "text/plain;charset=UTF-8")]
    if subject:
        headers.append(("Subject", subject))

    async def one(line: str) -> dict[str, Any]:
        bindings = await store.lookup(f"sip:{line}@{realm}", now)
        if not bindings:
            return {"target": line, "status": "not registered", "detail": ""}
        codes = await asyncio.gather(*(send_to_binding(app, b, "MESSAGE", headers=headers,
                                                       body=body, from_uri=from_uri,
                                                       timeout=timeout)
                                       for b in bindings))
        ok = [c for c in codes if 200 <= c < 300]
        detail = ", ".join(str(c) for c in codes)
        return {"target": line, "status": "delivered" if ok else "failed", "detail": detail}

    return list(await asyncio.gather(*(one(n) for n in dict.fromkeys(lines))))
