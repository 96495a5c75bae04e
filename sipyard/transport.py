"""asyncio UDP and TCP endpoints: bytes in, bytes out, nothing else.

The transport knows sockets and connections, never SIP semantics beyond stream
framing; every datagram or framed message goes to one callback with a
:class:`Source` naming where it came from, and responses go back through
:meth:`Transports.send`. Keeping it this thin lets the core stay sans-IO and
lets tests drive the app without sockets.

Bounds (every table here is keyed by something the network chose):

* UDP answers leave through a plain ``socket.sendto`` on a duplicate of the
  listening socket, not through the loop's transport: uvloop's ``sendto`` keeps
  a module-wide LRU of the last 2048 destination addresses (key tuple, host
  string, sockaddr holder). Under traffic from many sources that cache churns,
  and the entries that survive an attack sit scattered over every pymalloc arena
  the attack made, so none of them could ever be returned to the OS (measured:
  20 000 OPTIONS from 2 000 sources kept 21 pinned arenas, +21 MB RSS, after
  every transaction had ended; with the plain send, +4 MB). The transport is
  still used when the kernel's send buffer is full, to queue.
* TCP: at most ``max_connections`` connections in all (inbound beyond that
  closes the connection idle longest, one that never sent a message first),
  ``max_conns_per_peer`` per source address, and ``max_handshakes_per_net``
  connections from one /24 (IPv4) or /64 (IPv6) that have not yet sent a
  complete SIP message; such a connection is closed after ``handshake_timeout``
  seconds, any connection after ``tcp_idle`` seconds of silence.
* The "refused" log memory is swept by age (one line per source a minute).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .sip.errors import ParseError
from .sip.framing import PING, PONG, StreamFramer
from .sip.source import Listen, Source

__all__ = ["Source", "Listen", "Transports", "Elsewhere", "net_of"]

log = logging.getLogger("sipyard.transport")


Handler = Callable[[bytes, Source], None]
ErrorHandler = Callable[[ParseError, Source], None]


class Elsewhere(Protocol):
    """The TCP connections other processes of this host hold (``--workers N``).

    A connection is a socket of one worker; another worker that must send on
    it (a response, a request down a phone's flow) asks the holder to write
    (:class:`sipyard.cluster.handoff.ConnDirectory`).
    """

    def has(self, conn_id: int) -> bool: ...
    def conn_of_peer(self, ip: str, port: int) -> int | None: ...
    def write(self, conn_id: int, data: bytes) -> bool: ...
    def opened(self, conn_id: int, peer: tuple[str, int]) -> None: ...
    def closed(self, conn_id: int, peer: tuple[str, int]) -> None: ...


class ListenSpec(Protocol):
    """What ``start`` reads of a listen spec (the config's record or a :class:`Listen`)."""

    @property
    def transport(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


class _Udp(asyncio.DatagramProtocol):
    __slots__ = ("owner", "local", "transport")

    def __init__(self, owner: Transports, local: tuple[str, int]) -> None:
        self.owner = owner
        self.local = local
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        # CPython's selector transport reads 256 KiB per datagram by default,
        # an mmap/munmap per packet (bench README pitfall 3).
        if hasattr(transport, "max_size"):
            transport.max_size = self.owner.max_udp
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) > self.owner.max_udp:
            self.owner.oversize(Source("udp", addr[0], addr[1], None, self.local), data)
            return
        self.owner.handler(data, Source("udp", addr[0], addr[1], None, self.local))

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error on %s: %s", self.local, exc)


class _UdpReader:
    """One UDP socket read in batches: every queued datagram per readiness event.

    uvloop's datagram transport wakes the protocol once per datagram; under
    load that is a callback (and often a loop iteration) per packet. Reading
    with ``recvfrom_into`` until the socket is empty (at most ``BATCH`` per
    wake-up, so a flood cannot starve timers and TCP) and answering with a
    plain ``sendto`` keeps the per-datagram cost at the two system calls.
    A send that would block is dropped, as the network would drop it; the
    transaction layer's retransmissions cover it like any lost datagram.
    """

    BATCH = 64

    def __init__(self, owner: Transports, sock: socket.socket, local: tuple[str, int]) -> None:
        self.owner = owner
        self.sock = sock
        self.local = local
        self.transport = self  # what Transports.send and close use
        # room for the largest datagram UDP carries, so an oversize one is seen whole
        self._buf = bytearray(max(65536, owner.max_udp + 1))
        self._view = memoryview(self._buf)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        recv_into = self.sock.recvfrom_into
        buf = self._buf
        view = self._view
        owner = self.owner
        handler = owner.handler
        max_udp = owner.max_udp
        local = self.local
        held = owner.hold()
        try:
            for _ in range(self.BATCH):
                try:
                    n, addr = recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # ICMP errors surface here on some kernels
                    log.debug("udp error on %s: %s", local, exc)
                    continue
                src = Source("udp", addr[0], addr[1], None, local)
                if n > max_udp:
                    owner.oversize(src, bytes(view[:n]))
                    continue
                handler(bytes(view[:n]), src)
        finally:
            if held:
                owner.send_held()

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.owner.udp_send_dropped += 1
        except OSError as exc:
            log.debug("udp send to %s:%d failed: %s", addr[0], addr[1], exc)

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


class _Tcp(asyncio.Protocol):
    def __init__(self, owner: Transports, local: tuple[str, int], outbound: bool = False) -> None:
        self.owner = owner
        self.local = local
        self.conn_id = next(owner._ids)
        self.framer = StreamFramer(max_header=owner.max_tcp_header, max_body=owner.max_udp)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.last_rx = self.opened = time.monotonic()
        self.outbound = outbound
        #: the /24 or /64 this connection holds a handshake slot of, until its first message
        self.pending_net: str | None = None
        #: evicted (closed, out of the tables): what the loop still reports is ignored
        self.detached = False
        # Only connect_tcp() awaits this; an inbound connection has none, else every
        # refused or dropped one would leave a "Future exception was never retrieved"
        # error in the log (one per connection: a log flood under a connection storm).
        self.ready: asyncio.Future[None] | None = (
            asyncio.get_running_loop().create_future() if outbound else None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        # An inbound flow's listener was built with the configured address (maybe
        # port 0 or a wildcard); the Via of requests sent on this flow needs the real
        # one. An outbound flow keeps the listener's address: its own port is ephemeral.
        local = transport.get_extra_info("sockname") if not self.outbound else None
        if local:
            self.local = (local[0], local[1])
        if not self.outbound and not self.owner._admit(self):
            transport.close()
            return
        self.owner._conns[self.conn_id] = self
        self.owner._by_peer.setdefault(self.peer, self.conn_id)
        if self.owner.elsewhere is not None:
            self.owner.elsewhere.opened(self.conn_id, self.peer)
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.detached:
            return
        self.last_rx = time.monotonic()
        src = Source("tcp", self.peer[0], self.peer[1], self.conn_id, self.local)
        try:
            messages = self.framer.feed(data)
        except ParseError as exc:
            self.owner.framing_error(exc, src)
            self.close()
            return
        for msg in messages:
            if msg is PING or msg == PING:
                self.write(PONG)
                continue
            if self.pending_net is not None:
                self.owner._handshake_done(self)
            self.owner.handler(msg, src)
        err = self.framer.error
        if err is not None:  # whole messages before the fault were delivered above
            self.owner.framing_error(err, src)
            self.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.detached:
            return
        owner = self.owner
        if self.pending_net is not None:
            owner._handshake_done(self)
        if owner._conns.pop(self.conn_id, None) is not None and owner.elsewhere is not None:
            owner.elsewhere.closed(self.conn_id, self.peer)
        if owner._by_peer.get(self.peer) == self.conn_id:
            del owner._by_peer[self.peer]
            for other in owner._conns.values():
                if other.peer == self.peer:
                    owner._by_peer[self.peer] = other.conn_id
                    break
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(ConnectionError("connection lost"))


def net_of(ip: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) ``ip`` belongs to, as text: the unit of the handshake cap."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped
        if mapped is None:
            return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
        addr = mapped
    return str(ipaddress.IPv4Network((int(addr) >> 8 << 8, 24)))


def _udp_socket(family: int, host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A bound UDP socket with large buffers, made here rather than by the loop.

    Handing the loop a ready socket (as the bench's reference echo server does)
    keeps its send path on a plain sendto of a numeric address; 4 MiB buffers
    absorb bursts (net.core.rmem_max permitting).
    """
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
        if reuse_port:  # several worker processes share the port (sipyard.supervisor)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Transports:
    """All listening sockets and TCP connections of one server."""

    def __init__(self, handler: Handler, *, max_udp: int = 65536, max_tcp_header: int = 65536,
                 tcp_idle: float = 300.0, max_conns_per_peer: int = 32,
                 max_connections: int = 4096, max_handshakes_per_net: int = 32,
                 handshake_timeout: float = 10.0,
                 on_framing_error: ErrorHandler | None = None,
                 on_oversize: Callable[[Source, bytes], None] | None = None) -> None:
        self.handler = handler
        #: when set, every send goes here instead of a socket (an App driven in memory,
        #: tests/pair.py: the compiled class cannot have its methods patched)
        self.tap: Callable[[Source, bytes], bool] | None = None
        self.max_udp = max_udp
        self.max_tcp_header = max_tcp_header
        self.tcp_idle = tcp_idle
        self.max_conns_per_peer = max_conns_per_peer
        self.max_connections = max_connections
        self.max_handshakes_per_net = max_handshakes_per_net
        self.handshake_timeout = handshake_timeout
        self._on_framing_error = on_framing_error
        self._on_oversize = on_oversize
        self._ids = itertools.count(1)
        self._udp: dict[tuple[str, int], _Udp | _UdpReader] = {}
        self._udp_by_family: dict[int, _Udp | _UdpReader] = {}
        #: UDP answers the kernel refused (send buffer full): dropped like lost packets
        self.udp_send_dropped = 0
        #: read UDP in batches (_UdpReader) rather than through the loop's datagram transport
        self.udp_batch = os.environ.get("SIPYARD_UDP_READER", "batch") != "protocol"
        # Duplicates of the UDP sockets, for sending without the loop (module doc).
        self._raw: dict[tuple[str, int], socket.socket] = {}
        #: UDP sends of the read batch being handled (hold), else None
        self._held: list[tuple[Source, bytes]] | None = None
        self._raw_by_family: dict[int, socket.socket] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._conns: dict[int, _Tcp] = {}
        self._by_peer: dict[tuple[str, int], int] = {}
        self._idle_task: asyncio.Task[None] | None = None
        self._handshakes: dict[str, int] = {}  # /24 or /64 -> connections without a message yet
        self._refused_logged: dict[str, float] = {}  # ip -> when its refusal was logged
        self.refused = 0
        self.evicted = 0
        self.bound: list[Listen] = []
        #: SO_REUSEPORT on the listening sockets: set by a worker before start()
        self.reuse_port = False
        #: the other workers' TCP connections (set by a worker): sends go through their holder
        self.elsewhere: Elsewhere | None = None

    def set_conn_id_base(self, base: int) -> None:
        """Number TCP connections from ``base`` + 1 (workers: ids unique across processes)."""
        self._ids = itertools.count(base + 1)

    async def start(self, listens: Sequence[ListenSpec]) -> list[Listen]:
        loop = asyncio.get_running_loop()
        for spec in listens:
            family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
            if spec.transport == "udp":
                sock = _udp_socket(family, spec.host, spec.port, self.reuse_port)
                addr = sock.getsockname()
                proto: _Udp | _UdpReader
                if self.udp_batch:
                    proto = _UdpReader(self, sock, (addr[0], addr[1]))
                    proto.start(loop)
                    raw = sock  # the reader's own socket answers (non-blocking)
                else:
                    raw = socket.socket(family, socket.SOCK_DGRAM, fileno=os.dup(sock.fileno()))
                    raw.setblocking(False)
                    try:
                        _, proto = await loop.create_datagram_endpoint(
                            lambda s=spec: _Udp(self, (s.host, s.port)),  # type: ignore[misc]
                            sock=sock)
                    except BaseException:
                        raw.close()
                        raise
                    proto.local = (addr[0], addr[1])
                self._udp[proto.local] = proto
                self._udp_by_family.setdefault(family, proto)
                self._raw[proto.local] = raw
                self._raw_by_family.setdefault(family, raw)
                self.bound.append(Listen("udp", addr[0], addr[1]))
            elif spec.transport == "tcp":
                server = await loop.create_server(
                    lambda s=spec: _Tcp(self, (s.host, s.port)),
                    host=spec.host, port=spec.port, family=family, reuse_address=True,
                    reuse_port=self.reuse_port or None)
                # Any: typeshed says a tuple, uvloop's is a list (and compiled code checks)
                sockets: Any = getattr(server, "sockets")  # noqa: B009  # not checked
                addr = sockets[0].getsockname()
                self._servers.append(server)
                self.bound.append(Listen("tcp", addr[0], addr[1]))
            else:
                raise ValueError(f"unknown transport {spec.transport!r}")
        # TCP connections learn their real local address in connection_made().
        self._idle_task = asyncio.create_task(self._reap_idle())
        return self.bound

    def udp_local(self, ip: str) -> tuple[str, int]:
        """Our UDP socket of ``ip``'s address family (a v6 socket cannot reach v4)."""
        v6 = ":" in ip
        for b in self.bound:
            if b.transport == "udp" and (":" in b.host) == v6:
                return (b.host, b.port)
        return self.local_for("udp", 5060)

    def local_for(self, transport: str, port: int) -> tuple[str, int]:
        for b in self.bound:
            if b.transport == transport:
                return (b.host, b.port)
        return ("127.0.0.1", port)

    def _admit(self, conn: _Tcp) -> bool:
        """May this inbound connection stay? Applies the three TCP caps (module doc)."""
        ip = conn.peer[0]
        n = sum(1 for c in self._conns.values() if c.peer[0] == ip)
        if n >= self.max_conns_per_peer:
            self._refuse(ip, "%d connections open (per-source cap)", n)
            return False
        net = net_of(ip)
        pending = self._handshakes.get(net, 0)
        if pending >= self.max_handshakes_per_net:
            self._refuse(ip, "%d connections from %s without a message yet (cap)", pending, net)
            return False
        if len(self._conns) >= self.max_connections and not self._evict_one():
            self._refuse(ip, "%d connections open (global cap)", len(self._conns))
            return False
        self._handshakes[net] = pending + 1
        conn.pending_net = net
        return True

    def _evict_one(self) -> bool:
        """Close the inbound connection idle longest (one that never sent a message first)
        to make room for a new one; False when there is none to close."""
        victim: _Tcp | None = None
        best = (True, 0.0)
        for c in self._conns.values():
            if c.outbound or c.transport is None or c.transport.is_closing():
                continue
            rank = (c.pending_net is None, c.last_rx)
            if victim is None or rank < best:
                victim, best = c, rank
        if victim is None:
            return False
        log.info("tcp: connection cap %d reached, closing the idlest, from %s:%d",
                 self.max_connections, *victim.peer)
        self.evicted += 1
        # Gone from the tables now, not when the loop reports it lost, so the new
        # connection's count is right.
        victim.close()
        victim.connection_lost(None)
        victim.detached = True
        return True

    def _handshake_done(self, conn: _Tcp) -> None:
        net = conn.pending_net
        conn.pending_net = None
        if net is None:
            return
        left = self._handshakes.get(net, 0) - 1
        if left > 0:
            self._handshakes[net] = left
        else:
            self._handshakes.pop(net, None)

    def _refuse(self, ip: str, why: str, *args: object) -> None:
        self.refused += 1
        now = time.monotonic()
        last = self._refused_logged.get(ip)
        if last is not None and now - last < 60.0:
            return
        if len(self._refused_logged) >= 10000:
            return  # the sweep in _reap_idle makes room again
        self._refused_logged[ip] = now
        log.warning("tcp: refusing connection from %s: " + why, ip, *args)

    def framing_error(self, exc: ParseError, src: Source) -> None:
        if self._on_framing_error is not None:
            self._on_framing_error(exc, src)

    def oversize(self, src: Source, data: bytes) -> None:
        if self._on_oversize is not None:
            self._on_oversize(src, data)

    def hold(self) -> bool:
        """From now on UDP answers wait in a list until :meth:`send_held` (one read batch).

        Why: each ``sendto`` to a client that went idle wakes it, and on a VM that wake-up
        (an IPI, a VM exit) is charged to the sender. Sending a batch's answers back to back
        wakes the client once, while it is still reading the first. False when already held
        (a nested batch flushes with the outer one)."""
        if self._held is not None:
            return False
        self._held = []
        return True

    def send_held(self) -> None:
        held, self._held = self._held, None
        if held:
            for src, data in held:
                self._send_udp(src, data)

    def send(self, src: Source, data: bytes) -> bool:
        """Send to where ``src`` says: its UDP socket or its TCP connection."""
        tap = self.tap
        if tap is not None:
            return tap(src, data)
        if src.transport == "udp":
            held = self._held
            if held is None:
                return self._send_udp(src, data)
            # every UDP listener has its raw socket (start), so this says whether one exists
            if src.local not in self._raw and (
                    socket.AF_INET6 if ":" in src.ip else socket.AF_INET) not in self._raw_by_family:
                return False  # no socket to send it from, held or not
            held.append((src, data))
            return True
        conn = self._conns.get(src.conn_id) if src.conn_id is not None else None
        if conn is None:
            cid = self._by_peer.get((src.ip, src.port))
            conn = self._conns.get(cid) if cid is not None else None
        if conn is None:
            el = self.elsewhere
            if el is None:
                return False
            cid = src.conn_id if src.conn_id is not None and el.has(src.conn_id) else (
                el.conn_of_peer(src.ip, src.port))
            return cid is not None and el.write(cid, data)
        conn.write(data)
        return True

    def _send_udp(self, src: Source, data: bytes) -> bool:
        family = socket.AF_INET6 if ":" in src.ip else socket.AF_INET
        raw = self._raw.get(src.local) or self._raw_by_family.get(family)
        if raw is not None:
            try:
                raw.sendto(data, (src.ip, src.port))
                return True
            except BlockingIOError:
                pass  # buffer full: let the transport queue it
            except OSError as exc:
                log.debug("udp send to %s:%d failed: %s", src.ip, src.port, exc)
                return True
        proto = self._udp.get(src.local) or self._udp_by_family.get(family)
        if proto is None or proto.transport is None:
            return False
        proto.transport.sendto(data, (src.ip, src.port))
        return True

    def write_conn(self, conn_id: int, data: bytes) -> bool:
        """Write on our own connection ``conn_id`` (another worker's send); False if gone."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return False
        conn.write(data)
        return True

    def tcp_peers(self) -> list[tuple[int, tuple[str, int]]]:
        """Our open connections: (id, peer)."""
        return [(cid, c.peer) for cid, c in self._conns.items()]

    def has_connection(self, conn_id: int | None) -> bool:
        if conn_id is None:
            return False
        return conn_id in self._conns or (self.elsewhere is not None and
                                          self.elsewhere.has(conn_id))

    def has_peer(self, ip: str, port: int) -> bool:
        """Whether a TCP connection to or from ``ip:port`` is open (a NAT flow, RFC 5626)."""
        return (ip, port) in self._by_peer or (
            self.elsewhere is not None and self.elsewhere.conn_of_peer(ip, port) is not None)

    async def connect_tcp(self, ip: str, port: int, timeout: float = 5.0) -> Source:
        """An outbound TCP connection (for requests to a TCP binding whose flow is gone);
        an open one to that peer, ours or another worker's, is used instead."""
        cid = self._by_peer.get((ip, port))
        if cid is not None and cid in self._conns:
            c = self._conns[cid]
            return Source("tcp", ip, port, cid, c.local)
        cid = self.elsewhere.conn_of_peer(ip, port) if self.elsewhere is not None else None
        if cid is not None:
            return Source("tcp", ip, port, cid, self.local_for("tcp", 0))
        loop = asyncio.get_running_loop()
        local = self.local_for("tcp", 0)
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: _Tcp(self, local, outbound=True), ip, port), timeout)
        assert proto.ready is not None
        await proto.ready
        return Source("tcp", ip, port, proto.conn_id, local)

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, max(min(self.tcp_idle, self.handshake_timeout) / 4,
                                             0.05)))
            self.reap(time.monotonic())

    def reap(self, now: float) -> None:
        """Close silent connections and those that sent no message in time; age the logs."""
        cutoff = now - self.tcp_idle
        hs_cutoff = now - self.handshake_timeout
        for conn in list(self._conns.values()):
            if conn.last_rx < cutoff:
                log.debug("tcp: closing idle connection from %s:%d", *conn.peer)
                conn.close()
            elif conn.pending_net is not None and conn.opened < hs_cutoff:
                log.debug("tcp: closing connection from %s:%d: no message in %gs",
                          *conn.peer, self.handshake_timeout)
                conn.close()
        if self._refused_logged:
            old = now - 60.0
            self._refused_logged = {ip: t for ip, t in self._refused_logged.items() if t > old}

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def close(self) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
        for server in self._servers:
            server.close()
        for conn in list(self._conns.values()):
            conn.close()
        for proto in self._udp.values():
            if proto.transport is not None:
                proto.transport.close()
        for raw in self._raw.values():
            raw.close()
        self._raw.clear()
        self._raw_by_family.clear()
        for server in self._servers:
            try:  # noqa: SIM105  # not contextlib.suppress: an awaiting `with` is fragile compiled
                await asyncio.wait_for(server.wait_closed(), 1.0)
            except TimeoutError:
                pass
