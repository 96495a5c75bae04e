"""The ACK of a 3xx-6xx final absorbed from its first header line (sip.reader.ack_key and
TransactionLayer.absorb_ack), and every other ACK shape still handled by the full path."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pair import OPEN_CONFIG as CONFIG
from pair import Pair, status

from sipyard.sip.reader import ack_key
from sipyard.sip.transaction import Outcome, TransactionLayer, TxState, make_key

ACK = (b"ACK sip:99@127.0.0.1 SIP/2.0\r\n"
       b"Via: SIP/2.0/UDP 127.0.0.1:15062;branch=z9hG4bKa1;rport\r\n"
       b"Max-Forwards: 70\r\nFrom: <sip:c@127.0.0.1>;tag=c1\r\nTo: <sip:99@127.0.0.1>;tag=x\r\n"
       b"Call-ID: a1@127.0.0.1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")


def test_ack_key_reads_the_usual_shape_only() -> None:
    assert ack_key(ACK) == make_key("z9hG4bKa1", "127.0.0.1:15062", "ACK")
    no_port = ACK.replace(b"127.0.0.1:15062;", b"example.com;")
    assert ack_key(no_port) == make_key("z9hG4bKa1", "example.com:", "ACK")
    for other in (
        ACK.replace(b"ACK sip", b"BYE sip", 1),  # not an ACK
        ACK.replace(b"\r\nVia: ", b"\r\nv: ", 1),  # compact form
        ACK.replace(b"\r\nVia: ", b"\r\nVIA: ", 1),  # another spelling
        ACK.replace(b"Max-Forwards: 70\r\n", b"").replace(  # Via not the first line
            b"\r\nVia:", b"\r\nMax-Forwards: 70\r\nVia:", 1),
        ACK.replace(b";rport\r\n", b";rport,SIP/2.0/UDP 10.0.0.1\r\n", 1),  # two via-parms
        ACK.replace(b";rport\r\n", b";rport\r\n ;x=1\r\n", 1),  # folded
        ACK.replace(b"branch=z9hG4bKa1", b"branch=a1", 1),  # RFC 2543 branch
        ACK.replace(b"branch=z9hG4bKa1", b"branch=z9hG4bK", 1),  # the cookie alone
        ACK.replace(b"SIP/2.0/UDP 127.0.0.1", b"SIP/2.0/UDP [::1", 1),  # unparseable
        b"ACK sip:99@127.0.0.1 SIP/2.0",  # nothing after the request line
    ):
        assert ack_key(other) is None, other


def test_absorb_ack_only_for_our_non_2xx_finals() -> None:
    layer = TransactionLayer()
    key = make_key("z9hG4bKa1", "127.0.0.1:15062", "INVITE")
    assert not layer.absorb_ack(key, 0.0)  # no such transaction
    outcome, tx, _ = layer.receive_request(key, "INVITE", False, None, 0.0)
    assert outcome is Outcome.NEW and tx is not None
    assert not layer.absorb_ack(key, 0.1)  # Proceeding: nothing to ACK yet
    layer.send_response(tx, 302, b"302", 0.2)
    assert layer.absorb_ack(key, 0.3) and tx.state is TxState.CONFIRMED
    assert layer.absorb_ack(key, 0.4) and tx.state is TxState.CONFIRMED  # retransmitted
    assert layer.handle_timer(0.5) == []  # timer G is stale: no 302 again
    ok = make_key("z9hG4bKa2", "127.0.0.1:15062", "INVITE")
    _, tx2, _ = layer.receive_request(ok, "INVITE", False, None, 1.0)
    assert tx2 is not None
    layer.send_response(tx2, 200, b"200", 1.1)
    assert not layer.absorb_ack(ok, 1.2)  # a 2xx's ACK is end to end: the full path
    other = make_key("z9hG4bKa3", "127.0.0.1:15062", "REGISTER")
    layer.receive_request(other, "REGISTER", False, None, 1.3)
    assert not layer.absorb_ack(other, 1.4)  # not an INVITE


def _invite(branch: str) -> bytes:
    return (f"INVITE sip:99@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:15062;branch=z9hG4bK{branch}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:c@127.0.0.1>;tag=c{branch}\r\n"
            f"To: <sip:99@127.0.0.1>\r\nCall-ID: {branch}@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:c@127.0.0.1:15062>\r\nContent-Length: 0\r\n\r\n").encode()


def _ack(invite: bytes, answer: bytes, *, compact: bool = False) -> bytes:
    tag = answer.split(b";tag=")[-1].split(b"\r\n")[0]
    ack = invite.replace(b"INVITE sip", b"ACK sip", 1).replace(
        b"CSeq: 1 INVITE", b"CSeq: 1 ACK").replace(
        b"To: <sip:99@127.0.0.1>", b"To: <sip:99@127.0.0.1>;tag=" + tag)
    return ack.replace(b"\r\nVia: ", b"\r\nv: ", 1) if compact else ack


def test_acks_of_a_480_stop_its_retransmissions_whatever_their_shape(tmp_path: Path) -> None:
    async def main() -> None:
        async with Pair(tmp_path, CONFIG) as p:
            assert p.app is not None
            for branch, compact in (("f1", False), ("f2", True)):
                inv = _invite(branch)
                out = await p.request(inv, settle=0)
                assert [status(r) for r in out] == [480]
                assert await p.request(_ack(inv, out[0], compact=compact), settle=0) == []
            assert p.advance(0.6) == []  # both ACKed: no timer G fires
            assert p.app.stats.requests["ACK"] == 2
            # an ACK matching no transaction is dropped, unanswered, on either path
            stray = _ack(_invite("f3"), b";tag=zz\r\n")
            assert await p.request(stray, settle=0) == []
            assert p.app.stats.requests["ACK"] == 3

    asyncio.run(main())
