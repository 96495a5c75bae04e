"""``[proxy] nat_ping_interval`` from outside, and a reload that cannot switch modes.

A phone "behind NAT" on loopback: its Contact names a private address (192.168.99.9) that
is not where its REGISTER came from, so sipyard reaches it at its flow — the test's UDP
socket — and pings it there with OPTIONS. The phone answers two pings, then goes silent:
after three unanswered pings in a row its binding is gone. A binding whose Contact is
where it registered from (not behind NAT) is never pinged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fakephone import response_to
from support import Server, UdpClient, register, status_of, write_config

pytestmark = pytest.mark.interop
REALM = "sipyard.test"


def _bindings(server: Server, line: str) -> list[dict[str, object]]:
    doc = json.loads(server.cli("registry", "--json").stdout)
    return next((x["bindings"] for x in doc["lines"] if x["line"] == line), [])


def test_nat_ping_drops_a_binding_after_three_unanswered_pings(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "srv", server={"mode": "proxy"},
                       extra="[proxy]\nnat_ping_interval = 1.0\n")
    server = Server(cfg).start()
    phone, lan = UdpClient(server.addr), UdpClient(server.addr)
    try:
        assert status_of(register(phone, "12", contact="<sip:12@192.168.99.9:5060>",
                                  realm=REALM)) == 200
        assert status_of(register(lan, "13", realm=REALM)) == 200  # Contact = its source
        for _ in range(2):  # alive: answers the pings at its flow
            ping = phone.recv(5.0)
            assert ping is not None and ping.startswith(b"OPTIONS sip:12@192.168.99.9:5060 ")
            phone.send(response_to(ping.decode(), 200, "OK", tag="p1", contact=None))
        assert len(_bindings(server, "12")) == 1
        started = time.monotonic()
        while _bindings(server, "12") and time.monotonic() - started < 15:
            phone.recv(0.2)  # silent from now on: pings (and retransmissions) unanswered
        gone_after = time.monotonic() - started
        assert _bindings(server, "12") == [], server.log()[-2000:]
        assert gone_after > 2.0  # not at the first miss: three in a row
        assert "answered none of 3 pings; binding dropped" in server.log()
        assert len(_bindings(server, "13")) == 1
        assert lan.recv(0.3) is None  # never pinged: not behind NAT
    finally:
        phone.close()
        lan.close()
        server.stop()


def test_reload_says_server_mode_needs_a_restart(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "srv", server={"mode": "redirect"})
    server = Server(cfg).start()
    try:
        cfg.write_text(cfg.read_text().replace('mode = "redirect"', 'mode = "proxy"'))
        r = server.cli("reload", "--json")
        assert r.returncode == 0, r.stderr
        notes = json.loads(r.stdout)["notes"]
        assert "server.mode changed: takes effect at the next start" in notes
        assert "mode         redirect" in server.cli("status").stdout
    finally:
        server.stop()
