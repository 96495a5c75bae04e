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

TCP. A connection is a socket of the worker that accepted (or opened) it, but
its messages belong to calls like any other: a message read from a connection
whose Call-ID another worker owns is handed to that owner as well, naming the
connection, and whatever the owner sends on that connection (the response, a
request down the phone's flow) comes back as a *write* frame that the
connection's worker writes. So every packet of a call — a CANCEL on another
connection, the callee's responses on its own — reaches the process holding
the transaction, over UDP or TCP. To answer "is this connection (or a
connection to this peer) still open?" without a round trip, each worker
announces its connections as they open and close (:class:`ConnDirectory`); a
worker that (re)starts asks the others for theirs and they forget what the
previous one had. A write to a connection that closed meanwhile is dropped
like a packet the network lost: the transaction's timer covers it.

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
from typing import NamedTuple

from ..sip.source import Source

__all__ = ["HandOff", "ConnDirectory", "Frame", "socket_path"]

log = logging.getLogger("sipyard.cluster")

_MAGIC = b"SYH2"
#: magic, kind, port, local port, len(ip), len(local ip), connection id
_HEAD = struct.Struct("!4sBHHBBQ")
KIND_UDP = 1  # a packet from the network, UDP
KIND_TCP = 2  # a message read from the sender's TCP connection ``conn``
KIND_WRITE = 3  # write ``data`` on the receiver's connection ``conn``
KIND_UP = 4  # the sender opened connection ``conn`` to peer ip:port
KIND_DOWN = 5  # ... and it closed
KIND_HELLO = 6  # the sender (re)started: forget its connections, announce yours to it
#: a CANCEL or ACK that matched nothing at the sender (UDP, or read from its TCP
#: connection ``conn``): try it here; ``left`` more workers to try after this one
KIND_PROBE_UDP = 7
KIND_PROBE_TCP = 8
_KINDS = frozenset(range(KIND_UDP, KIND_PROBE_TCP + 1))
_PACKETS = frozenset({KIND_UDP, KIND_TCP, KIND_PROBE_UDP, KIND_PROBE_TCP})
#: a probe's ``left`` rides in the top byte of the connection id field
_LEFT_SHIFT = 56
_CONN_MASK = (1 << _LEFT_SHIFT) - 1
#: AF_UNIX datagrams this large pass with the default buffers (max_message_size ≤ 64 KiB)
_MAX_FRAME = 70_000
_NO_ADDR = ("", 0)


def socket_path(run_dir: Path, index: int) -> Path:
    return run_dir / f"h{index}.sock"


class Frame(NamedTuple):
    kind: int
    data: bytes
    src: Source  # UDP/TCP: where the packet came from and to; UP/DOWN: the peer
    conn: int
    left: int = 0  # probes: how many workers remain to be tried after the receiver


def encode(data: bytes, src: Source, kind: int = KIND_UDP, conn: int = 0,
           left: int = 0) -> bytes:
    ip = src.ip.encode("ascii")
    lip = src.local[0].encode("ascii")
    if kind in (KIND_PROBE_UDP, KIND_PROBE_TCP):
        if not 0 <= left < 256 or conn > _CONN_MASK:
            raise ValueError("probe out of range")
        conn |= left << _LEFT_SHIFT
    return b"".join((_HEAD.pack(_MAGIC, kind, src.port, src.local[1], len(ip), len(lip), conn),
                     ip, lip, data))


