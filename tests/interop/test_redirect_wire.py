"""The redirect server on the wire: a real ``sipyard serve`` answering INVITE / SUBSCRIBE with
302, 404, 480, 401, 405, driven by sipp and a raw UDP client.

One server (``wire``) carries every built-in redirector's config at once: aliases, a group,
a ``[[mapping]]`` rule with a permission, ``[[fallback]]`` rules and the pick-up features.
It trusts 127.0.0.1 (``[security] trusted``), so sipp and the raw client may ask without
answering a challenge; a caller that does send credentials is identified, which is how the
mapping rule's permission is exercised. Each test registers its own lines, so the tests do not
depend on each other's order. A second server keeps the defaults, for the one test that an
unauthenticated INVITE is challenged and an authenticated one redirected.

The dialog-searching redirectors (directed pick-up, global pick-up, join), CANCEL and
time-outs of suspended requests are in ``test_pickup.py``.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from baresip import require_tool
from conftest import ServerFactory
from support import (
    BENCH,
    PASSWORDS,
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

pytestmark = pytest.mark.interop

REALM = "sipyard.test"
SCENARIOS = Path(__file__).resolve().parent / "scenarios"

WIRE_CONFIG = """
[aliases]
reception = ["sip:10@sipyard.test"]
sales = ["12", "<sip:13@sipyard.test>;q=0.5"]

[groups.100]
display = "Ring all"
members = [10, 11]

[permissions]
10 = ["outside"]

[[mapping]]
name = "outside line"
users = ["9XXX"]
permissions = ["outside"]
contacts = ["<sip:{vdigits}@gw.example.net>"]

[[fallback]]
name = "backup"
users = ["8.", "9.", "1[5-9]"]
contacts = ["<sip:{user}@fallback.example.net>;q=0.1"]
"""


# -- a small UAC -------------------------------------------------------------------------------


def _head(data: bytes, name: str) -> str:
    values = header_values(data, name)
    assert values, f"no {name} in {data[:300]!r}"
    return values[0]


def ack_for(request: bytes, response: bytes) -> bytes:
    """The hop-by-hop ACK for a non-2xx final answer to ``request`` (RFC 3261 §17.1.1.3)."""
    ruri = request.split(b" ", 2)[1].decode()
    cseq = _head(request, "CSeq").split()[0]
    lines = [f"ACK {ruri} SIP/2.0", f"Via: {_head(request, 'Via')}", "Max-Forwards: 70",
             f"From: {_head(request, 'From')}", f"To: {_head(response, 'To')}",
             f"Call-ID: {_head(request, 'Call-ID')}", f"CSeq: {cseq} ACK", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def ask(client: UdpClient, method: str, ruri: str, *, line: str | None = None,
        headers: Sequence[tuple[str, str]] = (), timeout: float = 5.0) -> bytes:
    """Send a request (as ``line`` when given: answering a 401 with its digest) and return the
    final answer; an INVITE's non-2xx answers are ACKed, as a phone would."""
    frm = f"<sip:{line}@{REALM}>" if line else None
    call_id = uuid.uuid4().hex
    hdrs = [("Contact", f"<sip:caller@127.0.0.1:{client.port}>"), *headers]
    req = sip_request(method, ruri, frm=frm, headers=hdrs, call_id=call_id,
                      local_port=client.port)
    resp = client.request(req, timeout=timeout)
    assert resp is not None, f"no answer to {method} {ruri}"
    if method == "INVITE" and status_of(resp) >= 300:
        client.send(ack_for(req, resp))
    if status_of(resp) == 401 and line is not None:
        auth = auth_header(resp, line, PASSWORDS[line], method, ruri)
        req = sip_request(method, ruri, frm=frm, headers=[*hdrs, ("Authorization", auth)],
                          call_id=call_id, cseq=2, local_port=client.port)
        resp = client.request(req, timeout=timeout)
        assert resp is not None, f"no answer to the authenticated {method} {ruri}"
        if method == "INVITE" and status_of(resp) >= 300:
            client.send(ack_for(req, resp))
    return resp


def contacts_of(resp: bytes) -> list[str]:
    """Every Contact value of a response, split at commas outside <>."""
    out: list[str] = []
    for value in header_values(resp, "Contact"):
        out += [v.strip() for v in re.split(r",(?![^<]*>)", value) if v.strip()]
    return out


def q_of(contact: str) -> float | None:
    m = re.search(r">.*;q=([0-9.]+)", contact)
    return float(m.group(1)) if m else None


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wire(start_module_server: ServerFactory) -> Server:
    return start_module_server("wire", realm=REALM, security={"trusted": ["127.0.0.1/32"]},
                               extra=WIRE_CONFIG)


