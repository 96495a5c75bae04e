"""Authenticator: the one place that decides who is asking (digest against lines)."""

from __future__ import annotations

import hashlib
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from support import PASSWORDS, TORTURE, sip_request, write_config

from sipyard.auth import Authenticator, load_secret
from sipyard.config import load_config
from sipyard.security import Guard
from sipyard.sip.digest import client_response
from sipyard.sip.errors import ParseError
from sipyard.sip.headers import parse_auth
from sipyard.sip.message import Request, parse_message

NOW = 1_800_000_000.0
IP = "192.0.2.7"
SECRET = b"k" * 32


def config(tmp: Path, **kw: Any) -> Any:
    server = {"nonce_ttl": 30}
    server.update(kw.pop("server", {}))
    kw.setdefault("lines", range(10, 14))
    return load_config(write_config(tmp / "conf", server=server, **kw))


@pytest.fixture
def auth(tmp_path: Path) -> Authenticator:
    cfg = config(tmp_path, line_extra={"12": {"algorithms": ["SHA-256"]},
                                       "13": {"algorithms": ["SHA-512-256"]}})
    return Authenticator(cfg, SECRET, Guard(max_failures=5, window=60, ban_seconds=60))


def request(auth_values: list[str] = (), method: str = "REGISTER",  # type: ignore[assignment]
            uri: str = "sip:sipyard.test") -> Request:
    msg = parse_message(sip_request(method, uri, to="<sip:10@sipyard.test>",
                                    headers=[("Authorization", v) for v in auth_values],
                                    call_id=uuid.uuid4().hex))
    assert isinstance(msg, Request)
    return msg