def decode(frame: bytes) -> Frame | None:
    """The frame's parts, or None for anything malformed."""
    if len(frame) < _HEAD.size:
        return None
    magic, kind, port, lport, n_ip, n_lip, conn = _HEAD.unpack_from(frame)
    if magic != _MAGIC or kind not in _KINDS:
        return None
    at = _HEAD.size
    try:
        ip = frame[at:at + n_ip].decode("ascii")
        lip = frame[at + n_ip:at + n_ip + n_lip].decode("ascii")
    except UnicodeDecodeError:
        return None
    data = frame[at + n_ip + n_lip:]
    if len(ip) != n_ip or len(lip) != n_lip:
        return None
    if (kind in _PACKETS or kind == KIND_WRITE) and not data:
        return None
    if (kind in _PACKETS or kind in (KIND_UP, KIND_DOWN)) and not port:
        return None
    left = 0
    if kind in (KIND_PROBE_UDP, KIND_PROBE_TCP):
        left, conn = conn >> _LEFT_SHIFT, conn & _CONN_MASK
    transport = "udp" if kind in (KIND_UDP, KIND_PROBE_UDP) else "tcp"
    tcp_conn = conn if kind in (KIND_TCP, KIND_PROBE_TCP) else None
    return Frame(kind, data, Source(transport, ip, port, tcp_conn, (lip, lport)), conn, left)


class HandOff:
    """This worker's hand-off socket: receives frames for it, sends frames to the others."""

    def __init__(self, run_dir: Path, index: int, count: int,
                 deliver: Callable[[bytes, Source], None],
                 probe: Callable[[bytes, Source, int], None] | None = None) -> None:
        self.run_dir = run_dir
        self.index = index
        self.count = count
        self.deliver = deliver
        #: receives probes (``left`` as third argument); without it they are delivered
        self.probe = probe
        self._paths = [str(socket_path(run_dir, i)) for i in range(count)]
        self._peers = {p: i for i, p in enumerate(self._paths)}
        #: TCP: the connections of the other workers (set by the worker role)
        self.directory: ConnDirectory | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: counters for status and tests
        self.sent = 0
        self.received = 0
        self.dropped = 0
        self.local_fallback = 0
        self.probed = 0

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
        """Pass a packet (UDP, or a message read from one of our TCP connections) to its
        owner. False: the owner is not there, handle it here."""
        if src.transport == "udp":
            return self.send_frame(owner, encode(data, src))
        if src.conn_id is None:
            return False
        return self.send_frame(owner, encode(data, src, KIND_TCP, src.conn_id))

    def send_probe(self, worker: int, data: bytes, src: Source, left: int) -> bool:
        """Pass a CANCEL or ACK that matched nothing here to ``worker``, with ``left`` more
        to try after it. False: it cannot go there, answer it here."""
        if src.transport == "udp":
            frame = encode(data, src, KIND_PROBE_UDP, 0, left)
        elif src.conn_id is None or src.conn_id > _CONN_MASK:
            return False
        else:
            frame = encode(data, src, KIND_PROBE_TCP, src.conn_id, left)
        if not self.send_frame(worker, frame):
            return False
        self.probed += 1
        return True

    def send_frame(self, owner: int, frame: bytes) -> bool:
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.sendto(frame, self._paths[owner])
        except (BlockingIOError, InterruptedError):
            self.dropped += 1  # the owner is swamped: drop, the peer retransmits
            return True
        except (ConnectionRefusedError, FileNotFoundError):
            self.local_fallback += 1  # restarting: its transactions are gone anyway
            if self.directory is not None:
                self.directory.forget(owner)  # and its connections with them
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
            peer = self._peers.get(sender)
            if peer is None or peer == self.index:
                self.dropped += 1
                continue
            got = decode(frame)
            if got is None:
                self.dropped += 1
                continue
            self.received += 1
            try:
                if got.kind in (KIND_UDP, KIND_TCP):
                    deliver(got.data, got.src)
                elif got.kind in (KIND_PROBE_UDP, KIND_PROBE_TCP):
                    if self.probe is not None:
                        self.probe(got.data, got.src, got.left)
                    else:
                        deliver(got.data, got.src)
                elif self.directory is not None:
                    self.directory.on_frame(peer, got)
            except Exception:
                log.exception("handling a handed-off packet failed")
            sock = self._sock


