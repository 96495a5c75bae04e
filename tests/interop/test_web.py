"""The status page in a real browser (Debian's headless Chromium driven by Playwright) over
a real server with real phones (baresip), plus the page's HTTP rules and ``/metrics``.

Everything listens on 127.0.0.1. The page's screenshots are saved in the test's tmp dir,
copied to ``/tmp/sipyard-web-shots/`` and their paths printed. A REGISTER carrying markup
in its User-Agent and Contact display name, and an INVITE carrying it in its From display
name, must show up as text (or not at all), with no dialog fired; 1 000 requests with
invented method names must not add a single metric series.

Where a display name could reach the page, and what is checked: the registrar keeps a
Contact's URI, not its display name (the Lines table shows the URI); a call's "from" is
its From URI and a CDR's caller the same (``sipyard.calls.Call.caller``), so the From
display name of an INVITE reaches neither the Calls nor the Recent calls table. The test
sends one anyway, and the User-Agent (which the page does show) carries markup too.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import string
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from baresip import Baresip, account, require_tool
from conftest import ServerFactory
from fakephone import FakePhone
from support import (
    PASSWORDS,
    Server,
    UdpClient,
    auth_header,
    free_port,
    sip_request,
    status_of,
)

pytestmark = pytest.mark.interop

REALM = "sipyard.test"
TOKEN = "web-test-token-0123456789"
XSS_UA = "<script>alert(1)</script><img src=x onerror=alert(2)>"
XSS_NAME = '"<script>alert(3)</script>"'
#: a CDR's disposition → the badge class the page gives it (sipyard/web/static/app.js)
DISPOSITION_BADGE = {"answered": "answered", "busy": "busy", "no-answer": "noanswer",
                     "cancelled": "cancelled", "failed": "failed", "expired": "expired"}
SHOTS = Path("/tmp/sipyard-web-shots")


def _need_playwright() -> Any:
    try:
        from playwright import sync_api
    except ImportError:
        msg = "playwright is not installed (make test installs the test extra)"
        if os.environ.get("CI"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return sync_api


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = _need_playwright()
    chromium = require_tool("chromium")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium)
        yield b
        b.close()


@pytest.fixture(scope="module")
def web(start_module_server: ServerFactory) -> tuple[Server, int]:
    """A server with the page on (no token: loopback, read-only) and lines 10-15."""
    port = free_port()
    srv = start_module_server("web-srv", lines=range(10, 16),
                              line_extra={"15": {"type": "door"}},
                              extra=f'[web]\nlisten = "127.0.0.1:{port}"\n')
    return srv, port


@pytest.fixture(scope="module")
def token_web(start_module_server: ServerFactory) -> tuple[Server, int]:
    """A server whose page needs a token and allows the write actions."""
    port = free_port()
    srv = start_module_server("web-token", lines=range(10, 14), extra=(
        f'[web]\nlisten = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\nactions = true\n'))
    return srv, port


def http(port: int, path: str, *, method: str = "GET", headers: dict[str, str] | None = None,
         body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                 headers=headers or {})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=5) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def raw_register(client: UdpClient, line: str, *, user_agent: str, display: str = "",
                 expires: int = 300, contact_port: int | None = None) -> bytes | None:
    """REGISTER with digest auth and the given User-Agent / Contact display name (the
    Contact is the client's own port unless ``contact_port`` names another)."""
    ruri = "sip:127.0.0.1"
    to = f"<sip:{line}@{REALM}>"
    port = contact_port or client.port
    contact = f"{display} <sip:{line}@127.0.0.1:{port}>".strip()
    hdrs = [("Contact", contact), ("Expires", str(expires)), ("User-Agent", user_agent)]
    call_id = uuid.uuid4().hex
    r = client.request(sip_request("REGISTER", ruri, to=to, frm=to, headers=hdrs,
                                   call_id=call_id, local_port=client.port))
    if status_of(r) != 401:
        return r
    assert r is not None
    auth = auth_header(r, line, PASSWORDS[line], "REGISTER", ruri)
    return client.request(sip_request("REGISTER", ruri, to=to, frm=to, call_id=call_id, cseq=2,
                                      headers=hdrs + [("Authorization", auth)],
                                      local_port=client.port))


def registered(phone: Baresip) -> None:
    ev = phone.wait_event({"REGISTER_OK", "REGISTER_FAIL"}, timeout=10)
    assert ev["type"] == "REGISTER_OK", ev


# -- the page in a browser --------------------------------------------------------------------

def test_page_shows_lines_bindings_and_markup_as_text(
        web: tuple[Server, int], browser: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    srv, port = web
    evil = UdpClient(srv.addr)
    with Baresip(tmp_path / "p10") as a, Baresip(tmp_path / "p11") as b:
        a.add_account(account("10", srv.port, PASSWORDS["10"]))
        b.add_account(account("11", srv.port, PASSWORDS["11"]))
        registered(a)
        registered(b)
        r = raw_register(evil, "12", user_agent=XSS_UA, display=XSS_NAME)
        assert status_of(r) == 200, r
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        dialogs: list[str] = []
        problems: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        try:
            page.goto(f"http://127.0.0.1:{port}/")
            for line in ("10", "11", "12"):
                page.wait_for_selector(f'#lines tr[data-line="{line}"] td.binding', timeout=10000)
            page.wait_for_selector("#chart svg", timeout=10000)
            rows = page.locator("#lines tbody tr")
            text = {ln: " ".join(rows.locator(f'xpath=self::tr[@data-line="{ln}"]').all_inner_texts())
                    for ln in ("10", "11", "12", "13")}
            assert f"127.0.0.1:{a.sip_port}" in text["10"] and "baresip" in text["10"]
            assert f"127.0.0.1:{b.sip_port}" in text["11"] and "baresip" in text["11"]
            assert "not registered" in text["13"]
            # the markup arrived as text, and built no element
            ua = page.locator('#lines tr[data-line="12"] td.ua').inner_text()
            assert ua == XSS_UA
            # the registrar keeps the Contact's URI, not its display name
            contact = page.locator('#lines tr[data-line="12"] td.binding').inner_text()
            assert contact == f"sip:12@127.0.0.1:{evil.port}"
            assert page.locator("main script, main img").count() == 0
            page.wait_for_timeout(500)
            assert dialogs == []
            assert page.locator("#cards").inner_text().count("\n") > 4
            assert "3" in page.locator("#lines-count").inner_text()
            assert page.locator("#conn").inner_text() == "live"
            assert "No call in progress." in page.locator("#calls").inner_text()
            assert "No call recorded yet." in page.locator("#cdr").inner_text()
            assert "No trunk configured." in page.locator("#trunks").inner_text()
            save_shot(page, tmp_path / "status-page.png", capsys, "status page")
            assert problems == [], problems  # no CSP violation, no script error
        finally:
            page.close()
            evil.close()


def save_shot(page: Any, path: Path, capsys: pytest.CaptureFixture[str], what: str) -> None:
    """A full-page screenshot: the test's artifact, a copy in ``SHOTS``, both paths printed."""
    page.screenshot(path=str(path), full_page=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    copy = SHOTS / path.name
    shutil.copyfile(path, copy)
    with capsys.disabled():
        print(f"\n{what} screenshot: {path} (copy: {copy})")


def _sip(method: str, ruri: str, client: UdpClient, *, frm: str, to: str, call_id: str,
         branch: str, cseq: int = 1, extra: list[tuple[str, str]] | None = None) -> bytes:
    """A request with the From (display name and tag included) exactly as given."""
    lines = [f"{method} {ruri} SIP/2.0",
             f"Via: SIP/2.0/UDP 127.0.0.1:{client.port};branch={branch};rport",
             "Max-Forwards: 70", f"From: {frm}", f"To: {to}", f"Call-ID: {call_id}",
             f"CSeq: {cseq} {method}",
             f"Contact: <sip:13@127.0.0.1:{client.port}>",
             *(f"{k}: {v}" for k, v in extra or []), "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _wait(pred: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_page_during_and_after_a_real_proxied_call(
        start_server: ServerFactory, browser: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Proxy mode, two baresip phones in a call (as in ``test_proxy_baresip``) and a second
    call, ringing, whose INVITE has markup as its From display name: the page shows both
    lines and both calls; after the hang-up and the CANCEL, the two CDRs with their own
    badges (answered, cancelled). Screenshots during and after."""
    require_tool("baresip")
    from test_baresip_call import _phone_apart_from

    port = free_port()
    srv = start_server("web-proxy", lines=range(10, 14), server={"mode": "proxy"},
                       security={"trusted": ["127.0.0.0/8"]},
                       extra=f'[web]\nlisten = "127.0.0.1:{port}"\n')
    ringer = FakePhone(final=None)  # line 12: rings until CANCELled
    evil = UdpClient(srv.addr, timeout=2.0)
    a = b = None
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    dialogs: list[str] = []
    problems: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        a = Baresip(tmp_path / "phone10", lifetime=90).start()
        b = _phone_apart_from(tmp_path / "phone11", a)
        b.lifetime = 90
        b.start()
        proxy = f'"sip:127.0.0.1:{srv.port};transport=udp"'
        a.add_account(account("10", srv.port, PASSWORDS["10"], outbound=proxy))
        b.add_account(account("11", srv.port, PASSWORDS["11"], outbound=proxy))
        registered(a)
        registered(b)
        r = raw_register(evil, "12", user_agent=XSS_UA, display=XSS_NAME,
                         contact_port=ringer.port)
        assert status_of(r) == 200, r
        # the real call: 10 → 11, answered by baresip
        a.dial(f"sip:11@127.0.0.1:{srv.port}")
        for phone in (a, b):
            ev = phone.wait_event({"CALL_ESTABLISHED", "CALL_CLOSED"}, timeout=15)
            assert ev["type"] == "CALL_ESTABLISHED", (ev, srv.log()[-3000:])
        # the second call: markup in the From display name, ringing at line 12
        call_id, tag, branch = uuid.uuid4().hex, uuid.uuid4().hex[:8], "z9hG4bK" + uuid.uuid4().hex[:12]
        frm = f'"<script>alert(1)</script>" <sip:13@{REALM}>;tag={tag}'
        to = f"<sip:12@{REALM}>"
        evil.send(_sip("INVITE", f"sip:12@{REALM}", evil, frm=frm, to=to, call_id=call_id,
                       branch=branch))
        _wait(lambda: ringer.first("INVITE") is not None, 5, "the INVITE at line 12")
        assert "<script>alert(1)</script>" in (ringer.first("INVITE") or "")  # passed on as is

        page.goto(f"http://127.0.0.1:{port}/")
        for line in ("10", "11", "12"):
            page.wait_for_selector(f'#lines tr[data-line="{line}"] td.binding', timeout=10000)
        page.wait_for_selector("#calls tbody tr:nth-child(2) td.num", timeout=15000)
        binding = {ln: page.locator(f'#lines tr[data-line="{ln}"] td.binding').inner_text()
                   for ln in ("10", "11")}
        # baresip's Contact user is "NN-0x…"
        assert binding["10"].startswith("sip:10") and f"@127.0.0.1:{a.sip_port}" in binding["10"]
        assert binding["11"].startswith("sip:11") and f"@127.0.0.1:{b.sip_port}" in binding["11"]
        assert page.locator('#lines tr[data-line="12"] td.ua').inner_text() == XSS_UA
        rows = page.locator("#calls tbody tr").all_inner_texts()
        answered = [t for t in rows if "answered" in t]
        ringing = [t for t in rows if "ringing" in t]
        assert len(answered) == 1 and len(ringing) == 1, rows
        assert re.search(r"^10\b", answered[0]) and "\t11" in answered[0], answered
        assert "sip:13@sipyard.test" in ringing[0] and f"sip:12@{REALM}" in ringing[0], ringing
        assert page.locator("#calls span.badge.answered").count() == 1
        assert page.locator("#calls span.badge.ringing").count() == 1
        assert "2" in page.locator("#cards").inner_text()
        assert page.locator("main script, main img").count() == 0
        save_shot(page, tmp_path / "status-page-call.png", capsys, "during the call")

        # end both: the caller CANCELs the ringing one, the callee hangs up the real one
        r = evil.request(_sip("CANCEL", f"sip:12@{REALM}", evil, frm=frm, to=to,
                              call_id=call_id, branch=branch))
        assert status_of(r) == 200, r
        final = evil.recv(5)
        assert status_of(final) == 487, final
        to_tag = re.search(rb"\r\nTo:[^\r]*;tag=([^;\r]+)", final or b"")
        assert to_tag is not None
        evil.send(_sip("ACK", f"sip:12@{REALM}", evil, frm=frm,
                       to=f"{to};tag={to_tag.group(1).decode()}", call_id=call_id,
                       branch=branch))
        b.hangup()
        for phone in (a, b):
            assert phone.wait_event({"CALL_CLOSED"}, timeout=15)["type"] == "CALL_CLOSED"
        page.wait_for_selector("#cdr tbody tr:nth-child(2) td.num", timeout=15000)
        page.wait_for_selector("#calls td.empty", timeout=15000)
        cdr = json.loads(http(port, "/api/cdr")[2])["cdr"]
        assert sorted(c["reason"] for c in cdr) == ["answered", "cancelled"], cdr
        (cancelled,) = [c for c in cdr if c["reason"] == "cancelled"]
        assert cancelled["from"] == f"sip:13@{REALM}"  # the From URI: no display name kept
        assert "script" not in json.dumps(cdr)
        rows = page.locator("#cdr tbody tr").all_inner_texts()
        assert any("answered" in t and re.search(r"^\S+\t10\b", t) for t in rows), rows
        assert any("cancelled" in t and "sip:13@sipyard.test" in t for t in rows), rows
        for reason, cls in (("answered", "answered"), ("cancelled", "cancelled")):
            badge = page.locator(f"#cdr span.badge.{cls}")
            assert badge.count() == 1 and badge.inner_text() == reason
        assert "No call in progress." in page.locator("#calls").inner_text()
        assert page.locator("main script, main img").count() == 0
        save_shot(page, tmp_path / "status-page-after-call.png", capsys, "after the call")
        page.wait_for_timeout(300)
        assert dialogs == []
        assert problems == [], problems
    finally:
        page.close()
        for phone in (b, a):
            if phone is not None:
                with contextlib.suppress(Exception):
                    phone.stop()
        ringer.close()
        evil.close()


def test_write_actions_from_the_page(token_web: tuple[Server, int], browser: Any,
                                    tmp_path: Path) -> None:
    """?token= gives the cookie (read); typing the token unlocks Unregister, which POSTs it
    in a header."""
    srv, port = token_web
    c = UdpClient(srv.addr)
    page = browser.new_page()
    try:
        assert status_of(raw_register(c, "11", user_agent="ua-11")) == 200
        page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}")
        assert page.url == f"http://127.0.0.1:{port}/"  # the token left the address bar
        page.wait_for_selector('#lines tr[data-line="11"] td.binding')
        assert page.locator("#actions-panel").is_visible()
        assert page.locator('#lines tr[data-line="11"] button').count() == 0
        page.fill("#token", TOKEN)
        page.click("#token-form button")
        page.wait_for_selector('#lines tr[data-line="11"] button')
        page.screenshot(path=str(tmp_path / "status-page-actions.png"), full_page=True)
        page.click('#lines tr[data-line="11"] button')
        page.wait_for_selector('#lines tr.idle[data-line="11"]', timeout=10000)
        assert "unregister: done" in page.locator("#action-note").inner_text()
    finally:
        page.close()
        c.close()


# -- HTTP rules -------------------------------------------------------------------------------

def test_every_response_carries_the_security_headers(web: tuple[Server, int]) -> None:
    _, port = web
    for path, want in (("/", 200), ("/static/app.js", 200), ("/static/style.css", 200),
                       ("/api/state", 200), ("/api/nope", 404), ("/metrics", 200),
                       ("/static/../../etc/passwd", 404)):
        status, headers, _ = http(port, path)
        assert status == want, path
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Connection"] == "close"


def _countdowns(doc: Any) -> list[int]:
    """Take every binding's ``expires_in`` out of a registry document (in order)."""
    out = []
    for line in doc.get("lines", []) if isinstance(doc, dict) else []:
        for b in line.get("bindings", []):
            out.append(int(b.pop("expires_in")))
    return out


def test_api_docs_are_the_cli_json(web: tuple[Server, int]) -> None:
    srv, port = web
    for name in ("registry", "bans", "runstate"):
        # The two reads are a few hundred ms apart (the CLI starts a Python): a binding of
        # an earlier test in this module may come or go between them, so the documents
        # must agree at least once in three reads.
        for _ in range(3):
            status, _, body = http(port, f"/api/{name}")
            assert status == 200
            cli = srv.cli(name, "--json")
            assert cli.returncode == 0, cli.stderr
            page, text = json.loads(body), json.loads(cli.stdout)
            # a binding's expires_in counts down between the two reads
            down_page, down_text = _countdowns(page), _countdowns(text)
            if page == text and down_page == pytest.approx(down_text, abs=2):
                break
            time.sleep(0.5)
        assert page == text, name
        assert down_page == pytest.approx(down_text, abs=2), name
    status, _, body = http(port, "/api/status")
    doc = json.loads(body)
    assert set(doc) == set(json.loads(srv.cli("status", "--json").stdout))
    for name in ("calls", "cdr", "trunks"):
        assert json.loads(http(port, f"/api/{name}")[2]) == {name: []}
    hist = json.loads(http(port, "/api/history")[2])
    assert hist["step"] == 60 and len(hist["t"]) >= 1
    assert len(hist["t"]) == len(hist["bindings"]) == len(hist["requests"])


def test_without_token_reads_only_and_checks_host(web: tuple[Server, int]) -> None:
    _, port = web
    status, _, _ = http(port, "/api/state", headers={"Host": "rebind.example:8080"})
    assert status == 403
    status, _, body = http(port, "/api/unregister", method="POST",
                           headers={"Content-Type": "application/json"}, body=b'{"line":"10"}')
    assert status == 403 and b"actions" in body


def test_token_rules(token_web: tuple[Server, int]) -> None:
    srv, port = token_web
    status, headers, _ = http(port, "/api/state")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert http(port, "/metrics")[0] == 401
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert http(port, "/api/state", headers=bearer)[0] == 200
    assert http(port, "/metrics", headers=bearer)[0] == 200
    status, headers, _ = http(port, f"/?token={TOKEN}")
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    jar = {"Cookie": cookie.split(";", 1)[0]}
    assert http(port, "/api/state", headers=jar)[0] == 200
    assert http(port, "/api/state", headers={"Cookie": "sipyard_token=" + "0" * 64})[0] == 401
    # actions: a cookie is not enough (CSRF), JSON only, then the control op's document
    c = UdpClient(srv.addr)
    try:
        assert status_of(raw_register(c, "12", user_agent="ua-12")) == 200
        js = {"Content-Type": "application/json"}
        assert http(port, "/api/unregister", method="POST", headers={**jar, **js},
                    body=b'{"line":"12"}')[0] == 403
        assert http(port, "/api/unregister", method="POST",
                    headers={**bearer, "Content-Type": "text/plain"},
                    body=b'{"line":"12"}')[0] == 415
        assert http(port, "/api/unregister", method="POST", headers={**bearer, **js},
                    body=b'{"line":12}')[0] == 400
        status, _, body = http(port, "/api/unregister", method="POST", headers={**bearer, **js},
                               body=b'{"line":"12"}')
        assert status == 200 and json.loads(body) == {"line": "12", "removed": 1}
        reg = json.loads(srv.cli("registry", "12", "--json").stdout)
        assert reg["lines"][0]["bindings"] == []
        status, _, body = http(port, "/api/unban", method="POST", headers={**bearer, **js},
                               body=b'{"address":"192.0.2.7"}')
        assert status == 404 and json.loads(body) == {"address": "192.0.2.7", "removed": False}
        status, _, body = http(port, "/api/runstate", method="POST", headers={**bearer, **js},
                               body=b'{"state":"nosuch"}')
        assert status == 400 and "nosuch" in json.loads(body)["error"]
        status, _, body = http(port, "/api/runstate", method="POST", headers={**bearer, **js},
                               body=b'{"state":null}')
        assert status == 200 and json.loads(body)["state"] is None
    finally:
        c.close()


# -- metrics ----------------------------------------------------------------------------------

def _families(text: str) -> list[Any]:
    parser = pytest.importorskip("prometheus_client.parser")
    return list(parser.text_string_to_metric_families(text))


def _series(port: int, path: str = "/metrics") -> tuple[int, list[Any]]:
    status, headers, body = http(port, path)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    fams = _families(body.decode())
    return sum(len(f.samples) for f in fams), fams


def test_metrics_parse_and_junk_methods_add_no_series(web: tuple[Server, int]) -> None:
    srv, port = web
    c = UdpClient(srv.addr, timeout=1.0)
    rnd = random.Random(15)

    def junk(n: int) -> int:
        answered = 0
        for _ in range(n):
            method = "".join(rnd.choices(string.ascii_uppercase, k=rnd.randint(3, 12)))
            r = c.request(sip_request(method, "sip:127.0.0.1", local_port=c.port), timeout=1.0)
            answered += status_of(r) == 501
        return answered

    try:
        assert junk(5) == 5  # the "other" and 501 series exist from here on
        before, fams = _series(port)
        names = {f.name for f in fams}
        for want in ("sipyard_requests", "sipyard_responses", "sipyard_bindings",
                     "sipyard_loop_lag_seconds", "sipyard_calls", "sipyard_info"):
            assert want in names, want
        assert junk(1000) > 950
        after, fams = _series(port)
    finally:
        c.close()
    assert after == before
    (requests,) = [f for f in fams if f.name == "sipyard_requests"]
    methods = {s.labels["method"]: s.value for s in requests.samples}
    assert methods["other"] >= 1005
    assert all(m == "other" or m.isupper() and len(m) <= 9 for m in methods)


def test_server_metrics_listener_serves_metrics_only(
        start_server: ServerFactory) -> None:
    port = free_port()
    srv = start_server("metrics-only", lines=range(10, 12),
                       server={"metrics": f"127.0.0.1:{port}"})
    count, fams = _series(port)
    assert count > 10 and any(f.name == "sipyard_bindings" for f in fams)
    for path in ("/", "/api/state", "/static/app.js"):
        assert http(port, path)[0] == 404
    assert srv.proc is not None and srv.proc.poll() is None