def params(challenge: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    out = []
    for name, value in challenge:
        assert name == "WWW-Authenticate"
        scheme, p = parse_auth(value)
        assert scheme == "Digest"
        out.append(p)
    return out


def answer(auth: Authenticator, line: str, password: str | None = None, *, now: float = NOW,
           nc: int = 1, algorithm: str | None = None, method: str = "REGISTER") -> str:
    ch = params(auth.challenge_for(line, now))[0]
    return client_response(line, ch["realm"], password or PASSWORDS[line], method,
                           "sip:sipyard.test", ch["nonce"], nc=nc, cnonce=uuid.uuid4().hex[:8],
                           algorithm=algorithm or ch["algorithm"], opaque=ch.get("opaque"))


def test_no_credentials_is_a_plain_challenge_not_a_failure(auth: Authenticator) -> None:
    r = auth.check(request(), IP, NOW)
    assert r.line is None
    (p,) = params(r.challenge)
    assert (p["realm"], p["algorithm"], p["qop"]) == ("sipyard.test", "MD5", "auth")
    assert "stale" not in p and auth.guard.total_failures == 0


def test_unknown_scheme_is_ignored_and_challenged(auth: Authenticator) -> None:
    """RFC 4475 3.3.7 regaut01."""
    msg = parse_message((TORTURE / "regaut01.dat").read_bytes())
    assert isinstance(msg, Request)
    r = auth.check(msg, IP, NOW)
    assert r.line is None and params(r.challenge)[0]["algorithm"] == "MD5"
    assert auth.guard.total_failures == 0


def test_other_realm_is_ignored_ours_still_counts(auth: Authenticator) -> None:
    other = client_response("10", "elsewhere", "pw", "REGISTER", "sip:x", "n", algorithm="MD5")
    r = auth.check(request([other]), IP, NOW)
    assert r.line is None and auth.guard.total_failures == 0
    r = auth.check(request([other, answer(auth, "10")]), IP, NOW)
    assert r.line == "10"


def test_right_password_authenticates(auth: Authenticator) -> None:
    assert auth.check(request([answer(auth, "10")]), IP, NOW).line == "10"
    assert auth.check(request([answer(auth, "11", method="INVITE")], "INVITE", "sip:11@x"),
                      IP, NOW).line == "11"


def test_wrong_password_and_unknown_user_look_the_same(auth: Authenticator,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sipyard.security")
    wrong = auth.check(request([answer(auth, "10", "nope")]), IP, NOW)
    nobody = auth.check(request([answer(auth, "10", "pw")
                                 .replace('username="10"', 'username="77"')]), IP, NOW)
    assert wrong.line is None and nobody.line is None
    shape = [sorted(p) for p in params(wrong.challenge)]
    assert shape == [sorted(p) for p in params(nobody.challenge)]
    assert auth.guard.failures(IP, NOW) == 2
    assert caplog.messages == [
        f"sipyard auth failure: src={IP} line=10 reason=wrong-credentials",
        f"sipyard auth failure: src={IP} line=77 reason=wrong-credentials"]


@pytest.mark.parametrize("value", [
    'Digest username="10", realm="sipyard.test", nonce="abc',          # unterminated quote
    'Digest username="10",, realm',                                   # name without =
    'Digest realm="sipyard.test", nonce="x", response="y"',           # no username
    'Digest username="10", username="11", realm="sipyard.test"',      # duplicate
])
def test_unreadable_digest_is_400_and_counted(auth: Authenticator, value: str) -> None:
    with pytest.raises(ParseError) as info:
        auth.check(request([value]), IP, NOW)
    assert (info.value.status, info.value.reason) == (400, "Bad Authorization header")
    assert auth.guard.failures(IP, NOW) == 1


def test_expired_nonce_with_right_password_is_stale(auth: Authenticator) -> None:
    value = answer(auth, "10", now=NOW)
    r = auth.check(request([value]), IP, NOW + 31)
    assert r.line is None and params(r.challenge)[0]["stale"] == "true"
    assert auth.guard.total_failures == 0
    # Wrong password on an expired nonce: not stale, counted.
    r = auth.check(request([answer(auth, "10", "bad", now=NOW)]), IP, NOW + 31)
    assert "stale" not in params(r.challenge)[0] and auth.guard.total_failures == 1


def test_replay_is_refused_with_stale(auth: Authenticator) -> None:
    value = answer(auth, "10")
    assert auth.check(request([value]), IP, NOW).line == "10"
    r = auth.check(request([value]), IP, NOW + 1)
    assert r.line is None and params(r.challenge)[0]["stale"] == "true"
    assert auth.guard.total_failures == 0


def test_reload_keeps_the_replay_table(auth: Authenticator, tmp_path: Path) -> None:
    value = answer(auth, "10")
    assert auth.check(request([value]), IP, NOW).line == "10"
    auth.configure(config(tmp_path / "again", line_extra={"12": {"algorithms": ["SHA-256"]}}))
    assert auth.check(request([value]), IP, NOW + 1).line is None
    # A reload that changes the digest settings starts a new server (and a new offer).
    auth.configure(config(tmp_path / "sha", server={"algorithms": ["SHA-256", "MD5"]}))
    assert [p["algorithm"] for p in params(auth.challenge_for("10", NOW))] == ["SHA-256", "MD5"]


@pytest.mark.parametrize("line,alg", [("12", "SHA-256"), ("13", "SHA-512-256")])
def test_per_line_algorithms(auth: Authenticator, line: str, alg: str) -> None:
    (p,) = params(auth.challenge_for(line, NOW))
    assert p["algorithm"] == alg
    assert auth.check(request([answer(auth, line)]), IP, NOW).line == line
    # MD5 on a nonce that offered only the line's algorithm: refused and counted.
    r = auth.check(request([answer(auth, line, algorithm="MD5")]), IP, NOW)
    assert r.line is None and auth.guard.total_failures == 1
    # The challenge for an unknown line is the server default, as for any default line.
    assert params(auth.challenge_for("77", NOW))[0]["algorithm"] == "MD5"
    assert params(auth.challenge_for(None, NOW))[0]["algorithm"] == "MD5"


def test_configured_ha1_instead_of_secret(tmp_path: Path) -> None:
    ha1 = hashlib.md5(b"40:sipyard.test:hashed-pw").hexdigest()
    cfg = config(tmp_path, lines=[], extra=f'[lines.40]\nha1_md5 = "{ha1}"\n')
    a = Authenticator(cfg, SECRET, Guard())
    ok = answer(a, "40", "hashed-pw")
    assert a.check(request([ok]), IP, NOW).line == "40"
    assert a.check(request([answer(a, "40", "other")]), IP, NOW).line is None


def test_load_secret_persists(tmp_path: Path) -> None:
    first = load_secret(tmp_path / "data")
    assert len(first) == 32 and load_secret(tmp_path / "data") == first
    assert (tmp_path / "data" / "nonce.key").stat().st_mode & 0o777 == 0o600
