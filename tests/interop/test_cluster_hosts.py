"""Two hosts, one Redis, real phones (issue #14 item 4): a call for a phone whose flow lives on
the other host goes through that host (Path + flow token, sipyard/flowtoken.py).

Host A listens on 127.0.0.2, host B on 127.0.0.3 (loopback addresses: nothing leaves the
machine), both in proxy mode on one throw-away redis-server. The phone is a baresip
registered at A over TCP: its binding can only be reached over that connection, so A
stores it with ``Path: <sip:TOKEN@127.0.0.2:PORT;lr;ob>`` and B, finding it in Redis,
sends the INVITE to A with that Route; A pops it and sends down the connection. Record-
Route of both hosts keeps the ACK and the BYE on the same way. baresip runs with ``-s``
(SIP trace in its log), so the test reads the INVITE as the phone got it.

Behind NAT for real (tests/interop/netns.py): two phones behind two MASQUERADE NATs, host A
and host B on two addresses of the "public" bridge, Redis inside that namespace. The NAT's
mapping answers only the host the phone talked to, so a call from the phone registered at
B to the phone registered at A is established only through A; the callee's BYE goes back
through A and B to the caller's own NAT flow.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from baresip import Baresip, BaresipError, require_tool
from netns import NatLab, netns_unavailable, socket_in
from support import PASSWORDS, Server, free_port, write_config
from test_registrar_redis import Redis

pytestmark = pytest.mark.interop
SIPP = Path(__file__).resolve().parent / "sipp"
A_IP, B_IP = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    r = Redis(tmp_path / "redis").start()
    try:
        yield r
    finally:
        r.stop()


def _host(tmp: Path, name: str, ip: str, redis: Redis) -> Server:
    """A proxy-mode host on ``ip`` sharing ``redis``; callers from loopback need no digest,
    phones register with one."""
    cfg = write_config(tmp / name, server={"mode": "proxy", "domains": [A_IP, B_IP, "127.0.0.1"]},
                       store={"url": redis.url}, security={"trusted": ["127.0.0.0/8"]})
    port = free_port()
    return Server(cfg, port, listen=[f"udp:{ip}:{port}", f"tcp:{ip}:{port}"]).start()


def _account(line: str, ip: str, port: int, transport: str) -> str:
    return (f"<sip:{line}@{ip}:{port};transport={transport}>;auth_pass={PASSWORDS[line]}"
            f";regint=300;answermode=auto")


def _wait(phone: Baresip, types: set[str], what: str, hosts: list[Server],
          timeout: float = 15.0) -> str:
    try:
        return str(phone.wait_event(types, timeout=timeout)["type"])
    except BaresipError as exc:
        logs = "\n".join(f"--- host {h.port}\n{h.log()[-4000:]}" for h in hosts)
        raise AssertionError(f"{what}: {str(exc)[:3000]}\n{logs}") from None


def _bindings(host: Server, line: str) -> list[dict[str, Any]]:
    doc = json.loads(host.cli("registry", line, "--json").stdout)
    return list(doc["lines"][0]["bindings"])


_TRACE = re.compile(r"^(UDP|TCP) (\S+) -> (\S+)$", re.MULTILINE)


def _trace(phone: Baresip) -> list[tuple[str, str, str, str]]:
    """baresip's SIP trace (``-s``): (transport, from, to, message) in the order sent/received."""
    log = phone.log().replace("\r\n", "\n")
    heads = list(_TRACE.finditer(log))
    out = []
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(log)
        out.append((m.group(1), m.group(2), m.group(3), log[m.end() + 1:end]))
    return out


