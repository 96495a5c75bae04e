"""Stream framing (RFC 3261 §18.3): cut a TCP byte stream into messages.

Over a stream, Content-Length is the only message boundary, so any doubt about
it (negative, non-numeric, several different values: RFC 4475 ncl, mcl01) loses
the framing for good and the connection must be closed (``fatal=True``). A
Content-Length larger than what has arrived simply waits (clerr); the transport's
idle timeout closes a connection that never delivers the rest.

The framer's output depends only on the bytes, never on how they were cut into
``feed`` calls: every decision that needs bytes not yet received waits for them
(a lone ``\\r\\n`` may still become a ``\\r\\n\\r\\n`` ping). A peer that trickles a
head or a body one byte at a time costs linear work: the search for the blank
line resumes where the previous one stopped, and a head is read only once.

Datagram framing lives in :func:`sipyard.sip.message.parse_message`.
"""

from __future__ import annotations

import re
from typing import Final

from .errors import ParseError

__all__ = ["StreamFramer", "PING", "PONG"]

#: RFC 5626 §3.5.1 keep-alive: a client sends CRLFCRLF, the server answers CRLF.
PING: Final = b"\r\n\r\n"
PONG: Final = b"\r\n"

_NOT_CRLF: Final = re.compile(rb"[^\r\n]")
#: Content-Length digits beyond this cannot be a real length (and int() of a
#: huge digit string is slow, or refused past 4300 digits).
_MAX_DIGITS: Final = 12


class StreamFramer:
    """Feed bytes, get whole messages (``bytes``) or ``PING`` markers back.

    ``max_header`` caps the header section and ``max_body`` the Content-Length;
    either overflow is a fatal 513 (the connection cannot be resynchronised).

    Framing errors are always ``ParseError(fatal=True)``. When whole messages
    came before the fault in the same ``feed``, they are returned first and the
    error is raised by the next call (and kept in ``error``), so a valid request
    pipelined ahead of garbage is still answered.
    """

    __slots__ = ("_buf", "_scan", "_total", "_error", "max_header", "max_body")

    def __init__(self, *, max_header: int = 65536, max_body: int = 65536) -> None:
        self._buf = bytearray()
        self._scan = 0  # where the search for the blank line resumes
        self._total = 0  # length of the message whose body is still arriving
        self._error: ParseError | None = None
        self.max_header = max_header
        self.max_body = max_body

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def error(self) -> ParseError | None:
        """The framing error that ended this stream, once one happened."""
        return self._error

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the messages (and ``PING`` markers) now complete."""
        if self._error is not None:
            raise self._error
        self._buf += data
        out: list[bytes] = []
        try:
            self._frame(out)
        except ParseError as exc:
            self._error = exc
            self._buf.clear()
            if not out:
                raise
        return out

    def _frame(self, out: list[bytes]) -> None:
        buf = self._buf
        while buf:
            if buf[0] == 13 or buf[0] == 10:
                # Between messages: CRLFCRLF is a ping, any other CR/LF is a
                # keep-alive or noise and is skipped (RFC 3261 §7.5).
                m = _NOT_CRLF.search(buf)
                lead = m.start() if m is not None else len(buf)
                at = buf.find(PING, 0, lead)
                if at >= 0:
                    del buf[: at + 4]
                    out.append(PING)
                    continue
                if m is None:
                    # all CR/LF so far: keep the tail that may still become a ping
                    keep = 3 if buf.endswith(b"\r\n\r") else 2 if buf.endswith(b"\r\n") \
                        else 1 if buf.endswith(b"\r") else 0
                    del buf[: len(buf) - keep]
                    break
                del buf[:lead]
                continue
            total = self._total
            if total:
                # the head was read before: only the body was missing
                if len(buf) < total:
                    break
                self._total = 0
                out.append(bytes(buf[:total]))
                del buf[:total]
                continue
            end = buf.find(b"\r\n\r\n", self._scan)
            if end < 0:
                if len(buf) - 3 > self.max_header:
                    raise ParseError(513, "Message Too Large", fatal=True)
                self._scan = max(0, len(buf) - 3)
                break
            if end > self.max_header:
                raise ParseError(513, "Message Too Large", fatal=True)
            length = _content_length(bytes(buf[:end]))
            if length > self.max_body:
                raise ParseError(513, "Message Too Large", fatal=True)
            total = end + 4 + length
            self._scan = 0
            if len(buf) < total:
                self._total = total  # the head is read once; wait for the body (clerr)
                break
            out.append(bytes(buf[:total]))
            del buf[:total]


def _content_length(head: bytes) -> int:
    """The Content-Length of a header block; 0 when absent.

    Folded lines are joined first, so ``Content-Length:\\r\\n 5`` is 5 here just
    as it is for :func:`~sipyard.sip.message.parse_message`.
    """
    value = -1
    lines = head.split(b"\r\n")
    n = len(lines)
    for i in range(1, n):
        line = lines[i]
        if not line or line[0] == 32 or line[0] == 9:
            continue
        name, sep, rest = line.partition(b":")
        if not sep:
            continue
        key = name.rstrip(b" \t").lower()
        if key != b"content-length" and key != b"l":
            continue
        j = i + 1
        while j < n and lines[j][:1] in (b" ", b"\t"):
            rest += b" " + lines[j]
            j += 1
        for part in rest.split(b","):
            part = part.strip(b" \t")
            if not part.isdigit():
                raise ParseError(400, "Bad Content-Length header", fatal=True)
            if len(part) > _MAX_DIGITS:
                part = part.lstrip(b"0") or b"0"
                if len(part) > _MAX_DIGITS:
                    raise ParseError(513, "Message Too Large", fatal=True)
            number = int(part)
            if value >= 0 and number != value:
                raise ParseError(400, "Multiple Content-Length values", fatal=True)
            value = number
    return 0 if value < 0 else value
