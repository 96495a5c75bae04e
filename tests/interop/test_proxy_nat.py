"""NAT for real: two baresip phones behind two MASQUERADE NATs call each other through sipyard.

The issue's "NAT, for real": two private networks built with ``ip netns`` + veth + iptables
MASQUERADE (tests/interop/netns.py), one phone behind each NAT and sipyard on the "public"
side. Each phone registers with its private address in the Contact (192.168.71.2 /
192.168.72.2, which the other cannot reach: its router has no route there) and the NAT
rewrites the source port into 41000-41999 / 42000-42999. Then one calls the other, over UDP
and over TCP: the INVITE must reach the callee through its NAT binding (the flow of its
REGISTER; over TCP the very connection), both reach CALL_ESTABLISHED (the callee only once
the caller's ACK came through, so the ACK crossed the other NAT), and the BYE reaches the
phone behind the other NAT — in both directions (a second call the other way round, hung up
by the other side). Skipped with the reason only when namespaces or iptables are not usable.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from baresip import Baresip, BaresipError, require_tool
from netns import NatLab, netns_unavailable
from support import PASSWORDS, Server, write_config

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[NatLab]:
    why = netns_unavailable()
    if why is not None:
        pytest.skip(why)
    lab = NatLab()
    request.addfinalizer(lambda: _removed(lab))
    lab.build()
    yield lab


def _removed(lab: NatLab) -> None:
    lab.remove()
    assert lab.leftovers() == [], "namespaces left behind"


def _account(line: str, lab: NatLab, transport: str) -> str:
    return (f"<sip:{line}@{lab.server_ip}:5060;transport={transport}>"
            f";auth_pass={PASSWORDS[line]};regint=300;answermode=auto")


class Scene:
    def __init__(self, server: Server, phones: dict[str, Baresip]) -> None:
        self.server = server
        self.phones = phones

    def report(self) -> str:
        out = []
        for line, p in self.phones.items():
            out.append(f"--- phone {line} events {[e.get('type') for e in p.events]}\n"
                       f"{p.log()[-3000:]}")
        out.append(f"--- server\n{self.server.log()[-5000:]}")
        return "\n".join(out)

    def wait(self, line: str, types: set[str], timeout: float = 15.0) -> str:
        try:
            return str(self.phones[line].wait_event(types, timeout=timeout)["type"])
        except BaresipError as exc:
            raise AssertionError(f"phone {line}: {str(exc).splitlines()[0]}\n{self.report()}"
                                 ) from None


def _call(scene: Scene, lab: NatLab, caller: str, callee: str, hangup: str,
          transport: str) -> None:
    suffix = ";transport=tcp" if transport == "tcp" else ""
    scene.phones[caller].dial(f"sip:{callee}@{lab.server_ip}:5060{suffix}")
    for line in (caller, callee):
        got = scene.wait(line, {"CALL_ESTABLISHED", "CALL_CLOSED"})
        assert got == "CALL_ESTABLISHED", f"{line}: {got}\n{scene.report()}"
    time.sleep(1.0)
    scene.phones[hangup].hangup()
    for line in (caller, callee):
        assert scene.wait(line, {"CALL_CLOSED"}) == "CALL_CLOSED"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_two_phones_behind_two_nats_call_each_other(lab: NatLab, transport: str,
                                                    tmp_path: Path) -> None:
    require_tool("baresip")
    cfg = write_config(tmp_path / "srv", lines=range(10, 12),
                       server={"mode": "proxy", "domains": [lab.server_ip]})
    server = Server(cfg, listen=[f"udp:{lab.server_ip}:5060", f"tcp:{lab.server_ip}:5060"],
                    wrap=["ip", "netns", "exec", lab.pub]).start()
    phones: dict[str, Baresip] = {}
    scene = Scene(server, phones)
    try:
        for line, lan in zip(("10", "11"), lab.lans, strict=True):
            p = Baresip(tmp_path / f"phone{line}", lifetime=90, netns=lan.ns, host=lan.ip)
            phones[line] = p.start()
            p.add_account(_account(line, lab, transport))
        for line in phones:
            got = scene.wait(line, {"REGISTER_OK", "REGISTER_FAIL"})
            assert got == "REGISTER_OK", f"{line}: {got}\n{scene.report()}"
        # each binding: the private Contact as written, the NAT's public address and a
        # rewritten port as source
        reg = json.loads(server.cli("registry", "--json").stdout)
        bindings: dict[str, Any] = {x["line"]: x["bindings"] for x in reg["lines"]}
        for line, lan in zip(("10", "11"), lab.lans, strict=True):
            (b,) = bindings[line]
            assert lan.ip in b["contact"], b
            ip, _, rest = b["source"].partition(":")
            port, _, tr = rest.partition("/")
            assert ip == lan.public_ip and lan.ports[0] <= int(port) <= lan.ports[1], b
            assert tr == transport, b
        _call(scene, lab, "10", "11", hangup="10", transport=transport)
        _call(scene, lab, "11", "10", hangup="10", transport=transport)  # callee hangs up
        path = server.data / "cdr.jsonl"
        end = time.monotonic() + 5
        while time.monotonic() < end and not (path.exists() and
                                              len(path.read_text().splitlines()) >= 2):
            time.sleep(0.05)
        records = [json.loads(x) for x in path.read_text().splitlines()]
        assert [(r["caller_line"], r["callee_line"], r["disposition"], r["hangup"])
                for r in records] == [("10", "11", "answered", "caller"),
                                      ("11", "10", "answered", "callee")], records
        if transport == "tcp":
            # phone 11 loses power mid-call: its connection closes, its binding stays. The
            # BYE for it and a new call to it cannot open a connection through its NAT, so
            # both get 430 Flow Failed (RFC 5626 §5.3)
            phones["10"].dial(f"sip:11@{lab.server_ip}:5060;transport=tcp")
            for line in ("10", "11"):
                assert scene.wait(line, {"CALL_ESTABLISHED", "CALL_CLOSED"}) == "CALL_ESTABLISHED"
            proc = phones["11"].proc
            assert proc is not None
            proc.kill()
            proc.wait(5)
            time.sleep(0.5)
            phones["10"].hangup()
            assert scene.wait("10", {"CALL_CLOSED"}) == "CALL_CLOSED"
            bye_430 = re.compile(r"BYE from=\S+ to=\S+ src=\S+ status=430")
            end = time.monotonic() + 5
            while time.monotonic() < end and not bye_430.search(server.log()):
                time.sleep(0.05)
            assert bye_430.search(server.log()), scene.report()
            phones["10"].dial(f"sip:11@{lab.server_ip}:5060;transport=tcp")
            assert scene.wait("10", {"CALL_CLOSED", "CALL_ESTABLISHED"}) == "CALL_CLOSED"
            end = time.monotonic() + 5
            while time.monotonic() < end and len(path.read_text().splitlines()) < 4:
                time.sleep(0.05)
            last = json.loads(path.read_text().splitlines()[-1])
            assert (last["status"], last["callee_line"]) == (430, "11"), last
    finally:
        for p in phones.values():
            with contextlib.suppress(Exception):
                p.stop()
        server.stop()
