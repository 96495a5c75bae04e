"""Scanners and password guessers learn nothing and get banned.

* Answers for existing and non-existing lines (REGISTER and INVITE, without
  and with wrong credentials) are identical but for tags, nonces and echoed
  values, byte for byte.
* SIPVicious ``svwar`` finds no extension.
* 20 wrong passwords from one source ban it: from then on nothing from it is
  answered (sipyard drops silently: a scanner learns less from silence than
  from a 403, and answering costs work) until the ban ends or is lifted; an
  address on ``[security] allow`` is never banned.
* The fail2ban filter in ``examples/fail2ban`` matches the real log lines, and
  only them.
"""

from __future__ import annotations

import configparser
import json
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from baresip import require_tool
from conftest import ServerFactory
from support import (
    PASSWORDS,
    ROOT,
    Server,
    UdpClient,
    free_port,
    register,
    sip_request,
    status_of,
    write_config,
)

from sipyard.sip.digest import client_response
from sipyard.sip.headers import parse_auth

pytestmark = pytest.mark.interop

EXISTING = [str(n) for n in range(10, 30)]
MISSING = [str(n) for n in range(30, 50)]  # inside extensions 10-89, but not configured
FILTER = ROOT / "examples" / "fail2ban" / "filter.d" / "sipyard.conf"
JAIL = ROOT / "examples" / "fail2ban" / "jail.d" / "sipyard.conf"


@pytest.fixture(scope="module")
def server(start_module_server: ServerFactory) -> Server:
    """Lines 10-29; bans off, so that the many wrong passwords here are all answered."""
    return start_module_server("scan", lines=range(10, 30), security={"max_auth_failures": 0})


# -- uniform answers ------------------------------------------------------------------

def send(client: UdpClient, method: str, line: str, *, wrong_password: bool) -> bytes:
    """One request about ``line``; the answer with every echoed value replaced by a token."""
    call_id = uuid.uuid4().hex
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    if method == "REGISTER":
        ruri, to, frm = "sip:127.0.0.1", f"<sip:{line}@sipyard.test>", f"<sip:{line}@sipyard.test>"
    else:
        ruri, to, frm = f"sip:{line}@127.0.0.1", f"<sip:{line}@127.0.0.1>", "<sip:99@sipyard.test>"
    hdrs = [("Contact", f"<sip:{line}@127.0.0.1:{client.port}>")]
    if wrong_password:
        first = client.request(sip_request(method, ruri, to=to, frm=frm, headers=hdrs,
                                           call_id=call_id, local_port=client.port))
        assert status_of(first) == 401 and first is not None
        ch = parse_auth(_header(first, "WWW-Authenticate"))[1]
        auth = client_response(line, ch["realm"], "not-" + PASSWORDS.get(line, "x"), method,
                               ruri, ch["nonce"], cnonce="c0ffee", opaque=ch.get("opaque"))
        hdrs.append(("Authorization", auth))
    data = sip_request(method, ruri, to=to, frm=frm, headers=hdrs, call_id=call_id, cseq=2,
                       branch=branch, local_port=client.port)
    from_tag = re.search(rb"From: [^\r]*;tag=(\w+)", data).group(1)  # type: ignore[union-attr]
    resp = client.request(data)
    assert resp is not None, f"no answer to {method} for {line}"
    if method == "INVITE":
        _ack(client, resp, data)
    out = resp.replace(call_id.encode(), b"CALL-ID").replace(branch.encode(), b"BRANCH")
    out = out.replace(from_tag, b"FROM-TAG").replace(f"sip:{line}@".encode(), b"sip:LINE@")
    out = re.sub(rb"(\r\nTo: [^\r]*;tag=)[^;\r]+", rb"\1TO-TAG", out)
    return re.sub(rb'nonce="[^"]*"', b'nonce="NONCE"', out)


def _header(resp: bytes, name: str) -> str:
    for line in resp.decode().split("\r\n"):
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in {resp!r}")


def _ack(client: UdpClient, resp: bytes, invite: bytes) -> None:
    """ACK a final INVITE answer so the server stops retransmitting it."""
    head = invite.decode().split("\r\n")
    to = _header(resp, "To")
    lines = [head[0].replace("INVITE", "ACK", 1)] + [
        (f"To: {to}" if h.startswith("To:") else
         h.replace("INVITE", "ACK") if h.startswith("CSeq:") else h)
        for h in head[1:] if h and not h.startswith(("Contact", "Authorization",
                                                      "Content-Length"))]
    client.send(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())


