"""Bindings survive a restart: SIGTERM, and ``kill -9`` in the middle of a REGISTER load.

A Python client registers one unique contact after another (digest auth) and
records every 200 it got, while SIPp adds authenticated REGISTER load for all
80 lines. The server is stopped in the middle; after the restart every contact
whose 200 was received must be there, and the short-lived ones must be gone once
expired.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from baresip import require_tool
from support import (
    BENCH,
    Server,
    UdpClient,
    free_port,
    register,
    sip_request,
    status_of,
    write_config,
)

pytestmark = pytest.mark.interop

LINES = [str(n) for n in range(10, 90)]
SHORT = 2  # seconds: the expiry of every fifth registration


class FastClient(UdpClient):
    """Gives up on an answer after 0.5 s: once the server is killed, the loader stops soon."""

    def request(self, data: bytes, timeout: float = 0.5, skip_provisional: bool = True
                ) -> bytes | None:
        return super().request(data, timeout, skip_provisional)


class Loader(threading.Thread):
    """Registers line after line, each with a new contact, until stopped or unanswered."""

    def __init__(self, server: Server, limit: int = 600) -> None:
        super().__init__(daemon=True)
        self.client = FastClient(server.addr, timeout=0.5)
        self.limit = limit
        self.ok: list[tuple[str, str, int, float]] = []  # (line, contact, expires, time of 200)
        self.stop_flag = threading.Event()

    def run(self) -> None:
        try:
            for i in range(self.limit):
                if self.stop_flag.is_set():
                    return
                line = LINES[i % len(LINES)]
                contact = f"sip:{line}-r{i}@127.0.0.1:{self.client.port}"
                expires = SHORT if i % 5 == 4 else 3000
                res = register(self.client, line, contact=f"<{contact}>", expires=expires)
                if res is None:
                    return  # the server is gone
                if status_of(res) == 200:
                    self.ok.append((line, contact, expires, time.time()))
        finally:
            self.client.close()


def sipp_load(server: Server, tmp: Path) -> subprocess.Popen[bytes]:
    exe = require_tool("sipp")
    users = tmp / "users.csv"
    users.write_text("SEQUENTIAL\n" + "".join(
        f"{n};[authentication username={n} password=pw{n}secret];\n" for n in LINES))
    return subprocess.Popen(
        [exe, "-sf", str(BENCH / "scenarios" / "register_auth.xml"), "-inf", str(users),
         f"127.0.0.1:{server.port}", "-i", "127.0.0.1", "-p", str(free_port()), "-r", "400",
         "-m", "4000", "-timeout", "8s", "-nostdin"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    cfg = write_config(tmp_path / "srv", lines=range(10, 90),
                       server={"min_expires": 1, "max_expires": 3600})
    srv = Server(cfg)
    try:
        yield srv
    finally:
        srv.stop()


def bindings_by_contact(server: Server) -> dict[str, dict[str, object]]:
    r = server.cli("registry", "--json")
    assert r.returncode == 0, r.stderr
    return {b["contact"]: b for ln in json.loads(r.stdout)["lines"] for b in ln["bindings"]}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_every_acknowledged_binding_survives(server: Server, tmp_path: Path, sig: int) -> None:
    server.start()
    load = sipp_load(server, tmp_path)
    loader = Loader(server)
    try:
        time.sleep(0.3)  # SIPp is under way
        loader.start()
        deadline = time.monotonic() + 20
        while len(loader.ok) < 150 and loader.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(loader.ok) >= 150, f"only {len(loader.ok)} registrations in 20 s"
        assert load.poll() is None, "SIPp stopped before the server did"
        server.stop(sig)  # in the middle of both loads
        loader.join(5)
        assert not loader.is_alive()
    finally:
        loader.stop_flag.set()
        load.kill()
        load.wait(5)
    acked = list(loader.ok)
    assert len(acked) >= 150

    server.start()
    got = bindings_by_contact(server)
    # SIPp's load was real: its (committed) bindings are back too.
    assert sum(1 for c in got if c.endswith(";transport=UDP")) >= 40
    long_lived = [a for a in acked if a[2] > SHORT]
    missing = [c for _, c, _, _ in long_lived if c not in got]
    assert not missing, f"{len(missing)} of {len(long_lived)} acknowledged bindings lost"
    now = time.time()
    for _line, contact, expires, at in long_lived:
        left = got[contact]["expires_in"]
        assert isinstance(left, int) and expires - (now - at) - 2 <= left <= expires
    # The short ones expire on schedule, across the restart too.
    last_short = max(at for _, _, exp, at in acked if exp == SHORT)
    time.sleep(max(0.0, last_short + SHORT + 1.2 - time.time()))
    got = bindings_by_contact(server)
    assert not [c for _, c, exp, _ in acked if exp == SHORT and c in got]
    assert all(c in got for _, c, _, _ in long_lived)


def test_a_register_retransmitted_across_a_restart_gets_200(tmp_path: Path) -> None:
    """Stored, then the server died before its 200 reached the phone: the phone's
    retransmission (same bytes) after the restart gets 200, not 400 "Out of Order CSeq"
    (which the phone would take for a failed registration)."""
    cfg = write_config(tmp_path / "srv", security={"open_registration": True})
    srv = Server(cfg).start()
    phone = UdpClient(srv.addr)
    try:
        req = sip_request("REGISTER", "sip:127.0.0.1", to="<sip:42@sipyard.test>",
                          frm="<sip:42@sipyard.test>", cseq=5, local_port=phone.port,
                          headers=[("Contact", f"<sip:42@127.0.0.1:{phone.port}>"),
                                   ("Expires", "300")])
        assert status_of(phone.request(req)) == 200
        srv.kill9()
        srv.start()
        again = phone.request(req)
        assert status_of(again) == 200, again
        assert f"<sip:42@127.0.0.1:{phone.port}>;expires=300".encode() in (again or b"")
        # a different request reusing that CSeq is still refused (RFC 3261 §10.3 step 7)
        other = req.replace(b"Expires: 300", b"Expires: 900").replace(b";branch=z9hG4bK",
                                                                     b";branch=z9hG4bKx", 1)
        assert status_of(phone.request(other)) == 400
    finally:
        phone.close()
        srv.stop()
