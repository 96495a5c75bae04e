"""Private test networks in Linux network namespaces: two LANs behind NAT and a "public" side.

Why namespaces: a phone behind NAT is only tested for real when its packets cross a
real NAT (conntrack rewriting source address *and* port) and its private Contact is
really unreachable from the other phone. Everything here lives in namespaces this
module creates and removes; no address is added to, and nothing routes through, the
host's own interfaces (the root namespace is never touched, apart from the namespaces'
names in ``/run/netns``)::

    lanA (192.168.71.2) -- natA (192.168.71.1 | 10.200.0.2, MASQUERADE → ports 41000-41999) --+
                                                                                          br0 (pub: 10.200.0.1, sipyard)
    lanB (192.168.72.2) -- natB (192.168.72.1 | 10.200.0.3, MASQUERADE → ports 42000-42999) --+

The NAT routers have no default route, so a packet for the other LAN's private
address dies at the first router ("network unreachable"), as on the Internet.
``--to-ports`` forces MASQUERADE to rewrite every source port (it would otherwise keep
a free one), so a server that answers the Contact's port instead of the flow's fails.

A process enters a namespace with ``ip netns exec``; a socket of the test process is
opened inside one by :func:`socket_in` (``setns(2)`` in a short-lived thread: a
namespace switch is per thread).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["NatLab", "netns_unavailable", "socket_in"]

CLONE_NEWNET = 0x40000000


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=20)


def netns_unavailable() -> str | None:
    """Why namespaces + iptables cannot be used here (a skip message), or None."""
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make deps-test installs iptables)"
    name = f"sy{uuid.uuid4().hex[:8]}probe"
    r = _run("ip", "netns", "add", name, check=False)
    if r.returncode != 0:
        return f"network namespaces not permitted here: ip netns add: {r.stderr.strip()}"
    try:
        r = _run("ip", "netns", "exec", name, "iptables", "-t", "nat", "-L", "-n", check=False)
        if r.returncode != 0:
            return f"iptables nat table not usable in a namespace: {r.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", name, check=False)
    return None


def socket_in(ns: str, make: Callable[[], socket.socket]) -> socket.socket:
    """A socket created by ``make()`` inside namespace ``ns`` (it stays there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    out: list[socket.socket | BaseException] = []

    def work() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
            out.append(make())
        except BaseException as exc:  # handed to the caller below
            out.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join(15)
    if not out:
        raise TimeoutError(f"could not open a socket in {ns}")
    got = out[0]
    if isinstance(got, BaseException):
        raise got
    return got


@dataclass
class Lan:
    """One private network behind a NAT router, with the phone's namespace."""

    ns: str  # the phone's namespace
    router: str  # the NAT router's namespace
    ip: str  # the phone's private address
    public_ip: str  # the router's address on the public side (what sipyard sees)
    ports: tuple[int, int]  # the MASQUERADE port range


@dataclass
class NatLab:
    """The whole topology; :meth:`build` makes it, :meth:`remove` takes every piece down."""

    prefix: str = field(default_factory=lambda: f"sy{uuid.uuid4().hex[:6]}")
    server_ip: str = "10.200.0.1"
    made: list[str] = field(default_factory=list)
    lans: list[Lan] = field(default_factory=list)

    @property
    def pub(self) -> str:
        return f"{self.prefix}pub"

    def _ns(self, name: str) -> str:
        _run("ip", "netns", "add", name)
        self.made.append(name)
        self._in(name, "ip", "link", "set", "lo", "up")
        return name

    def _in(self, ns: str, *cmd: str) -> None:
        _run("ip", "netns", "exec", ns, *cmd)

    def build(self) -> NatLab:
        p = self.prefix
        pub = self._ns(self.pub)
        self._in(pub, "ip", "link", "add", "br0", "type", "bridge")
        self._in(pub, "ip", "addr", "add", f"{self.server_ip}/24", "dev", "br0")
        self._in(pub, "ip", "link", "set", "br0", "up")
        for i, (n, net) in enumerate((("a", 71), ("b", 72))):
            router = self._ns(f"{p}nat{n}")
            lan = self._ns(f"{p}lan{n}")
            public_ip = f"10.200.0.{2 + i}"
            lo, hi = 41000 + 1000 * i, 41999 + 1000 * i
            # public link: router "out" <-> a bridge port in pub (created in pub, one end moved)
            _run("ip", "-n", pub, "link", "add", f"p{n}", "type", "veth", "peer", "name", "out",
                 "netns", router)
            self._in(pub, "ip", "link", "set", f"p{n}", "master", "br0")
            self._in(pub, "ip", "link", "set", f"p{n}", "up")
            self._in(router, "ip", "addr", "add", f"{public_ip}/24", "dev", "out")
            self._in(router, "ip", "link", "set", "out", "up")
            # private link: router "in" <-> the phone's eth0
            _run("ip", "-n", router, "link", "add", "in", "type", "veth", "peer", "name", "eth0",
                 "netns", lan)
            self._in(router, "ip", "addr", "add", f"192.168.{net}.1/24", "dev", "in")
            self._in(router, "ip", "link", "set", "in", "up")
            self._in(lan, "ip", "addr", "add", f"192.168.{net}.2/24", "dev", "eth0")
            self._in(lan, "ip", "link", "set", "eth0", "up")
            self._in(lan, "ip", "route", "add", "default", "via", f"192.168.{net}.1")
            self._in(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            for proto in ("udp", "tcp"):
                self._in(router, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "out",
                         "-p", proto, "-j", "MASQUERADE", "--to-ports", f"{lo}-{hi}")
            self.lans.append(Lan(lan, router, f"192.168.{net}.2", public_ip, (lo, hi)))
        return self

    def add_server_address(self, ip: str) -> str:
        """Another address on the public bridge (a second server host on the same LAN)."""
        self._in(self.pub, "ip", "addr", "add", f"{ip}/24", "dev", "br0")
        return ip

    def remove(self) -> None:
        """Delete every namespace made (their veths, bridge and NAT rules go with them)."""
        for name in reversed(self.made):
            _run("ip", "netns", "del", name, check=False)
        self.made.clear()

    def leftovers(self) -> list[str]:
        listed = _run("ip", "netns", "list", check=False).stdout
        return [line.split()[0] for line in listed.splitlines()
                if line.split() and line.split()[0].startswith(self.prefix)]
