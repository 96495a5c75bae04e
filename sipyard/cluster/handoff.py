"""Hand-off between the workers of one host: an AF_UNIX datagram socket each.

The kernel spreads UDP datagrams over the workers' ``SO_REUSEPORT`` sockets
by 4-tuple, not by call, so a worker often receives a packet another worker
owns (:mod:`sipyard.cluster.ownership`). It passes the packet on, unparsed,
with the address it came from and the local address it came to; the owner
handles it as if its own socket had received it and answers from its own
socket bound to that same address (the port is shared), so the peer sees no
difference.

Trust. A forwarded packet is worth exactly what the network packet was:
the frame carries nothing but bytes and the two addresses, the receiver runs
the full request path on it (parsing, validation, authentication, bans) and
uses the source address only as a reply address, as it would for any UDP
packet. The sockets live in a directory of mode 0700 and are 0600
themselves, so only the server's own user can inject frames; a frame whose
sender is not a hand-off socket of that directory is dropped, as is any frame
that does not decode.

Why datagrams: one packet is one frame (no framing state, no head-of-line
blocking), a full receiver drops rather than stalls the sender (the UDP peer
retransmits), and a dead owner shows as ECONNREFUSED/ENOENT at once, in which
case the receiving worker handles the packet itself (the owner's transactions
died with it; someone must answer the retransmission).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from ..sip.source import Source

__all__ = ["HandOff", "socket_path"]

log = logging.getLogger("sipyard.cluster")

_MAGIC = b"SYH1"
_HEAD = struct.Struct("!4sBHHBB")  # magic, kind, src port, local port, len(src ip), len(local ip)
KIND_UDP = 1
#: AF_UNIX datagrams this large pass with the default buffers (max_message_size ≤ 64 KiB)
_MAX_FRAME = 70_000


def socket_path(run_dir: Path, index: int) -> Path:
    return run_dir / f"h{index}.sock"


def encode(data: bytes, src: Source) -> bytes:
    ip = src.ip.encode("ascii")
    lip = src.local[0].encode("ascii")
    return b"".join((_HEAD.pack(_MAGIC, KIND_UDP, src.port, src.local[1], len(ip), len(lip)),
                     ip, lip, data))


def decode(frame: bytes) -> tuple[bytes, Source] | None:
    """The packet and its (UDP) source, or None for anything malformed."""
    if len(frame) < _HEAD.size:
        return None
    magic, kind, port, lport, n_ip, n_lip = _HEAD.unpack_from(frame)
    if magic != _MAGIC or kind != KIND_UDP:
        return None
    at = _HEAD.size
    try:
        ip = frame[at:at + n_ip].decode("ascii")
        lip = frame[at + n_ip:at + n_ip + n_lip].decode("ascii")
    except UnicodeDecodeError:
        return None
    data = frame[at + n_ip + n_lip:]
    if len(ip) != n_ip or len(lip) != n_lip or not data or not port:
        return None
    return data, Source("udp", ip, port, None, (lip, lport))


class HandOff:
    """This worker's hand-off socket: receives frames for it, sends frames to the others."""

    def __init__(self, run_dir: Path, index: int, count: int,
                 deliver: Callable[[bytes, Source], None]) -> None:
        self.run_dir = run_dir
        self.index = index
        self.count = count
        self.deliver = deliver
        self._paths = [str(socket_path(run_dir, i)) for i in range(count)]
        self._peers = frozenset(self._paths)
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: counters for status and tests
        self.sent = 0
        self.received = 0
        self.dropped = 0
        self.local_fallback = 0

    def open(self) -> None:
        path = self._paths[self.index]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            old = os.umask(0o177)  # born 0600: no window with looser permissions
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._paths[self.index])

    def send(self, owner: int, data: bytes, src: Source) -> bool:
        """Pass a packet to its owner. False: the owner is not there, handle it here."""
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.sendto(encode(data, src), self._paths[owner])
        except (BlockingIOError, InterruptedError):
            self.dropped += 1  # the owner is swamped: drop, the peer retransmits
            return True
        except (ConnectionRefusedError, FileNotFoundError):
            self.local_fallback += 1  # restarting: its transactions are gone anyway
            return False
        except (OSError, UnicodeEncodeError) as exc:
            log.debug("hand-off to worker %d failed: %s", owner, exc)
            self.local_fallback += 1
            return False
        self.sent += 1
        return True

    def _readable(self) -> None:
        sock = self._sock
        deliver = self.deliver
        for _ in range(256):  # bounded: let the loop serve the SIP sockets too
            if sock is None:
                return
            try:
                frame, sender = sock.recvfrom(_MAX_FRAME)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("hand-off receive failed: %s", exc)
                return
            if sender not in self._peers:
                self.dropped += 1
                continue
            got = decode(frame)
            if got is None:
                self.dropped += 1
                continue
            self.received += 1
            try:
                deliver(*got)
            except Exception:
                log.exception("handling a handed-off packet failed")
            sock = self._sock