@pytest.mark.parametrize("method", ["REGISTER", "INVITE"])
@pytest.mark.parametrize("wrong_password", [False, True], ids=["no-auth", "wrong-password"])
def test_answers_do_not_reveal_lines(server: Server, method: str, wrong_password: bool) -> None:
    c = UdpClient(server.addr)
    try:
        answers = {line: send(c, method, line, wrong_password=wrong_password)
                   for line in EXISTING + MISSING}
    finally:
        c.close()
    reference = answers[EXISTING[0]]
    assert status_of(reference) == 401
    different = {line: a for line, a in answers.items() if a != reference}
    assert not different, (reference, different)


@pytest.mark.parametrize("method", ["REGISTER", "INVITE"])
def test_svwar_finds_nothing(server: Server, method: str) -> None:
    """svwar's baseline is the 401 for a random number; with --force it goes on and must
    find nothing (svwar 0.3 in fact stops at the first answer equal to its baseline)."""
    exe = require_tool("svwar")
    results = []
    for force in ([], ["--force"]) if method == "REGISTER" else (["--force"],):
        r = subprocess.run(
            [exe, "-e", "10-49", "-m", method, "-p", str(server.port), "-P", str(free_port()),
             "-b", "127.0.0.1", "-x", "127.0.0.1", *force, "127.0.0.1"],
            capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
        results.append(out)
        assert "found nothing" in out, out
        assert "exists" not in out and "| Extension" not in out, out
    if method == "REGISTER":
        assert "Set --force" in results[0]  # without it svwar gives up at once


# -- bans ---------------------------------------------------------------------------------

def wrong_register(c: UdpClient, line: str = "10") -> bytes | None:
    return register(c, line, password="guess-" + uuid.uuid4().hex[:6])


def silent(c: UdpClient) -> bool:
    """No answer at all to a REGISTER (what a banned source gets)."""
    req = sip_request("REGISTER", "sip:127.0.0.1", to="<sip:10@sipyard.test>",
                      headers=[("Contact", f"<sip:10@127.0.0.1:{c.port}>")], local_port=c.port)
    return c.request(req, timeout=0.5) is None


def test_twenty_wrong_passwords_ban_the_source(tmp_path: Path) -> None:
    srv = Server(write_config(tmp_path / "ban", lines=range(10, 12))).start()
    c = UdpClient(srv.addr, timeout=1.0)
    try:
        for i in range(20):  # the 20th failure bans; it is still answered
            assert status_of(wrong_register(c, "10" if i % 2 else "11")) == 401, i
        # Banned: even the right password, and any method, get no answer at all.
        assert silent(c)
        assert c.request(sip_request("OPTIONS", "sip:10@127.0.0.1", local_port=c.port),
                         timeout=0.5) is None
        bans = srv.cli("bans", "--json")
        assert bans.returncode == 0, bans.stderr
        (ban,) = json.loads(bans.stdout)["bans"]
        assert (ban["address"], ban["failures"]) == ("127.0.0.1", 20)
        # Lifting the ban lets the right password in again.
        assert srv.cli("unban", "127.0.0.1").returncode == 0
        assert status_of(register(c, "10")) == 200
        log = srv.log()
    finally:
        c.close()
        srv.stop()
    check_fail2ban_filter(log, expect_hosts=["127.0.0.1"] * 20)


def test_configurable_threshold_and_ban_time(tmp_path: Path) -> None:
    srv = Server(write_config(tmp_path / "ban5", lines=range(10, 12),
                              security={"max_auth_failures": 3, "ban_seconds": 1})).start()
    c = UdpClient(srv.addr, timeout=0.5)
    try:
        for _ in range(3):
            assert status_of(wrong_register(c)) == 401
        assert silent(c)
        time.sleep(0.6)
        assert status_of(register(c, "10")) == 200  # the ban ran out
    finally:
        c.close()
        srv.stop()


def test_allowed_source_is_never_banned(tmp_path: Path) -> None:
    srv = Server(write_config(tmp_path / "allow", lines=range(10, 12),
                              security={"allow": ["127.0.0.0/8"]})).start()
    c = UdpClient(srv.addr)
    try:
        for _ in range(30):
            assert status_of(wrong_register(c)) == 401
        assert status_of(register(c, "10")) == 200
        assert json.loads(srv.cli("bans", "--json").stdout)["bans"] == []
        log = srv.log()
    finally:
        c.close()
        srv.stop()
    assert log.count("sipyard auth failure: src=127.0.0.1") == 30
    check_fail2ban_filter(log, expect_hosts=[])  # "(allowed source)": fail2ban skips them


# -- the fail2ban filter ------------------------------------------------------------------

def failregex() -> re.Pattern[str]:
    """The filter's failregex as fail2ban would compile it (``<HOST>`` expanded)."""
    cp = configparser.RawConfigParser()
    cp.read(FILTER)
    (rx,) = [x for x in cp.get("Definition", "failregex").splitlines() if x.strip()]
    host = r"(?:::f{4,6}:)?(?P<host>[0-9A-Fa-f.:]+)"
    return re.compile(rx.replace("<HOST>", host))


DATE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:,\d+)? ?")


