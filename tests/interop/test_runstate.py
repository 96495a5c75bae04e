"""Run states on a running server: ``sipyard runstate`` changes where the door bell rings.

The demo's set-up: group 100 (the door bell) rings lines 10 and 11; ``states/night.toml``
sets its members to ["12"]. The door station (line 19) authenticates its INVITE to
``sip:100@realm`` and the 302's Contacts say who would ring. Selecting ``night`` moves them
to 12, ``none`` moves them back; editing states/night.toml without selecting a state (or
reloading) changes nothing, because the overlay is read only when a state is applied. The
state is kept in the store: recorded with the server stopped, it is applied at the next start.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from support import (
    Server,
    UdpClient,
    auth_header,
    header_values,
    register,
    sip_request,
    status_of,
)

from sipyard.control import call
from sipyard.sip.headers import parse_name_addr
from sipyard.sip.uri import parse_uri

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

REALM = "sipyard.test"
DOOR_BELL = '[groups.100]\ndisplay = "Door bell"\nmembers = ["10", "11"]\n'
NIGHT = '# night: only the bedroom phone\n[groups.100]\nmembers = ["12"]\n'


def demo_site(start_server: Callable[..., Server]) -> Server:
    server = start_server("demo", extra=DOOR_BELL, line_extra={"19": {"type": "door"}})
    states = server.config.parent / "states"
    states.mkdir()
    (states / "night.toml").write_text(NIGHT)
    return server


def ring(door: UdpClient, server: Server) -> list[str]:
    """The door station (line 19) calls the door bell; the users of the 302's Contacts."""
    ruri = f"sip:100@{REALM}"
    call_id = uuid.uuid4().hex
    frm = f"<sip:19@{REALM}>"
    first = _invite(door, ruri, frm, call_id, 1, [])
    assert status_of(first) == 401, first
    assert first is not None
    auth = auth_header(first, "19", "pw19secret", "INVITE", ruri)
    final = _invite(door, ruri, frm, call_id, 2, [("Authorization", auth)])
    assert status_of(final) == 302, final
    assert final is not None
    users = []
    for value in header_values(final, "Contact"):
        uri = parse_uri(parse_name_addr(value).uri)
        users.append(str(uri.user))  # type: ignore[union-attr]
    return sorted(users)


def _invite(client: UdpClient, ruri: str, frm: str, call_id: str, cseq: int,
            headers: list[tuple[str, str]]) -> bytes | None:
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    client.send(sip_request("INVITE", ruri, frm=frm, call_id=call_id, cseq=cseq, branch=branch,
                            headers=headers, local_port=client.port))
    while True:
        r = client.recv(3.0)
        if r is None:
            return None
        if call_id not in header_values(r, "Call-ID") or status_of(r) < 200 \
                or not header_values(r, "CSeq")[0].startswith(f"{cseq} "):
            continue  # a provisional, or a retransmission of an earlier answer
        ack = [f"ACK {ruri} SIP/2.0"] + [f"{h}: {v}" for h in ("Via", "From", "To", "Call-ID")
                                         for v in header_values(r, h)]
        ack += ["Max-Forwards: 70", f"CSeq: {cseq} ACK", "Content-Length: 0"]
        client.send(("\r\n".join(ack) + "\r\n\r\n").encode())
        return r


def state_of(server: Server) -> str | None:
    """The run state the server runs with (``status --json``, over the control socket)."""
    reply = call(server.data / "control.sock", {"op": "status"}, timeout=10)
    assert reply["ok"], reply
    state: str | None = reply["state"]
    return state


def test_runstate_moves_the_door_bell(start_server: Callable[..., Server]) -> None:
    server = demo_site(start_server)
    phones = {n: UdpClient(server.addr) for n in ("10", "11", "12", "13")}
    door = UdpClient(server.addr)
    try:
        for n, c in phones.items():
            assert status_of(register(c, n, realm=REALM)) == 200
        assert ring(door, server) == ["10", "11"]

        r = server.cli("runstate", "night")
        assert (r.returncode, r.stdout.strip()) == (0, "run state: night"), r.stderr
        assert state_of(server) == "night"
        assert ring(door, server) == ["12"]
        doc = json.loads(server.cli("runstate", "--json").stdout)
        assert (doc["state"], doc["running"]) == ("night", True)

        # a new night.toml is not read until a state is applied (or the config reloaded)
        night = server.config.parent / "states" / "night.toml"
        night.write_text('[groups.100]\nmembers = ["13"]\n')
        assert ring(door, server) == ["12"]

        r = server.cli("runstate", "none")
        assert (r.returncode, r.stdout.strip()) == (0, "run state: none")
        assert state_of(server) is None
        assert ring(door, server) == ["10", "11"]

        # selecting night again reads the file as it is now
        assert server.cli("runstate", "night").returncode == 0
        assert ring(door, server) == ["13"]

        # a state without a file, or with a broken one, is refused; nothing changes
        r = server.cli("runstate", "holiday")
        assert r.returncode == 1 and "holiday.toml" in r.stderr and "Traceback" not in r.stderr
        night.write_text('[groups.100]\nmembers = ["42"]\n')  # 42 is no line
        r = server.cli("runstate", "night")
        assert r.returncode == 1 and "groups.100.members" in r.stderr
        assert state_of(server) == "night"
        assert ring(door, server) == ["13"]
        assert json.loads(server.cli("runstate", "--json").stdout)["state"] == "night"
    finally:
        for c in [*phones.values(), door]:
            c.close()


def test_runstate_recorded_while_stopped_applies_at_start(
        start_server: Callable[..., Server]) -> None:
    server = demo_site(start_server)
    phones = {n: UdpClient(server.addr) for n in ("10", "11", "12")}
    door = UdpClient(server.addr)
    try:
        for n, c in phones.items():
            assert status_of(register(c, n, realm=REALM)) == 200
        assert server.cli("stop").returncode == 0
        assert server.proc is not None and server.proc.wait(10) == 0

        r = server.cli("status")
        assert r.returncode == 4 and r.stderr.count("\n") == 1 and "not running" in r.stderr
        r = server.cli("runstate", "night")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("run state: night (server not running; recorded")
        assert json.loads(server.cli("runstate", "--json").stdout) == {
            "state": "night", "running": False}

        server.stop()  # reap the old process; same port, same data dir
        restarted = Server(server.config, server.port).start()
        try:
            assert state_of(restarted) == "night"
            assert "run state night" in restarted.log() or "(run state night)" in restarted.log()
            assert ring(door, restarted) == ["12"]  # bindings survived the restart too
            assert restarted.cli("runstate", "none").returncode == 0
            assert ring(door, restarted) == ["10", "11"]
        finally:
            restarted.stop()
    finally:
        for c in [*phones.values(), door]:
            c.close()


def test_runstate_offline_refuses_unknown_state(tmp_path: Path) -> None:
    from support import run_cli, write_config

    conf = write_config(tmp_path / "site", extra=DOOR_BELL)
    r = run_cli("runstate", "night", "-c", str(conf))
    assert r.returncode == 1 and "night.toml" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("runstate", "-c", str(conf), "--json")
    assert json.loads(r.stdout) == {"state": None, "running": False}
