"""Trunks with real SIP clients (issue #13's "done when"): a second sipyard plays the
provider, sipp plays the public network on its far side, baresip and sipp are the
office's phones.

Who is who (all on 127.0.0.1, random ports)::

    sipp (pstn_uac) ──▶ provider sipyard ──TCP, the office's registration──▶ office sipyard
                         (registrar, proxy)                                   (proxy, trunk)
    sipp (pstn_uas) ◀──  55501XX rule   ◀──────── INVITE with the trunk's identity ───┘
                                                  ▲ baresip line 10 / 11 / 12, sipp line 11

The provider knows the office as its line 20 (digest auth, the ``pstn`` permission its
``55501XX`` rule wants, so it challenges the office's outgoing INVITE with 407) and sends
DID 5551000 to it; the office maps the DID to line 10 and ``9.`` to ``trunk:provider``
for lines holding ``pstn`` (line 11; line 12 does not). Line 11 also holds ``admin``.
What the far ends received is read from sipp's ``-trace_msg`` log: the CSeq numbers the
provider's side saw are the point of the in-dialog tests.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from baresip import Baresip, account, require_tool
from support import PASSWORDS, Server, free_port, sip_request, status_of, write_config
from test_baresip_call import _phone_apart_from

pytestmark = pytest.mark.interop
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
TRUNK_PW = PASSWORDS["20"]
REALM = "sipyard.test"


def _wait(pred: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _json(server: Server, *args: str) -> Any:
    r = server.cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _cdrs(server: Server) -> list[dict[str, Any]]:
    path = server.data / "cdr.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _cdr(server: Server, pred: Any, what: str) -> dict[str, Any]:
    return dict(_wait(lambda: next((r for r in _cdrs(server) if pred(r)), None), 10, what))


# -- sipp ---------------------------------------------------------------------------------------

class Sipp:
    """One sipp process running one call of a scenario in tests/interop/scenarios/."""

    def __init__(self, workdir: Path, scenario: str, *args: str, port: int | None = None,
                 target: str | None = None, ip: str = "127.0.0.1") -> None:
        exe = require_tool("sipp")
        self.name = f"{scenario}-{uuid.uuid4().hex[:6]}"
        self.port = port or free_port()
        self.msg_log = workdir / f"{self.name}.msg.log"
        self.err_log = workdir / f"{self.name}.err.log"
        self.log_file = workdir / f"{self.name}.log"
        self.screen = workdir / f"{self.name}.screen.txt"
        cmd = [exe, "-sf", str(SCENARIOS / f"{scenario}.xml"), "-i", ip,
               "-p", str(self.port), "-mp", str(free_port()), "-cp", str(free_port()),
               "-m", "1", "-timeout", "25s", "-timeout_error", "-nostdin",
               "-trace_msg", "-message_file", str(self.msg_log),
               "-trace_err", "-error_file", str(self.err_log),
               "-trace_logs", "-log_file", str(self.log_file), *args]
        if target is not None:
            cmd.append(target)
        self._out = open(self.screen, "wb")  # noqa: SIM115 - closed in wait()/stop()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, cwd=workdir)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
        finally:
            self._out.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._out.close()

    def report(self) -> str:
        def tail(p: Path) -> str:
            return p.read_text(errors="replace")[-3000:] if p.exists() else ""
        return (f"--- {self.name} rc={self.proc.returncode}\n{tail(self.err_log)}\n"
                f"{tail(self.screen)}\n{tail(self.msg_log)}")

    def errors(self) -> str:
        return self.err_log.read_text(errors="replace") if self.err_log.exists() else ""

    def logged(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def received(self) -> list[str]:
        """Every message sipp received, in order (from the -trace_msg log)."""
        text = self.msg_log.read_text(errors="replace") if self.msg_log.exists() else ""
        return [m.group(1) for m in re.finditer(
            r"message received \[\d+\] bytes :\n\n(.*?)(?=\n-{20,} |\Z)", text, re.S)]

    def requests(self, method: str) -> list[str]:
        return [m for m in self.received() if m.startswith(f"{method} ")]


def cseq_of(msg: str) -> tuple[int, str]:
    m = re.search(r"^CSeq:\s*(\d+)\s+(\w+)", msg, re.M | re.I)
    assert m, msg
    return int(m.group(1)), m.group(2)


def header(msg: str, name: str) -> str:
    m = re.search(rf"^{name}:\s*(.*?)\s*$", msg, re.M | re.I)
    return m.group(1) if m else ""


# -- the two servers ----------------------------------------------------------------------------

@dataclass
class Net:
    provider: Server
    office: Server
    uas_port: int  # where the provider's 55501XX rule sends calls (a sipp UAS per test)
    tmp: Path


def _provider(tmp: Path, uas_port: int) -> Server:
    extra = f"""
