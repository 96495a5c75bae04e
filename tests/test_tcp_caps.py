"""Issue #16: the TCP caps, from outside (a real server on 127.0.0.1).

* ``max_tcp_connections``: a new connection beyond it closes the one idle
  longest, and one that never sent a message before any that did;
* ``tcp_handshakes_per_net``: connections from one /24 without a first message;
* ``tcp_handshake_timeout``: a silent new connection is closed, a talking one kept.

Source addresses are picked in 127.0.0.0/8 (all local on Linux) so that /24s differ.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import Server, sip_request, status_of, write_config  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="needs all of 127.0.0.0/8 on loopback")


def connect(server: Server, src: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((src, 0))
    s.settimeout(3.0)
    s.connect(server.addr)
    return s


def options(s: socket.socket) -> int:
    """Send an OPTIONS on the connection; the status of the answer (0: closed)."""
    host, port = s.getsockname()
    s.sendall(sip_request("OPTIONS", "sip:127.0.0.1", transport="TCP", via_host=host,
                          local_port=port))
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return 0
            data += chunk
    except (ConnectionResetError, TimeoutError, OSError):
        return 0
    return status_of(data)


def closed(s: socket.socket, within: float = 3.0) -> bool:
    """Has the server closed this connection (FIN or RST) within ``within`` seconds?"""
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, OSError) as exc:
        return not isinstance(exc, TimeoutError)


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    srv = Server(write_config(tmp_path, server=request.param), log_level="warning")
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("server", [{"max_tcp_connections": 4}], indirect=True)
def test_global_cap_closes_the_idlest_connection(server: Server) -> None:
    conns = [connect(server, f"127.20.{i}.1") for i in range(4)]
    for c in conns:
        assert options(c) == 200
        time.sleep(0.05)
    assert options(conns[0]) == 200  # now conns[1] is the idlest
    new = connect(server, "127.20.9.1")
    assert options(new) == 200
    assert closed(conns[1])
    for c in (conns[0], conns[2], conns[3]):
        assert options(c) == 200
    for c in conns + [new]:
        c.close()


@pytest.mark.parametrize("server", [{"max_tcp_connections": 3}], indirect=True)
def test_global_cap_closes_a_silent_connection_before_talking_ones(server: Server) -> None:
    talking = [connect(server, f"127.21.{i}.1") for i in range(2)]
    for c in talking:
        assert options(c) == 200
    silent = connect(server, "127.21.5.1")  # newest, but never said anything
    time.sleep(0.1)
    new = connect(server, "127.21.9.1")
    assert options(new) == 200
    assert closed(silent)
    for c in talking:
        assert options(c) == 200
    for c in talking + [silent, new]:
        c.close()


@pytest.mark.parametrize("server", [{"tcp_handshakes_per_net": 3}], indirect=True)
def test_connections_without_a_message_are_capped_per_24(server: Server) -> None:
    first = [connect(server, f"127.22.7.{i}") for i in range(1, 4)]
    time.sleep(0.1)
    extra = connect(server, "127.22.7.200")  # same /24, fourth without a message
    assert closed(extra)
    other = connect(server, "127.22.8.1")  # another /24 is not affected
    assert options(other) == 200
    assert options(first[0]) == 200  # a message frees its slot
    again = connect(server, "127.22.7.201")
    assert options(again) == 200
    for c in first + [extra, other, again]:
        c.close()


@pytest.mark.parametrize("server", [{"tcp_handshake_timeout": 1.0}], indirect=True)
def test_silent_new_connections_are_closed_after_the_handshake_timeout(server: Server) -> None:
    talking = connect(server, "127.23.0.1")
    assert options(talking) == 200
    silent = connect(server, "127.23.0.2")
    t0 = time.monotonic()
    assert closed(silent, within=5.0)
    assert 0.9 <= time.monotonic() - t0 < 4.0
    assert options(talking) == 200  # idle for longer than that, but it spoke: kept
    talking.close()
    silent.close()
