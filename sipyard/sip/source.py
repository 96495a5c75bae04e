"""Where a message came from and where we listen: plain records, no sockets.

They live in the sans-IO core because everything above the transport reads
them (the registrar stores a binding's flow, the app addresses responses)
and nothing that reads them should have to import the transport.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Source", "Listen", "bare_host"]


class Source(NamedTuple):
    """Where a message came from, and so where its answers go."""

    transport: str  # "udp" | "tcp"
    ip: str
    port: int
    conn_id: int | None  # TCP connection id; None for UDP
    local: tuple[str, int]

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


class Listen(NamedTuple):
    """One listening address (``udp:127.0.0.1:5060``)."""

    transport: str
    host: str
    port: int


def bare_host(host: str) -> str:
    """A host as socket APIs write it: an IPv6 reference loses its brackets.

    Via sent-by and URIs write ``[2001:db8::1]``; a peer address from the
    socket is ``2001:db8::1``; comparing the two needs one spelling.
    """
    if host[:1] == "[" and host[-1:] == "]":
        return host[1:-1]
    return host