def test_tcp_phone_at_a_is_called_through_a_from_b(tmp_path: Path, redis: Redis) -> None:
    """sipp calls in at B; the phone (baresip over TCP) is registered at A: INVITE via A over
    the phone's own connection, 200, ACK and BYE along the Record-Route of both hosts."""
    sipp = require_tool("sipp")
    require_tool("baresip")
    a = _host(tmp_path, "a", A_IP, redis)
    b = _host(tmp_path, "b", B_IP, redis)
    phone = Baresip(tmp_path / "phone11", trace=True)
    try:
        phone.start()
        phone.add_account(_account("11", A_IP, a.port, "tcp"))
        got = _wait(phone, {"REGISTER_OK", "REGISTER_FAIL"}, "register at A", [a, b])
        assert got == "REGISTER_OK"
        (binding,) = _bindings(b, "11")  # B reads it from Redis
        assert binding["source"].endswith("/tcp")
        assert len(binding["path"]) == 1 and f"@{A_IP}:{a.port};lr;ob>" in binding["path"][0]
        out = tmp_path / "sipp"
        out.mkdir()
        res = subprocess.run(
            [sipp, "-sf", str(SIPP / "uac_answer.xml"), "-s", "11", f"{B_IP}:{b.port}",
             "-i", "127.0.0.1", "-p", str(free_port()), "-m", "1", "-timeout", "20s",
             "-nostdin", "-trace_msg", "-message_file", str(out / "msg.log")],
            cwd=out, capture_output=True, timeout=60)
        assert res.returncode == 0, ((out / "msg.log").read_text(errors="replace")[-4000:]
                                     + a.log()[-3000:] + b.log()[-3000:])
        for want in ("CALL_ESTABLISHED", "CALL_CLOSED"):
            assert _wait(phone, {want, "CALL_CLOSED"}, want, [a, b]) == want
        trace = _trace(phone)
        reg = next(t for t in trace if t[3].startswith("REGISTER "))
        (invite,) = [t for t in trace if t[3].startswith("INVITE ")]
        # down the phone's own connection (the one its REGISTER went out on), from A
        assert invite[:3] == ("TCP", f"{A_IP}:{a.port}", reg[1]), (reg[:3], invite[:3])
        rr = [ln for ln in invite[3].splitlines() if ln.lower().startswith("record-route")]
        assert any(A_IP in ln for ln in rr) and any(B_IP in ln for ln in rr), invite[3]
        for method in ("ACK ", "BYE "):  # the caller's, along the route set: B, A, the flow
            (got,) = [t for t in trace if t[3].startswith(method)]
            assert got[:3] == invite[:3], got
        st = json.loads(a.cli("status", "--json").stdout)
        assert st["tcp_connections"] == 1, st  # A opened no connection of its own
        for h in (a, b):
            assert "Traceback" not in h.log()
        # the call record is B's (where the call came in); A was a hop
        cdr_a, cdr_b = a.data / "cdr.jsonl", b.data / "cdr.jsonl"
        end = time.monotonic() + 5
        while time.monotonic() < end and not cdr_b.exists():
            time.sleep(0.05)
        (rec,) = [json.loads(x) for x in cdr_b.read_text().splitlines()]
        assert (rec["callee_line"], rec["disposition"]) == ("11", "answered"), rec
        assert not cdr_a.exists()
    finally:
        with contextlib.suppress(Exception):
            phone.stop()
        a.stop()
        b.stop()


def test_two_hosts_baresip_call_then_failover(tmp_path: Path, redis: Redis) -> None:
    """The issue's "done when": register at A, the call arrives at B and is established
    (baresip both ends); stop A, the phone registers at B, calls work again."""
    require_tool("baresip")
    a = _host(tmp_path, "a", A_IP, redis)
    b = _host(tmp_path, "b", B_IP, redis)
    callee = Baresip(tmp_path / "phone11")
    caller = Baresip(tmp_path / "phone10")
    hosts = [a, b]

    def call() -> None:
        caller.dial(f"sip:11@{B_IP}:{b.port}")
        for p, who in ((caller, "caller"), (callee, "callee")):
            got = _wait(p, {"CALL_ESTABLISHED", "CALL_CLOSED"}, who, hosts)
            assert got == "CALL_ESTABLISHED", who
        time.sleep(0.5)
        caller.hangup()
        for p, who in ((caller, "caller"), (callee, "callee")):
            assert _wait(p, {"CALL_CLOSED"}, who, hosts) == "CALL_CLOSED"

    try:
        callee.start()
        caller.start()
        callee.add_account(_account("11", A_IP, a.port, "tcp"))
        caller.add_account(_account("10", B_IP, b.port, "udp"))
        for p in (callee, caller):
            assert _wait(p, {"REGISTER_OK", "REGISTER_FAIL"}, "register", hosts) == "REGISTER_OK"
        call()
        a.stop()  # its phones' connections go with it; no binding is lost
        assert _bindings(b, "11"), "A's stop lost the binding"
        # the phone fails over to B (as a DNS SRV or outbound-proxy list would send it)
        callee.command("uadel", f"sip:11@{A_IP}:{a.port};transport=tcp")
        callee.add_account(_account("11", B_IP, b.port, "tcp"))
        assert _wait(callee, {"REGISTER_OK", "REGISTER_FAIL"}, "re-register at B",
                     hosts) == "REGISTER_OK"
        (binding,) = _bindings(b, "11")
        assert f"@{B_IP}:{b.port};lr;ob>" in binding["path"][0], binding
        call()
        assert "Traceback" not in b.log() and "Traceback" not in a.log()
    finally:
        for p in (caller, callee):
            with contextlib.suppress(Exception):
                p.stop()
        a.stop()
        b.stop()