[aliases]
"5551000" = "20"

[[mapping]]
users = ["55501XX"]
permissions = ["pstn"]
contacts = ["<sip:{{user}}@127.0.0.1:{uas_port}>"]
"""
    cfg = write_config(tmp / "provider", realm="provider.test", lines=["20", "21", "22", "23"],
                       server={"mode": "proxy", "extensions": "10-89"},
                       redirect={"require_auth": False}, extra=extra,
                       line_extra={"20": {"permissions": ["pstn"]}})
    return Server(cfg).start()


def _office(tmp: Path, pport: int) -> Server:
    extra = f"""
[trunks.provider]
registrar = "sip:127.0.0.1:{pport};transport=tcp"
username = "20"
secret = "{TRUNK_PW}"
realm = "provider.test"
contact_user = "office"
dids = {{ "5551000" = "10" }}

[[mapping]]
users = ["9."]
permissions = ["pstn"]
contacts = ["trunk:provider"]
"""
    cfg = write_config(tmp / "office", server={"mode": "proxy"}, extra=extra,
                       line_extra={"11": {"permissions": ["pstn", "admin"]}})
    return Server(cfg).start()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    tmp = tmp_path_factory.mktemp("trunk-clients")
    uas_port = free_port()
    provider = _provider(tmp, uas_port)
    office = None
    try:
        office = _office(tmp, provider.port)
        _wait(lambda: _json(provider, "registry", "20")["lines"][0]["bindings"], 15,
              "the office's registration at the provider")
        yield Net(provider, office, uas_port, tmp)
    finally:
        if office is not None:
            office.stop()
        provider.stop()


@contextlib.contextmanager
def phone(tmp: Path, line: str, office: Server, other: Baresip | None = None
          ) -> Iterator[Baresip]:
    """A baresip phone registered as ``line`` at the office."""
    require_tool("baresip")
    p = _phone_apart_from(tmp / f"phone{line}-{uuid.uuid4().hex[:4]}", other) if other else (
        Baresip(tmp / f"phone{line}-{uuid.uuid4().hex[:4]}"))
    p.lifetime = 60
    p.start()
    try:
        p.add_account(account(line, office.port, PASSWORDS[line]))
        ev = p.wait_event({"REGISTER_OK", "REGISTER_FAIL"}, timeout=10)
        assert ev["type"] == "REGISTER_OK", ev
        yield p
    finally:
        with contextlib.suppress(Exception):
            p.stop()


# -- calls in ------------------------------------------------------------------------------------

def test_public_caller_reaches_baresip_line_10_by_did(net: Net) -> None:
    """sipp calls DID 5551000 at the provider → the office's registered contact → line 10."""
    with phone(net.tmp, "10", net.office) as p10:
        caller = Sipp(net.tmp, "pstn_uac", "-s", "5551000", "-d", "1000",
                      target=f"127.0.0.1:{net.provider.port}")
        try:
            ev = p10.wait_event({"CALL_ESTABLISHED", "CALL_CLOSED"}, timeout=15)
            assert ev["type"] == "CALL_ESTABLISHED", (ev, net.office.log()[-3000:])
            assert caller.wait() == 0, caller.report()
            assert p10.wait_event("CALL_CLOSED", timeout=10)
        finally:
            caller.stop()
    # both CDRs: the provider sent it to its line 20 (the trunk's account), the office
    # took it in through the trunk and gave it to line 10
    office = _cdr(net.office, lambda r: r["callee_line"] == "10" and r["trunk"] == "provider",
                  "the office's CDR")
    provider = _cdr(net.provider, lambda r: r["call_id"] == office["call_id"], "the provider's CDR")
    assert office["disposition"] == provider["disposition"] == "answered", (office, provider)
    assert provider["callee_line"] == "20" and "5551000" in provider["target"]
    assert office["caller"] == "sip:+4930123456@pstn.example"
    assert office["hangup"] == "caller"


# -- calls out -----------------------------------------------------------------------------------

