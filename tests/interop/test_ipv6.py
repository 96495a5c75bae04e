"""IPv6 listeners (RFC 5118 references on the wire): UDP and TCP on [::1]."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from support import Server, free_port, header_values, sip_request, status_of, write_config


def _have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _have_ipv6_loopback(), reason="no ::1 on this host")


def test_options_over_udp_and_tcp_on_ipv6_loopback(tmp_path: Path) -> None:
    port = free_port()
    server = Server(write_config(tmp_path), port,
                    listen=[f"udp:[::1]:{port}", f"tcp:[::1]:{port}"]).start()
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as c:
            c.bind(("::1", 0))
            c.settimeout(3)
            lp = c.getsockname()[1]
            c.sendto(sip_request("OPTIONS", f"sip:[::1]:{port}", local_port=lp,
                                 via_host="[::1]"), ("::1", port))
            resp = c.recv(65536)
        assert status_of(resp) == 200
        via = header_values(resp, "Via")[0]
        assert via.startswith(f"SIP/2.0/UDP [::1]:{lp};") and f"rport={lp}" in via
        with socket.create_connection(("::1", port), timeout=3) as t:
            t.sendall(sip_request("OPTIONS", f"sip:[::1]:{port}", local_port=lp,
                                  via_host="[::1]", transport="TCP"))
            resp = t.recv(65536)
        assert status_of(resp) == 200
        assert "received=::1" in header_values(resp, "Via")[0]
    finally:
        server.stop()
