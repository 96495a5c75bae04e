"""Call pick-up and join through the wire: the real test of SUSPEND.

A sipp process plays the ringing phone (``scenarios/pickup_phone.xml``): it registers as line 11
with digest auth, then answers the server's dialog-package fetch (SUBSCRIBE, ``Event: dialog``,
``Expires: 0``, checked by ``scenarios/pickup_notify.xml``) with 200 and one NOTIFY carrying
dialog-info XML about the call it "has": its Call-ID, tags, direction, state and the caller's
target come from ``-key`` arguments. A raw UDP client, authenticated as line 12, dials the
feature codes and gets the 302 built from that dialog.

The server's side of it: the INVITE runs the redirect chain, ``directed_pickup`` (or ``pickup``,
``join``) starts the search and suspends, the NOTIFY resumes it, the chain runs again and
answers. The second half uses a phone that never answers (a raw UDP socket registered as line
11) to hold a request suspended: CANCEL (487), the server-side ``suspend_timeout`` (408), and
INVITE retransmissions meanwhile (100 Trying, one chain run, one search).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from baresip import require_tool
from conftest import ServerFactory
from support import (
    PASSWORDS,
    Server,
    UdpClient,
    auth_header,
    free_port,
    header_values,
    register,
    sip_request,
    status_of,
)

from sipyard.control import call as control_call

pytestmark = pytest.mark.interop

REALM = "sipyard.test"
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
CALLER_TARGET = "sip:10@127.0.0.1:5099"

#: The feature redirectors before ``fallback`` (the default order has it before them): a
#: pick-up code that finds nothing must stay 404 even when a later redirector would add a
#: target, which only the sealed contact set guarantees. ``slow`` keeps the default order.
PICKUP_CONFIG = """
[redirect]
chain = ["registrations", "aliases", "subscribe", "mapping", "pickup", "directed_pickup",
         "join", "fallback"]

[features]
global_pickup = "*88"
pickup_wait = 3.0

[[fallback]]
name = "feature codes must never get here"
users = ["*."]
contacts = ["<sip:{user}@gw.example.net>"]
"""


# -- helpers -------------------------------------------------------------------------------------


def _head(data: bytes, name: str) -> str:
    values = header_values(data, name)
    assert values, f"no {name} in {data[:300]!r}"
    return values[0]


def in_reply_to(request: bytes, method: str, response: bytes | None = None) -> bytes:
    """ACK (for a non-2xx ``response``) or CANCEL of ``request``: same branch, RFC 3261 §9.1."""
    ruri = request.split(b" ", 2)[1].decode()
    to = _head(response, "To") if response is not None else _head(request, "To")
    lines = [f"{method} {ruri} SIP/2.0", f"Via: {_head(request, 'Via')}", "Max-Forwards: 70",
             f"From: {_head(request, 'From')}", f"To: {to}",
             f"Call-ID: {_head(request, 'Call-ID')}",
             f"CSeq: {_head(request, 'CSeq').split()[0]} {method}", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def dial(client: UdpClient, ruri: str, *, line: str = "12", timeout: float = 10.0) -> bytes:
    """INVITE as ``line`` (answering the 401), ACK the final answer, return it."""
    frm = f"<sip:{line}@{REALM}>"
    call_id = uuid.uuid4().hex
    req = sip_request("INVITE", ruri, frm=frm, call_id=call_id, local_port=client.port)
    resp = client.request(req, timeout=timeout)
    assert resp is not None, f"no answer to INVITE {ruri}"
    client.send(in_reply_to(req, "ACK", resp))
    if status_of(resp) == 401:
        auth = auth_header(resp, line, PASSWORDS[line], "INVITE", ruri)
        req = sip_request("INVITE", ruri, frm=frm, call_id=call_id, cseq=2,
                          headers=[("Authorization", auth)], local_port=client.port)
        resp = client.request(req, timeout=timeout)
        assert resp is not None, f"no answer to the authenticated INVITE {ruri}"
        if status_of(resp) >= 300:
            client.send(in_reply_to(req, "ACK", resp))
    return resp


def authenticated_invite(client: UdpClient, ruri: str, line: str) -> bytes:
    """Send an INVITE as ``line`` (401, ACK, INVITE with credentials); return what was sent
    last, whose answers the caller reads."""
    frm = f"<sip:{line}@{REALM}>"
    call_id = uuid.uuid4().hex
    req = sip_request("INVITE", ruri, frm=frm, call_id=call_id, local_port=client.port)
    resp = client.request(req)
    assert resp is not None and status_of(resp) == 401, resp
    client.send(in_reply_to(req, "ACK", resp))
    auth = auth_header(resp, line, PASSWORDS[line], "INVITE", ruri)
    req = sip_request("INVITE", ruri, frm=frm, call_id=call_id, cseq=2,
                      headers=[("Authorization", auth)], local_port=client.port)
    client.send(req)
    return req


def contacts_of(resp: bytes) -> list[str]:
    return header_values(resp, "Contact")


def bindings(server: Server, line: str) -> list[dict[str, object]]:
    reply = control_call(server.data / "control.sock", {"op": "registry", "line": line})
    (entry,) = reply["lines"]
    found: list[dict[str, object]] = entry["bindings"]
    return found


def status(server: Server) -> dict[str, object]:
    reply: dict[str, object] = control_call(server.data / "control.sock", {"op": "status"})
    return reply


def wait_until(what: str, check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def replaces_contact(header: str, call_id: str, remote: str, local: str, *,
                     early_only: bool = True, target: str = CALLER_TARGET) -> str:
    """The Contact the redirector's docstring promises (``_dialog.dialog_contact``)."""
    value = (f"{call_id.replace('@', '%40')}%3Bto-tag%3D{remote}%3Bfrom-tag%3D{local}"
             + ("%3Bearly-only" if early_only else ""))
    require = "replaces" if header == "Replaces" else "join"
    return f"<{target}?{header}={value}&Require={require}>"


