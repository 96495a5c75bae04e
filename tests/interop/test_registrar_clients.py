"""The registrar against real clients: sipsak, SIPp (80 lines, refreshes), digest
SHA-256 / SHA-512-256, replay and stale nonces, bad input, store failures.

``test_registrar_redis.py`` runs the shared tests of this module again with
the redis backend by overriding the ``store_conf`` fixture.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from baresip import require_tool
from support import (
    PASSWORDS,
    Server,
    UdpClient,
    auth_header,
    free_port,
    header_values,
    sip_request,
    status_of,
    write_config,
)

from sipyard.sip.digest import client_response
from sipyard.sip.headers import parse_auth

pytestmark = pytest.mark.interop

ALL_LINES = range(10, 90)
SHA_LINES = {"12": "SHA-256", "13": "SHA-512-256"}


# -- fixtures -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store_conf() -> dict[str, Any] | None:
    """The ``[store]`` table for the servers of this module (None: sqlite in the data dir)."""
    return None


def start_server(d: Path, store: dict[str, Any] | None, **kw: Any) -> Server:
    """A server in ``d``; ``{prefix}`` in a store URL becomes a per-server key prefix."""
    kw.setdefault("lines", ALL_LINES)
    if store and "{prefix}" in str(store.get("url", "")):
        store = {**store, "url": store["url"].replace("{prefix}", f"t-{d.name}:")}
    cfg = write_config(d, store=store, **kw)
    return Server(cfg).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           store_conf: dict[str, Any] | None) -> Iterator[Server]:
    """80 lines 10-89 (extensions default to 10-89), MD5 (SIPp knows nothing else)."""
    srv = start_server(tmp_path_factory.mktemp("clients"), store_conf)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def sha_server(tmp_path_factory: pytest.TempPathFactory,
               store_conf: dict[str, Any] | None) -> Iterator[Server]:
    """Lines 10-13; 12 and 13 offered only SHA-256 and SHA-512-256."""
    srv = start_server(tmp_path_factory.mktemp("sha"), store_conf, lines=range(10, 14),
                       line_extra={n: {"algorithms": [a]} for n, a in SHA_LINES.items()})
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server: Server) -> Iterator[UdpClient]:
    c = UdpClient(server.addr)
    try:
        yield c
    finally:
        c.close()


# -- helpers -----------------------------------------------------------------------------

def registry(server: Server, line: str) -> list[dict[str, Any]]:
    r = server.cli("registry", line, "--json")
    assert r.returncode == 0, r.stderr
    (entry,) = json.loads(r.stdout)["lines"]
    bindings: list[dict[str, Any]] = entry["bindings"]
    return bindings


def contacts(server: Server, line: str) -> list[str]:
    return [b["contact"] for b in registry(server, line)]


def challenge_params(resp: bytes) -> list[dict[str, str]]:
    return [parse_auth(v)[1] for v in header_values(resp, "WWW-Authenticate")]


class Register:
    """One REGISTER dialog (Call-ID, CSeq) of a test phone."""

    def __init__(self, client: UdpClient, line: str, *, expires: int = 300,
                 contact: str | None = None) -> None:
        self.client = client
        self.line = line
        self.call_id = uuid.uuid4().hex
        self.cseq = 0
        self.ruri = "sip:127.0.0.1"
        self.to = f"<sip:{line}@sipyard.test>"
        self.contact = contact or f"<sip:{line}-{uuid.uuid4().hex[:6]}@127.0.0.1:{client.port}>"
        self.expires = expires

    def send(self, authorization: str | None = None, *, extra: list[tuple[str, str]] = (),  # type: ignore[assignment]
             contact: str | None = None, expires: int | None = None, timeout: float = 3.0
             ) -> bytes | None:
        self.cseq += 1
        hdrs = [("Contact", contact or self.contact),
                ("Expires", str(self.expires if expires is None else expires))]
        if authorization is not None:
            hdrs.append(("Authorization", authorization))
        hdrs += list(extra)
        return self.client.request(sip_request(
            "REGISTER", self.ruri, to=self.to, frm=self.to, headers=hdrs, call_id=self.call_id,
            cseq=self.cseq, local_port=self.client.port), timeout=timeout)

    def authenticated(self, answer: Callable[[dict[str, str], str], str] | None = None,
                      password: str | None = None) -> tuple[bytes | None, str]:
        """REGISTER, answer the 401 (with ``answer(challenge, password)``), return (final, auth)."""
        first = self.send()
        assert status_of(first) == 401, first
        assert first is not None
        pw = password or PASSWORDS[self.line]
        if answer is None:
            auth = auth_header(first, self.line, pw, "REGISTER", self.ruri)
        else:
            auth = answer(challenge_params(first)[0], pw)
        return self.send(auth), auth


# -- sipsak --------------------------------------------------------------------------

def sipsak(server: Server, line: str, password: str, contact_port: int
           ) -> subprocess.CompletedProcess[str]:
    exe = require_tool("sipsak")
    return subprocess.run(
        [exe, "-U", "-i", "-C", f"sip:{line}@127.0.0.1:{contact_port}",
         "-s", f"sip:{line}@127.0.0.1:{server.port}", "-u", line, "-a", password, "-x", "300",
         "-vv"], capture_output=True, text=True, timeout=20)


def test_sipsak_registers_with_md5(server: Server) -> None:
    port = free_port()
    r = sipsak(server, "10", PASSWORDS["10"], port)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "usrloc tests completed successful" in r.stdout
    (b,) = [b for b in registry(server, "10") if b["contact"] == f"sip:10@127.0.0.1:{port}"]
    assert 290 <= b["expires_in"] <= 300 and b["user_agent"].startswith("sipsak")


def test_sipsak_wrong_password_gets_401_again(server: Server) -> None:
    port = free_port()
    r = sipsak(server, "11", "wrong-password", port)
    assert r.returncode != 0
    assert "401" in r.stdout + r.stderr
    assert f"sip:11@127.0.0.1:{port}" not in contacts(server, "11")


# -- SIPp: 80 lines, several rounds with refreshes ------------------------------------

ROUNDS_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<!-- One call = a phone's first REGISTER (401, auth, 200) and a refresh in the same
     Call-ID with a higher CSeq (401 with a new nonce, auth, 200). -->
<scenario name="register_rounds">
  {steps}
</scenario>
"""
STEP = """
  <send retrans="500">
    <![CDATA[

      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag[call_number]
      To: <sip:[field0]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: {cseq} REGISTER
      Contact: <sip:[field0]@[local_ip]:[local_port];transport=[transport]>
      {auth}
      Expires: {expires}
      User-Agent: sipp-rounds
      Content-Length: 0

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="{expect}" {attr}/>
"""


