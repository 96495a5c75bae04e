"""Requests the server itself sends: MESSAGE to phones, SUBSCRIBE for pick-up.

A minimal non-INVITE client transaction (RFC 3261 §17.1.2): retransmit over
UDP with timer E (T1 doubling up to T2), give up at timer F (64·T1), match the
response by the branch of our Via. Only what the server needs; no dialogs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Callable, Sequence

from .cluster.ownership import new_call_id
from .sip.message import Response
from .sip.source import Source

__all__ = ["Uac", "UacResult"]

log = logging.getLogger("sipyard.uac")


class UacResult:
    __slots__ = ("status", "reason", "response")

    def __init__(self, status: int, reason: str, response: Response | None) -> None:
        self.status = status
        self.reason = reason
        self.response = response

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Uac:
    def __init__(self, send: Callable[[Source, bytes], bool], *, server_header: str,
                 t1: float = 0.5, t2: float = 4.0) -> None:
        self._send = send
        self.server_header = server_header
        self.t1 = t1
        self.t2 = t2
        self._pending: dict[str, asyncio.Future[Response]] = {}
        self._cseq = itertools.count(1)

    def on_response(self, resp: Response) -> bool:
        """Deliver a response to its client transaction; False when it matches none."""
        try:
            branch = resp.top_via.branch
        except Exception:
            return False
        fut = self._pending.get(branch or "")
        if fut is None:
            return False
        if resp.status >= 200 and not fut.done():
            fut.set_result(resp)
        return True

    async def request(self, method: str, ruri: str, dest: Source, *, from_uri: str = "",
                      to_uri: str = "", headers: Sequence[tuple[str, str]] = (),
                      body: bytes = b"", call_id: str | None = None,
                      timeout: float | None = None) -> UacResult:
        """Send one request and wait for its final response.

        From, To and Call-ID are built from ``from_uri``/``to_uri``/``call_id``
        unless ``headers`` carries them already (pick-up routes NOTIFYs by the
        Call-ID it chose).
        """
        branch = "z9hG4bK" + secrets.token_hex(8)
        host, port = dest.local
        hostpart = f"[{host}]" if ":" in host else host
        given = {n.lower() for n, _ in headers}
        lines = [
            f"{method} {ruri} SIP/2.0",
            f"Via: SIP/2.0/{dest.transport.upper()} {hostpart}:{port};branch={branch};rport",
            "Max-Forwards: 70",
        ]
        if "from" not in given:
            lines.append(f"From: <{from_uri}>;tag={secrets.token_hex(4)}")
        if "to" not in given:
            lines.append(f"To: <{to_uri}>")
        if "call-id" not in given:
            lines.append(f"Call-ID: {call_id or new_call_id()}")
        lines.append(f"CSeq: {next(self._cseq)} {method}")
        if "contact" not in given:
            lines.append(f"Contact: <sip:{hostpart}:{port};transport={dest.transport}>")
        lines.append(f"User-Agent: {self.server_header}")
        lines.extend(f"{n}: {v}" for n, v in headers)
        lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Response] = loop.create_future()
        self._pending[branch] = fut
        limit = timeout if timeout is not None else 64 * self.t1
        deadline = loop.time() + limit
        interval = self.t1
        try:
            if not self._send(dest, data):
                return UacResult(503, "Send failed", None)
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return UacResult(408, "Request Timeout", None)
                wait = remaining if dest.reliable else min(interval, remaining)
                try:
                    resp = await asyncio.wait_for(asyncio.shield(fut), wait)
                    return UacResult(resp.status, resp.reason, resp)
                except TimeoutError:
                    if dest.reliable:
                        return UacResult(408, "Request Timeout", None)
                    interval = min(interval * 2, self.t2)
                    self._send(dest, data)
        finally:
            self._pending.pop(branch, None)
            if not fut.done():
                fut.cancel()