def test_line_11_dials_out_through_the_trunk_and_line_12_may_not(net: Net) -> None:
    """baresip line 11 dials 9 + number: the office answers the provider's 407 and the far
    end sees the trunk's identity, an ACK for the INVITE it answered and a BYE after it;
    line 12 (no ``pstn``) gets 403."""
    uas = Sipp(net.tmp, "pstn_uas", port=net.uas_port)
    try:
        with phone(net.tmp, "11", net.office) as p11:
            p11.dial(f"sip:95550123@127.0.0.1:{net.office.port}")
            ev = p11.wait_event({"CALL_ESTABLISHED", "CALL_CLOSED"}, timeout=15)
            assert ev["type"] == "CALL_ESTABLISHED", (ev, uas.report(), net.office.log()[-3000:])
            time.sleep(0.5)
            p11.hangup()
            p11.wait_event("CALL_CLOSED", timeout=10)
            assert uas.wait() == 0, uas.report()
            with phone(net.tmp, "12", net.office, other=p11) as p12:
                p12.dial(f"sip:95550123@127.0.0.1:{net.office.port}")
                closed = p12.wait_event("CALL_CLOSED", timeout=10)
                assert "403" in str(closed.get("param")), closed
    finally:
        uas.stop()
    (invite,) = uas.requests("INVITE")
    (ack,) = uas.requests("ACK")
    (bye,) = uas.requests("BYE")
    assert invite.startswith("INVITE sip:5550123@127.0.0.1:")
    assert re.match(r"<sip:20@127\.0\.0\.1>;tag=", header(invite, "From")), invite
    assert header(invite, "To") == "<sip:5550123@127.0.0.1>"
    seq = cseq_of(invite)[0]
    assert cseq_of(ack) == (seq, "ACK"), (invite, ack)
    assert cseq_of(bye)[0] > seq, (invite, bye)
    assert re.match(r"<sip:20@127\.0\.0\.1>;tag=", header(bye, "From")), bye
    # the CDRs: the office's records the trunk, the provider's its line 20 as the caller
    office = _cdr(net.office, lambda r: r["caller_line"] == "11" and r["disposition"] == "answered",
                  "the office's CDR of line 11")
    assert office["trunk"] == "provider" and office["hangup"] == "caller"
    provider = _cdr(net.provider, lambda r: r["call_id"] == office["call_id"], "the provider's CDR")
    assert provider["caller_line"] == "20" and provider["disposition"] == "answered"
    refused = _cdr(net.office, lambda r: r["caller_line"] == "12", "line 12's refused call")
    assert refused["status"] == 403 and refused["trunk"] is None


def test_in_dialog_requests_after_the_providers_challenges(net: Net) -> None:
    """sipp line 11 → office → provider (407 on the INVITE) → sipp far end, which also
    challenges the BYE (401). The far end sees one CSeq line going up — INVITE N, ACK N,
    BYE N+1, BYE N+2 with the trunk's credentials (verified by sipp) — and the caller sees
    its own From and CSeq in both 200s (checked by its scenario)."""
    uas = Sipp(net.tmp, "pstn_uas_bye_auth", "-key", "user", "20", "-key", "pw", TRUNK_PW,
               port=net.uas_port)
    caller = Sipp(net.tmp, "line_caller", "-s", "95550124", "-key", "line", "11",
                  "-au", "11", "-ap", PASSWORDS["11"], "-d", "300",
                  target=f"127.0.0.1:{net.office.port}")
    try:
        assert caller.wait() == 0, caller.report() + uas.report()
        assert uas.wait() == 0, uas.report()
    finally:
        caller.stop()
        uas.stop()
    assert "Failed regexp match" not in caller.errors(), caller.errors()
    logged = caller.logged()
    assert re.search(r'invite-200 From: ?"Line 11" <sip:11@127\.0\.0\.1>;tag=\S+ CSeq: ?2 INVITE'
                     r" To: ?<sip:95550124@", logged), logged
    assert re.search(r'bye-200 From: ?"Line 11" <sip:11@127\.0\.0\.1>;tag=\S+ CSeq: ?3 BYE',
                     logged), logged
    (invite,) = uas.requests("INVITE")
    (ack,) = uas.requests("ACK")
    first, second = uas.requests("BYE")
    seq = cseq_of(invite)[0]
    assert seq == 3  # the caller's 2, sent again with the trunk's credentials
    assert cseq_of(ack) == (3, "ACK")
    assert cseq_of(first) == (4, "BYE") and cseq_of(second) == (5, "BYE")
    assert 'username="20"' in header(second, "Authorization")
    assert not header(first, "Proxy-Authorization") and not header(first, "Authorization")
    for msg in (invite, ack, first, second):
        assert re.match(r"<sip:20@127\.0\.0\.1>;tag=", header(msg, "From")), msg
        assert header(msg, "To").startswith("<sip:5550124@127.0.0.1>"), msg


