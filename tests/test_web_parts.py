"""The status page's parts without a server: access rules, the HTTP reader's limits, the
history ring, the metrics collector's label checks and the ``[web]`` config section.

Non-loopback peers appear here only as strings handed to the access function (192.0.2.0/24
is TEST-NET-1): nothing is ever sent to them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sipyard.config import ConfigError, load_config
from sipyard.stats import KNOWN_METHODS
from sipyard.web.access import cookie_value, decide, is_loopback, parse_cookies
from sipyard.web.history import MAX_SAMPLES, History
from sipyard.web.http import HttpServer, Request, Response

TOKEN = "correct-horse-battery-staple"


# -- access ----------------------------------------------------------------------------------

@pytest.mark.parametrize("ip, loop", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("192.0.2.7", False), ("10.1.2.3", False), ("::ffff:192.0.2.7", False),
    ("2001:db8::1", False), ("fe80::1%eth0", False), ("", False), ("localhost", False),
])
def test_is_loopback(ip: str, loop: bool) -> None:
    assert is_loopback(ip) is loop


def test_without_token_only_loopback_reads_and_nobody_writes() -> None:
    ok = decide("127.0.0.1", token=None, actions=False, listen_host="127.0.0.1",
                host="127.0.0.1:8080")
    assert ok.read and not ok.write
    refused = decide("192.0.2.7", token=None, actions=False, listen_host="0.0.0.0",
                     host="192.0.2.1:8080")
    assert not refused.read and refused.status == 403
    # a forged header changes nothing: only the socket's peer address counts
    forged = decide("192.0.2.7", token=None, actions=False, listen_host="0.0.0.0",
                    host="127.0.0.1", authorization="Bearer " + TOKEN)
    assert not forged.read


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1:8080", True), ("localhost:8080", True), ("[::1]:8080", True),
    ("LOCALHOST", True), (None, True), ("app.localhost:8080", True),
    ("evil.example:8080", False), ("rebind.example.com", False), ("", False),
])
def test_host_header_guards_against_dns_rebinding(host: str | None, ok: bool) -> None:
    d = decide("127.0.0.1", token=None, actions=False, listen_host="127.0.0.1", host=host)
    assert d.read is ok


def test_with_token_everyone_needs_it() -> None:
    kw = {"token": TOKEN, "actions": True, "listen_host": "0.0.0.0"}
    assert decide("127.0.0.1", **kw).status == 401  # type: ignore[arg-type]
    assert not decide("192.0.2.7", **kw).read  # type: ignore[arg-type]
    header = decide("192.0.2.7", authorization=f"Bearer {TOKEN}", **kw)  # type: ignore[arg-type]
    assert header.read and header.write
    query = decide("192.0.2.7", query_token=TOKEN, **kw)  # type: ignore[arg-type]
    assert query.read and not query.write
    cookie = decide("192.0.2.7", cookie=cookie_value(TOKEN), **kw)  # type: ignore[arg-type]
    assert cookie.read and not cookie.write  # CSRF: a cookie never authorises an action
    assert not decide("192.0.2.7", cookie=TOKEN, **kw).read  # type: ignore[arg-type]
    assert not decide("192.0.2.7", authorization=f"Bearer {TOKEN}x", **kw).read  # type: ignore[arg-type]
    assert not decide("192.0.2.7", authorization=f"Basic {TOKEN}", **kw).read  # type: ignore[arg-type]
    no_actions = decide("127.0.0.1", token=TOKEN, actions=False, listen_host="127.0.0.1",
                        authorization=f"bearer {TOKEN}")
    assert no_actions.read and not no_actions.write


def test_cookie_parsing_and_value() -> None:
    assert parse_cookies("a=1; sipyard_token=abc ; a=2") == {"a": "1", "sipyard_token": "abc"}
    assert parse_cookies(None) == {}
    assert TOKEN not in cookie_value(TOKEN) and len(cookie_value(TOKEN)) == 64


# -- history ---------------------------------------------------------------------------------

def test_history_ring_is_bounded_and_counts_per_minute() -> None:
    h = History()
    t = 1_700_000_000.0
    for i in range(3 * MAX_SAMPLES):
        h.sample(t + 60 * i, bindings=i % 7, requests={"REGISTER": 2 * i, "INVITE": i})
    assert len(h.samples) == MAX_SAMPLES
    doc = h.doc(t + 60 * 3 * MAX_SAMPLES + 5, 3, {"REGISTER": 6 * MAX_SAMPLES + 2,
                                                    "INVITE": 3 * MAX_SAMPLES})
    assert len(doc["t"]) == MAX_SAMPLES + 1 and doc["partial"] is True
    assert doc["requests"][-2] == 3 and doc["registers"][-2] == 2  # one minute's growth
    assert doc["requests"][-1] == 5 and doc["registers"][-1] == 4  # the running minute
    assert doc["t"] == sorted(doc["t"]) and doc["t"][-2] % 60 == 0


# -- metrics ---------------------------------------------------------------------------------

def test_collector_keeps_labels_to_known_values() -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    from sipyard.metrics import Snapshot, render

    snap = Snapshot(uptime=1.0, requests={"INVITE": 2, "other": 3, "FOO\"}\n": 4},
                    responses={"2xx": 1, "9xx": 5}, codes={200: 1, 999: 2, 42: 1},
                    bindings=3, auth_failures=0, bans=0, bans_total=0, suspended=0,
                    transactions=0, tcp_connections=0, loop_lag=0.0,
                    hooks={"started": 1, "bad name{}": 2}, calls=0)
    text = render(snap).decode()
    fams = {f.name: f for f in parser.text_string_to_metric_families(text)}
    methods = {s.labels["method"]: s.value for s in fams["sipyard_requests"].samples}
    assert methods == {"INVITE": 2, "other": 7}
    assert set(methods) <= KNOWN_METHODS | {"other"}
    assert [s.labels["class"] for s in fams["sipyard_responses"].samples] == ["2xx"]
    assert [s.labels["code"] for s in fams["sipyard_responses_by_code"].samples] == ["200"]
    assert "sipyard_hooks_started" in fams and "bad name" not in text


# -- the HTTP reader's limits ---------------------------------------------------------------

async def _echo(req: Request) -> Response:
    return Response(200, f"{req.method} {req.path} {len(req.body)}".encode())


def _exchange(server: HttpServer, data: bytes, *, wait: float = 3.0) -> bytes:
    async def main() -> bytes:
        host, port = await server.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(data)
            await writer.drain()
            got = await asyncio.wait_for(reader.read(), wait)
            writer.close()
            return got
        finally:
            await server.close()
    return asyncio.run(main())


@pytest.mark.parametrize("data, status", [
    (b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", b"200"),
    (b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"200"),
    (b"GET /x HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
    (b"POST /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", b"413"),
    (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"501"),
    (b"GET /x\r\n\r\n", b"400"),
    (b"GET http://evil/ HTTP/1.1\r\n\r\n", b"400"),
    (b"GET /x HTTP/1.1\r\n folded\r\n\r\n", b"400"),
    (b"GET /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", b"400"),
])
def test_http_limits(data: bytes, status: bytes) -> None:
    got = _exchange(HttpServer(_echo), data)
    assert got.startswith(b"HTTP/1.1 " + status), got[:80]
    assert b"\r\nConnection: close\r\n" in got
    assert b"\r\nContent-Security-Policy: default-src 'self'" in got
    assert b"\r\nX-Content-Type-Options: nosniff\r\n" in got


def test_http_slow_client_is_dropped() -> None:
    got = _exchange(HttpServer(_echo, head_timeout=0.3), b"GET /x HTTP/1.1\r\n", wait=3)
    assert got == b""  # closed without an answer once the head timeout ran out


def test_http_client_limit() -> None:
    async def main() -> bytes:
        server = HttpServer(_echo, max_clients=1, head_timeout=2)
        host, port = await server.start("127.0.0.1", 0)
        try:
            _, w1 = await asyncio.open_connection(host, port)  # holds the only slot
            await asyncio.sleep(0.1)
            r2, w2 = await asyncio.open_connection(host, port)
            w2.write(b"GET / HTTP/1.1\r\n\r\n")
            got = await asyncio.wait_for(r2.read(), 3)
            w1.close()
            w2.close()
            return got
        finally:
            await server.close()
    assert asyncio.run(main()).startswith(b"HTTP/1.1 503")


# -- config ----------------------------------------------------------------------------------

def _load(tmp_path: Path, web: str) -> object:
    path = tmp_path / "sipyard.toml"
    path.write_text(f'[server]\nrealm = "r"\ndata_dir = "d"\n\n[web]\n{web}\n')
    return load_config(path).web


def test_web_config(tmp_path: Path) -> None:
    web = _load(tmp_path, "")
    assert (web.listen, web.token, web.actions) == (None, None, False)  # type: ignore[attr-defined]
    web = _load(tmp_path, f'listen = "127.0.0.1:8080"\ntoken = "{TOKEN}"\nactions = true')
    assert web.listen == ("127.0.0.1", 8080) and web.token == TOKEN  # type: ignore[attr-defined]
    assert TOKEN not in repr(web)


@pytest.mark.parametrize("web, key", [
    ('listen = "8080"', "web.listen"),
    ('token = "short"', "web.token"),
    ('token = "has;a;semicolon-in-it"', "web.token"),
    ("actions = true", "web.actions"),
    ("colour = 1", "web.colour"),
])
def test_web_config_errors(tmp_path: Path, web: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, web)
    assert info.value.key == key

