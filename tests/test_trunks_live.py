"""Trunks from outside: a second sipyard plays the provider (registrar with digest auth,
proxy mode) on loopback; the office registers to it, calls come in by DID and leave by
``9`` + number, and an admin line runs ``/status`` over SIP."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from support import (
    PASSWORDS,
    Server,
    UdpClient,
    free_port,
    header_values,
    register,
    sip_request,
    status_of,
    write_config,
)

from sipyard.sip.digest import client_response
from sipyard.sip.headers import parse_auth

TRUNK_PW = PASSWORDS["20"]


def _wait(pred: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _json(server: Server, *args: str) -> Any:
    r = server.cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _bindings(provider: Server, line: str) -> list[dict[str, Any]]:
    doc = _json(provider, "registry", line)
    return list(doc["lines"][0]["bindings"])


def _provider(tmp: Path, port: int, uas_port: int) -> Server:
    extra = f"""
[aliases]
"5551000" = "20"

[[mapping]]
users = ["55501XX"]
permissions = ["pstn"]
contacts = ["<sip:{{user}}@127.0.0.1:{uas_port}>"]
"""
    cfg = write_config(tmp / "provider", realm="provider.test", lines=["20", "21", "22"],
                       server={"mode": "proxy", "min_expires": 5, "max_expires": 12, "default_expires": 12,
                               "extensions": "10-89"},
                       redirect={"require_auth": False}, extra=extra,
                       line_extra={"20": {"permissions": ["pstn"]}})
    return Server(cfg, port).start()


def _office(tmp: Path, pport: int, *, transport: str = "tcp", pw: str = TRUNK_PW,
            user: str = "20", metrics: int | None = None) -> Server:
    extra = f"""
[trunks.provider]
registrar = "sip:127.0.0.1:{pport};transport={transport}"
username = "{user}"
secret = "{pw}"
realm = "provider.test"
contact_user = "office"
retry_min = 1
retry_max = 4
dids = {{ "5551000" = "10" }}

