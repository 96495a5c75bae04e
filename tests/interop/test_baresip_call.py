"""The product working for a person: two real softphones call each other through sipyard.

Two headless baresip 1.0 phones (``tests/interop/baresip.py``: ``aubridge``/``nil`` audio,
``net_interface 127.0.0.1``, ``answermode=auto``, driven over ``ctrl_tcp``) register as lines
10 and 11 with sipyard as their *registrar* (AOR ``sip:NN@127.0.0.1:PORT``; sipyard counts
127.0.0.1 as its domain), not as an outbound proxy. Phone 10 dials 11 at the server; the
server challenges the INVITE (401), phone 10 answers it, gets 302 to phone 11's registered
contact, follows it, and phone 11 auto-answers. Both must report ``CALL_ESTABLISHED``; a
hang-up must give ``CALL_CLOSED`` on both. A dial to a number that is nobody ends at once
with the server's 404.

Every wait is bounded; on failure the message carries both phones' logs and the server's.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from baresip import Baresip, BaresipError, account, require_tool
from support import PASSWORDS, Server, write_config

pytestmark = pytest.mark.interop

#: Generous bounds for a loaded CI machine; a healthy run takes well under a second each.
REGISTER_WAIT = 10.0
CALL_WAIT = 15.0


class Scene:
    """The server and the two phones, with one place that explains a failure."""

    def __init__(self, server: Server, a: Baresip, b: Baresip) -> None:
        self.server = server
        self.a = a
        self.b = b

    def report(self) -> str:
        parts = []
        for name, phone in (("phone 10", self.a), ("phone 11", self.b)):
            events = [e.get("type") for e in phone.events]
            parts.append(f"--- {name} (sip {phone.sip_port}) events {events}\n{phone.log()[-4000:]}")
        parts.append(f"--- server\n{self.server.log()[-4000:]}")
        return "\n".join(parts)

    def wait(self, phone: Baresip, types: str | set[str], timeout: float) -> dict[str, Any]:
        try:
            return phone.wait_event(types, timeout=timeout)
        except BaresipError as exc:
            who = "phone 10" if phone is self.a else "phone 11"
            first = str(exc).splitlines()[0]
            raise AssertionError(f"{who}: {first}\n{self.report()}") from None

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            raise AssertionError(f"{what}\n{self.report()}")


def _phone_apart_from(workdir: Path, other: Baresip) -> Baresip:
    """A phone whose SIP port is at least 2 away from ``other``'s (baresip takes port + 1)."""
    for _ in range(20):
        phone = Baresip(workdir)
        if abs(phone.sip_port - other.sip_port) >= 2:
            return phone
    raise AssertionError("no SIP port pair 2 apart")


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    require_tool("baresip")
    server = Server(write_config(tmp_path / "srv", lines=range(10, 14))).start()
    a = b = None
    try:
        a = Baresip(tmp_path / "phone10", lifetime=90).start()
        b = _phone_apart_from(tmp_path / "phone11", a)
        b.lifetime = 90
        b.start()
        yield Scene(server, a, b)
    finally:
        for phone in (b, a):
            if phone is not None:
                with contextlib.suppress(Exception):
                    phone.stop()
        server.stop()


def test_two_baresip_phones_call_through_the_redirect(scene: Scene) -> None:
    srv, a, b = scene.server, scene.a, scene.b
    aor10 = f"sip:10@127.0.0.1:{srv.port}"
    aor11 = f"sip:11@127.0.0.1:{srv.port}"
    a.add_account(account("10", srv.port, PASSWORDS["10"]))
    b.add_account(account("11", srv.port, PASSWORDS["11"]))
    for phone in (a, b):
        ev = scene.wait(phone, {"REGISTER_OK", "REGISTER_FAIL"}, REGISTER_WAIT)
        scene.check(ev["type"] == "REGISTER_OK", f"registration failed: {ev}")

    # a number that is nobody: the server's 404 ends the call attempt at once
    a.dial(f"sip:19@127.0.0.1:{srv.port}")
    ev = scene.wait(a, {"CALL_CLOSED", "CALL_ESTABLISHED"}, CALL_WAIT)
    scene.check(ev["type"] == "CALL_CLOSED" and "404" in str(ev.get("param")),
                f"dial to nobody: {ev}")

    # 10 calls 11: 401, authenticated INVITE, 302 to phone 11, INVITE to phone 11, answered
    a.dial(aor11)
    ev_a = scene.wait(a, {"CALL_ESTABLISHED", "CALL_CLOSED"}, CALL_WAIT)
    scene.check(ev_a["type"] == "CALL_ESTABLISHED", f"phone 10: {ev_a}")
    ev_b = scene.wait(b, {"CALL_ESTABLISHED", "CALL_CLOSED"}, CALL_WAIT)
    scene.check(ev_b["type"] == "CALL_ESTABLISHED", f"phone 11: {ev_b}")
    scene.check(ev_a.get("direction") == "outgoing" and ev_a.get("accountaor") == aor10,
                f"phone 10's call: {ev_a}")
    scene.check(ev_b.get("direction") == "incoming" and ev_b.get("accountaor") == aor11
                and str(ev_b.get("peeruri", "")).startswith("sip:10@"),
                f"phone 11's call: {ev_b}")
    scene.check(ev_a.get("id") == ev_b.get("id"), "the phones report different calls")

    # the server redirected the call; it never carried it (no INVITE reached phone 11 from it)
    log = srv.log()
    invites = re.findall(r"INVITE from=sip:10@\S+ to=sip:11@\S+ src=\S+ status=(\d+)", log)
    scene.check(invites == ["401", "302"], f"server answers to phone 10's INVITEs: {invites}")

    a.hangup()
    for phone in (a, b):
        ev = scene.wait(phone, {"CALL_CLOSED"}, CALL_WAIT)
        scene.check(ev.get("id") == ev_a.get("id"), f"closed another call: {ev}")
