"""The status page in a real browser (Debian's headless Chromium driven by Playwright) over
a real server with real phones (baresip), plus the page's HTTP rules and ``/metrics``.

Everything listens on 127.0.0.1. The page's screenshot is saved in the test's tmp dir and
its path printed. A REGISTER carrying markup in its User-Agent and Contact display name
must show up as text, with no dialog fired; 1 000 requests with invented method names
must not add a single metric series.
"""

from __future__ import annotations

import json
import os
import random
import string
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from baresip import Baresip, account, require_tool
from conftest import ServerFactory
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
                 expires: int = 300) -> bytes | None:
    """REGISTER with digest auth and the given User-Agent / Contact display name."""
    ruri = "sip:127.0.0.1"
    to = f"<sip:{line}@{REALM}>"
    contact = f"{display} <sip:{line}@127.0.0.1:{client.port}>".strip()
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
            shot = tmp_path / "status-page.png"
            page.screenshot(path=str(shot), full_page=True)
            with capsys.disabled():
                print(f"\nstatus page screenshot: {shot}")
            assert problems == [], problems  # no CSP violation, no script error
        finally:
            page.close()
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


def test_api_docs_are_the_cli_json(web: tuple[Server, int]) -> None:
    srv, port = web
    for name in ("registry", "bans", "runstate"):
        status, _, body = http(port, f"/api/{name}")
        assert status == 200
        cli = srv.cli(name, "--json")
        assert cli.returncode == 0, cli.stderr
        assert json.loads(body) == json.loads(cli.stdout), name
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