# -- the ringing phone (sipp) ---------------------------------------------------------------------


class Phone:
    """A sipp 'phone' registered as line 11 that reports one dialog when asked."""

    def __init__(self, server: Server, workdir: Path, port: int, **dialog: str) -> None:
        self.server = server
        self.dir = workdir
        self.port = port
        self.messages = workdir / "phone-messages.log"
        self.errors = workdir / "phone-errors.log"
        keys: list[str] = []
        for k, v in dialog.items():
            keys += ["-key", f"dlg_{k}", v]
        exe = require_tool("sipp")
        workdir.mkdir(parents=True, exist_ok=True)
        self.stderr = workdir / "phone-stderr.log"
        self._err = open(self.stderr, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [exe, "-sf", str(SCENARIOS / "pickup_phone.xml"),
             "-oocsf", str(SCENARIOS / "pickup_notify.xml"), *keys,
             "-i", "127.0.0.1", "-p", str(port), "-m", "1", "-d", "30000",
             "-timeout", "40s", "-nostdin", "-trace_msg", "-message_file", str(self.messages),
             "-trace_err", "-error_file", str(self.errors), f"127.0.0.1:{server.port}"],
            stdout=subprocess.DEVNULL, stderr=self._err, cwd=workdir)
        contact = f"sip:11@127.0.0.1:{port}"
        try:
            wait_until("the sipp phone's registration",
                       lambda: self.proc.poll() is not None or any(
                           b["contact"] == contact for b in bindings(server, "11")))
        except AssertionError:
            self.stop()
            raise AssertionError(f"sipp phone did not register\n{self.logs()}") from None
        assert self.proc.poll() is None, f"sipp phone exited\n{self.logs()}"

    def logs(self) -> str:
        out = []
        for p in (self.stderr, self.errors, self.messages):
            with contextlib.suppress(FileNotFoundError):
                out.append(f"--- {p.name}\n{p.read_text()[-4000:]}")
        return "\n".join(out)

    def subscribes(self) -> int:
        """Dialog SUBSCRIBEs the phone has received (retransmissions included)."""
        try:
            return self.messages.read_text().count("\nSUBSCRIBE sip:")
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        # the next test's phone must not wait for this one to answer
        control_call(self.server.data / "control.sock", {"op": "unregister", "line": "11"})
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._err.close()


@pytest.fixture(scope="module")
def ringing(start_module_server: ServerFactory) -> Server:
    return start_module_server("pickup", log_level="debug", realm=REALM, lines=range(10, 14),
                               extra=PICKUP_CONFIG)


@pytest.fixture(scope="module")
def phone_port() -> int:
    """One port for every sipp phone of the module: each new one replaces the binding."""
    return free_port()


@pytest.fixture
def client(ringing: Server) -> Iterator[UdpClient]:
    c = UdpClient(ringing.addr)
    try:
        yield c
    finally:
        c.close()


@contextlib.contextmanager
def phone(server: Server, workdir: Path, port: int, **dialog: str) -> Iterator[Phone]:
    p = Phone(server, workdir, port, **dialog)
    try:
        yield p
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{p.logs()}\n--- server\n{server.log()[-3000:]}") from None
    finally:
        p.stop()


def code(server: Server, user: str) -> str:
    return f"sip:{user}@127.0.0.1:{server.port}"


