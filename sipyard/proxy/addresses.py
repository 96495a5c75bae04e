"""Who "we" are: the proxy's interfaces, and recognising our own values in a message.

A proxy has to tell its own traces apart from everyone else's: its Via
sent-by in a looping request (§16.3 step 4), its Record-Route values in a
Route header or, behind a strict router, in the Request-URI (§16.4). All of
those compare a host and a port, so the comparison lives here once: hosts are
lower-cased and IPv6 references put in canonical form (``[2001:DB8::0:1]`` is
``[2001:db8::1]``), a missing port is the transport's default (5060, or 5061
for TLS / sips). Sans-IO: nothing is resolved; names that reach us (a DNS name
of the host) are listed by the caller as ``aliases``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from sipyard.sip.errors import ParseError
from sipyard.sip.headers import Via
from sipyard.sip.uri import SipUri, Uri, parse_uri

__all__ = ["Interface", "LocalAddresses", "norm_host", "default_port"]


def norm_host(host: str) -> str:
    """Lower-cased host; an IPv6 reference in canonical form, brackets kept."""
    if host.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1].replace(':::', '::')).compressed}]"
        except ValueError:
            return host.lower()
    return host.lower()


def default_port(transport: str, secure: bool = False) -> int:
    """5061 for TLS (or a sips URI), else 5060 (RFC 3261 §19.1.2, §18.2.1)."""
    return 5061 if secure or transport.lower() in ("tls", "wss") else 5060


@dataclass(frozen=True, slots=True)
class Interface:
    """One listening address: what we write in Via and Record-Route when sending from it."""

    host: str
    port: int
    transport: str = "udp"  # udp | tcp | tls

    def via(self, branch: str) -> str:
        """Our Via value for a request sent from this interface."""
        return f"SIP/2.0/{self.transport.upper()} {self.host}:{self.port};branch={branch}"

    def record_route(self) -> str:
        """``<sip:HOST:PORT;lr>``, with ``;transport=`` when not UDP (RFC 3261 §16.6 step 4).

        ``;lr`` always: sipyard is a loose router (§16.12), so the UAs keep
        their remote target in the Request-URI of in-dialog requests.
        """
        transport = self.transport.lower()
        suffix = "" if transport == "udp" else f";transport={transport}"
        return f"<sip:{self.host}:{self.port};lr{suffix}>"

    def same_leg(self, other: Interface) -> bool:
        """Whether one Record-Route value serves both sides (else RFC 5658 doubles it)."""
        return (norm_host(self.host), self.port, self.transport.lower()) == (
            norm_host(other.host), other.port, other.transport.lower())


class LocalAddresses:
    """The (host, port) pairs that are us: our interfaces plus host aliases on their ports."""

    __slots__ = ("interfaces", "_pairs")

    def __init__(self, interfaces: Iterable[Interface], aliases: Iterable[str] = ()) -> None:
        self.interfaces = tuple(interfaces)
        ports = {i.port for i in self.interfaces}
        pairs = {(norm_host(i.host), i.port) for i in self.interfaces}
        pairs |= {(norm_host(a), p) for a in aliases for p in ports}
        self._pairs = frozenset(pairs)

    def has(self, host: str, port: int) -> bool:
        return (norm_host(host), port) in self._pairs

    def is_our_via(self, via: Via) -> bool:
        """Whether ``via``'s sent-by is one of ours (§16.3 step 4)."""
        port = via.port if via.port is not None else default_port(via.transport)
        return self.has(via.host, port)

    def is_our_uri(self, uri: str | Uri) -> bool:
        """Whether ``uri`` names us: one of our Record-Route values, or a Route to us.

        Only host and port count (not ``lr``, ``transport`` or a user part),
        so a Route written by a UA from our configured outbound-proxy address
        is recognised too. Unparseable or non-SIP URIs are not ours.
        """
        if isinstance(uri, str):
            try:
                uri = parse_uri(uri)
            except ParseError:
                return False
        if not isinstance(uri, SipUri):
            return False
        port = uri.port
        if port is None:
            port = default_port(uri.param("transport") or "udp", uri.scheme.lower() == "sips")
        return self.has(uri.host, port)

    def is_our_record_route(self, uri: str | Uri) -> bool:
        """Whether ``uri`` is a value we put in Record-Route: ours and without a user part.

        The user part tells it apart from a Request-URI addressed to a user at
        our address (``sip:*97@192.0.2.1``), which §16.4 must leave alone.
        """
        if isinstance(uri, str):
            try:
                uri = parse_uri(uri)
            except ParseError:
                return False
        return isinstance(uri, SipUri) and uri.user is None and self.is_our_uri(uri)
