"""Handler behaviour through the in-memory pair (tests/pair.py): bytes in, bytes out,
a fake clock, no sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pair import OPEN_CONFIG as CONFIG
from pair import Pair
from pair import header as _header
from pair import status as _status

from sipyard.sip.digest import client_response
from sipyard.sip.source import Source


def _register(branch: str, cseq: int = 1, expires: int = 600) -> bytes:
    return (f"REGISTER sip:127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bK{branch}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:10@127.0.0.1>;tag=f{branch}\r\n"
            f"To: <sip:10@127.0.0.1>\r\nCall-ID: reg-call@127.0.0.1\r\nCSeq: {cseq} REGISTER\r\n"
            f"Contact: <sip:10@127.0.0.1:15060>\r\nExpires: {expires}\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def _invite(branch: str, user: str = "10") -> bytes:
    return (f"INVITE sip:{user}@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:15062;branch=z9hG4bK{branch}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=c{branch}\r\n"
            f"To: <sip:{user}@127.0.0.1>\r\nCall-ID: inv-{branch}@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:caller@127.0.0.1:15062>\r\nContent-Length: 0\r\n\r\n").encode()


def test_register_retransmission_and_expiry(tmp_path: Path) -> None:
    async def main() -> None:
        async with Pair(tmp_path, CONFIG) as p:
            first = await p.request(_register("r1"))
            assert [_status(r) for r in first] == [200]
            assert _header(first[0], b"Contact") == [b"<sip:10@127.0.0.1:15060>;expires=600"]
            assert _header(first[0], b"Date")
            # the retransmission is answered from the transaction: the same bytes,
            # and the registrar never sees it (a second run would be "Out of Order CSeq")
            again = await p.request(_register("r1"))
            assert again == first
            # timer J (64*T1) frees the transaction; nothing is resent for a non-INVITE
            assert p.app is not None and len(p.app.txl) == 1
            assert p.advance(33) == []
            assert len(p.app.txl) == 0
            # the binding expires on the wall clock: a fetch after 600 s shows none
            p.clock.advance(600)
            fetch = await p.request(_register("r2", cseq=2).replace(
                b"Contact: <sip:10@127.0.0.1:15060>\r\nExpires: 600\r\n", b""))
            assert [_status(r) for r in fetch] == [200] and _header(fetch[0], b"Contact") == []

    asyncio.run(main())


def test_invite_redirect_and_ack_absorbed(tmp_path: Path) -> None:
    async def main() -> None:
        async with Pair(tmp_path, CONFIG) as p:
            await p.request(_register("r1"))
            out = await p.request(_invite("i1"))
            assert [_status(r) for r in out] == [302]
            assert _header(out[0], b"Contact")[0].startswith(b"<sip:10@127.0.0.1:15060>")
            tag = out[0].split(b";tag=")[-1].split(b"\r\n")[0]
            ack = _invite("i1").replace(b"INVITE sip", b"ACK sip", 1).replace(
                b"CSeq: 1 INVITE", b"CSeq: 1 ACK").replace(
                b"To: <sip:10@127.0.0.1>", b"To: <sip:10@127.0.0.1>;tag=" + tag)
            assert await p.request(ack) == []  # absorbed by the transaction
            # no ACK for another INVITE: timer G resends the 302 (T1 = 0.5 s, then 1 s)
            await p.request(_invite("i2"))
            assert [_status(r) for r in p.advance(0.5)] == [302]
            assert [_status(r) for r in p.advance(1.0)] == [302]
            # open registration: any user may have bindings, so one without any is 480
            assert [_status(r) for r in await p.request(_invite("i3", user="99"))] == [480]

    asyncio.run(main())


def test_options_and_junk_methods_leave_no_keys(tmp_path: Path) -> None:
    async def main() -> None:
        async with Pair(tmp_path, CONFIG) as p:
            assert p.app is not None
            for i in range(200):
                data = (f"JUNK{i} sip:127.0.0.1 SIP/2.0\r\n"
                        f"Via: SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bKj{i}\r\n"
                        f"Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=a{i}\r\n"
                        f"To: <sip:127.0.0.1>\r\nCall-ID: j{i}@127.0.0.1\r\n"
                        f"CSeq: 1 JUNK{i}\r\nContent-Length: 0\r\n\r\n").encode()
                assert [_status(r) for r in await p.request(data, settle=0)] == [501]
            assert p.app.stats.requests == {"other": 200}

    asyncio.run(main())


def test_housekeeping_forgets_nonce_counts_without_traffic(tmp_path: Path) -> None:
    # The nonce-count table is swept as nonces are used; once nobody authenticates any
    # more, the housekeeping tick must still empty it after nonce_ttl (issue #16).
    config = CONFIG.replace("open_registration = true", "open_registration = false").replace(
        'hooks_dir = "hooks"', 'hooks_dir = "hooks"\nnonce_ttl = 60\nextensions = "10-19"'
    ) + '[lines.10]\nsecret = "pw"\n'

    async def main() -> None:
        async with Pair(tmp_path, config) as p:
            assert p.app is not None
            [challenge] = await p.request(_register("a1"))
            assert _status(challenge) == 401
            nonce = _header(challenge, b"WWW-Authenticate")[0].split(b'nonce="')[1].split(b'"')[0]
            auth = client_response("10", "127.0.0.1", "pw", "REGISTER", "sip:127.0.0.1",
                                   nonce.decode())
            [ok] = await p.request(_register("a2", cseq=2).replace(
                b"Expires:", f"Authorization: {auth}\r\nExpires:".encode()))
            assert _status(ok) == 200
            assert p.app.parts.auth.digest.tracked == 1
            p.app.housekeeper.run_once()
            assert p.app.parts.auth.digest.tracked == 1  # still fresh: a replay is refused
            p.clock.advance(61)
            p.app.housekeeper.run_once()
            assert p.app.parts.auth.digest.tracked == 0

    asyncio.run(main())


def test_proxy_invite_is_forwarded_before_on_bytes_returns(tmp_path: Path) -> None:
    """A proxied INVITE whose target needs no lookup (a UDP binding) is forked
    eagerly: 100 upstream and the INVITE downstream leave inside ``_on_bytes``,
    with no Task left behind (the handler is a compiled coroutine in a built
    tree: it is no ``CoroutineType``, and was once run as a Task for that)."""
    async def main() -> None:
        async with Pair(tmp_path, CONFIG.replace("[logging]", 'mode = "proxy"\n[logging]')) as p:
            await p.request(_register("r1"))
            app = p.app
            assert app is not None
            start = len(p.sent)
            app._on_bytes(_invite("i1"), Source("udp", "127.0.0.1", 15062, None,
                                                ("127.0.0.1", 5060)))
            sent = p.sent[start:]
            assert [(d.port, data.split(b"\r\n", 1)[0]) for d, data in sent] == [
                (15062, b"SIP/2.0 100 Trying"), (15060, b"INVITE sip:10@127.0.0.1:15060 SIP/2.0")]
            assert not app._tasks

    asyncio.run(main())
