"""``serve --workers 2`` over TCP (issue #14): a connection belongs to the worker that accepted
it, a call to the worker that owns its Call-ID; every message still meets its transaction.

The kernel hands each TCP connection to one worker (``SO_REUSEPORT``), so a CANCEL on a second
connection, or a callee's response on its own connection, often reaches the worker that does
not hold the INVITE. That worker passes the message to the owner, which answers through the
connection's worker (sipyard/cluster/handoff.py). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from baresip import Baresip, BaresipError, require_tool
from support import PASSWORDS, Server, UdpClient, free_port, register, sip_request, status_of
from test_registrar_redis import Redis
from test_workers import _answer, _invite, _recv_request, _workers_conf

from sipyard.sip.framing import StreamFramer

pytestmark = pytest.mark.interop
SIPP = Path(__file__).resolve().parent / "sipp"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    r = Redis(tmp_path / "redis").start()
    try:
        yield r
    finally:
        r.stop()


class TcpConn:
    """One TCP connection of a test client, with SIP stream framing."""

    def __init__(self, addr: tuple[str, int]) -> None:
        self.sock = socket.create_connection(addr, timeout=5)
        self.port = self.sock.getsockname()[1]
        self.framer = StreamFramer()
        self.pending: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_status(self, status: int, timeout: float = 5.0) -> bytes:
        end = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self.pending):
                if status_of(msg) == status:
                    del self.pending[: i + 1]
                    return msg
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {status} on connection :{self.port}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise AssertionError(f"connection :{self.port} closed")
            self.pending += self.framer.feed(data)

    def close(self) -> None:
        self.sock.close()


def _status(srv: Server) -> dict[str, Any]:
    res = srv.cli("status", "--json")
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout))


def test_tcp_cancel_on_another_connection(tmp_path: Path, redis: Redis) -> None:
    """INVITE on one TCP connection, CANCEL on a second one (often accepted by the other
    worker): 200 for the CANCEL on its connection, 487 for the INVITE on the first."""
    srv = Server(_workers_conf(tmp_path / "srv", redis, mode="proxy")).start()
    callee = UdpClient(srv.addr)
    try:
        assert status_of(register(callee, "11")) == 200
        for _ in range(8):
            caller, canceller = TcpConn(srv.addr), TcpConn(srv.addr)
            try:
                cid, branch = uuid.uuid4().hex, "z9hG4bK" + uuid.uuid4().hex[:16]
                invite = _invite(caller, "11", cid, branch).replace(  # type: ignore[arg-type]
                    b"SIP/2.0/UDP", b"SIP/2.0/TCP", 1)
                caller.send(invite)
                fwd = _recv_request(callee, "INVITE")
                _answer(callee, fwd, 180, "Ringing")
                caller.recv_status(180)
                cancel = invite.replace(b"INVITE sip:", b"CANCEL sip:", 1).replace(
                    b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL")
                canceller.send(cancel)
                canceller.recv_status(200)
                fwd_cancel = _recv_request(callee, "CANCEL")
                _answer(callee, fwd_cancel, 200, "OK")
                _answer(callee, fwd, 487, "Request Terminated")
                caller.recv_status(487)
            finally:
                caller.close()
                canceller.close()
        st = _status(srv)
        assert st["handoff"]["sent"] > 0 and st["handoff"]["lost_writes"] == 0, st["handoff"]
        assert "Traceback" not in srv.log()
    finally:
        callee.close()
        srv.stop()


def test_tcp_phone_gets_calls_owned_by_either_worker(tmp_path: Path, redis: Redis) -> None:
    """A baresip over TCP (its connection held by one worker) takes ten sipp calls whose
    Call-IDs belong to both workers: each INVITE, ACK and BYE comes down its own connection,
    each of its answers reaches the owner of the call."""
    sipp = require_tool("sipp")
    require_tool("baresip")
    srv = Server(_workers_conf(tmp_path / "srv", redis, mode="proxy")).start()
    phone = Baresip(tmp_path / "phone11", trace=True)
    try:
        phone.start()
        phone.add_account(f"<sip:11@127.0.0.1:{srv.port};transport=tcp>;auth_pass="
                          f"{PASSWORDS['11']};regint=300;answermode=auto")
        assert phone.wait_event({"REGISTER_OK", "REGISTER_FAIL"})["type"] == "REGISTER_OK"
        out = tmp_path / "sipp"
        out.mkdir()
        proc = subprocess.Popen(
            [sipp, "-sf", str(SIPP / "uac_answer.xml"), "-s", "11", f"127.0.0.1:{srv.port}",
             "-i", "127.0.0.1", "-p", str(free_port()), "-m", "10", "-l", "1", "-r", "2",
             "-timeout", "60s", "-nostdin", "-trace_err", "-error_file", str(out / "err.log")],
            cwd=out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        owners = {zlib.crc32(f"{n}-{proc.pid}@127.0.0.1".encode()) % 2 for n in range(1, 11)}
        assert proc.wait(90) == 0, (out / "err.log").read_text(errors="replace")[-3000:]
        assert owners == {0, 1}  # sipp's Call-IDs: calls of both workers
        for _ in range(10):
            with contextlib.suppress(BaresipError):
                phone.wait_event("CALL_CLOSED", timeout=10)
        closed = [e for e in phone.events if e.get("type") == "CALL_CLOSED"]
        established = [e for e in phone.events if e.get("type") == "CALL_ESTABLISHED"]
        assert len(established) == len(closed) == 10, [e.get("type") for e in phone.events]
        st = _status(srv)
        assert st["tcp_connections"] == 1, st  # the phone's: no worker opened its own
        assert st["handoff"]["lost_writes"] == 0, st["handoff"]
        assert "Traceback" not in srv.log()
    finally:
        with contextlib.suppress(Exception):
            phone.stop()
        srv.stop()


def test_phone_on_a_connection_of_the_other_worker_is_found(tmp_path: Path,
                                                            redis: Redis) -> None:
    """A REGISTER over TCP whose Call-ID the other worker owns is stored by that worker, with
    the connection of the first; a request to the phone from either worker goes down it."""
    srv = Server(_workers_conf(tmp_path / "srv", redis, mode="proxy")).start()
    phone = TcpConn(srv.addr)
    try:
        for owner in (0, 1):
            cid = next(c for c in iter(lambda: uuid.uuid4().hex, "")
                       if zlib.crc32(c.encode()) % 2 == owner)
            to = "<sip:12@sipyard.test>"
            phone.send(sip_request(
                "REGISTER", "sip:sipyard.test", to=to, frm=to, call_id=cid, cseq=1 + owner,
                local_port=phone.port, transport="TCP",
                headers=[("Contact", "<sip:12@10.9.9.9:5060;transport=tcp>"),
                         ("Expires", "300")]))
            phone.recv_status(200)  # the owner's answer, written by the connection's worker
        assert _status(srv)["tcp_connections"] == 1
        caller = UdpClient(srv.addr)
        try:
            for owner in (0, 1):  # an INVITE owned by each worker: down the same connection
                cid = next(c for c in iter(lambda: uuid.uuid4().hex, "")
                           if zlib.crc32(c.encode()) % 2 == owner)
                caller.send(_invite(caller, "12", cid, "z9hG4bK" + uuid.uuid4().hex[:16]))
                end = time.monotonic() + 5
                got = b""
                while b"INVITE sip:12@10.9.9.9" not in got and time.monotonic() < end:
                    phone.sock.settimeout(max(0.05, end - time.monotonic()))
                    with contextlib.suppress(TimeoutError):
                        got += phone.sock.recv(65536)
                assert f"Call-ID: {cid}".encode() in got, got[:600]
        finally:
            caller.close()
        assert "Traceback" not in srv.log()
    finally:
        phone.close()
        srv.stop()