# -- pick-up and join with a phone that answers ----------------------------------------------------


def test_directed_and_global_pickup_of_a_ringing_call(
        ringing: Server, client: UdpClient, phone_port: int, tmp_path: Path) -> None:
    dialog = {"callid": "ring-1@127.0.0.1", "local": "phone11tag", "remote": "callertag",
              "direction": "recipient", "state": "early", "target": CALLER_TARGET}
    want = replaces_contact("Replaces", dialog["callid"], "callertag", "phone11tag")
    with phone(ringing, tmp_path, phone_port, **dialog) as ph:
        resp = dial(client, code(ringing, "*7811"))
        assert status_of(resp) == 302, resp
        assert contacts_of(resp) == [want]
        resp = dial(client, code(ringing, "*88"))  # global: every line but the caller's
        assert status_of(resp) == 302, resp
        assert contacts_of(resp) == [want]
        # join wants a confirmed dialog; a ringing one is no call to join
        assert status_of(dial(client, code(ringing, "*7911"))) == 404
        assert ph.subscribes() >= 3
    # one search per request, each ended by the NOTIFY, not by the pickup_wait timer
    log = ringing.log()
    assert "dialog search stopped before it finished" not in log


def test_join_a_confirmed_call_and_no_ringing_call_is_404_not_the_fallback(
        ringing: Server, client: UdpClient, phone_port: int, tmp_path: Path) -> None:
    dialog = {"callid": "talk-7", "local": "l7", "remote": "r7", "direction": "initiator",
              "state": "confirmed", "target": CALLER_TARGET}
    with phone(ringing, tmp_path, phone_port, **dialog):
        resp = dial(client, code(ringing, "*7911"))
        assert status_of(resp) == 302, resp
        assert contacts_of(resp) == [replaces_contact("Join", "talk-7", "r7", "l7",
                                                      early_only=False)]
        # nothing rings on line 11: the pick-up codes find no call. The fallback rule "*."
        # matches them, but a feature code's answer is final: 404, never the gateway
        for user in ("*7811", "*88"):
            resp = dial(client, code(ringing, user))
            assert status_of(resp) == 404, (user, resp)
            assert contacts_of(resp) == []
    # a line without bindings, and a number that is no line: 404 at once
    for user in ("*7813", "*7877"):
        started = time.monotonic()
        assert status_of(dial(client, code(ringing, user))) == 404
        assert time.monotonic() - started < 1.0
    # the fallback rule itself is live: a code that is no feature reaches it
    resp = dial(client, code(ringing, "*555"))
    assert contacts_of(resp) == ["<sip:*555@gw.example.net>"]


# -- a phone that never answers: CANCEL, time-out, retransmissions ---------------------------------


SLOW_CONFIG = """
[features]
pickup_wait = 10.0

[[fallback]]
users = ["*."]
contacts = ["<sip:{user}@gw.example.net>"]
"""


@pytest.fixture(scope="module")
def slow(start_module_server: ServerFactory) -> Server:
    return start_module_server("slow", log_level="debug", realm=REALM, lines=range(10, 14),
                               security={"trusted": ["127.0.0.1/32"]},
                               redirect={"suspend_timeout": 2}, extra=SLOW_CONFIG)


@pytest.fixture
def silent(slow: Server) -> Iterator[UdpClient]:
    """Line 11's phone: registered, never answers the SUBSCRIBEs (the test reads them)."""
    ph = UdpClient(slow.addr)
    try:
        assert status_of(register(ph, "11", contact=f"<sip:11@127.0.0.1:{ph.port}>")) == 200
        yield ph
        register(ph, "11", contact=f"<sip:11@127.0.0.1:{ph.port}>", expires=0)
    finally:
        ph.close()


def subscribe_call_ids(ph: UdpClient, seconds: float) -> list[str]:
    """Call-IDs of the SUBSCRIBEs reaching ``ph`` within ``seconds`` (retransmissions too)."""
    out = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        got = ph.recv(left)
        if got is None:
            break
        if got.startswith(b"SUBSCRIBE "):
            out.append(_head(got, "Call-ID"))
    return out