# -- control over SIP ------------------------------------------------------------------------------

def _control(net: Net, line: str, text: str, transport: str) -> tuple[str, list[str]]:
    """Run control_command.xml as ``line``: the final it logged and the reply bodies."""
    s = Sipp(net.tmp, "control_command", "-oocsf", str(SCENARIOS / "control_reply.xml"),
             "-key", "line", line, "-key", "realm", REALM, "-key", "text", text,
             "-au", line, "-ap", PASSWORDS[line], "-d", "1500", "-t", transport,
             target=f"127.0.0.1:{net.office.port}")
    try:
        assert s.wait() == 0, s.report()
    finally:
        s.stop()
    assert "Failed regexp match" not in s.errors(), s.errors()
    logged = s.logged()
    final = re.findall(r"final: (\d+)", logged)
    assert len(final) == 1, logged
    return final[0], re.findall(r"reply-begin(.*?)reply-end", logged, re.S)


def test_admin_status_over_tcp_udp_refused_non_admin_unknown(net: Net) -> None:
    final, replies = _control(net, "11", "/status", "t1")
    assert final == "202"
    assert len(replies) == 1, replies
    status = replies[0]
    text = net.office.cli("status").stdout
    assert status.startswith("sipyard ") and f"realm        {REALM}" in status, status
    # the same text the CLI prints (counters move between the two: compare the labels)
    labels = [ln.split()[0] for ln in text.splitlines() if ln.strip()]
    assert [ln.split()[0] for ln in status.splitlines() if ln.strip()] == labels
    assert TRUNK_PW not in status
    assert re.search(r"admin command /status from line 11 at 127\.0\.0\.1:\d+/tcp",
                     net.office.log())
    final, replies = _control(net, "11", "/trunks", "t1")
    assert final == "202" and len(replies) == 1, replies
    head, row = replies[0].splitlines()[:2]
    assert head.split() == net.office.cli("trunks").stdout.splitlines()[0].split()
    assert row.split()[:4] == ["provider", f"sip:127.0.0.1:{net.provider.port};transport=tcp",
                               "registered", "tcp"], replies
    assert TRUNK_PW not in replies[0]
    # over UDP: refused, no answer
    final, replies = _control(net, "11", "/status", "u1")
    assert (final, replies) == ("403", [])
    assert "admin command /status from line 11" in net.office.log()
    assert "refused: TCP only" in net.office.log()
    # a line without the admin permission: the chat's unknown-command reply, nothing more
    final, replies = _control(net, "12", "/status", "t1")
    assert final == "202"
    assert len(replies) == 1 and replies[0].startswith("unknown command /status"), replies
    assert "realm" not in replies[0] and "admin" not in replies[0]


# -- bad input ----------------------------------------------------------------------------------------

def test_a_request_claiming_the_trunk_from_another_address_is_challenged(net: Net) -> None:
    """The provider is 127.0.0.1; the same INVITE from 127.0.0.2 — our contact user in the
    Request-URI, a DID in the To — is an ordinary unauthenticated caller: 407, no ringing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.2", 0))
    sock.settimeout(3)
    port = sock.getsockname()[1]
    try:
        for ruri, to in ((f"sip:office@127.0.0.1:{net.office.port};transport=udp",
                          "<sip:5551000@provider.test>"),
                         (f"sip:5551000@127.0.0.1:{net.office.port}", None)):
            req = sip_request("INVITE", ruri, to=to, frm="<sip:20@127.0.0.1>",
                              call_id=uuid.uuid4().hex, local_port=port, via_host="127.0.0.2",
                              headers=[("Contact", f"<sip:20@127.0.0.2:{port}>")])
            sock.sendto(req, net.office.addr)
            status = 100
            while status < 200:
                status = status_of(sock.recvfrom(65536)[0])
            assert status == 407, (ruri, status)
    finally:
        sock.close()
    assert not [c for c in _json(net.office, "calls")["calls"] if c.get("trunk")]
