"""Unit tests of the cluster parts: ownership, hand-off frames, node-bound nonces, rate share."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import pytest

from sipyard.cluster import handoff
from sipyard.cluster.ownership import IDENTITY, call_id_of, new_call_id, owner_of
from sipyard.cluster.worker import WorkerRole
from sipyard.security import Guard
from sipyard.sip.digest import DigestServer, VerdictStatus, client_response, compute_ha1
from sipyard.sip.headers import parse_auth
from sipyard.sip.source import Source

MSG = (b"INVITE sip:10@x SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKa\r\n"
       b"i:  abc@host \r\nCSeq: 1 INVITE\r\n\r\nv=0\r\ni: body\r\n")


def test_call_id_found_in_headers_only() -> None:
    assert call_id_of(MSG) == b"abc@host"
    assert call_id_of(MSG.replace(b"i:  abc@host \r\n", b"")) is None
    assert owner_of(MSG, 4) == zlib.crc32(b"abc@host") % 4
    assert call_id_of(b"SIP/2.0 200 OK\r\nCALL-ID:\tq\r\n\r\n") == b"q"


def test_new_call_id_hashes_to_this_worker() -> None:
    try:
        for idx in range(3):
            IDENTITY.set(idx, 3)
            for _ in range(20):
                cid = new_call_id("@sipyard")
                assert zlib.crc32(cid.encode()) % 3 == idx and cid.endswith("@sipyard")
    finally:
        IDENTITY.set(0, 1)


def test_handoff_frames_round_trip_and_refuse_garbage() -> None:
    src = Source("udp", "192.0.2.7", 5062, None, ("127.0.0.2", 5060))
    got = handoff.decode(handoff.encode(b"OPTIONS x", src))
    assert got is not None and (got.kind, got.data, got.src) == (handoff.KIND_UDP, b"OPTIONS x",
                                                                 src)
    tcp = Source("tcp", "192.0.2.7", 40001, (1 << 40) | 3, ("127.0.0.2", 5060))
    got = handoff.decode(handoff.encode(b"BYE x", tcp, handoff.KIND_TCP, (1 << 40) | 3))
    assert got is not None and (got.kind, got.src, got.conn) == (handoff.KIND_TCP, tcp,
                                                                 (1 << 40) | 3)
    frame = handoff.encode(b"OPTIONS x", src)
    assert handoff.decode(frame[:8]) is None
    assert handoff.decode(b"XXXX" + frame[4:]) is None
    assert handoff.decode(frame[:handoff._HEAD.size + 3]) is None  # truncated address
    assert handoff.decode(frame[:len(frame) - 9]) is None  # no payload


def test_probe_frames_carry_how_many_workers_are_left() -> None:
    src = Source("udp", "192.0.2.7", 5062, None, ("127.0.0.2", 5060))
    got = handoff.decode(handoff.encode(b"CANCEL x", src, handoff.KIND_PROBE_UDP, 0, 5))
    assert got is not None and (got.kind, got.data, got.src, got.left) == (
        handoff.KIND_PROBE_UDP, b"CANCEL x", src, 5)
    tcp = Source("tcp", "192.0.2.7", 40001, (2 << 40) | 9, ("127.0.0.2", 5060))
    got = handoff.decode(handoff.encode(b"ACK x", tcp, handoff.KIND_PROBE_TCP, (2 << 40) | 9,
                                        255))
    assert got is not None and (got.src, got.conn, got.left) == (tcp, (2 << 40) | 9, 255)
    with pytest.raises(ValueError):
        handoff.encode(b"ACK x", src, handoff.KIND_PROBE_UDP, 0, 256)
    # an empty probe is garbage like an empty packet
    assert handoff.decode(handoff.encode(b"", src, handoff.KIND_PROBE_UDP, 0, 1)) is None


class _Prober:
    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes, int]] = []

    def send_probe(self, worker: int, data: bytes, src: Source, left: int) -> bool:
        self.sent.append((worker, data, left))
        return True


def test_an_unmatched_cancel_goes_round_every_other_worker_once(tmp_path: Path) -> None:
    """Worker 1 of 3 got the CANCEL: 2 then 0 try it, and 0 answers it (481)."""
    src = Source("udp", "192.0.2.7", 5062, None, ("127.0.0.1", 5060))
    roles = [WorkerRole(None, i, 3, tmp_path) for i in range(3)]
    probers = [_Prober() for _ in roles]
    for role, prober in zip(roles, probers, strict=True):
        role.handoff = prober  # type: ignore[assignment]
    hops: list[int] = []

    def inner_of(i: int) -> Any:
        def inner(data: bytes, got: Source) -> None:
            hops.append(i)
            if not roles[i].unmatched(None, got):
                hops.append(-1)  # answered here
        return inner

    for i, role in enumerate(roles):
        role._inner = inner_of(i)
    roles[1]._handle(b"CANCEL x", src, -1)  # from the network
    assert probers[1].sent == [(2, b"CANCEL x", 1)]
    roles[2]._probe(b"CANCEL x", src, 1)
    assert probers[2].sent == [(0, b"CANCEL x", 0)]
    roles[0]._probe(b"CANCEL x", src, 0)
    assert probers[0].sent == []
    assert hops == [1, 2, 0, -1]
    assert roles[0].unmatched(None, src) is False  # outside a packet: nothing to pass on


def _authorize(server: DigestServer, now: float, nc: int = 1) -> str:
    value = server.challenge(now)[0]
    _, params = parse_auth(value)
    return client_response(username="10", realm="r", password="pw", method="REGISTER",
                           uri="sip:r", nonce=params["nonce"], nc=nc, cnonce="c1", qop="auth",
                           algorithm="MD5", opaque=params.get("opaque"))


def test_nonce_of_another_node_is_stale_and_counts_stay_with_the_issuer() -> None:
    ha1 = compute_ha1("10", "r", "pw", "MD5")

    def lookup(user: str, alg: str) -> str | None:
        return ha1 if user == "10" else None

    a = DigestServer(b"k" * 32, "r", node=1, not_before=0)
    b = DigestServer(b"k" * 32, "r", node=2, not_before=0)
    header = _authorize(a, 100.0)
    assert b.verify(header, "REGISTER", 100.5, lookup).status is VerdictStatus.STALE
    assert a.verify(header, "REGISTER", 100.5, lookup).status is VerdictStatus.OK
    assert a.verify(header, "REGISTER", 100.6, lookup).status is VerdictStatus.REPLAY
    assert b.verify(header, "REGISTER", 100.6, lookup).status is VerdictStatus.STALE
    wrong = header.replace('response="', 'response="0')
    assert b.verify(wrong, "REGISTER", 100.6, lookup).status is VerdictStatus.INVALID


def test_register_rate_is_shared_between_workers() -> None:
    g = Guard(register_rate=10)
    g.rate_share = 2
    assert sum(g.rate_ok("192.0.2.1", 5.0) for _ in range(20)) == 5


class _FakeHandOff:
    """What ConnDirectory needs of a HandOff: who we are and a way to send frames."""

    def __init__(self, index: int, count: int) -> None:
        self.index, self.count = index, count
        self.frames: list[tuple[int, handoff.Frame]] = []

    def send_frame(self, worker: int, frame: bytes) -> bool:
        got = handoff.decode(frame)
        assert got is not None
        self.frames.append((worker, got))
        return True


def test_conn_directory_learns_writes_and_forgets() -> None:
    """Worker 0 and 1 of two: each learns the other's connections from its announcements,
    a write to worker 1's connection goes to worker 1, and a restarted worker 1 (HELLO)
    makes worker 0 forget the old ones and announce its own."""
    shift = 40
    written: list[tuple[int, bytes]] = []

    def write_local(conn_id: int, data: bytes) -> bool:
        written.append((conn_id, data))
        return True

    h0, h1 = _FakeHandOff(0, 2), _FakeHandOff(1, 2)
    mine = [(5, ("192.0.2.5", 40000))]
    d0 = handoff.ConnDirectory(h0, shift, write_local, lambda: mine)  # type: ignore[arg-type]
    d1 = handoff.ConnDirectory(h1, shift, lambda c, b: False, lambda: [])  # type: ignore[arg-type]
    c1 = (1 << shift) | 7
    d1.opened(c1, ("192.0.2.9", 41000))
    (to, f), = h1.frames
    assert to == 0 and f.kind == handoff.KIND_UP
    d0.on_frame(1, f)
    assert d0.has(c1) and d0.conn_of_peer("192.0.2.9", 41000) == c1
    assert d0.write(c1, b"SIP/2.0 200 OK")
    (to, w), = h0.frames
    assert to == 1 and w.kind == handoff.KIND_WRITE and w.data == b"SIP/2.0 200 OK"
    d1.on_frame(0, w)  # worker 1's connection is gone: counted, not written
    assert d1.lost_writes == 1
    d0.on_frame(1, handoff.Frame(handoff.KIND_UP, b"", Source("tcp", "192.0.2.1", 1, None,
                                                                ("", 0)), 3))
    assert not d0.has(3)  # a worker speaks for its own connections only
    h1.frames.clear()
    d1.hello()
    (to, hello), = h1.frames
    h0.frames.clear()
    d0.on_frame(1, hello)
    assert not d0.has(c1)
    (to, up), = h0.frames
    assert to == 1 and up.kind == handoff.KIND_UP and up.conn == 5
    d1.on_frame(0, up)
    assert d1.conn_of_peer("192.0.2.5", 40000) == 5
    d1.on_frame(0, handoff.Frame(handoff.KIND_DOWN, b"", up.src, 5))
    assert not d1.has(5) and d1.conn_of_peer("192.0.2.5", 40000) is None
    d0.on_frame(1, handoff.Frame(handoff.KIND_WRITE, b"x", up.src, 5))
    assert written == [(5, b"x")]