[[mapping]]
users = ["9."]
permissions = ["pstn"]
contacts = ["trunk:provider"]
"""
    server: dict[str, Any] = {"mode": "proxy"}
    if metrics:
        server["metrics"] = f"127.0.0.1:{metrics}"
    cfg = write_config(tmp / f"office-{transport}-{user}", server=server, extra=extra,
                       line_extra={"11": {"permissions": ["pstn", "admin"]}})
    return Server(cfg).start()


class FakeUas:
    """Answers INVITE 200 (with a Contact), ACK silently, BYE 200; records what it got."""

    def __init__(self) -> None:
        from fakephone import FakePhone  # tests/interop

        self.phone = FakePhone(final=200, delay=0.1)
        self.port = self.phone.port

    def close(self) -> None:
        self.phone.close()


@pytest.fixture
def uas() -> Any:
    import sys
    sys.path.insert(0, str(Path(__file__).parent / "interop"))
    u = FakeUas()
    yield u
    u.close()


def test_register_tcp_refresh_restart_unregister(tmp_path: Path, uas: Any) -> None:
    pport = free_port()
    provider = _provider(tmp_path, pport, uas.port)
    office = None
    try:
        office = _office(tmp_path, pport)
        b = _wait(lambda: _bindings(provider, "20"), what="registration")
        assert ";transport=tcp" in b[0]["contact"] and b[0]["source"].endswith("/tcp")
        doc = _json(office, "trunks")["trunks"][0]
        assert doc["state"] == "registered" and doc["transport"] == "tcp"
        assert doc["expires_in"] <= 12  # the provider clamps to its max_expires
        # refresh before expiry (at half of the 12 s granted)
        _wait(lambda: _json(office, "trunks")["trunks"][0]["refreshes"] >= 1, 12, "refresh")
        assert _bindings(provider, "20")
        # a provider restart: the connection drops, the trunk registers again
        before = _bindings(provider, "20")[0]["source"]
        provider.stop()
        provider.start()
        _wait(lambda: [x for x in _bindings(provider, "20") if x["source"] != before], 20,
              "re-registration after a provider restart")
        assert "registered" in office.cli("trunks").stdout
        # clean stop: un-register
        office.stop()
        office = None
        _wait(lambda: not _bindings(provider, "20"), 5, "un-register")
    finally:
        if office is not None:
            office.stop()
        provider.stop()


def test_register_udp_and_wrong_password(tmp_path: Path, uas: Any) -> None:
    pport = free_port()
    mport = free_port()
    provider = _provider(tmp_path, pport, uas.port)
    bad = good = None
    try:
        good = _office(tmp_path, pport, transport="udp", user="21", pw=PASSWORDS["21"])
        b = _wait(lambda: _bindings(provider, "21"), what="udp registration")
        assert b[0]["source"].endswith("/udp")
        bad = _office(tmp_path, pport, transport="udp", user="22", pw="not-the-password-42",
                      metrics=mport)
        text = _wait(lambda: "failed 401" in (t := bad.cli("trunks").stdout) and t, 10,
                     "failed 401")
        assert "failed 401" in text
        st = _json(bad, "trunks")["trunks"][0]
        assert st["state"] == "failed" and st["retry_in"] is not None
        # the rest still works: the good office stays registered, the bad one answers OPTIONS
        assert _bindings(provider, "21")
        c = UdpClient(bad.addr)
        assert status_of(c.request(sip_request("OPTIONS", f"sip:127.0.0.1:{bad.port}",
                                               local_port=c.port))) == 200
        c.close()
        # secrets never in logs, status, --json output or metrics
        outputs = [bad.log(), bad.cli("status", "--json").stdout, bad.cli("status").stdout,
                   bad.cli("trunks", "--json").stdout, good.log(),
                   good.cli("trunks", "--json").stdout]
        try:
            import urllib.request
            outputs.append(urllib.request.urlopen(
                f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode())
            assert 'sipyard_trunks{state="failed"} 1.0' in outputs[-1]
        except OSError:
            pass
        for text in outputs:
            assert "not-the-password-42" not in text and PASSWORDS["21"] not in text
    finally:
        for s in (bad, good):
            if s is not None:
                s.stop()
        provider.stop()


# -- calls ------------------------------------------------------------------------------------

def _proxy_auth(resp: bytes, user: str, pw: str, method: str, uri: str) -> str:
    value = header_values(resp, "Proxy-Authenticate")[0]
    _, params = parse_auth(value)
    return client_response(username=user, realm=params["realm"], password=pw, method=method,
                           uri=uri, nonce=params["nonce"], nc=1, cnonce=uuid.uuid4().hex[:16],
                           qop="auth", algorithm=params.get("algorithm", "MD5"),
                           opaque=params.get("opaque"))


def _invite(c: UdpClient, ruri: str, frm: str, call_id: str, cseq: int,
            headers: list[tuple[str, str]] | None = None) -> bytes:
    return sip_request("INVITE", ruri, frm=frm, call_id=call_id, cseq=cseq, local_port=c.port,
                       headers=[("Contact", f"<sip:caller@127.0.0.1:{c.port}>"),
                                *(headers or [])])


def test_calls_in_by_did_and_out_through_the_trunk(tmp_path: Path, uas: Any) -> None:
    import sys
    sys.path.insert(0, str(Path(__file__).parent / "interop"))
    from fakephone import FakePhone

    pport = free_port()
    provider = _provider(tmp_path, pport, uas.port)
    office = _office(tmp_path, pport)
    line10 = FakePhone(final=200, delay=0.1)
    try:
        _wait(lambda: _bindings(provider, "20"), what="registration")
        reg = UdpClient(office.addr)
        assert status_of(register(reg, "10", contact=line10.contact)) == 200
        # in: the public network calls the DID at the provider
        pub = UdpClient(provider.addr, timeout=5)
        r = pub.request(_invite(pub, f"sip:5551000@127.0.0.1:{pport}", "<sip:+4930123@pstn>",
                                uuid.uuid4().hex, 1), timeout=10)
        assert status_of(r) == 200, r
        assert line10.first("INVITE") is not None
        # out: line 11 dials 9 + number, the office answers the provider's 407
        c11 = UdpClient(office.addr, timeout=5)
        ruri = "sip:95550123@sipyard.test"
        frm = "<sip:11@sipyard.test>"
        cid = uuid.uuid4().hex
        r = c11.request(_invite(c11, ruri, frm, cid, 1))
        assert status_of(r) == 407
        auth = _proxy_auth(r, "11", PASSWORDS["11"], "INVITE", ruri)
        r = c11.request(_invite(c11, ruri, frm, cid, 2, [("Proxy-Authorization", auth)]),
                        timeout=10)
        assert status_of(r) == 200, r
        got = uas.phone.first("INVITE")
        assert got is not None and "sip:5550123@" in got.split("\r\n", 1)[0]
        assert re.search(r"^From: <sip:20@127\.0\.0\.1>;tag=", got, re.M)
        # line 12 has no permission: 403
        c12 = UdpClient(office.addr, timeout=5)
        frm12 = "<sip:12@sipyard.test>"
        cid = uuid.uuid4().hex
        r = c12.request(_invite(c12, ruri, frm12, cid, 1))
        auth = _proxy_auth(r, "12", PASSWORDS["12"], "INVITE", ruri)
        r = c12.request(_invite(c12, ruri, frm12, cid, 2, [("Proxy-Authorization", auth)]))
        assert status_of(r) == 403
        calls = _json(office, "calls")["calls"]
        assert {c.get("trunk") for c in calls} == {"provider"}
        for c in (reg, pub, c11, c12):
            c.close()
    finally:
        line10.close()
        office.stop()
        provider.stop()


# -- control over SIP -------------------------------------------------------------------------

class TcpPhone:
    def __init__(self, server: tuple[str, int]) -> None:
        self.sock = socket.create_connection(server, timeout=5)
        self.port = self.sock.getsockname()[1]
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_msg(self, timeout: float = 5.0) -> bytes:
        self.sock.settimeout(timeout)
        while True:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                n = int(m.group(1)) if m else 0
                if len(rest) >= n:
                    self.buf = rest[n:]
                    return head + sep + rest[:n]
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk

    def message(self, line: str, text: str) -> bytes:
        ruri = "sip:system@sipyard.test"
        frm = f"<sip:{line}@sipyard.test>"
        cid = uuid.uuid4().hex
        hdrs = [("Content-Type", "text/plain"),
                ("Contact", f"<sip:{line}@127.0.0.1:{self.port};transport=tcp>")]
        self.send(sip_request("MESSAGE", ruri, frm=frm, call_id=cid, headers=hdrs,
                              body=text.encode(), transport="TCP", local_port=self.port))
        r = self.recv_msg()
        assert status_of(r) == 401
        value = header_values(r, "WWW-Authenticate")[0]
        _, p = parse_auth(value)
        auth = client_response(username=line, realm=p["realm"], password=PASSWORDS[line],
                               method="MESSAGE", uri=ruri, nonce=p["nonce"], nc=1,
                               cnonce="abc123", qop="auth", opaque=p.get("opaque"))
        self.send(sip_request("MESSAGE", ruri, frm=frm, call_id=cid, cseq=2, body=text.encode(),
                              headers=[*hdrs, ("Authorization", auth)], transport="TCP",
                              local_port=self.port))
        return self.recv_msg()

    def answer_incoming(self) -> bytes:
        req = self.recv_msg(10)
        head = req.split(b"\r\n\r\n", 1)[0].decode()
        vias = [ln for ln in head.split("\r\n") if ln.lower().startswith("via:")]
        keep = [ln for ln in head.split("\r\n")[1:] if ln.split(":", 1)[0].lower() in
                ("from", "to", "call-id", "cseq")]
        self.send(("SIP/2.0 200 OK\r\n" + "\r\n".join(vias + keep) +
                   "\r\nContent-Length: 0\r\n\r\n").encode())
        return req


def test_admin_status_over_sip(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "office", server={"mode": "proxy"},
                       line_extra={"11": {"permissions": ["admin"]}})
    office = Server(cfg).start()
    try:
        admin = TcpPhone(office.addr)
        assert status_of(admin.message("11", "/status")) == 202
        reply = admin.answer_incoming()
        body = reply.split(b"\r\n\r\n", 1)[1].decode()
        assert body.startswith("sipyard ") and "realm        sipyard.test" in body
        assert "admin command /status from line 11" in office.log()
        # over UDP: 403
        u = UdpClient(office.addr)
        ruri = "sip:system@sipyard.test"
        frm = "<sip:11@sipyard.test>"
        cid = uuid.uuid4().hex
        r = u.request(sip_request("MESSAGE", ruri, frm=frm, call_id=cid, body=b"/status",
                                  local_port=u.port, headers=[("Content-Type", "text/plain")]))
        from support import auth_header
        assert r is not None
        auth = auth_header(r, "11", PASSWORDS["11"], "MESSAGE", ruri)
        r = u.request(sip_request("MESSAGE", ruri, frm=frm, call_id=cid, cseq=2, body=b"/status",
                                  local_port=u.port, headers=[("Content-Type", "text/plain"),
                                                              ("Authorization", auth)]))
        assert status_of(r) == 403
        u.close()
        # a non-admin line: the chat's unknown-command reply
        other = TcpPhone(office.addr)
        contact = f"<sip:12@127.0.0.1:{other.port};transport=tcp>"
        ruri = "sip:sipyard.test"
        to = "<sip:12@sipyard.test>"
        cid = uuid.uuid4().hex
        hdrs = [("Contact", contact), ("Expires", "60")]
        other.send(sip_request("REGISTER", ruri, to=to, frm=to, headers=hdrs, call_id=cid,
                               transport="TCP", local_port=other.port))
        r = other.recv_msg()
        auth = auth_header(r, "12", PASSWORDS["12"], "REGISTER", ruri)
        other.send(sip_request("REGISTER", ruri, to=to, frm=to, call_id=cid, cseq=2,
                               headers=[*hdrs, ("Authorization", auth)], transport="TCP",
                               local_port=other.port))
        assert status_of(other.recv_msg()) == 200
        assert status_of(other.message("12", "/status")) == 202
        reply = other.answer_incoming()
        assert b"unknown command /status" in reply
    finally:
        office.stop()


# -- reload -------------------------------------------------------------------------------------

def _trunk_block(name: str, user: str, pw: str, pport: int, expires: int = 120) -> str:
    return f"""
