"""Stream framing (RFC 3261 §18.3): cut a TCP byte stream into messages.

Over a stream, Content-Length is the only message boundary, so any doubt about
it (negative, non-numeric, several different values: RFC 4475 ncl, mcl01) loses
the framing for good and the connection must be closed (``fatal=True``). A
Content-Length larger than what has arrived simply waits (clerr); the transport's
idle timeout closes a connection that never delivers the rest.

Datagram framing lives in :func:`sipyard.sip.message.parse_message`.
"""

from __future__ import annotations

from typing import Final

from .errors import ParseError

__all__ = ["StreamFramer", "PING", "PONG"]

#: RFC 5626 §3.5.1 keep-alive: a client sends CRLFCRLF, the server answers CRLF.
PING: Final = b"\r\n\r\n"
PONG: Final = b"\r\n"


class StreamFramer:
    """Feed bytes, get whole messages (``bytes``) or ``PING`` markers back."""

    __slots__ = ("_buf", "max_header", "max_body")

    def __init__(self, *, max_header: int = 65536, max_body: int = 65536) -> None:
        self._buf = bytearray()
        self.max_header = max_header
        self.max_body = max_body

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            if buf[0] in (13, 10):
                # CRLFs between messages are keep-alives; a double one is a ping.
                if buf.startswith(PING):
                    out.append(PING)
                    del buf[:4]
                    continue
                lead = 0
                n = len(buf)
                while lead < n and buf[lead] in (13, 10):
                    lead += 1
                if lead == n and n < 4:
                    break  # may still become a ping
                del buf[:lead]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_header:
                    raise ParseError(513, "Message Too Large", fatal=True)
                break
            if end > self.max_header:
                raise ParseError(513, "Message Too Large", fatal=True)
            length = _content_length(bytes(buf[:end]))
            if length > self.max_body:
                raise ParseError(513, "Message Too Large", fatal=True)
            total = end + 4 + length
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out


def _content_length(head: bytes) -> int:
    """The Content-Length of a header block; 0 when absent."""
    value: int | None = None
    for line in head.split(b"\r\n")[1:]:
        if not line or line[0] in (32, 9):
            continue
        name, sep, rest = line.partition(b":")
        if not sep:
            continue
        key = name.strip().lower()
        if key != b"content-length" and key != b"l":
            continue
        for part in rest.split(b","):
            part = part.strip()
            if not part.isdigit():
                raise ParseError(400, "Bad Content-Length header", fatal=True)
            n = int(part)
            if value is not None and n != value:
                raise ParseError(400, "Multiple Content-Length values", fatal=True)
            value = n
    return 0 if value is None else value
