"""Proxy mode from outside: a caller, scripted callees (tests/interop/fakephone.py), the CDR file.

One server in proxy mode for the module, loopback trusted (so the caller needs no digest;
the 407 path has its own test on a second server). Each test uses its own line, so the
bindings of one never ring in another.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakephone import FakePhone
from support import Server, UdpClient, header_values, register, sip_request, status_of, write_config

pytestmark = pytest.mark.interop
REALM = "sipyard.test"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cfg = write_config(tmp_path_factory.mktemp("proxy"), server={"mode": "proxy"},
                       security={"trusted": ["127.0.0.0/8"]},
                       line_extra={"17": {"max_calls": 1}})
    srv = Server(cfg).start()
    yield srv
    srv.stop()


@pytest.fixture
def phones() -> Iterator[Callable[..., FakePhone]]:
    made: list[FakePhone] = []

    def make(**kw: Any) -> FakePhone:
        p = FakePhone(**kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def bind(server: Server, line: str, *phones: FakePhone) -> None:
    reg = UdpClient(server.addr)
    try:
        for p in phones:
            assert status_of(register(reg, line, contact=p.contact, realm=REALM)) == 200
    finally:
        reg.close()


class Caller:
    """A caller phone on a UDP socket: INVITE, ACK, CANCEL, BYE, and what came back."""

    def __init__(self, server: Server, line: str = "10") -> None:
        self.c = UdpClient(server.addr)
        self.server = server
        self.line = line
        self.call_id = uuid.uuid4().hex
        self.tag = uuid.uuid4().hex[:8]
        self.branch = "z9hG4bK" + uuid.uuid4().hex[:12]
        self.got: list[bytes] = []

    def invite(self, target: str, headers: list[tuple[str, str]] | None = None) -> None:
        self.ruri = f"sip:{target}@{REALM}"
        self.c.send(self._req("INVITE", self.ruri, 1, self.branch, headers or []))

    def _req(self, method: str, ruri: str, cseq: int, branch: str,
             extra: list[tuple[str, str]], to_tag: str | None = None) -> bytes:
        to = f"<sip:{self.ruri.split(':', 1)[1]}>" + (f";tag={to_tag}" if to_tag else "")
        data = sip_request(method, ruri, to=to, frm=f"<sip:{self.line}@{REALM}>",
                           call_id=self.call_id, cseq=cseq, branch=branch,
                           local_port=self.c.port,
                           headers=[("Contact", f"<sip:{self.line}@127.0.0.1:{self.c.port}>")]
                           + extra)
        return re.sub(rb";tag=[0-9a-f]{8}\r\nTo", f";tag={self.tag}\r\nTo".encode(), data, count=1)

    def final(self, timeout: float = 8.0) -> bytes:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = self.c.recv(end - time.monotonic())
            if got is None:
                break
            self.got.append(got)
            if status_of(got) >= 200 and b" INVITE\r\n" in got:
                return got
        raise AssertionError(f"no final response; got {[status_of(g) for g in self.got]}\n"
                             f"{self.server.log()[-3000:]}")

    def ack(self, resp: bytes) -> None:
        """ACK a 2xx: to its Contact, along the Record-Route (a route set of one: us)."""
        contact = header_values(resp, "Contact")[0].strip("<>")
        to_tag = re.search(rb"\r\nTo:[^\r]*;tag=([^;\r]+)", resp).group(1).decode()  # type: ignore[union-attr]
        routes = [("Route", v) for v in header_values(resp, "Record-Route")][::-1]
        self.c.send(self._req("ACK", contact, 1, "z9hG4bK" + uuid.uuid4().hex[:12], routes,
                              to_tag))
        self.dialog = (contact, to_tag, routes)

    def bye(self) -> bytes | None:
        contact, to_tag, routes = self.dialog
        return self.c.request(self._req("BYE", contact, 2, "z9hG4bK" + uuid.uuid4().hex[:12],
                                        routes, to_tag))

    def cancel(self) -> bytes | None:
        data = sip_request("CANCEL", self.ruri, to=f"<{self.ruri}>",
                           frm=f"<sip:{self.line}@{REALM}>", call_id=self.call_id, cseq=1,
                           branch=self.branch, local_port=self.c.port)
        data = re.sub(rb";tag=[0-9a-f]{8}\r\nTo", f";tag={self.tag}\r\nTo".encode(), data, count=1)
        return self.c.request(data)

    def close(self) -> None:
        self.c.close()


def cdrs(server: Server, call_id: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    path: Path = server.data / "cdr.jsonl"
    end = time.monotonic() + timeout
    while True:
        found = []
        if path.exists():
            found = [r for r in map(json.loads, path.read_text().splitlines())
                     if r["call_id"] == call_id]
        if found or time.monotonic() > end:
            return found
        time.sleep(0.05)


def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_first_200_wins_other_branch_cancelled_with_reason(server: Server, phones: Any) -> None:
    a, b = phones(final=200, delay=0.4), phones(final=None)
    bind(server, "11", a, b)
    caller = Caller(server)
    caller.invite("11")
    resp = caller.final()
    assert status_of(resp) == 200
    assert 100 in [status_of(g) for g in caller.got] and 180 in [status_of(g) for g in caller.got]
    assert header_values(resp, "Record-Route") == [f"<sip:127.0.0.1:{server.port};lr>"]
    assert wait_for(lambda: b.first("CANCEL") is not None)
    cancel = b.first("CANCEL")
    assert cancel is not None
    assert 'Reason: SIP;cause=200;text="Call completed elsewhere"' in cancel
    caller.ack(resp)
    assert wait_for(lambda: "ACK" in a.methods())
    time.sleep(1.1)
    assert status_of(caller.bye()) == 200
    assert "BYE" in a.methods()
    records = cdrs(server, caller.call_id)
    assert len(records) == 1
    r = records[0]
    assert r["disposition"] == "answered" and r["billsec"] > 1.0 and r["hangup"] == "caller"
    assert (r["caller_line"], r["callee_line"], r["status"]) == ("10", "11", 200)
    caller.close()


def test_both_busy_caller_gets_486(server: Server, phones: Any) -> None:
    bind(server, "12", phones(final=486, reason="Busy Here"), phones(final=486,
                                                                     reason="Busy Here"))
    caller = Caller(server)
    caller.invite("12")
    assert status_of(caller.final()) == 486
    assert cdrs(server, caller.call_id)[0]["disposition"] == "busy"
    caller.close()


def test_603_cancels_the_other_branch(server: Server, phones: Any) -> None:
    a, b = phones(final=603, delay=0.3, reason="Decline"), phones(final=None)
    bind(server, "13", a, b)
    caller = Caller(server)
    caller.invite("13")
    assert status_of(caller.final()) == 603
    assert b.first("CANCEL") is not None
    caller.close()


def test_302_from_a_callee_is_recursed(server: Server, phones: Any) -> None:
    c = phones(final=200, delay=0.1)
    a = phones(final=302, delay=0.1, reason="Moved Temporarily", redirect_to=c.contact)
    bind(server, "14", a)
    caller = Caller(server)
    caller.invite("14")
    resp = caller.final()
    assert status_of(resp) == 200 and f":{c.port}" in header_values(resp, "Contact")[0]
    assert c.first("INVITE") is not None
    caller.ack(resp)
    assert status_of(caller.bye()) == 200
    caller.close()


def test_caller_cancel_while_ringing(server: Server, phones: Any) -> None:
    a, b = phones(final=None), phones(final=None)
    bind(server, "15", a, b)
    caller = Caller(server)
    caller.invite("15")
    assert wait_for(lambda: a.first("INVITE") is not None and b.first("INVITE") is not None)
    time.sleep(0.3)
    assert status_of(caller.cancel()) == 200
    assert status_of(caller.final()) == 487
    assert wait_for(lambda: a.first("CANCEL") is not None and b.first("CANCEL") is not None)
    r = cdrs(server, caller.call_id)[0]
    assert r["disposition"] == "cancelled" and r["hangup"] == "caller"
    caller.close()


def test_max_calls_busy_and_busy_cdr(server: Server, phones: Any) -> None:
    bind(server, "17", phones(final=None))
    first, second = Caller(server), Caller(server, line="16")
    first.invite("17")
    time.sleep(0.5)
    r = server.cli("calls", "--json")
    calls = json.loads(r.stdout)["calls"]
    assert [(c["caller_line"], c["state"]) for c in calls if c["callee_line"] == "17"] == [
        ("10", "ringing")]
    second.invite("17")
    assert status_of(second.final()) == 486
    r = cdrs(server, second.call_id)[0]
    assert r["disposition"] == "busy" and r["callee_line"] == "17"
    first.cancel()
    assert status_of(first.final()) == 487
    r = server.cli("cdr", "--json", "--line", "17", "--since", "1h")
    assert [c["disposition"] for c in json.loads(r.stdout)["cdr"]] == ["busy", "cancelled"]
    assert "BILLSEC" in server.cli("cdr").stdout
    assert "mode         proxy" in server.cli("status").stdout
    first.close()
    second.close()


def test_max_forwards_zero_is_483(server: Server) -> None:
    c = UdpClient(server.addr)
    req = sip_request("INVITE", f"sip:11@{REALM}", local_port=c.port).replace(
        b"Max-Forwards: 70", b"Max-Forwards: 0")
    assert status_of(c.request(req)) == 483
    c.close()


def test_proxy_auth_407_and_no_open_relay(tmp_path: Path) -> None:
    srv = Server(write_config(tmp_path / "auth", server={"mode": "proxy"})).start()
    try:
        c = UdpClient(srv.addr)
        r = c.request(sip_request("INVITE", f"sip:11@{REALM}", local_port=c.port))
        assert status_of(r) == 407 and header_values(r, "Proxy-Authenticate")
        assert not header_values(r, "WWW-Authenticate")
        time.sleep(0.3)
        assert not (srv.data / "cdr.jsonl").exists()  # a challenged INVITE is not a call
    finally:
        srv.stop()
    srv = Server(write_config(tmp_path / "relay", server={"mode": "proxy"},
                              redirect={"require_auth": False})).start()
    try:
        c = UdpClient(srv.addr)
        r = c.request(sip_request("INVITE", "sip:someone@192.0.2.1", local_port=c.port))
        assert status_of(r) == 403  # unauthenticated, untrusted: not relayed
    finally:
        srv.stop()


def test_kill9_during_calls_leaves_every_cdr_line_intact(tmp_path: Path, phones: Any) -> None:
    srv = Server(write_config(tmp_path / "k9", server={"mode": "proxy"},
                              security={"trusted": ["127.0.0.0/8"]})).start()
    busy = phones(final=486, delay=0.0, reason="Busy Here")
    bind(srv, "11", busy)
    callers = []
    for _ in range(40):
        c = Caller(srv)
        c.invite("11")
        callers.append(c)
    wait_for(lambda: (srv.data / "cdr.jsonl").exists())
    srv.kill9()
    lines = (srv.data / "cdr.jsonl").read_text().splitlines()
    assert lines
    assert all(json.loads(x)["disposition"] == "busy" for x in lines)  # none torn
    srv2 = Server(srv.config).start()
    try:
        assert (srv.data / "cdr.jsonl").read_text().splitlines()[:len(lines)] == lines
    finally:
        srv2.stop()
        for c in callers:
            c.close()


def test_request_forwarded_back_to_us_unchanged_is_a_loop_482(server: Server) -> None:
    """Line 19's phone forwards the call straight back to 19 at sipyard (a call-forwarding
    loop): the INVITE returns with our Via and nothing that routes it changed, so the hash
    in our branch matches (§16.3 step 4, §16.6 step 8): 482, relayed to the caller."""
    refl = UdpClient(server.addr)
    try:
        assert status_of(register(refl, "19", contact=f"<sip:fwd@127.0.0.1:{refl.port}>",
                                  realm=REALM)) == 200
        caller = Caller(server)
        caller.invite("19")
        got = refl.recv(3.0)
        assert got is not None and got.startswith(f"INVITE sip:fwd@127.0.0.1:{refl.port} ".encode())
        head, _, rest = got.partition(b"\r\n")
        back = (f"INVITE {caller.ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{refl.port}"
                f";branch=z9hG4bKfwd{uuid.uuid4().hex[:8]}\r\n").encode() + rest
        refl.send(back)
        loop = refl.recv(3.0)
        assert status_of(loop) == 482, loop
        assert loop is not None
        # hand the 482 back on our branch of the original INVITE (drop the forwarder's Via)
        first, _, tail = loop.partition(b"\r\n")
        vias = tail.split(b"\r\n", 1)
        refl.send(first + b"\r\n" + vias[1])
        assert status_of(caller.final()) == 482
        caller.close()
    finally:
        refl.close()


def test_strict_routing_upstream_request_is_fixed_up(server: Server, phones: Any) -> None:
    """An RFC 2543 strict router upstream put our Record-Route value in the Request-URI and
    the real target in the last Route (§16.4): the request reaches the target with its
    Request-URI restored and that Route gone."""
    p = phones()
    c = UdpClient(server.addr)
    data = sip_request("BYE", f"sip:127.0.0.1:{server.port};lr",
                       to="<sip:phone@127.0.0.1>;tag=callee1", local_port=c.port,
                       headers=[("Route", f"<sip:phone@127.0.0.1:{p.port}>")])
    assert status_of(c.request(data)) == 200
    bye = p.first("BYE")
    assert bye is not None and bye.startswith(f"BYE sip:phone@127.0.0.1:{p.port} SIP/2.0\r\n")
    assert "\r\nRoute:" not in bye
    c.close()


def test_302_to_a_host_name_is_resolved_and_followed(server: Server, phones: Any) -> None:
    """A callee's 3xx Contact names a host (``localhost``), not an address: the proxy
    looks it up asynchronously (``getaddrinfo``) and forks there, instead of failing."""
    c = phones(final=200, delay=0.1)
    a = phones(final=302, delay=0.1, reason="Moved Temporarily",
               redirect_to=f"<sip:phone@localhost:{c.port}>")
    bind(server, "18", a)
    caller = Caller(server)
    caller.invite("18")
    resp = caller.final()
    assert status_of(resp) == 200, server.log()[-2000:]
    invite = c.first("INVITE")
    assert invite is not None and invite.startswith(f"INVITE sip:phone@localhost:{c.port} ")
    caller.ack(resp)
    assert status_of(caller.bye()) == 200
    caller.close()