@pytest.fixture
def client(wire: Server) -> Iterator[UdpClient]:
    c = UdpClient(wire.addr)
    try:
        yield c
    finally:
        c.close()


def uri(server: Server, user: str) -> str:
    return f"sip:{user}@127.0.0.1:{server.port}"


def run_sipp(args: list[str], cwd: Path, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    exe = require_tool("sipp")
    return subprocess.run([exe, *args, "-i", "127.0.0.1", "-nostdin", "-timeout", "15s",
                           "-timeout_error", "-trace_err", "-error_file", str(cwd / "sipp.err")],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def sipp_failure(r: subprocess.CompletedProcess[str], cwd: Path) -> str:
    err = cwd / "sipp.err"
    return (f"sipp exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}\n"
            f"{err.read_text()[-3000:] if err.exists() else ''}")


# -- registrations: sipp registers, sipp's invite_redirect gets the 302 ------------------------


def test_sipp_registers_and_its_invite_gets_every_contact_in_q_order(
        wire: Server, tmp_path: Path) -> None:
    # line 11 from three desks (q 0.5, 1.0, 0.2) and line 10 from one
    rows = tmp_path / "rows.csv"
    desks = [("11", "0.5"), ("11", "1.0"), ("11", "0.2"), ("10", "0.7")]
    rows.write_text("SEQUENTIAL\n" + "".join(
        f"{n};{q};[authentication username={n} password={PASSWORDS[n]}];\n" for n, q in desks))
    port = free_port()
    r = run_sipp(["-sf", str(SCENARIOS / "redirect_register.xml"), "-inf", str(rows),
                  "-p", str(port), "-m", str(len(desks)), "-l", "1",
                  f"127.0.0.1:{wire.port}"], tmp_path)
    assert r.returncode == 0, sipp_failure(r, tmp_path)

    # the bench scenario: INVITE, 302, ACK; its message log shows the 302
    users = tmp_path / "users.csv"
    users.write_text("SEQUENTIAL\n11;\n")
    log = tmp_path / "invite.log"
    r = run_sipp(["-sf", str(BENCH / "scenarios" / "invite_redirect.xml"), "-inf", str(users),
                  "-p", str(free_port()), "-m", "1", "-trace_msg", "-message_file", str(log),
                  f"127.0.0.1:{wire.port}"], tmp_path)
    assert r.returncode == 0, sipp_failure(r, tmp_path)
    text = log.read_text()
    start = text.index("SIP/2.0 302 ")
    reply = text[start:text.index("\n\n", start)].replace("\n", "\r\n").encode() + b"\r\n\r\n"
    contacts = contacts_of(reply)
    want = [f"<sip:11@127.0.0.1:{port};dev={n}>" for n in (2, 1, 3)]  # call numbers, by q
    assert [c.split(";q=")[0] for c in contacts] == want, contacts
    assert [q_of(c) for c in contacts] == [1.0, 0.5, 0.2]
    # the ACK for the 302 was absorbed: the server answered nothing to it
    assert "ACK" in text and text.count("SIP/2.0 302 ") == 1


def test_unknown_user_is_404_and_a_line_without_binding_480(
        wire: Server, client: UdpClient) -> None:
    assert status_of(ask(client, "INVITE", uri(wire, "nobody"))) == 404
    assert status_of(ask(client, "INVITE", uri(wire, "77"))) == 404  # a number, not a line
    resp = ask(client, "INVITE", uri(wire, "13"))  # a configured line, never registered
    assert status_of(resp) == 480
    assert contacts_of(resp) == []


def test_foreign_domain_is_not_ours(wire: Server, client: UdpClient) -> None:
    assert status_of(ask(client, "INVITE", "sip:10@elsewhere.example.org")) == 404


def test_ack_for_the_302_is_absorbed_and_stops_its_retransmissions(
        wire: Server, client: UdpClient) -> None:
    assert status_of(register(client, "16", contact=f"<sip:16@127.0.0.1:{client.port}>")) == 200
    req = sip_request("INVITE", uri(wire, "16"), local_port=client.port)
    first = client.request(req)
    assert status_of(first) == 302 and first is not None
    # unacknowledged, the 302 is sent again (timer G, T1 = 0.5 s)
    again = client.recv(1.5)
    assert status_of(again) == 302 and again == first
    client.send(ack_for(req, first))
    assert client.recv(2.5) is None  # absorbed: no answer, and no more 302s


def test_default_config_challenges_an_invite_and_redirects_the_authenticated_one(
        tmp_path: Path) -> None:
    srv = Server(write_config(tmp_path / "strict", realm=REALM)).start()
    c = UdpClient(srv.addr)
    try:
        assert status_of(register(c, "10", contact=f"<sip:10@127.0.0.1:{c.port}>")) == 200
        resp = ask(c, "INVITE", uri(srv, "10"))
        assert status_of(resp) == 401
        assert _head(resp, "WWW-Authenticate").startswith("Digest ")
        resp = ask(c, "INVITE", uri(srv, "10"), line="11")
        assert status_of(resp) == 302
        assert contacts_of(resp) == [f"<sip:10@127.0.0.1:{c.port}>"]
        # a wrong password is another 401, never the contact
        bad = sip_request("INVITE", uri(srv, "10"), local_port=c.port)
        first = c.request(bad)
        assert first is not None and status_of(first) == 401
        c.send(ack_for(bad, first))
        auth = auth_header(first, "11", "wrong", "INVITE", uri(srv, "10"))
        retry = sip_request("INVITE", uri(srv, "10"), headers=[("Authorization", auth)],
                            cseq=2, local_port=c.port)
        resp = c.request(retry)
        assert status_of(resp) == 401 and resp is not None
        assert not contacts_of(resp)
    finally:
        c.close()
        srv.stop()


# -- one test per built-in redirector ------------------------------------------------------------


def test_aliases_redirect_to_their_configured_targets(wire: Server, client: UdpClient) -> None:
    resp = ask(client, "INVITE", uri(wire, "reception"))
    assert status_of(resp) == 302
    assert contacts_of(resp) == ["<sip:10@sipyard.test>"]
    resp = ask(client, "INVITE", uri(wire, "sales"))
    assert contacts_of(resp) == ["<sip:12@sipyard.test>", "<sip:13@sipyard.test>;q=0.5"]


def test_a_group_redirects_to_its_members(wire: Server, client: UdpClient) -> None:
    resp = ask(client, "INVITE", uri(wire, "100"))
    assert status_of(resp) == 302
    assert contacts_of(resp) == ["<sip:10@sipyard.test>", "<sip:11@sipyard.test>"]


def test_subscribe_gets_every_contact_without_q(wire: Server, client: UdpClient) -> None:
    for dev, q in (("a", "0.3"), ("b", "0.8")):
        contact = f"<sip:14@127.0.0.1:{client.port};dev={dev}>;q={q}"
        assert status_of(register(client, "14", contact=contact)) == 200
    invite = contacts_of(ask(client, "INVITE", uri(wire, "14")))
    assert [q_of(c) for c in invite] == [0.8, 0.3]
    resp = ask(client, "SUBSCRIBE", uri(wire, "14"),
               headers=[("Event", "presence"), ("Expires", "600")])
    assert status_of(resp) == 302
    assert sorted(contacts_of(resp)) == [f"<sip:14@127.0.0.1:{client.port};dev={d}>"
                                         for d in "ab"]


def test_mapping_rule_needs_the_callers_permission(wire: Server, client: UdpClient) -> None:
    # no credentials: the rule needs a permission, so the caller is challenged
    resp = ask(client, "INVITE", uri(wire, "9123"))
    assert status_of(resp) == 401
    # line 10 holds "outside": the rule's contact with {vdigits}, and not the fallback's
    resp = ask(client, "INVITE", uri(wire, "9123"), line="10")
    assert status_of(resp) == 302
    assert contacts_of(resp) == ["<sip:123@gw.example.net>"]
    # line 12 does not: the rule does not match, the fallback rule ("9.") does
    resp = ask(client, "INVITE", uri(wire, "9123"), line="12")
    assert status_of(resp) == 302
    assert contacts_of(resp) == ["<sip:9123@fallback.example.net>;q=0.1"]
    # too many digits for 9XXX: mapping never matches, even for line 10
    resp = ask(client, "INVITE", uri(wire, "91234"), line="10")
    assert contacts_of(resp) == ["<sip:91234@fallback.example.net>;q=0.1"]


def test_fallback_only_when_nothing_else_matched(wire: Server, client: UdpClient) -> None:
    resp = ask(client, "INVITE", uri(wire, "8555"))
    assert contacts_of(resp) == ["<sip:8555@fallback.example.net>;q=0.1"]
    # line 18 matches "1[5-9]" and has no binding: the fallback answers instead of 480
    resp = ask(client, "INVITE", uri(wire, "18"))
    assert status_of(resp) == 302
    assert contacts_of(resp) == ["<sip:18@fallback.example.net>;q=0.1"]
    # line 15 matches too, but is registered: only its phone
    assert status_of(register(client, "15", contact=f"<sip:15@127.0.0.1:{client.port}>")) == 200
    resp = ask(client, "INVITE", uri(wire, "15"))
    assert contacts_of(resp) == [f"<sip:15@127.0.0.1:{client.port}>"]


def test_allcredentials_subscribe_reaches_every_line_and_invite_is_405(
        wire: Server, client: UdpClient) -> None:
    resp = ask(client, "SUBSCRIBE", uri(wire, "*allcredentials"),
               headers=[("Event", "dialog"), ("Expires", "600")])
    assert status_of(resp) == 302
    assert contacts_of(resp) == [f"<sip:{n}@sipyard.test>" for n in range(10, 20)]
    resp = ask(client, "INVITE", uri(wire, "*allcredentials"))
    assert status_of(resp) == 405
    assert header_values(resp, "Allow") == ["SUBSCRIBE"]


# -- rule syntax errors at load -------------------------------------------------------------------

BAD_RULES = """
[[mapping]]
users = ["9XXX"]
contacts = ["<sip:{vdigits}@gw.example.net>"]

[[mapping]]
name = "broken"
users = ["9[XX"]
contacts = ["<sip:{vdigits}@gw.example.net>"]
"""


def test_rule_syntax_error_is_reported_by_check_and_serve_refuses(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "bad", realm=REALM, extra=BAD_RULES)
    want = f"{cfg}: mapping[1].users"
    r = run_cli("check", "-c", str(cfg), timeout=30)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert want in r.stderr + r.stdout
    assert "unclosed '['" in r.stderr + r.stdout
    started = time.monotonic()
    srv = Server(cfg)
    with pytest.raises(RuntimeError) as err:
        srv.start(timeout=15)
    assert time.monotonic() - started < 15  # it refused, it did not hang
    assert want in str(err.value) and "unclosed '['" in str(err.value)


@pytest.mark.parametrize(("rule", "key", "reason"), [
    ('users = ["re:(a+)+"]', "fallback[1].users", "nested quantifiers"),
    ('users = ["9X"]\ncontacts = ["<sip:{nosuch}@gw>"]', "fallback[1].contacts[0]",
     "unknown token {nosuch}"),
    ('users = ["9X"]\nwhen = ["Funday 08:00-09:00"]', "fallback[1].when", "unknown day 'Funday'"),
])
def test_check_names_file_rule_and_reason(tmp_path: Path, rule: str, key: str,
                                          reason: str) -> None:
    if "contacts" not in rule:
        rule += '\ncontacts = ["<sip:{user}@gw.example.net>"]'
    extra = ('[[fallback]]\nusers = ["8."]\ncontacts = ["<sip:{user}@gw.example.net>"]\n\n'
             f"[[fallback]]\n{rule}\n")
    cfg = write_config(tmp_path / "bad", realm=REALM, extra=extra)
    r = run_cli("check", "-c", str(cfg), timeout=30)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"{cfg}: {key}: {reason}" in r.stderr


def test_reload_with_a_bad_rule_keeps_the_running_rules(tmp_path: Path) -> None:
    good = ('[[mapping]]\nusers = ["7XX"]\ncontacts = ["<sip:{vdigits}@old.example.net>"]\n')
    cfg = write_config(tmp_path / "reload", realm=REALM,
                       security={"trusted": ["127.0.0.1/32"]}, extra=good)
    srv = Server(cfg).start()
    c = UdpClient(srv.addr)
    try:
        assert contacts_of(ask(c, "INVITE", uri(srv, "701"))) == ["<sip:01@old.example.net>"]
        text = cfg.read_text()
        cfg.write_text(text.replace('users = ["7XX"]', 'users = ["7[XX"]'))
        r = srv.cli("reload", timeout=15)
        assert r.returncode == 1
        assert f"{cfg}: mapping[0].users: unclosed '['" in r.stderr + r.stdout
        assert contacts_of(ask(c, "INVITE", uri(srv, "701"))) == ["<sip:01@old.example.net>"]
        cfg.write_text(text.replace("old.example.net", "new.example.net"))
        r = srv.cli("reload", timeout=15)
        assert r.returncode == 0, r.stderr
        assert contacts_of(ask(c, "INVITE", uri(srv, "701"))) == ["<sip:01@new.example.net>"]
    finally:
        c.close()
        srv.stop()
