"""``serve --workers 2`` from outside (issue #14): one supervisor, two workers, one redis.

Every server and redis-server listens on 127.0.0.1 only. sipp runs at modest rates
(the machine is shared); each test starts its own redis on a free port.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from baresip import require_tool
from support import (
    ROOT,
    Server,
    UdpClient,
    auth_header,
    free_port,
    header_values,
    register,
    run_cli,
    sip_request,
    status_of,
    write_config,
)
from test_registrar_redis import Redis

SCEN = ROOT.parent / "shared" / "bench" / "scenarios"
PY = Path(sys.executable)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    r = Redis(tmp_path / "redis").start()
    try:
        yield r
    finally:
        r.stop()


def _workers_conf(d: Path, redis: Redis, *, mode: str = "redirect", **server: Any) -> Path:
    srv: dict[str, Any] = {"workers": 2, "mode": mode}
    srv.update(server)
    return write_config(d, server=srv, store={"url": redis.url},
                        security={"trusted": ["127.0.0.0/8"], "open_registration": True},
                        redirect={"require_auth": False})


def _status(srv: Server) -> dict[str, Any]:
    res = srv.cli("status", "--json")
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout))


def _owned_call_id(worker: int, count: int = 2) -> str:
    while True:
        cid = uuid.uuid4().hex
        if zlib.crc32(cid.encode()) % count == worker:
            return cid


def _sipp(args: list[str], out: Path, timeout: float) -> dict[str, int]:
    """Run sipp, return ok/failed/retrans from its last -trace_stat line."""
    stat = out.with_suffix(".csv")
    cmd = ["nice", "-n", "10", require_tool("sipp"), *args, "-nostdin", "-trace_stat",
           "-stf", str(stat), "-fd", "100", "-timeout", f"{int(timeout)}s",
           "-trace_err", "-error_file", str(out.with_suffix(".err"))]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=timeout + 20, check=False)
    last = stat.read_text().strip().splitlines()[-1].split(";")
    return {"ok": int(last[15]), "failed": int(last[17]), "retrans": int(last[57])}


def test_workers_refuse_sqlite(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, server={"workers": 2})
    port = free_port()
    res = subprocess.run([str(PY), "-m", "sipyard.cli", "serve", "-c", str(cfg), "--listen",
                          f"udp:127.0.0.1:{port}"], capture_output=True, text=True, timeout=30,
                         cwd=str(ROOT))
    assert res.returncode == 1
    assert "need a shared store" in res.stderr and "redis://" in res.stderr
    assert "Traceback" not in res.stderr


def test_workers_sipp_register_and_redirect(tmp_path: Path, redis: Redis) -> None:
    """10 000 REGISTERs and 10 000 redirected INVITEs at 1 000/s, 0 failed."""
    srv = Server(_workers_conf(tmp_path / "srv", redis), log_level="warning").start()
    try:
        target = f"127.0.0.1:{srv.port}"
        common = ["-inf", str(SCEN / "users.csv"), target, "-i", "127.0.0.1", "-r", "1000",
                  "-m", "10000"]
        reg = _sipp(["-sf", str(SCEN / "register.xml"), "-p", str(free_port()), *common],
                    tmp_path / "reg", 60)
        assert reg["ok"] == 10000 and reg["failed"] == 0, reg
        inv = _sipp(["-sf", str(SCEN / "invite_redirect.xml"), "-p", str(free_port()), *common],
                    tmp_path / "inv", 60)
        assert inv["ok"] == 10000 and inv["failed"] == 0, inv
        st = _status(srv)
        assert st["bindings"] == 10000
        assert [w["alive"] for w in st["workers"]] == [True, True]
        # REGISTER and, in redirect mode, INVITE/ACK stay in the worker the kernel chose
        # (one sipp socket = one 4-tuple = one worker): nothing went through the hand-off
        assert st["handoff"]["sent"] < 100, st["handoff"]
        assert "Traceback" not in srv.log()
    finally:
        srv.stop()


def _invite(caller: UdpClient, callee_line: str, call_id: str, branch: str) -> bytes:
    ruri = f"sip:{callee_line}@sipyard.test"
    return sip_request("INVITE", ruri, call_id=call_id, branch=branch, local_port=caller.port,
                       frm="<sip:10@sipyard.test>",
                       headers=[("Contact", f"<sip:10@127.0.0.1:{caller.port}>")])


def _answer(callee: UdpClient, req: bytes, status: int, reason: str, tag: str = "cal1") -> None:
    head = req.split(b"\r\n\r\n", 1)[0].decode()
    lines = head.split("\r\n")[1:]
    keep = [ln for ln in lines if ln.split(":", 1)[0].strip().lower()
            in ("via", "from", "call-id", "cseq", "record-route")]
    to = next(ln for ln in lines if ln.lower().startswith("to:"))
    if ";tag=" not in to:
        to += f";tag={tag}"
    out = [f"SIP/2.0 {status} {reason}", *keep, to,
           f"Contact: <sip:11@127.0.0.1:{callee.port}>", "Content-Length: 0", "", ""]
    callee.sock.sendto("\r\n".join(out).encode(), _via_addr(req))


def _via_addr(req: bytes) -> tuple[str, int]:
    via = header_values(req, "Via")[0]
    host, _, port = via.split()[1].split(";")[0].rpartition(":")
    return host, int(port)


def _recv_request(sock: UdpClient, method: str, timeout: float = 5.0) -> bytes:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = sock.recv(max(0.05, end - time.monotonic()))
        if got is not None and got.startswith(method.encode() + b" "):
            return got
    raise AssertionError(f"no {method} arrived")


def _answer_2xx_until_relayed(callee: UdpClient, req: bytes, caller: UdpClient,
                              timeout: float = 8.0) -> bytes:
    """Send 200 at T1, 2·T1, … (capped at T2) until it reaches the caller, as a UAS does."""
    end, interval = time.monotonic() + timeout, 0.5
    while time.monotonic() < end:
        _answer(callee, req, 200, "OK")
        try:
            return _recv_status(caller, 200, min(interval, max(0.05, end - time.monotonic())))
        except AssertionError:
            interval = min(interval * 2, 4.0)
    raise AssertionError("no 200 arrived")


def _recv_status(sock: UdpClient, status: int, timeout: float = 5.0) -> bytes:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = sock.recv(max(0.05, end - time.monotonic()))
        if got is not None and status_of(got) == status:
            return got
    raise AssertionError(f"no {status} arrived")


def test_cancel_from_another_port(tmp_path: Path, redis: Redis) -> None:
    """CANCELs from a port other than their INVITE's (so often another worker): 200 + 487."""
    srv = Server(_workers_conf(tmp_path / "srv", redis, mode="proxy")).start()
    callee = UdpClient(srv.addr)
    try:
        assert status_of(register(callee, "11")) == 200
        for _ in range(8):
            caller, canceller = UdpClient(srv.addr), UdpClient(srv.addr)
            try:
                cid, branch = uuid.uuid4().hex, "z9hG4bK" + uuid.uuid4().hex[:16]
                invite = _invite(caller, "11", cid, branch)
                caller.send(invite)
                fwd = _recv_request(callee, "INVITE")
                _answer(callee, fwd, 180, "Ringing")
                _recv_status(caller, 180)
                cancel = invite.replace(b"INVITE sip:", b"CANCEL sip:", 1).replace(
                    b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL")
                canceller.send(cancel)
                assert status_of(_recv_status(canceller, 200)) == 200
                fwd_cancel = _recv_request(callee, "CANCEL")
                _answer(callee, fwd_cancel, 200, "OK")
                _answer(callee, fwd, 487, "Request Terminated")
                assert status_of(_recv_status(caller, 487)) == 487
            finally:
                caller.close()
                canceller.close()
        st = _status(srv)
        assert st["handoff"]["sent"] > 0
        assert "Traceback" not in srv.log()
    finally:
        callee.close()
        srv.stop()


def test_redirect_cancel_and_ack_from_another_port(tmp_path: Path, redis: Redis) -> None:
    """Redirect mode keeps an INVITE in the worker that got it; a CANCEL or ACK from
    another port (often another worker) still finds its transaction: the CANCEL gets 200,
    not 481, and after the ACK the 302 is not retransmitted."""
    srv = Server(_workers_conf(tmp_path / "srv", redis)).start()
    callee = UdpClient(srv.addr)
    try:
        assert status_of(register(callee, "11")) == 200
        pairs = [(UdpClient(srv.addr), UdpClient(srv.addr)) for _ in range(8)]
        sent: list[tuple[UdpClient, bytes]] = []
        try:
            for caller, other in pairs:
                cid, branch = uuid.uuid4().hex, "z9hG4bK" + uuid.uuid4().hex[:16]
                invite = _invite(caller, "11", cid, branch)
                caller.send(invite)
                final = _recv_status(caller, 302)
                cancel = invite.replace(b"INVITE sip:", b"CANCEL sip:", 1).replace(
                    b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL")
                other.send(cancel)
                got = other.recv(3.0)
                assert got is not None and status_of(got) == 200, got
                to = header_values(final, "To")[0]
                ack = re_to(invite.replace(b"INVITE sip:", b"ACK sip:", 1).replace(
                    b"CSeq: 1 INVITE", b"CSeq: 1 ACK"), to)
                other.send(ack)
                sent.append((caller, final))
            # Timer G would resend an unacknowledged 302 after 0.5 s, 1.5 s, ...
            time.sleep(2.0)
            for caller, _ in pairs:
                assert caller.recv(0.05) is None, "302 retransmitted after its ACK"
        finally:
            for a, b in pairs:
                a.close()
                b.close()
        st = _status(srv)
        assert st["handoff"]["probed"] > 0, st["handoff"]  # some went round
        assert "Traceback" not in srv.log()
    finally:
        callee.close()
        srv.stop()


def re_to(req: bytes, to: str) -> bytes:
    """``req`` with its To header replaced (the ACK of a final carries the final's To tag)."""
    head, _, body = req.partition(b"\r\n\r\n")
    lines = [f"To: {to}".encode() if ln.lower().startswith(b"to:") else ln
             for ln in head.split(b"\r\n")]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def test_kill9_worker_survived(tmp_path: Path, redis: Redis) -> None:
    """A call owned by worker 0 completes while worker 1 is killed; worker 1 comes back."""
    srv = Server(_workers_conf(tmp_path / "srv", redis, mode="proxy")).start()
    callee, caller = UdpClient(srv.addr), UdpClient(srv.addr)
    try:
        assert status_of(register(callee, "11")) == 200
        cid = _owned_call_id(0)
        invite = _invite(caller, "11", cid, "z9hG4bK" + uuid.uuid4().hex[:16])
        caller.send(invite)
        fwd = _recv_request(callee, "INVITE")
        _answer(callee, fwd, 180, "Ringing")
        _recv_status(caller, 180)
        victim = _status(srv)["workers"][1]["pid"]
        # REGISTER load across the kill: retransmissions find a worker
        sipp = subprocess.Popen(
            ["nice", "-n", "10", require_tool("sipp"), "-sf", str(SCEN / "register.xml"),
             "-inf", str(SCEN / "users.csv"), f"127.0.0.1:{srv.port}", "-i", "127.0.0.1",
             "-p", str(free_port()), "-r", "300", "-m", "3000", "-nostdin", "-trace_stat",
             "-stf", str(tmp_path / "kill.csv"), "-fd", "100", "-timeout", "60s"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)
        os.kill(victim, signal.SIGKILL)
        # The callee's UAS core retransmits its 2xx (RFC 3261 §13.3.1.4): a copy that the
        # kernel queued on the dying worker's socket is lost with it, the next one is not.
        ok = _answer_2xx_until_relayed(callee, fwd, caller)
        assert header_values(ok, "Record-Route")
        sipp.wait(90)
        last = (tmp_path / "kill.csv").read_text().strip().splitlines()[-1].split(";")
        assert int(last[15]) == 3000 and int(last[17]) == 0, last[15:18]
        end = time.monotonic() + 15
        while time.monotonic() < end:
            w1 = _status(srv)["workers"][1]
            if w1["alive"] and w1["pid"] != victim:
                break
            time.sleep(0.2)
        # Not the request lines: what the supervisor and the workers said about themselves.
        said = [ln for ln in srv.log().splitlines() if "sipyard.request" not in ln]
        assert w1["alive"] and w1["pid"] != victim and w1["restarts"] >= 1, (w1, said[-30:])
        assert any("worker 1" in ln and "exited with -9" in ln for ln in said), said[-30:]
        if w1["restarts"] > 1:
            # Seen once in CI, never here: the replacement died again. Not the property
            # under test (the worker comes back and serves), but show why when it happens.
            tail = "\n".join(said[-30:])
            warnings.warn(f"worker 1 restarted {w1['restarts']} times:\n{tail}", stacklevel=1)
    finally:
        callee.close()
        caller.close()
        srv.stop()


def test_proxied_calls_with_retransmissions(tmp_path: Path, redis: Redis) -> None:
    """sipp UAC → 2 workers → sipp UAS that waits 700 ms (> T1) before answering."""
    bench = tmp_path / "bench"
    shutil.copytree(SCEN.parent, bench)
    uas = bench / "scenarios" / "proxy_uas.xml"
    text = uas.read_text()
    first_send = text.index("<send>")
    uas.write_text(text[:first_send] + '<pause milliseconds="700"/>\n  ' + text[first_send:])
    srv = Server(_workers_conf(tmp_path / "srv", redis, mode="proxy"), log_level="warning").start()
    try:
        pid = srv.proc.pid if srv.proc else 0
        res = subprocess.run(
            ["nice", "-n", "10", str(bench / "run_proxy_anchor.sh"), "-S", "none", "-p", str(pid),
             "-t", f"127.0.0.1:{srv.port}", "-r", "50", "-m", "500", "-R", "500", "-c", "0",
             "-C", "1", "-P", str(free_port() // 100 * 100), "-o", str(tmp_path / "out"),
             "-x", "-rtcheck loose"],
            capture_output=True, text=True, timeout=180)
        line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")), "")
        fields = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
        assert fields.get("ok") == "500" and fields.get("failed") == "0", res.stdout + res.stderr
        assert fields.get("uas_failed") == "0", line
        assert "Traceback" not in srv.log()
    finally:
        srv.stop()


def test_supervisor_control_fan_out(tmp_path: Path, redis: Redis) -> None:
    srv = Server(_workers_conf(tmp_path / "srv", redis)).start()
    try:
        assert srv.cli("level", "debug").returncode == 0
        st = _status(srv)
        assert st["log_level"] == "debug" and len(st["workers"]) == 2
        assert srv.cli("reload").returncode == 0
        res = run_cli("stop", "-c", str(srv.config))
        assert res.returncode == 0, res.stderr
        assert srv.proc is not None
        assert srv.proc.wait(15) == 0
    finally:
        srv.stop()


class DurableRedis(Redis):
    """A redis that keeps its data over a stop/start (append-only file, fsync always)."""

    def start(self, timeout: float = 10.0) -> DurableRedis:
        exe = require_tool("redis-server")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir),
             "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")


def test_redis_outage_under_register_load(tmp_path: Path) -> None:
    """Redis gone for 10 s: 500 + Retry-After meanwhile, 200 after, no 200 lost, no crash."""
    import redis as redis_py

    r = DurableRedis(tmp_path / "redis").start()
    srv = Server(_workers_conf(tmp_path / "srv", r)).start()
    clients = [UdpClient(srv.addr, timeout=5) for _ in range(4)]
    ok: set[str] = set()
    statuses: dict[int, int] = {}
    phase_ok = {"before": 0, "down": 0, "after": 0}
    try:
        pids = [w["pid"] for w in _status(srv)["workers"]]
        n = 0
        t0 = time.monotonic()
        stopped = restarted = False
        while time.monotonic() - t0 < 25:
            el = time.monotonic() - t0
            if el > 5 and not stopped:
                r.stop()
                stopped = True
            if el > 15 and not restarted:
                r.start()
                restarted = True
            phase = "before" if not stopped else "down" if not restarted else "after"
            c = clients[n % len(clients)]
            user = f"u{n:05d}"
            n += 1
            to = f"<sip:{user}@sipyard.test>"
            res = c.request(sip_request(
                "REGISTER", "sip:sipyard.test", to=to, frm=to, local_port=c.port,
                headers=[("Contact", f"<sip:{user}@127.0.0.1:{c.port}>"),
                         ("Expires", "3600")]), timeout=6)
            st = status_of(res)
            statuses[st] = statuses.get(st, 0) + 1
            if st == 200:
                ok.add(user)
                phase_ok[phase] += 1
            else:
                assert st == 500, (phase, res)
                assert res is not None and header_values(res, "Retry-After"), res
                if phase == "after":  # a few while the pool reconnects, then none
                    assert el < 18, (el, res)
            time.sleep(0.01)
        assert phase_ok["before"] > 50 and phase_ok["after"] > 50, (phase_ok, statuses)
        assert phase_ok["down"] == 0, phase_ok
        assert statuses.get(500, 0) > 10, statuses
        stored = redis_py.Redis(port=r.port, decode_responses=True).smembers("sipyard:aors")
        users = {a.split(":", 1)[1].split("@", 1)[0] for a in stored}
        assert ok <= users, sorted(ok - users)[:10]
        st = _status(srv)
        assert [w["pid"] for w in st["workers"]] == pids  # no worker died
        assert "Traceback" not in srv.log()
    finally:
        for c in clients:
            c.close()
        srv.stop()
        r.stop()


def test_failures_and_bans_shared_between_workers(tmp_path: Path, redis: Redis) -> None:
    """Failures counted by both workers ban the source in both."""
    cfg = write_config(tmp_path / "srv", server={"workers": 2}, store={"url": redis.url},
                       security={"max_auth_failures": 6, "failure_window": 60})
    srv = Server(cfg).start()
    c = UdpClient(srv.addr, timeout=1)
    try:
        to = "<sip:10@sipyard.test>"
        handled = []
        for i in range(6):  # Call-ID owned by worker i % 2: three failures in each
            cid = _owned_call_id(i % 2)
            hdrs = [("Contact", f"<sip:10@127.0.0.1:{c.port}>")]
            first = c.request(sip_request("REGISTER", "sip:sipyard.test", to=to, frm=to,
                                          call_id=cid, local_port=c.port, headers=hdrs))
            assert status_of(first) == 401 and first is not None
            bad = auth_header(first, "10", "wrong", "REGISTER", "sip:sipyard.test")
            res = c.request(sip_request("REGISTER", "sip:sipyard.test", to=to, frm=to,
                                        call_id=cid, cseq=2, local_port=c.port,
                                        headers=hdrs + [("Authorization", bad)]))
            handled.append(status_of(res))
        assert handled == [401] * 6
        time.sleep(2.5)  # one sync round
        bans = json.loads(srv.cli("bans", "--json").stdout)["bans"]
        assert [b["address"] for b in bans] == ["127.0.0.1"]
        for w in (0, 1):  # both workers drop the banned source
            res = c.request(sip_request("REGISTER", "sip:sipyard.test", to=to, frm=to,
                                        call_id=_owned_call_id(w), local_port=c.port), timeout=1)
            assert res is None, (w, res)
        assert srv.cli("unban", "127.0.0.1").returncode == 0
        time.sleep(2.5)
        for w in (0, 1):
            res = c.request(sip_request("REGISTER", "sip:sipyard.test", to=to, frm=to,
                                        call_id=_owned_call_id(w), local_port=c.port))
            assert status_of(res) == 401, (w, res)
    finally:
        c.close()
        srv.stop()


def _host(tmp: Path, name: str, ip: str, redis: Redis) -> Server:
    cfg = write_config(tmp / name, server={"mode": "proxy", "domains": [ip, "127.0.0.1"]},
                       store={"url": redis.url},
                       security={"trusted": ["127.0.0.0/8"], "open_registration": True})
    port = free_port()
    return Server(cfg, port, listen=[f"udp:{ip}:{port}", f"tcp:{ip}:{port}"]).start()


def _call(caller: UdpClient, callee: UdpClient, host: tuple[str, int]) -> None:
    """INVITE to line 11 through ``host``: the callee answers 200, the caller ACKs and BYEs."""
    caller.server = host
    invite = _invite(caller, "11", uuid.uuid4().hex, "z9hG4bK" + uuid.uuid4().hex[:16])
    caller.send(invite)
    fwd = _recv_request(callee, "INVITE")
    assert f"SIP/2.0/UDP {host[0]}:{host[1]}".encode() in fwd  # relayed by this host
    _answer(callee, fwd, 200, "OK")
    ok = _recv_status(caller, 200)
    assert header_values(ok, "Record-Route")


def test_two_hosts_one_redis(tmp_path: Path, redis: Redis) -> None:
    """Register at host A (127.0.0.2), call in at host B (127.0.0.3); A stops, the phone
    re-registers at B and is called again. Bindings live in the shared redis."""
    a = _host(tmp_path, "a", "127.0.0.2", redis)
    b = _host(tmp_path, "b", "127.0.0.3", redis)
    callee, caller = UdpClient(("127.0.0.2", a.port)), UdpClient(("127.0.0.3", b.port))
    try:
        to = "<sip:11@sipyard.test>"
        reg = callee.request(sip_request(
            "REGISTER", "sip:sipyard.test", to=to, frm=to, local_port=callee.port,
            headers=[("Contact", f"<sip:11@127.0.0.1:{callee.port}>"), ("Expires", "600")]))
        assert status_of(reg) == 200
        _call(caller, callee, ("127.0.0.3", b.port))
        a.stop()
        st = json.loads(b.cli("registry", "11", "--json").stdout)
        assert st["lines"][0]["bindings"], st  # A's stop lost no binding
        callee.server = ("127.0.0.3", b.port)
        reg = callee.request(sip_request(
            "REGISTER", "sip:sipyard.test", to=to, frm=to, local_port=callee.port,
            headers=[("Contact", f"<sip:11@127.0.0.1:{callee.port}>"), ("Expires", "600")]))
        assert status_of(reg) == 200
        _call(caller, callee, ("127.0.0.3", b.port))
        assert "Traceback" not in b.log()
    finally:
        callee.close()
        caller.close()
        a.stop()
        b.stop()