[trunks.{name}]
registrar = "sip:127.0.0.1:{pport};transport=tcp"
username = "{user}"
secret = "{pw}"
realm = "provider.test"
expires = {expires}
retry_min = 1
retry_max = 4
"""


def _registers_from(provider: Server, line: str) -> int:
    """REGISTERs the provider answered 200 for ``line`` (its request log)."""
    return len(re.findall(rf"REGISTER from=sip:{line}@\S+ .* status=200", provider.log()))


def test_reload_adds_removes_and_changes_trunks(tmp_path: Path) -> None:
    """Seen from the provider: a reload registers the new trunk, un-registers the removed
    one, registers a changed one again (password fixed; expiry changed) and leaves the
    unchanged one alone — no REGISTER, its binding still counting down. No secret shows
    anywhere (log, status, --json, metrics, the web API) before or after."""
    pport, mport, wport = free_port(), free_port(), free_port()
    cfg = write_config(tmp_path / "provider", realm="provider.test",
                       lines=["20", "21", "22", "23", "24"],
                       server={"mode": "proxy", "min_expires": 5, "max_expires": 300,
                               "default_expires": 120})
    provider = Server(cfg, pport).start()
    wrong = "wrong-password-77"
    before = "".join([_trunk_block("keep", "20", PASSWORDS["20"], pport),
                      _trunk_block("gone", "21", PASSWORDS["21"], pport),
                      _trunk_block("fixed", "22", wrong, pport),
                      _trunk_block("expiry", "24", PASSWORDS["24"], pport)])
    after = "".join([_trunk_block("keep", "20", PASSWORDS["20"], pport),
                     _trunk_block("fixed", "22", PASSWORDS["22"], pport),
                     _trunk_block("expiry", "24", PASSWORDS["24"], pport, expires=30),
                     _trunk_block("new", "23", PASSWORDS["23"], pport)])
    web = f'\n[web]\nlisten = "127.0.0.1:{wport}"\n'
    office_cfg = write_config(tmp_path / "office", server={"mode": "proxy",
                                                           "metrics": f"127.0.0.1:{mport}"},
                              extra=before + web)
    office = Server(office_cfg).start()
    try:
        for line in ("20", "21", "24"):
            _wait(lambda line=line: _bindings(provider, line), 10, f"trunk of line {line}")
        _wait(lambda: "failed 401" in office.cli("trunks").stdout, 10, "fixed: failed 401")
        assert not _bindings(provider, "22")
        keep_doc = next(t for t in _json(office, "trunks")["trunks"] if t["name"] == "keep")
        keep_binding = _bindings(provider, "20")[0]
        keep_registers = _registers_from(provider, "20")
        assert keep_registers >= 1
        t0 = time.monotonic()

        office_cfg.write_text(office_cfg.read_text().replace(before, after))
        r = office.cli("reload")
        assert r.returncode == 0, r.stdout + r.stderr
        _wait(lambda: _bindings(provider, "23"), 10, "the new trunk's registration")
        _wait(lambda: not _bindings(provider, "21"), 10, "the removed trunk's un-register")
        _wait(lambda: _bindings(provider, "22"), 10, "the fixed trunk's registration")
        _wait(lambda: 0 < _bindings(provider, "24")[0]["expires_in"] <= 30, 10,
              "the new expiry of the changed trunk")
        names = {t["name"]: t for t in _json(office, "trunks")["trunks"]}
        assert set(names) == {"keep", "fixed", "expiry", "new"}
        assert names["fixed"]["state"] == names["new"]["state"] == "registered"
        # the unchanged trunk: nothing sent, same flow, the binding counts on down
        time.sleep(1.0)
        assert _registers_from(provider, "20") == keep_registers
        assert names["keep"]["registered_at"] == keep_doc["registered_at"]
        assert names["keep"]["refreshes"] == keep_doc["refreshes"]
        now = _bindings(provider, "20")[0]
        assert now["source"] == keep_binding["source"]
        elapsed = time.monotonic() - t0
        assert now["expires_in"] <= keep_binding["expires_in"] - int(elapsed) + 1, (
            now, keep_binding, elapsed)
        # secrets: never shown, whichever way one looks
        import urllib.request

        outputs = [office.log(), office.cli("status").stdout, office.cli("status", "--json").stdout,
                   office.cli("trunks").stdout, office.cli("trunks", "--json").stdout]
        for url in (f"http://127.0.0.1:{mport}/metrics", f"http://127.0.0.1:{wport}/api/trunks",
                    f"http://127.0.0.1:{wport}/api/state"):
            outputs.append(urllib.request.urlopen(url, timeout=5).read().decode())
        assert 'sipyard_trunks{state="registered"} 4.0' in outputs[5]
        assert '"name": "new"' in outputs[6] or '"name":"new"' in outputs[6]
        for text in outputs:
            for secret in (wrong, *(PASSWORDS[n] for n in ("20", "21", "22", "23", "24"))):
                assert secret not in text
    finally:
        office.stop()
        provider.stop()
