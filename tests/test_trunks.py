"""Trunks without a network: the digest client against our digest server, the config, and
the registration loop's timing under a fake clock (a bad provider never makes it faster
than its back-off)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sipyard.config import ConfigError, load_config
from sipyard.sip.digest import DigestServer, VerdictStatus
from sipyard.sip.digest_client import DigestClient, parse_challenges
from sipyard.sip.message import Response, parse_message
from sipyard.sip.source import Source
from sipyard.trunks.board import TrunkBoard
from sipyard.trunks.registration import Registration

# -- digest client ------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["MD5", "SHA-256", "SHA-512-256"])
def test_digest_client_round_trip_and_nc(alg: str) -> None:
    server = DigestServer(b"k" * 32, "provider.test", algorithms=(alg,))
    ha1 = {alg: __import__("sipyard.sip.digest", fromlist=["x"]).compute_ha1(
        "office", "provider.test", "s3cret", alg)}
    values = server.challenge(1000.0)
    client = DigestClient("office", "s3cret", realm="provider.test")
    ch = client.pick(values)
    assert ch is not None and ch.algorithm == alg
    first = client.answer(ch, "REGISTER", "sip:provider.test")
    assert "nc=00000001" in first and "qop=auth" in first
    v = server.verify(first, "REGISTER", 1001.0, lambda user, a: ha1.get(a))
    assert v.status is VerdictStatus.OK
    again = client.again("REGISTER", "sip:provider.test")
    assert again is not None and "nc=00000002" in again
    assert server.verify(again, "REGISTER", 1002.0,
                         lambda user, a: ha1.get(a)).status is VerdictStatus.OK
    # the same answer twice is a replay
    assert server.verify(again, "REGISTER", 1003.0,
                         lambda user, a: ha1.get(a)).status is VerdictStatus.REPLAY


def test_digest_client_picks_strongest_and_respects_realm() -> None:
    values = ['Digest realm="p", nonce="n1", algorithm=MD5, qop="auth"',
              'Digest realm="p", nonce="n2", algorithm=SHA-256, qop="auth"',
              'Digest realm="p", nonce="n3", algorithm=SHA-256, qop="auth-int"',
              'Basic realm="p"']
    assert [c.nonce for c in parse_challenges(values)] == ["n2", "n1"]
    assert DigestClient("u", "s", realm="other").pick(values) is None
    only_ha1 = DigestClient("u", None, ha1_md5="0" * 32, realm="p")
    picked = only_ha1.pick(values)
    assert picked is not None and picked.algorithm == "MD5"


# -- config --------------------------------------------------------------------------------

def _cfg(tmp_path: Path, trunk: str, extra: str = "") -> Any:
    path = tmp_path / "sipyard.toml"
    path.write_text(f"""
