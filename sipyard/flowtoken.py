"""Path with a flow token: how another host reaches a phone whose flow lives here.

Why: several hosts share one location store (issue #14), but a phone behind
NAT, or registered over TCP, can only be reached through the flow its
REGISTER came in on — the NAT mapping answers the one public address the phone
talked to, a TCP connection is a socket of one process. So the host that takes
such a REGISTER acts as the phone's edge proxy (RFC 3327, RFC 5626 §5.1): it
stores the binding with its own Path value on top,

    <sip:TOKEN@HOST:PORT;lr;ob>

where ``HOST:PORT`` is the address the REGISTER came to and ``TOKEN`` names
the flow (transport, source address and port, TCP connection id). A host
that finds the binding routes its request there (the Path becomes its Route
set); the host that minted the token pops its own Route, reads the token and
sends the request down that flow (RFC 5626 §5.3). A binding that is reached
at its Contact gets no Path, so every host calls it directly.

Trust. The token is authenticated (HMAC-SHA256 truncated to 80 bits) with a
key derived from the nonce secret, which hosts sharing a store also share
(``cluster:secret`` in Redis, :mod:`sipyard.cluster.shared`): only a member of
the cluster can mint one, so a made-up Route cannot make a host relay a
request to an address of the sender's choosing — it is an unknown Route and
the request meets the usual relay rules. A token is seen only by the hosts
and the phone it names (the 200 of the REGISTER echoes only the Path the
phone's own proxies added).

Format: base64url (no padding) of ``version | transport | flags | port[2] |
conn_id[8] | ip[4 or 16] | mac[10]``, 36 or 52 characters, all unreserved in
a SIP user part. ``flags`` bit 0: the Contact is reachable directly, so a
TCP flow that is gone may be replaced by a new connection to the Contact
(a phone behind NAT or asking for outbound gets 430 Flow Failed instead).
Pure functions and a key: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Callable
from typing import NamedTuple

from .nat import Flow, behind_nat
from .proxy.addresses import Interface
from .proxy.routing import route_uri
from .sip.errors import ParseError
from .sip.uri import SipUri, parse_uri

__all__ = ["FlowToken", "FlowTokens", "flow_bound", "path_value", "EdgePath"]

_VERSION = 1
_MAC_LEN = 10
_TRANSPORTS = {"udp": 1, "tcp": 2, "tls": 3}
_CODES = {v: k for k, v in _TRANSPORTS.items()}
_FALLBACK = 1
_NO_CONN = (1 << 64) - 1


class FlowToken(NamedTuple):
    """A flow of this host, as written in a Path value."""

    flow: Flow
    conn_id: int | None
    #: the Contact is reachable directly when the flow is gone (not behind NAT, not outbound)
    fallback: bool


def flow_bound(contact: str, source_ip: str, transport: str, *, outbound: bool = False) -> bool:
    """Whether a binding must be reached through its flow rather than at its Contact.

    Behind NAT (or outbound, :func:`sipyard.nat.behind_nat`), or registered
    over a connection: TCP phones often listen on no port anyone can reach,
    and their connection is the way in that works (RFC 5626, RFC 3261 §18.2.2).
    """
    return transport.lower() != "udp" or behind_nat(contact, source_ip, outbound=outbound)


class FlowTokens:
    """Mints and reads flow tokens under a key derived from the nonce secret.

    ``secret`` is asked each time (a dict-free comparison when unchanged): the
    secret becomes the cluster's only after start-up (``Authenticator.share``).
    """

    __slots__ = ("_secret_of", "_secret", "_mac")

    def __init__(self, secret: Callable[[], bytes]) -> None:
        self._secret_of = secret
        self._secret = b""
        self._mac = hmac.new(b"\0", digestmod=hashlib.sha256)

    def _keyed(self) -> hmac.HMAC:
        secret = self._secret_of()
        if secret is not self._secret:
            self._secret = secret
            key = hmac.new(secret, b"sipyard-flow-token", hashlib.sha256).digest()
            self._mac = hmac.new(key, digestmod=hashlib.sha256)
        return self._mac

    def encode(self, token: FlowToken) -> str:
        flow = token.flow
        ip = ipaddress.ip_address(flow.ip).packed
        code = _TRANSPORTS.get(flow.transport.lower())
        if code is None:
            raise ValueError(f"no flow token for transport {flow.transport!r}")
        conn = _NO_CONN if token.conn_id is None else token.conn_id
        body = (bytes((_VERSION, code, _FALLBACK if token.fallback else 0))
                + flow.port.to_bytes(2, "big") + conn.to_bytes(8, "big") + ip)
        mac = self._keyed().copy()
        mac.update(body)
        return base64.urlsafe_b64encode(body + mac.digest()[:_MAC_LEN]).decode().rstrip("=")

    def decode(self, text: str) -> FlowToken | None:
        """The token's flow, or None for anything we did not mint (wrong MAC, garbage)."""
        if len(text) not in (36, 52) or not text.isascii():
            return None
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) not in (27, 39):
            return None
        body, tag = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
        mac = self._keyed().copy()
        mac.update(body)
        if not hmac.compare_digest(mac.digest()[:_MAC_LEN], tag):
            return None
        if body[0] != _VERSION or body[1] not in _CODES:
            return None
        port = int.from_bytes(body[3:5], "big")
        conn = int.from_bytes(body[5:13], "big")
        ip = str(ipaddress.ip_address(body[13:]))
        return FlowToken(Flow(_CODES[body[1]], ip, port), None if conn == _NO_CONN else conn,
                         bool(body[2] & _FALLBACK))


