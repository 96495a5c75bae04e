"""NAT traversal for the proxy: which bindings sit behind NAT, and routable Contacts.

Why a module of its own: the registrar stores a binding's flow (source address,
port, transport, TCP connection) but leaves the Contact as the phone wrote it,
byte-faithful. Only the proxy has to decide whether that Contact can be reached
— a phone behind NAT writes its private address — and, inside a dialog, make the
phone's Contact reachable for the *other* phone, whose in-dialog requests
(ACK, BYE, re-INVITE) come back through us only because we Record-Route.

Rules (issue #12):

* A binding is *behind NAT* when its Contact host is a private (RFC 1918),
  shared (RFC 6598) or link-local (RFC 3927) address that differs from where
  its REGISTER came from, or when it asked for RFC 5626 outbound
  (``reg-id`` + ``+sip.instance``). Such a binding is reached at its flow. Any
  other binding is reached at its Contact, so a registration made on behalf
  of another address keeps working.
* A Contact in a dialog-forming request or response that fails the same test
  against the message's source, or that came over TCP (the connection is the
  way back in: a TCP phone's Contact port is rarely one anyone can connect to,
  and the in-dialog request then reuses the flow as RFC 5626 would), gets an
  ``alias`` URI parameter naming the flow
  (``alias=IP~PORT~T``, T = 1 for UDP, 2 for TCP, as Kamailio's
  ``set_contact_alias``). The other side then sends its in-dialog requests to
  ``…;alias=…``; :func:`split_alias` takes the parameter off again and says
  where the request really goes (Kamailio's ``handle_ruri_alias``).

Pure functions, no I/O: the caller turns a flow into a transport address.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from .sip.errors import ParseError
from .sip.headers import parse_name_addr
from .sip.source import bare_host
from .sip.uri import SipUri, parse_uri

__all__ = ["Flow", "is_private", "behind_nat", "needs_alias", "add_alias", "split_alias",
           "alias_contact_value"]

_NETS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918
    "100.64.0.0/10",  # RFC 6598 shared (carrier-grade NAT)
    "169.254.0.0/16",  # RFC 3927 link-local
    "fc00::/7", "fe80::/10",  # the IPv6 counterparts (ULA, link-local)
))
_TRANSPORT_CODE = {"udp": "1", "tcp": "2"}
_CODE_TRANSPORT = {v: k for k, v in _TRANSPORT_CODE.items()}


class Flow(NamedTuple):
    """Where a phone's messages came from: reach it there (RFC 5626 §5.3, RFC 3581)."""

    transport: str
    ip: str
    port: int


def _ipv4_octets(host: str) -> list[int] | None:
    """The four octets of a dotted quad, or None (same strictness as ``ipaddress``: four
    decimal octets up to 255, no leading zeros), without building an address object."""
    parts = host.split(".")
    if len(parts) != 4:
        return None
    octets = []
    for part in parts:
        if not (part.isdigit() and part.isascii()) or len(part) > 3 or (
                len(part) > 1 and part[0] == "0"):
            return None
        n = int(part)
        if n > 255:
            return None
        octets.append(n)
    return octets


def is_ip(host: str) -> bool:
    """Whether ``host`` (brackets allowed) is an IPv4 or IPv6 address rather than a name."""
    host = bare_host(host)
    if ":" not in host:
        return _ipv4_octets(host) is not None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_private(host: str) -> bool:
    """Whether ``host`` is a private, shared or link-local IP address (a name is not).

    Asked for every Contact the proxy relays: a dotted quad is decided from its
    first two octets; anything else goes through ``ipaddress``.
    """
    host = bare_host(host)
    if ":" not in host:
        octets = _ipv4_octets(host)
        if octets is None:
            return False
        a, b = octets[0], octets[1]
        return (a == 10 or (a == 172 and 16 <= b <= 31) or (a == 192 and b == 168)
                or (a == 100 and 64 <= b <= 127) or (a == 169 and b == 254))
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(addr in n for n in _NETS if n.version == addr.version)


def _host_port(uri: str) -> tuple[str, int | None] | None:
    try:
        parsed = parse_uri(uri)
    except ParseError:
        return None
    if not isinstance(parsed, SipUri):
        return None
    return bare_host(parsed.host), parsed.port


def behind_nat(contact: str, source_ip: str, *, outbound: bool = False) -> bool:
    """Whether a binding with this Contact URI, registered from ``source_ip``, is behind NAT."""
    if outbound:
        return True
    hp = _host_port(contact)
    if hp is None:
        return False
    host = hp[0]
    return is_private(host) and host != source_ip


def needs_alias(contact_uri: str, flow: Flow) -> bool:
    """Whether a Contact seen on ``flow`` must carry an alias to be routable.

    The same test as :func:`behind_nat`, on the message's own source, or any
    Contact that came over TCP; a Contact that already has an alias (a host
    nearer the phone added it) is left alone.
    """
    if ";alias=" in contact_uri:
        return False
    return flow.transport.lower() != "udp" or behind_nat(contact_uri, flow.ip)


def add_alias(contact_uri: str, flow: Flow) -> str:
    """``contact_uri`` with ``;alias=IP~PORT~T`` (before any URI headers)."""
    code = _TRANSPORT_CODE.get(flow.transport.lower(), "1")
    ip = f"[{flow.ip}]" if ":" in flow.ip else flow.ip
    param = f";alias={ip}~{flow.port}~{code}"
    head, q, tail = contact_uri.partition("?")
    return f"{head}{param}{q}{tail}"


def split_alias(uri: str) -> tuple[str, Flow | None]:
    """(``uri`` without its alias parameter, the flow it named) — or (uri, None)."""
    at = uri.find(";alias=")
    if at < 0:
        return uri, None
    end = len(uri)
    for stop in (";", "?", ">"):
        i = uri.find(stop, at + 7)
        if i >= 0:
            end = min(end, i)
    value = uri[at + 7:end]
    parts = value.split("~")
    if len(parts) != 3 or not parts[1].isdigit() or parts[2] not in _CODE_TRANSPORT:
        return uri, None
    ip = bare_host(parts[0])
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return uri, None
    port = int(parts[1])
    if not 0 < port < 65536:
        return uri, None
    return uri[:at] + uri[end:], Flow(_CODE_TRANSPORT[parts[2]], ip, port)


def alias_contact_value(value: str, flow: Flow) -> str | None:
    """A Contact header value with the alias added to its URI, or None if none is needed."""
    try:
        na = parse_name_addr(value)
    except ParseError:
        return None
    if not needs_alias(na.uri, flow):
        return None
    new = add_alias(na.uri, flow)
    lt = value.find("<")
    if lt >= 0:
        gt = value.find(">", lt)
        if gt > lt:
            return f"{value[:lt + 1]}{new}{value[gt:]}"
    # an addr-spec without <>: params after the URI would be the header's (RFC 3261 §20)
    semi = value.find(";")
    rest = value[semi:] if semi >= 0 else ""
    return f"<{new}>{rest}"