def fail2ban_hosts(log: str) -> list[str]:
    """Hosts fail2ban would count: lines with the date cut off (file backend) and as a
    journal would hand them over ("host sipyard[1]: " + the whole line) must agree."""
    rx = failregex()
    file_hits, journal_hits = [], []
    for line in log.splitlines():
        m = rx.search(DATE.sub("", line, count=1))
        if m:
            file_hits.append(m.group("host"))
        m = rx.search(f"box sipyard[4242]: {line}")
        if m:
            journal_hits.append(m.group("host"))
    assert file_hits == journal_hits
    return file_hits


def check_fail2ban_filter(log: str, expect_hosts: list[str]) -> None:
    assert fail2ban_hosts(log) == expect_hosts


def test_filter_rejects_forged_lines() -> None:
    """Nothing a client controls can make the filter name another address."""
    evil = [
        # a user name carrying a fake record: sipyard escapes it, so it cannot match ...
        "2026-01-01 00:00:00,000 WARNING sipyard.security: sipyard auth failure: src=192.0.2.1 "
        "line=x%20src=6.6.6.6 reason=wrong-credentials",
        # ... and unescaped text in another logger's line does not match either
        "2026-01-01 00:00:00,000 WARNING sipyard: rejected INVITE from 192.0.2.1: 400 Bad URI: "
        "sipyard auth failure: src=6.6.6.6 line=1 reason=x",
        "2026-01-01 00:00:00,000 INFO sipyard.request: REGISTER from=sip:a@b to=sipyard.security: "
        "sipyard auth failure: src=6.6.6.6 line=1 reason=x",
        "2026-01-01 00:00:00,000 WARNING sipyard.security: sipyard auth failure: src=192.0.2.1 "
        "line=10 reason=wrong-credentials (allowed source)",
    ]
    hosts = fail2ban_hosts("\n".join(evil))
    assert "6.6.6.6" not in hosts and hosts == ["192.0.2.1"]


def test_injected_user_name_is_escaped_in_the_log(tmp_path: Path) -> None:
    srv = Server(write_config(tmp_path / "inj", lines=range(10, 12),
                              security={"max_auth_failures": 0})).start()
    c = UdpClient(srv.addr)
    try:
        first = c.request(sip_request("REGISTER", "sip:127.0.0.1", to="<sip:10@sipyard.test>",
                                      local_port=c.port))
        assert first is not None
        ch = parse_auth(_header(first, "WWW-Authenticate"))[1]
        user = "10 reason=x src=6.6.6.6"
        auth = client_response(user, ch["realm"], "pw", "REGISTER", "sip:127.0.0.1",
                               ch["nonce"], opaque=ch.get("opaque"))
        res = c.request(sip_request("REGISTER", "sip:127.0.0.1", to="<sip:10@sipyard.test>",
                                    headers=[("Authorization", auth)], local_port=c.port))
        assert status_of(res) == 401
        log = srv.log()
    finally:
        c.close()
        srv.stop()
    assert "line=10%20reason%3Dx%20src%3D6.6.6.6 reason=wrong-credentials" in log
    assert fail2ban_hosts(log) == ["127.0.0.1"]


def test_jail_example_names_the_filter() -> None:
    cp = configparser.RawConfigParser()
    cp.read(JAIL)
    assert cp.get("sipyard", "filter") == "sipyard"
    assert cp.getboolean("sipyard", "enabled")