def rounds_scenario() -> str:
    steps = []
    for i, expires in ((0, 3600), (2, 1800)):
        steps.append(STEP.format(cseq=i + 1, auth="", expires=expires, expect=401,
                                 attr='auth="true"'))
        steps.append(STEP.format(cseq=i + 2, auth="[field1]", expires=expires, expect=200,
                                 attr=""))
        if i == 0:
            steps.append('  <pause milliseconds="100"/>')
    return ROUNDS_XML.format(steps="".join(steps))


def sipp_stats(path: Path) -> dict[str, str]:
    rows = list(csv.reader(io.StringIO(path.read_text()), delimiter=";"))
    return dict(zip(rows[0], rows[-1], strict=False))


def test_sipp_registers_all_80_lines_with_refreshes(server: Server, tmp_path: Path) -> None:
    exe = require_tool("sipp")
    users = tmp_path / "users.csv"
    users.write_text("SEQUENTIAL\n" + "".join(
        f"{n};[authentication username={n} password=pw{n}secret];\n" for n in ALL_LINES))
    scenario = tmp_path / "rounds.xml"
    scenario.write_text(rounds_scenario())
    stats = tmp_path / "stats.csv"
    calls = 2 * len(ALL_LINES)  # two rounds: 320 authenticated REGISTERs in all
    port = free_port()
    r = subprocess.run(
        [exe, "-sf", str(scenario), "-inf", str(users), f"127.0.0.1:{server.port}",
         "-i", "127.0.0.1", "-p", str(port), "-r", "200", "-l", "40", "-m", str(calls),
         "-timeout", "40s", "-nostdin", "-trace_stat", "-stf", str(stats)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    st = sipp_stats(stats)
    assert (st["SuccessfulCall(C)"], st["FailedCall(C)"]) == (str(calls), "0"), r.stderr[-3000:]
    assert r.returncode == 0
    listing = server.cli("registry", "--json")
    by_line = {ln["line"]: ln["bindings"] for ln in json.loads(listing.stdout)["lines"]}
    want = f"sip:{{}}@127.0.0.1:{port};transport=UDP"
    for n in ALL_LINES:
        got = [b for b in by_line[str(n)] if b["contact"] == want.format(n)]
        assert len(got) == 1, (n, by_line[str(n)])
        assert 1700 <= got[0]["expires_in"] <= 1800  # the refresh's expiry won


# -- digest algorithms --------------------------------------------------------------------

_HASH = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256,
         "SHA-512-256": lambda b: hashlib.new("sha512_256", b)}


def rfc7616_authorization(ch: dict[str, str], username: str, password: str, method: str,
                          uri: str, nc: int = 1, cnonce: str = "0a4f113b") -> str:
    """RFC 7616 §3.4.1 as written there, independent of sipyard's code."""
    alg = ch.get("algorithm", "MD5")

    def h(s: str) -> str:
        return str(_HASH[alg](s.encode()).hexdigest())

    a1 = f"{username}:{ch['realm']}:{password}"
    a2 = f"{method}:{uri}"
    ncv = f"{nc:08x}"
    response = h(f"{h(a1)}:{ch['nonce']}:{ncv}:{cnonce}:auth:{h(a2)}")
    parts = [f'username="{username}"', f'realm="{ch["realm"]}"', f'uri="{uri}"',
             f"algorithm={alg}", f'nonce="{ch["nonce"]}"', f"nc={ncv}", f'cnonce="{cnonce}"',
             "qop=auth", f'response="{response}"']
    if "opaque" in ch:
        parts.append(f'opaque="{ch["opaque"]}"')
    return "Digest " + ", ".join(parts)


def test_rfc7616_example_vectors() -> None:
    """The in-test implementation reproduces RFC 7616 §3.9.1 (MD5 and SHA-256)."""
    ch = {"realm": "http-auth@example.org",
          "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"}
    cn = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    for alg, want in (("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
                      ("SHA-256", "753927fa0e85d155564e2e272a28d180"
                                  "2ca10daf4496794697cf8db5856cb6c1")):
        value = rfc7616_authorization({**ch, "algorithm": alg}, "Mufasa", "Circle of Life",
                                      "GET", "/dir/index.html", cnonce=cn)
        assert f'response="{want}"' in value


def sipyard_client(line: str) -> Callable[[dict[str, str], str], str]:
    def answer(ch: dict[str, str], pw: str) -> str:
        return client_response(line, ch["realm"], pw, "REGISTER", "sip:127.0.0.1", ch["nonce"],
                               cnonce=uuid.uuid4().hex[:12], algorithm=ch["algorithm"],
                               opaque=ch.get("opaque"))
    return answer


def rfc_client(line: str) -> Callable[[dict[str, str], str], str]:
    return lambda ch, pw: rfc7616_authorization(ch, line, pw, "REGISTER", "sip:127.0.0.1",
                                                cnonce=uuid.uuid4().hex[:12])


def aiosipua_client(line: str) -> Callable[[dict[str, str], str], str]:
    from aiosipua.auth import SipDigestAuth, build_credentials
    from aiosipua.headers import AuthChallenge, stringify_auth

    def answer(ch: dict[str, str], pw: str) -> str:
        creds = build_credentials(SipDigestAuth(line, pw), AuthChallenge("Digest", dict(ch)),
                                  "REGISTER", "sip:127.0.0.1")
        assert creds is not None, "aiosipua cannot answer this challenge"
        return str(stringify_auth(creds))
    return answer


CLIENTS = {"sipyard": sipyard_client, "rfc7616": rfc_client, "aiosipua": aiosipua_client}


@pytest.mark.parametrize("line,client_name", [
    ("12", "sipyard"), ("12", "rfc7616"), ("12", "aiosipua"),
    ("13", "sipyard"), ("13", "rfc7616"), ("10", "rfc7616"), ("10", "aiosipua")])
def test_digest_algorithms(sha_server: Server, line: str, client_name: str) -> None:
    want = SHA_LINES.get(line, "MD5")
    client = UdpClient(sha_server.addr)
    try:
        reg = Register(client, line)
        first = reg.send()
        assert status_of(first) == 401 and first is not None
        (ch,) = challenge_params(first)  # a SHA-2 line is offered only its algorithm
        assert ch["algorithm"] == want and ch["qop"] == "auth"
        final = reg.send(CLIENTS[client_name](line)(ch, PASSWORDS[line]))
        assert status_of(final) == 200, final
        assert reg.contact.strip("<>") in contacts(sha_server, line)
        # The wrong password with the same algorithm is refused.
        res, _ = Register(client, line).authenticated(CLIENTS[client_name](line), password="no")
        assert status_of(res) == 401
    finally:
        client.close()


def test_answering_sha_line_with_md5_is_refused(sha_server: Server) -> None:
    client = UdpClient(sha_server.addr)
    try:
        reg = Register(client, "12")
        first = reg.send()
        assert first is not None
        ch = challenge_params(first)[0]
        res = reg.send(rfc7616_authorization({**ch, "algorithm": "MD5"}, "12", PASSWORDS["12"],
                                             "REGISTER", reg.ruri))
        assert status_of(res) == 401
    finally:
        client.close()


# -- replay and stale nonces ------------------------------------------------------------

def test_replayed_authorization_is_refused(server: Server, client: UdpClient) -> None:
    reg = Register(client, "13")
    res, auth = reg.authenticated()
    assert status_of(res) == 200
    again = reg.send(auth)  # a new transaction, same nonce and nc
    assert status_of(again) == 401 and again is not None
    assert challenge_params(again)[0].get("stale") == "true"
    # From another source and Call-ID too.
    other = UdpClient(server.addr)
    try:
        replay = Register(other, "13").send(auth)
        assert status_of(replay) == 401
    finally:
        other.close()


@pytest.fixture(scope="module")
def short_nonce_server(tmp_path_factory: pytest.TempPathFactory,
                       store_conf: dict[str, Any] | None) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("stale"), store_conf, lines=range(10, 12),
                       server={"nonce_ttl": 2})
    try:
        yield srv
    finally:
        srv.stop()


def test_expired_nonce_gets_stale_challenge(short_nonce_server: Server) -> None:
    c = UdpClient(short_nonce_server.addr)
    try:
        reg = Register(c, "10")
        first = reg.send()
        assert first is not None
        time.sleep(3.0)
        res = reg.send(auth_header(first, "10", PASSWORDS["10"], "REGISTER", reg.ruri))
        assert status_of(res) == 401 and res is not None
        (ch,) = challenge_params(res)
        assert ch.get("stale") == "true"
        final = reg.send(auth_header(res, "10", PASSWORDS["10"], "REGISTER", reg.ruri))
        assert status_of(final) == 200
        assert "failure" not in short_nonce_server.log()  # stale is no failed login
    finally:
        c.close()


# -- bad input ---------------------------------------------------------------------------

def reason_of(resp: bytes | None) -> str:
    assert resp is not None
    return resp.split(b"\r\n", 1)[0].decode().split(" ", 2)[2]


@pytest.mark.parametrize("header,value,named", [
    ("Contact", "<sip:10@127.0.0.1:5999", "Contact"),
    ("Contact", "<sip:10@127.0.0.1:5999>;expires=soon", "Contact"),
    ("Contact", "<sip:10@127.0.0.1:5999>;q=2", "Contact"),
    ("Expires", "tomorrow", "Expires"),
    ("Expires", "-1", "Expires"),
])
def test_malformed_headers_are_400_naming_them(client: UdpClient, header: str, value: str,
                                               named: str) -> None:
    reg = Register(client, "14")
    first = reg.send()
    assert first is not None
    auth = auth_header(first, "14", PASSWORDS["14"], "REGISTER", reg.ruri)
    if header == "Contact":
        res = reg.send(auth, contact=value)
    else:
        reg.cseq += 1
        res = client.request(sip_request(
            "REGISTER", reg.ruri, to=reg.to, frm=reg.to, call_id=reg.call_id, cseq=reg.cseq,
            headers=[("Contact", reg.contact), (header, value), ("Authorization", auth)],
            local_port=client.port))
    assert status_of(res) == 400, res
    assert named in reason_of(res)


@pytest.mark.parametrize("value", [
    'Digest username="14", realm="sipyard.test", nonce="abc',
    'Digest realm="sipyard.test", nonce="x", uri="sip:127.0.0.1", response="0"',
])
def test_malformed_authorization_is_400(client: UdpClient, value: str) -> None:
    res = Register(client, "14").send(value)
    assert status_of(res) == 400 and reason_of(res) == "Bad Authorization header"


def test_unknown_auth_scheme_is_ignored_and_challenged(client: UdpClient) -> None:
    """RFC 4475 3.3.7 (regaut01): another scheme is not an error, just no credentials."""
    res = Register(client, "14").send("NoOneKnowsThisScheme opaque-data=here")
    assert status_of(res) == 401 and res is not None
    assert challenge_params(res)[0]["algorithm"] == "MD5"


def test_star_needs_expires_zero(client: UdpClient, server: Server) -> None:
    reg = Register(client, "15")
    res, _ = reg.authenticated()
    assert status_of(res) == 200
    first = reg.send(contact="*", expires=300)
    assert first is not None
    res = reg.send(auth_header(first, "15", PASSWORDS["15"], "REGISTER", reg.ruri),
                   contact="*", expires=300)
    assert status_of(res) == 400 and "Contact" in reason_of(res)
    first = reg.send(contact="*", expires=0)
    assert first is not None
    res = reg.send(auth_header(first, "15", PASSWORDS["15"], "REGISTER", reg.ruri),
                   contact="*", expires=0)
    assert status_of(res) == 200 and header_values(res or b"", "Contact") == []
    assert contacts(server, "15") == []


def test_too_brief_is_423_with_min_expires(client: UdpClient) -> None:
    reg = Register(client, "16", expires=5)
    res, _ = reg.authenticated()
    assert status_of(res) == 423 and res is not None
    assert header_values(res, "Min-Expires") == ["60"]


# -- store failure (sqlite: the database locked by someone else) ----------------------------

def test_store_error_is_500_with_retry_after_never_a_false_200(
        tmp_path: Path, store_conf: dict[str, Any] | None) -> None:
    if store_conf is not None:
        pytest.skip("sqlite-specific; the redis module kills its redis instead")
    srv = start_server(tmp_path / "locked", None, lines=range(10, 12))
    c = UdpClient(srv.addr)
    db = sqlite3.connect(srv.data / "sipyard.db", isolation_level=None, timeout=1)
    try:
        reg = Register(c, "10")
        first = reg.send()
        assert first is not None
        db.execute("BEGIN EXCLUSIVE")
        res = reg.send(auth_header(first, "10", PASSWORDS["10"], "REGISTER", reg.ruri),
                       timeout=12)
        assert status_of(res) == 500, res
        assert header_values(res or b"", "Retry-After")
        db.execute("ROLLBACK")
        assert contacts(srv, "10") == []
        res, _ = reg.authenticated()  # the store works again
        assert status_of(res) == 200
    finally:
        db.close()
        c.close()
        srv.stop()