class ConnDirectory:
    """The TCP connections of the other workers of this host, and writing on them.

    Duck-types what :class:`~sipyard.transport.Transports` asks of ``elsewhere``.
    A connection id names its worker (``id >> shift``, see
    :mod:`sipyard.cluster.worker`), so a write needs no lookup; the tables
    answer whether a connection, or one to a peer, is open somewhere.
    """

    def __init__(self, handoff: HandOff, shift: int,
                 write_local: Callable[[int, bytes], bool],
                 local_conns: Callable[[], list[tuple[int, tuple[str, int]]]]) -> None:
        self.handoff = handoff
        self.shift = shift
        self._write_local = write_local
        self._local_conns = local_conns
        self._conns: dict[int, tuple[str, int]] = {}
        self._by_peer: dict[tuple[str, int], int] = {}
        #: frames asking us to write on a connection that was already gone
        self.lost_writes = 0

    # -- what the transports ask ------------------------------------------------------
    def has(self, conn_id: int) -> bool:
        return conn_id in self._conns

    def conn_of_peer(self, ip: str, port: int) -> int | None:
        return self._by_peer.get((ip, port))

    def write(self, conn_id: int, data: bytes) -> bool:
        """Hand ``data`` to the worker holding ``conn_id``; False when none does."""
        if conn_id not in self._conns:
            return False
        frame = encode(data, Source("tcp", "", 0, None, _NO_ADDR), KIND_WRITE, conn_id)
        return self.handoff.send_frame(conn_id >> self.shift, frame)

    def opened(self, conn_id: int, peer: tuple[str, int]) -> None:
        self._announce(KIND_UP, conn_id, peer)

    def closed(self, conn_id: int, peer: tuple[str, int]) -> None:
        self._announce(KIND_DOWN, conn_id, peer)

    def hello(self) -> None:
        """At start: the others forget what our predecessor had and tell us theirs."""
        frame = encode(b"", Source("tcp", "", 0, None, _NO_ADDR), KIND_HELLO)
        for i in range(self.handoff.count):
            if i != self.handoff.index:
                self.handoff.send_frame(i, frame)

    # -- what the other workers tell us --------------------------------------------------
    def on_frame(self, sender: int, f: Frame) -> None:
        if f.kind == KIND_WRITE:
            if (f.conn >> self.shift) != self.handoff.index or not self._write_local(f.conn, f.data):
                self.lost_writes += 1
        elif f.kind in (KIND_UP, KIND_DOWN):
            if (f.conn >> self.shift) != sender:
                return  # a worker speaks for its own connections only
            peer = (f.src.ip, f.src.port)
            if f.kind == KIND_UP:
                self._conns[f.conn] = peer
                self._by_peer[peer] = f.conn
            else:
                self._drop(f.conn)
        elif f.kind == KIND_HELLO:
            self.forget(sender)
            for conn_id, peer in self._local_conns():
                self._send(sender, KIND_UP, conn_id, peer)

    def forget(self, worker: int) -> None:
        for conn_id in [c for c in self._conns if (c >> self.shift) == worker]:
            self._drop(conn_id)

    def _drop(self, conn_id: int) -> None:
        peer = self._conns.pop(conn_id, None)
        if peer is not None and self._by_peer.get(peer) == conn_id:
            del self._by_peer[peer]
            other = next((c for c, p in self._conns.items() if p == peer), None)
            if other is not None:
                self._by_peer[peer] = other

    def _announce(self, kind: int, conn_id: int, peer: tuple[str, int]) -> None:
        for i in range(self.handoff.count):
            if i != self.handoff.index:
                self._send(i, kind, conn_id, peer)

    def _send(self, worker: int, kind: int, conn_id: int, peer: tuple[str, int]) -> None:
        try:
            frame = encode(b"", Source("tcp", peer[0], peer[1], None, _NO_ADDR), kind, conn_id)
        except UnicodeEncodeError:
            return
        self.handoff.send_frame(worker, frame)