def test_cancel_while_suspended_is_487_and_stops_the_search(
        slow: Server, silent: UdpClient) -> None:
    c = UdpClient(slow.addr)
    try:
        invite = sip_request("INVITE", code(slow, "*7811"), local_port=c.port)
        c.send(invite)
        trying = c.recv(2.0)
        assert status_of(trying) == 100, trying
        assert subscribe_call_ids(silent, 0.1), "the search sent no SUBSCRIBE"
        assert status(slow)["suspended"] == 1
        c.send(in_reply_to(invite, "CANCEL"))
        answers: dict[str, bytes] = {}
        for _ in range(2):
            got = c.recv(2.0)
            assert got is not None, f"missing answer; have {list(answers)}"
            answers[_head(got, "CSeq").split()[1]] = got
        assert status_of(answers["CANCEL"]) == 200
        assert status_of(answers["INVITE"]) == 487
        c.send(in_reply_to(invite, "ACK", answers["INVITE"]))
        assert status(slow)["suspended"] == 0
        # the redirector's cancel ran: its SUBSCRIBE is not retransmitted any more (the UAC
        # would resend it 0.5, 1.5, 3.5 s after the first). What was sent before the CANCEL
        # may still sit in the socket: drain it first.
        subscribe_call_ids(silent, 0.05)
        assert subscribe_call_ids(silent, 1.6) == []
        log = slow.log()
        assert "directed_pickup: seq" in log and "search stopped before it finished" in log
        assert "cancel(" in log
    finally:
        c.close()


def test_retransmissions_get_100_and_a_request_never_resumed_times_out_408(
        slow: Server, silent: UdpClient) -> None:
    c = UdpClient(slow.addr)
    try:
        invite = sip_request("INVITE", code(slow, "*7811"), local_port=c.port)
        started = time.monotonic()
        c.send(invite)
        assert status_of(c.recv(1.0)) == 100  # the glue's 100 Trying, after 0.2 s
        for _ in range(2):  # the caller retransmits (T1): the cached 100 answers each
            time.sleep(0.3)
            c.send(invite)
            assert status_of(c.recv(1.0)) == 100
        final = c.recv(3.0)
        elapsed = time.monotonic() - started
        assert status_of(final) == 408, final
        assert final is not None
        assert 1.8 <= elapsed < 3.5, elapsed  # suspend_timeout = 2, not pickup_wait = 10
        c.send(in_reply_to(invite, "ACK", final))
        assert c.recv(1.0) is None  # ACK absorbed; nothing else comes
        r = slow.cli("status", "--json", timeout=10)  # what an operator sees
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["suspended"] == 0
        # one chain run, one search: every SUBSCRIBE the phone saw has the same Call-ID
        seen = subscribe_call_ids(silent, 0.1)
        assert len(set(seen)) == 1, seen
        log = slow.log()
        assert "still suspended after 2.0 s" in log
        assert "search stopped before it finished" in log
    finally:
        c.close()


def test_a_phone_refusing_the_subscribe_ends_the_search_at_once(
        slow: Server, silent: UdpClient) -> None:
    c = UdpClient(slow.addr)
    try:
        invite = sip_request("INVITE", code(slow, "*7811"), local_port=c.port)
        started = time.monotonic()
        c.send(invite)
        sub = silent.recv(2.0)
        assert sub is not None and sub.startswith(b"SUBSCRIBE "), sub
        refusal = ["SIP/2.0 489 Bad Event"]
        refusal += [f"{h}: {_head(sub, h)}" for h in ("Via", "From", "To", "Call-ID", "CSeq")]
        refusal[3] += ";tag=refuser"
        silent.send(("\r\n".join([*refusal, "Allow-Events: presence", "Content-Length: 0"])
                     + "\r\n\r\n").encode())
        final = c.recv(2.0)
        while final is not None and status_of(final) < 200:
            final = c.recv(2.0)
        assert status_of(final) == 404, final  # no call found: not 408, not pickup_wait
        assert final is not None
        assert time.monotonic() - started < 1.5
        c.send(in_reply_to(invite, "ACK", final))
    finally:
        c.close()


def test_reload_while_suspended_answers_500_retry_after(slow: Server, silent: UdpClient) -> None:
    c = UdpClient(slow.addr)
    try:
        invite = sip_request("INVITE", code(slow, "*7811"), local_port=c.port)
        c.send(invite)
        assert status_of(c.recv(1.0)) == 100
        r = slow.cli("reload", timeout=10)
        assert r.returncode == 0, r.stderr
        final = c.recv(1.0)
        assert status_of(final) == 500, final
        assert final is not None and header_values(final, "Retry-After") == ["1"]
        c.send(in_reply_to(invite, "ACK", final))
        assert status(slow)["suspended"] == 0
        subscribe_call_ids(silent, 0.05)
        assert subscribe_call_ids(silent, 1.6) == []  # the old chain's search was stopped
    finally:
        c.close()


# -- a phone registered over TCP is asked over its own connection ---------------------------------