[server]
realm = "office.test"
data_dir = "data"
mode = "proxy"
[lines.10]
secret = "x"
[trunks.provider]
{trunk}
{extra}
""")
    return load_config(path)


def test_trunk_config_defaults_and_errors(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, 'registrar = "sip:prov.example:5070"\nusername = "office"\n'
               'secret = "pw"\ndids = { "5551000" = "10", "5551001" = 100 }')
    tc = cfg.trunks["provider"]
    assert (tc.host, tc.port, tc.transport, tc.expires) == ("prov.example", 5070, None, 600)
    assert tc.contact_user == tc.from_user == "office" and tc.from_domain == "prov.example"
    assert tc.dids == {"5551000": "10", "5551001": "100"}
    assert "pw" not in repr(tc)
    bad = [
        ('registrar = "sip:p;transport=tls"\nusername = "o"\nsecret = "s"', "transport"),
        ('registrar = "sip:p"\nusername = "o"', "needs secret or ha1"),
        ('registrar = "sip:p"\nusername = "o"\nha1 = "abc"\nrealm = "r"', "32 hex"),
        ('registrar = "sip:p"\nusername = "o"\nha1 = "' + "a" * 32 + '"', "needs realm"),
        ('registrar = "sip:p"\nusername = "o"\nsecret = "s"\nexpirse = 5', "unknown key"),
    ]
    for text, why in bad:
        with pytest.raises(ConfigError) as e:
            _cfg(tmp_path, text)
        assert why in str(e.value) and "trunks.provider" in str(e.value)
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, 'registrar = "sip:p"\nusername = "o"\nsecret = "s"',
             '[[mapping]]\nusers = ["9."]\ncontacts = ["trunk:nope"]')
    assert "no trunk 'nope'" in str(e.value)
    ok = _cfg(tmp_path, 'registrar = "sip:p"\nusername = "o"\nsecret = "s"',
              '[[mapping]]\nusers = ["9."]\ncontacts = ["trunk:provider:+1{vdigits}"]')
    assert ok.mapping[0].contacts == ("trunk:provider:+1{vdigits}",)


# -- the registration loop under a fake clock ------------------------------------------------

@dataclass
class _Reply:
    status: int
    reason: str
    response: Response | None


def _resp(status: int, extra: str = "") -> Response:
    text = (f"SIP/2.0 {status} X\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\n"
            "From: <sip:o@p>;tag=1\r\nTo: <sip:o@p>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n"
            f"{extra}Content-Length: 0\r\n\r\n")
    msg = parse_message(text.encode())
    assert isinstance(msg, Response)
    return msg


class FakeIO:
    """A provider that answers ``answer(n)`` to the n-th REGISTER, on a fake clock."""

    def __init__(self, answer: Any) -> None:
        self.t = 0.0
        self.answer = answer
        self.sent: list[float] = []
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)  # let the test look at the clock

    async def resolve(self, host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    async def open_flow(self, transport: str, ip: str, port: int) -> Source:
        return Source("udp", ip, port, None, ("127.0.0.1", 5060))

    def flow_alive(self, flow: Source) -> bool:
        return True

    def send_raw(self, flow: Source, data: bytes) -> bool:
        return True

    def local(self, transport: str) -> tuple[str, int]:
        return ("127.0.0.1", 5060)

    async def request(self, method: str, ruri: str, dest: Source, **kw: Any) -> _Reply:
        self.sent.append(self.t)
        status, resp, cost = self.answer(len(self.sent))
        self.t += cost
        await asyncio.sleep(0)
        return _Reply(status, "X", resp)


def _trunk(tmp_path: Path) -> Any:
    return _cfg(tmp_path, 'registrar = "sip:127.0.0.1;transport=udp"\nusername = "o"\n'
                'secret = "pw-never-seen"').trunks["provider"]


CHALLENGE = 'WWW-Authenticate: Digest realm="p", nonce="n", algorithm=MD5, qop="auth"\r\n'


@pytest.mark.parametrize("kind", ["401", "500", "silent"])
def test_bad_provider_never_beats_the_back_off(tmp_path: Path, kind: str) -> None:
    answers = {"401": lambda n: (401, _resp(401, CHALLENGE), 0.01),
               "500": lambda n: (500, _resp(500), 0.01),
               "silent": lambda n: (408, None, 32.0)}
    io = FakeIO(answers[kind])
    tc = _trunk(tmp_path)
    board = TrunkBoard()
    board.sync({"provider": tc})
    st = board.get("provider")
    assert st is not None
    reg = Registration(tc, st, io, instance="x")

    async def main() -> None:
        task = asyncio.ensure_future(reg.run())
        while io.t < 6 * 3600:
            await asyncio.sleep(0)
        reg.stop()
        task.cancel()

    asyncio.run(main())
    assert st.state == "failed" and st.last_status == (408 if kind == "silent" else int(kind))
    # back-off: 30 s doubling, capped at 600 s
    assert io.sleeps[:6] == [30, 60, 120, 240, 480, 600] and max(io.sleeps) == 600
    # at most two REGISTERs per attempt (one unauthenticated/pre-emptive + one answer)
    attempts = len(io.sleeps) + 1
    assert len(io.sent) <= 2 * attempts
    gaps = [b - a for a, b in zip(io.sent, io.sent[1:], strict=False) if b - a > 1]
    assert all(g >= 30 for g in gaps)
    # over six hours: ~ 6 * 3600 / 600 attempts at the ceiling, never a burst
    assert len(io.sent) < 2 * (6 + 6 * 3600 / 600 + 2)


def test_refresh_at_half_and_423(tmp_path: Path) -> None:
    def answer(n: int) -> tuple[int, Response | None, float]:
        if n == 1:
            return 423, _resp(423, "Min-Expires: 900\r\n"), 0.0
        if n == 2:
            return 401, _resp(401, CHALLENGE), 0.0
        return 200, _resp(200, "Contact: <sip:o@127.0.0.1:5060;transport=udp>;expires=120\r\n"), 0.0

    io = FakeIO(answer)
    tc = _trunk(tmp_path)
    board = TrunkBoard()
    board.sync({"provider": tc})
    st = board.get("provider")
    assert st is not None
    reg = Registration(tc, st, io, instance="x")

    async def main() -> None:
        task = asyncio.ensure_future(reg.run())
        while io.t < 200:
            await asyncio.sleep(0)
        reg.stop()
        task.cancel()

    asyncio.run(main())
    assert reg.expires == 900 and st.state == "registered"
    assert io.sent[:3] == [0.0, 0.0, 0.0]
    assert 59 <= io.sent[3] <= 61 and 119 <= io.sent[4] <= 121  # refresh at half of 120 s