def path_value(iface: Interface, token: str) -> str:
    """``<sip:TOKEN@HOST:PORT;lr;ob>`` (``;transport=`` when the interface is not UDP)."""
    transport = iface.transport.lower()
    suffix = "" if transport == "udp" else f";transport={transport}"
    return f"<sip:{token}@{iface.host}:{iface.port};lr;ob{suffix}>"


class EdgePath:
    """This host as the edge proxy of the phones that register through it."""

    __slots__ = ("tokens", "interface", "is_ours")

    def __init__(self, tokens: FlowTokens, interface: Callable[[tuple[str, int]], Interface],
                 is_ours: Callable[[SipUri], bool]) -> None:
        self.tokens = tokens
        #: the interface other hosts reach us on, given the local address a flow came to
        self.interface = interface
        #: whether a URI's host and port are ours (the forwarder's LocalAddresses)
        self.is_ours = is_ours

    def for_register(self, flow: Flow, conn_id: int | None,
                     local: tuple[str, int]) -> Callable[[str, bool], str | None]:
        """The Path value to store on top of a binding from ``flow`` (None: reached directly).

        Given to the registrar, which asks for each Contact of the REGISTER.
        """
        def make(contact: str, outbound: bool) -> str | None:
            if not flow_bound(contact, flow.ip, flow.transport, outbound=outbound):
                return None
            fallback = not behind_nat(contact, flow.ip, outbound=outbound)
            try:
                token = self.tokens.encode(FlowToken(flow, conn_id, fallback))
            except ValueError:
                return None
            return path_value(self.interface(local), token)
        return make

    def elsewhere(self, path_value: str) -> bool:
        """Whether a Path value is another host's of this cluster (a token we could have
        minted, at an address that is not ours): the flow lives there."""
        uri = _uri_of(path_value)
        return (uri is not None and bool(uri.user) and not self.is_ours(uri)
                and self.tokens.decode(uri.user or "") is not None)

    def own(self, route_value: str) -> tuple[bool, FlowToken | None]:
        """(names us, our token in it or None) for one Route / Path value."""
        uri = _uri_of(route_value)
        if uri is None or not self.is_ours(uri):
            return False, None
        user = uri.user
        return True, (self.tokens.decode(user) if user else None)


def _uri_of(value: str) -> SipUri | None:
    try:
        uri = parse_uri(route_uri(value))
    except ParseError:
        return None
    return uri if isinstance(uri, SipUri) else None
