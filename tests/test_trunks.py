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


# -- the in-dialog side of an outgoing trunk call (sipyard.trunks.dialog) ---------------------

def _req(text: str) -> Any:
    msg = parse_message(("\r\n".join(text.strip().splitlines()) + "\r\n\r\n").encode())
    assert not isinstance(msg, Response)
    return msg


CALLER_INVITE = """
INVITE sip:95550123@office.test SIP/2.0
Via: SIP/2.0/UDP 10.0.0.11:5060;branch=z9hG4bKc1
From: "Line 11" <sip:11@office.test>;tag=caller1
To: <sip:95550123@office.test>
Call-ID: call-1
CSeq: 7 INVITE
Proxy-Authorization: Digest username="11", realm="office.test", nonce="n", uri="sip:x", response="r"
P-Preferred-Identity: <sip:boss@office.test>
Content-Length: 0
"""


def _leg() -> Any:
    from sipyard.trunks.dialog import TrunkLeg

    return TrunkLeg.for_call("provider", _req(CALLER_INVITE), "<sip:office@prov.example>",
                             "<sip:5550123@prov.example>", "<sip:+15551000@prov.example>")


def test_leg_rewrites_the_callers_requests_for_the_provider() -> None:
    leg = _leg()
    out = leg.to_provider(_req(CALLER_INVITE))
    assert out.get("from") == "<sip:office@prov.example>;tag=caller1"
    assert out.get("to") == "<sip:5550123@prov.example>"
    assert out.get("cseq") == "7 INVITE"  # nothing to shift before a challenge
    assert out.get("proxy-authorization") is None and out.get("p-preferred-identity") is None
    assert out.get("p-asserted-identity") == "<sip:+15551000@prov.example>"
    assert leg.from_caller(out) is True  # the tag stays the caller's
    # the provider challenged and the INVITE went again as CSeq 8: the offset is 1 now
    from sipyard.trunks.routing import TrunkAuth

    challenge = parse_message(
        b"SIP/2.0 407 Proxy Authentication Required\r\n"
        b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKp1\r\n"
        b"From: <sip:office@prov.example>;tag=caller1\r\nTo: <sip:5550123@prov.example>;tag=p\r\n"
        b"Call-ID: call-1\r\nCSeq: 7 INVITE\r\n"
        b'Proxy-Authenticate: Digest realm="prov.example", nonce="abc", qop="auth"\r\n'
        b"Content-Length: 0\r\n\r\n")
    assert isinstance(challenge, Response)
    sent = _req(CALLER_INVITE.replace("SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.11:5060;branch=z9hG4bKc1",
                                      "SIP/2.0\nVia: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKp1"))
    again = TrunkAuth(DigestClient("office", "pw", realm="prov.example"), leg).retry(
        leg.to_provider(sent), challenge, "z9hG4bKp1a")
    assert again is not None and again.get("cseq") == "8 INVITE" and leg.offset == 1
    assert (again.get("proxy-authorization") or "").startswith('Digest username="office"')
    assert "branch=z9hG4bKp1a" in (again.get("via") or "")
    # the caller's ACK for the 2xx and its BYE follow the provider's numbers
    ack = _req(CALLER_INVITE.replace("INVITE sip", "ACK sip").replace("7 INVITE", "7 ACK")
               .replace("To: <sip:95550123@office.test>", "To: <sip:95550123@office.test>;tag=p"))
    assert leg.to_provider(ack).get("cseq") == "8 ACK"
    assert leg.to_provider(ack).get("to") == "<sip:5550123@prov.example>;tag=p"
    bye = _req(CALLER_INVITE.replace("INVITE sip", "BYE sip").replace("7 INVITE", "8 BYE")
               .replace("To: <sip:95550123@office.test>", "To: <sip:95550123@office.test>;tag=p"))
    assert leg.to_provider(bye).get("cseq") == "9 BYE"
    prack = _req(CALLER_INVITE.replace("INVITE sip", "PRACK sip").replace("7 INVITE", "8 PRACK")
                 .replace("Content-Length", "RAck: 1 7 INVITE\nContent-Length"))
    assert leg.to_provider(prack).get("rack") == "1 8 INVITE"


def test_leg_gives_the_caller_its_identity_back() -> None:
    from sipyard.trunks.dialog import answer_as

    leg = _leg()
    leg.offset = 1
    # the provider's BYE names the trunk identity; the caller must see its own dialog
    bye = _req("""
BYE sip:11@10.0.0.11:5060 SIP/2.0
Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKpb
From: <sip:5550123@prov.example>;tag=p
To: <sip:office@prov.example>;tag=caller1
Call-ID: call-1
CSeq: 101 BYE
Content-Length: 0
""")
    assert leg.from_caller(bye) is False
    out = leg.to_caller(bye)
    assert out.get("from") == "<sip:95550123@office.test>;tag=p"
    assert out.get("to") == '"Line 11" <sip:11@office.test>;tag=caller1'
    assert out.get("cseq") == "101 BYE"  # the provider's own numbers
    # a response is made to match the request as it was received, the responder's tag kept
    resp = parse_message(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.11:5060;branch=z9hG4bKc1\r\n"
        b"From: <sip:office@prov.example>;tag=caller1\r\nTo: <sip:5550123@prov.example>;tag=p\r\n"
        b"Call-ID: call-1\r\nCSeq: 8 INVITE\r\nContact: <sip:far@192.0.2.9>\r\n"
        b"Content-Length: 0\r\n\r\n")
    assert isinstance(resp, Response)
    fixed = answer_as(_req(CALLER_INVITE), resp)
    assert fixed.get("from") == '"Line 11" <sip:11@office.test>;tag=caller1'
    assert fixed.get("to") == "<sip:95550123@office.test>;tag=p"
    assert fixed.get("cseq") == "7 INVITE"
    assert fixed.get("contact") == "<sip:far@192.0.2.9>"
    # a request of neither side of the call is left alone
    other = _req(CALLER_INVITE.replace("tag=caller1", "tag=someone-else"))
    assert leg.from_caller(other) is None


def test_trunk_legs_are_bounded_and_dropped_at_call_end() -> None:
    from sipyard.trunks import routing
    from sipyard.trunks.dialog import TrunkLeg

    class _Parts:
        current = None
        trunks = TrunkBoard()

    router = routing.TrunkRouter(_Parts(), None, None, None)  # type: ignore[arg-type]
    leg = TrunkLeg("p", "c0", "t", "<sip:a@x>", "<sip:b@x>", "<sip:o@p>", "<sip:n@p>")
    router._keep(leg)
    bye = _req(CALLER_INVITE.replace("call-1", "c0").replace("tag=caller1", "tag=t")
               .replace("INVITE sip", "BYE sip").replace("7 INVITE", "8 BYE")
               .replace("To: <sip:95550123@office.test>", "To: <sip:95550123@office.test>;tag=p"))
    assert router.leg_of(bye) is leg
    router.forget("c0")
    assert router.leg_of(bye) is None
    for n in range(routing.MAX_LEGS + 10):
        router._keep(TrunkLeg("p", f"c{n}", "t", "<sip:a@x>", "<sip:b@x>", "<sip:o@p>",
                              "<sip:n@p>"))
    assert len(router.legs) == routing.MAX_LEGS and "c0" not in router.legs
    assert f"c{routing.MAX_LEGS + 9}" in router.legs
