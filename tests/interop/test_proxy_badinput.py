"""Issue #12's "Bad input", from outside: no open relay by Route, a capped route set, and a
hung callee that cannot hold a call record past ``[proxy] max_call_seconds``.

Every "foreign" next hop here is a loopback address that is not the server
(127.0.0.2): if a check failed, the relayed copy would still stay on this machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakephone import FakePhone
from support import Server, UdpClient, register, sip_request, status_of, write_config
from test_proxy_wire import Caller, cdrs, wait_for

pytestmark = pytest.mark.interop
REALM = "sipyard.test"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Unauthenticated requests allowed to reach the chain, nobody trusted (no relay)."""
    cfg = write_config(tmp_path_factory.mktemp("bad"), server={"mode": "proxy"},
                       redirect={"require_auth": False})
    srv = Server(cfg).start()
    yield srv
    srv.stop()


def test_route_to_a_foreign_host_from_an_unauthenticated_source_is_not_relayed(
        server: Server) -> None:
    c = UdpClient(server.addr)
    try:
        # an out-of-dialog INVITE for one of our users, with a Route to somebody else
        r = c.request(sip_request("INVITE", f"sip:11@{REALM}", local_port=c.port,
                                  headers=[("Route", "<sip:127.0.0.2:5999;lr>")]))
        assert status_of(r) == 403 and r is not None and b"Relaying denied" in r
        # the same behind our own Route value (a UA with us as outbound proxy): still ours
        # to refuse, the foreign Route below ours is not followed
        r = c.request(sip_request("MESSAGE", f"sip:11@{REALM}", local_port=c.port, headers=[
            ("Route", f"<sip:127.0.0.1:{server.port};lr>"),
            ("Route", "<sip:127.0.0.2:5999;lr>")]))
        assert status_of(r) == 403
        # "in dialog" (a To tag) with a foreign Route and no trace of us: not a dialog of ours
        r = c.request(sip_request("BYE", "sip:x@127.0.0.2:5999", to="<sip:x@127.0.0.2>;tag=t1",
                                  local_port=c.port,
                                  headers=[("Route", "<sip:127.0.0.2:5999;lr>")]))
        assert status_of(r) == 481
    finally:
        c.close()


def test_a_route_set_over_the_cap_is_refused_with_400(server: Server) -> None:
    c = UdpClient(server.addr)
    try:
        many = ", ".join(f"<sip:127.0.0.{2 + i % 200}:5999;lr>" for i in range(33))
        r = c.request(sip_request("INVITE", f"sip:11@{REALM}", local_port=c.port,
                                  headers=[("Record-Route", many)]))
        assert status_of(r) == 400 and r is not None and b"More Than 32 Route Values" in r
    finally:
        c.close()


def test_hung_calls_end_as_expired_after_max_call_seconds(tmp_path: Path) -> None:
    """A callee that answers and then never sends BYE (nor does the caller), and a callee
    that rings forever: neither call record outlives ``max_call_seconds`` (2 s here)."""
    srv = Server(write_config(tmp_path / "mcs", server={"mode": "proxy"},
                              security={"trusted": ["127.0.0.0/8"]},
                              extra="[proxy]\nmax_call_seconds = 2.0\n")).start()
    phones: list[FakePhone] = []
    try:
        answers, rings = FakePhone(final=200, delay=0.1), FakePhone(final=None)
        phones += [answers, rings]
        reg = UdpClient(srv.addr)
        assert status_of(register(reg, "11", contact=answers.contact, realm=REALM)) == 200
        assert status_of(register(reg, "12", contact=rings.contact, realm=REALM)) == 200
        reg.close()
        answered, ringing = Caller(srv), Caller(srv)
        answered.invite("11")
        resp = answered.final()
        assert status_of(resp) == 200
        answered.ack(resp)  # ... and then silence from both sides
        ringing.invite("12")
        assert wait_for(lambda: rings.first("INVITE") is not None)

        def calls() -> list[dict[str, Any]]:
            return list(json.loads(srv.cli("calls", "--json").stdout)["calls"])

        assert len(calls()) == 2
        started = time.monotonic()
        assert wait_for(lambda: calls() == [], timeout=8.0)
        assert time.monotonic() - started < 4.0
        for caller, status in ((answered, 200), (ringing, None)):
            (r,) = cdrs(srv, caller.call_id)
            assert r["disposition"] == "expired" and r["hangup"] == "proxy", r
            assert 2.0 <= r["duration"] < 3.5, r
            if status is not None:
                assert r["status"] == status and r["answer"] is not None
            caller.close()
        # the call that was still ringing is stopped too: its callee gets a CANCEL
        assert wait_for(lambda: rings.first("CANCEL") is not None, timeout=4.0)
        assert not answers.first("CANCEL")
    finally:
        for p in phones:
            p.close()
        srv.stop()
