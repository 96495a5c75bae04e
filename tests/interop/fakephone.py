"""A scripted UDP phone for proxy tests: answers INVITEs the way a test tells it to.

Why not sipp for the callees: a forking test needs each callee to ring, then answer
or be CANCELed depending on what the *other* callee did, and to report exactly what it
received (the CANCEL's Reason header); a few lines of Python say that more plainly
than a sipp scenario per case.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import uuid


def _hdr(msg: str, name: str) -> str | None:
    m = re.search(rf"^{name}:\s*(.*?)\r$", msg, re.M | re.I)
    return m.group(1) if m else None


def _all_hdrs(msg: str, name: str) -> list[str]:
    return re.findall(rf"^{name}:\s*(.*?)\r$", msg, re.M | re.I)


def response_to(req: str, status: int, reason: str, *, tag: str | None, contact: str | None
                ) -> bytes:
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in _all_hdrs(req, "Via")]
    lines += [f"Record-Route: {v}" for v in _all_hdrs(req, "Record-Route")]
    lines.append(f"From: {_hdr(req, 'From')}")
    to = _hdr(req, "To") or ""
    if tag and ";tag=" not in to:
        to += f";tag={tag}"
    lines.append(f"To: {to}")
    lines.append(f"Call-ID: {_hdr(req, 'Call-ID')}")
    lines.append(f"CSeq: {_hdr(req, 'CSeq')}")
    if contact:
        lines.append(f"Contact: {contact}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class FakePhone:
    """Answers INVITE with 180, then ``final`` after ``delay`` seconds (None: never);
    a CANCEL gets 200 + 487; BYE gets 200. Everything received is kept in ``got``."""

    def __init__(self, final: int | None = 200, delay: float = 0.3, reason: str = "Final",
                 contact_headers: str = "", redirect_to: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.final = final
        self.delay = delay
        self.reason = reason
        self.contact_headers = contact_headers
        self.redirect_to = redirect_to
        self.got: list[str] = []
        self.tag = uuid.uuid4().hex[:8]
        self._stop = False
        self._pending: dict[str, tuple[str, tuple[str, int], float]] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def contact(self) -> str:
        return f"<sip:phone@127.0.0.1:{self.port}>"

    def methods(self) -> list[str]:
        return [m.split(" ", 1)[0] for m in self.got if not m.startswith("SIP/2.0")]

    def first(self, method: str) -> str | None:
        return next((m for m in self.got if m.startswith(method + " ")), None)

    def _run(self) -> None:
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                data = None
            except OSError:
                return
            now = time.monotonic()
            if data is not None:
                self._take(data.decode("utf-8", "replace"), addr)
            for cid, (req, addr, at) in list(self._pending.items()):
                if now >= at and self.final is not None:
                    del self._pending[cid]
                    contact = self.redirect_to or self.contact + self.contact_headers
                    self._send(response_to(req, self.final, self.reason, tag=self.tag,
                                           contact=contact), addr)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(data, addr)

    def _take(self, msg: str, addr: tuple[str, int]) -> None:
        self.got.append(msg)
        if msg.startswith("SIP/2.0"):
            return
        method = msg.split(" ", 1)[0]
        cid = _hdr(msg, "Call-ID") or ""
        if method == "INVITE":
            if cid in self._pending or any(
                    m.startswith("INVITE ") and _hdr(m, "Call-ID") == cid for m in self.got[:-1]):
                return  # a retransmission
            self._send(response_to(msg, 180, "Ringing", tag=self.tag, contact=self.contact), addr)
            self._pending[cid] = (msg, addr, time.monotonic() + self.delay)
        elif method == "CANCEL":
            self._send(response_to(msg, 200, "OK", tag=None, contact=None), addr)
            pending = self._pending.pop(cid, None)
            if pending is not None:
                self._send(response_to(pending[0], 487, "Request Terminated", tag=self.tag,
                                       contact=None), addr)
        elif method in ("BYE", "OPTIONS", "MESSAGE", "INFO", "UPDATE", "NOTIFY"):
            self._send(response_to(msg, 200, "OK", tag=self.tag, contact=None), addr)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()