class TcpPhone:
    """Line 11 over one TCP connection (a phone behind NAT: nothing listens on its port)."""

    def __init__(self, server: Server) -> None:
        self.sock = socket.create_connection(server.addr, timeout=5)
        self.port = self.sock.getsockname()[1]
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float = 5.0) -> bytes:
        """One whole message (Content-Length framing)."""
        self.sock.settimeout(timeout)
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                m = re.search(rb"\r\n(?:Content-Length|l)\s*:\s*(\d+)", self.buf[:end + 2], re.I)
                total = end + 4 + (int(m.group(1)) if m else 0)
                if len(self.buf) >= total:
                    msg, self.buf = self.buf[:total], self.buf[total:]
                    return msg
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the phone's connection"
            self.buf += chunk

    def request(self, data: bytes) -> bytes:
        self.send(data)
        while True:
            got = self.recv()
            if status_of(got) >= 200:
                return got

    def close(self) -> None:
        self.sock.close()


def test_pickup_subscribe_reaches_a_tcp_phone_over_its_connection(ringing: Server) -> None:
    ph = TcpPhone(ringing)
    c = UdpClient(ringing.addr)
    try:
        contact = f"<sip:11@127.0.0.1:{ph.port};transport=tcp>"
        to = f"<sip:11@{REALM}>"
        ruri = f"sip:127.0.0.1:{ringing.port}"
        call_id = uuid.uuid4().hex
        hdrs = [("Contact", contact), ("Expires", "60")]
        reg = sip_request("REGISTER", ruri, to=to, frm=to, headers=hdrs, call_id=call_id,
                          transport="TCP", local_port=ph.port)
        first = ph.request(reg)
        assert status_of(first) == 401
        auth = auth_header(first, "11", PASSWORDS["11"], "REGISTER", ruri)
        reg = sip_request("REGISTER", ruri, to=to, frm=to, call_id=call_id, cseq=2,
                          headers=[*hdrs, ("Authorization", auth)], transport="TCP",
                          local_port=ph.port)
        assert status_of(ph.request(reg)) == 200

        invite = authenticated_invite(c, code(ringing, "*7811"), "12")
        sub = ph.recv()  # the dialog fetch, on the connection the phone registered over
        assert sub.startswith(b"SUBSCRIBE sip:11@127.0.0.1:")
        assert _head(sub, "Event") == "dialog" and _head(sub, "Expires") == "0"
        sub_via, sub_from, sub_to = _head(sub, "Via"), _head(sub, "From"), _head(sub, "To")
        sub_cid = _head(sub, "Call-ID")
        ph.send((f"SIP/2.0 200 OK\r\nVia: {sub_via}\r\nFrom: {sub_from}\r\nTo: {sub_to};tag=tp1"
                 f"\r\nCall-ID: {sub_cid}\r\nCSeq: {_head(sub, 'CSeq')}\r\nExpires: 0\r\n"
                 "Content-Length: 0\r\n\r\n").encode())
        body = DIALOG_XML.format(callid="tcp-ring", local="tl", remote="tr",
                                 target=CALLER_TARGET).encode()
        target = re.search(r"<([^>]+)>", _head(sub, "Contact"))
        assert target is not None
        notify = (f"NOTIFY {target.group(1)} SIP/2.0\r\n"
                  f"Via: SIP/2.0/TCP 127.0.0.1:{ph.port};branch=z9hG4bK{uuid.uuid4().hex[:12]}"
                  f"\r\nMax-Forwards: 70\r\nFrom: {sub_to};tag=tp1\r\nTo: {sub_from}\r\n"
                  f"Call-ID: {sub_cid}\r\nCSeq: 1 NOTIFY\r\nEvent: dialog\r\n"
                  "Subscription-State: terminated;reason=timeout\r\n"
                  "Content-Type: application/dialog-info+xml\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        assert status_of(ph.request(notify)) == 200
        resp = c.recv(5.0)
        while resp is not None and status_of(resp) < 200:
            resp = c.recv(5.0)
        assert status_of(resp) == 302, resp
        assert resp is not None
        c.send(in_reply_to(invite, "ACK", resp))
        assert contacts_of(resp) == [replaces_contact("Replaces", "tcp-ring", "tr", "tl")]
    finally:
        c.close()
        ph.close()
        control_call(ringing.data / "control.sock", {"op": "unregister", "line": "11"})


DIALOG_XML = """<?xml version="1.0"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" state="full"
             entity="sip:11@sipyard.test">
  <dialog id="x" call-id="{callid}" local-tag="{local}" remote-tag="{remote}"
          direction="recipient">
    <state>early</state>
    <remote><identity>sip:10@sipyard.test</identity><target uri="{target}"/></remote>
  </dialog>
</dialog-info>
"""
