"""OPTIONS to the server itself is answered without a transaction (RFC 3261 §8.2.7),
in redirect and in proxy mode; everything else about OPTIONS is as before."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pair import OPEN_CONFIG as REDIRECT
from pair import PROXY_CONFIG as PROXY
from pair import Pair
from pair import header as _header
from pair import status as _status

from sipyard.security import Ban
from sipyard.sip.source import Source


def _options(branch: str, uri: str = "sip:127.0.0.1", extra: str = "") -> bytes:
    return (f"OPTIONS {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:15060;branch={branch}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:ping@127.0.0.1>;tag=f{branch}\r\n"
            f"To: <{uri}>\r\nCall-ID: {branch}@127.0.0.1\r\nCSeq: 7 OPTIONS\r\n"
            f"{extra}Content-Length: 0\r\n\r\n").encode()


def _to_tag(data: bytes) -> bytes:
    (to,) = _header(data, b"To")
    return to.split(b";tag=", 1)[1]


def _check_own_options(tmp_path: Path, config: str) -> None:
    async def main() -> None:
        async with Pair(tmp_path, config) as p:
            assert p.app is not None
            first = await p.request(_options("z9hG4bKo1"), settle=0)
            assert [_status(r) for r in first] == [200]
            resp = first[0]
            assert _header(resp, b"Allow") and _header(resp, b"Accept")
            assert _header(resp, b"Via") == [b"SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bKo1"]
            assert _header(resp, b"CSeq") == [b"7 OPTIONS"]
            assert len(p.app.txl) == 0  # nothing held for 32 s
            # a retransmission: the same answer, To tag included (a stateless UAS)
            again = await p.request(_options("z9hG4bKo1"), settle=0)
            assert again == first
            other = await p.request(_options("z9hG4bKo2"), settle=0)
            assert _to_tag(other[0]) != _to_tag(resp)
            # an RFC 2543 client (no magic cookie) is answered the same way
            old = await p.request(_options("oldbranch"), settle=0)
            assert [_status(r) for r in old] == [200] and len(p.app.txl) == 0
            assert p.app.stats.codes[200] == 4 and p.app.stats.requests["OPTIONS"] == 4
            # Require with an option we do not support still gets its 420, in a transaction
            bad = await p.request(_options("z9hG4bKo3", extra="Require: foo\r\n"), settle=0)
            assert [_status(r) for r in bad] == [420]
            assert _header(bad[0], b"Unsupported") == [b"foo"]

    asyncio.run(main())


def test_own_options_redirect_mode(tmp_path: Path) -> None:
    _check_own_options(tmp_path, REDIRECT)


def test_own_options_proxy_mode(tmp_path: Path) -> None:
    _check_own_options(tmp_path, PROXY)


def test_options_to_a_user_still_runs_the_chain(tmp_path: Path) -> None:
    async def main() -> None:
        async with Pair(tmp_path, REDIRECT) as p:
            assert p.app is not None
            out = await p.request(_options("z9hG4bKu1", uri="sip:nobody@127.0.0.1"))
            assert [_status(r) for r in out] == [480]  # open registration: a line, not here
            assert len(p.app.txl) == 1  # the chain's answer lives in its transaction

    asyncio.run(main())


def test_proxy_mode_drops_own_options_from_a_banned_source(tmp_path: Path) -> None:
    async def main() -> None:
        async with Pair(tmp_path, PROXY) as p:
            assert p.app is not None
            bad = Source("udp", "127.0.0.9", 15060, None, ("127.0.0.1", 5060))
            p.app.parts.guard.install_ban(Ban("127.0.0.9", p.app.now() + 600, 20))
            assert await p.request(_options("z9hG4bKb1"), bad, settle=0) == []
            assert [_status(r) for r in await p.request(_options("z9hG4bKb2"), settle=0)] == [200]

    asyncio.run(main())