class NsRedis:
    """A redis-server inside a network namespace, on that namespace's 127.0.0.1."""

    def __init__(self, ns: str, workdir: Path) -> None:
        self.ns = ns
        self.port = 6390
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, require_tool("redis-server"), "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while not self._ping():
            if time.monotonic() > end or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("redis-server did not start in the namespace")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        import socket

        try:
            s = socket_in(self.ns, lambda: socket.create_connection(
                ("127.0.0.1", self.port), timeout=1))
        except OSError:
            return False
        with s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
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


def test_phones_behind_nat_on_two_hosts_call_each_other(tmp_path: Path, lab: NatLab) -> None:
    """Phone 11 behind NAT A registers at host A, phone 10 behind NAT B at host B; 10 calls
    11 (arrives at B, goes through A to 11's NAT flow) and 11 hangs up (BYE: A, B, 10's flow)."""
    require_tool("baresip")
    b_ip = lab.add_server_address("10.200.0.9")
    redis = NsRedis(lab.pub, tmp_path / "redis")
    hosts: list[Server] = []
    phones: dict[str, Baresip] = {}
    try:
        for name, ip in (("a", lab.server_ip), ("b", b_ip)):
            cfg = write_config(tmp_path / name, lines=range(10, 12),
                               server={"mode": "proxy", "domains": [lab.server_ip, b_ip]},
                               store={"url": redis.url})
            hosts.append(Server(cfg, 5060, listen=[f"udp:{ip}:5060", f"tcp:{ip}:5060"],
                                wrap=["ip", "netns", "exec", lab.pub]).start())
        a, b = hosts
        for line, lan, ip in (("11", lab.lans[0], lab.server_ip), ("10", lab.lans[1], b_ip)):
            p = Baresip(tmp_path / f"phone{line}", lifetime=90, netns=lan.ns, host=lan.ip)
            phones[line] = p.start()
            p.add_account(_account(line, ip, 5060, "udp"))
        for line, p in phones.items():
            got = _wait(p, {"REGISTER_OK", "REGISTER_FAIL"}, f"register {line}", hosts)
            assert got == "REGISTER_OK", line
        (b11,) = _bindings(b, "11")
        assert lab.lans[0].ip in b11["contact"] and b11["source"].startswith(
            lab.lans[0].public_ip), b11  # behind NAT A: private Contact, NAT's address
        assert f"@{lab.server_ip}:5060;lr;ob>" in b11["path"][0], b11
        phones["10"].dial(f"sip:11@{b_ip}:5060")
        for line in ("10", "11"):
            got = _wait(phones[line], {"CALL_ESTABLISHED", "CALL_CLOSED"}, line, hosts)
            assert got == "CALL_ESTABLISHED", line  # 11 only once 10's ACK came through
        time.sleep(0.5)
        phones["11"].hangup()
        for line in ("10", "11"):
            assert _wait(phones[line], {"CALL_CLOSED"}, line, hosts) == "CALL_CLOSED"
        bye = re.compile(r"BYE from=\S+ to=\S+ src=\S+ status=200")
        end = time.monotonic() + 5  # a host logs a request once its final answer went out
        while time.monotonic() < end and not (bye.search(a.log()) and bye.search(b.log())):
            time.sleep(0.05)
        assert bye.search(a.log()) and bye.search(b.log())  # the callee's BYE crossed both
        for h in hosts:
            assert "Traceback" not in h.log()
    finally:
        for p in phones.values():
            with contextlib.suppress(Exception):
                p.stop()
        for h in hosts:
            h.stop()
        redis.stop()
