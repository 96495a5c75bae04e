"""UDP answers of one read batch leave together, after the batch (Transports.hold).

Real sockets on 127.0.0.1: a client queues several datagrams before the server's loop
runs, so the reader takes them in one batch. Every answer arrives, in order, and none
leaves while the batch is still being handled.
"""

from __future__ import annotations

import asyncio
import socket

from sipyard.sip.source import Listen, Source
from sipyard.transport import Transports


async def _serve(handler_box: list[object]) -> tuple[Transports, tuple[str, int]]:
    def on_bytes(data: bytes, src: Source) -> None:
        handler = handler_box[0]
        assert callable(handler)
        handler(data, src)

    tr = Transports(on_bytes)
    bound = await tr.start([Listen("udp", "127.0.0.1", 0)])
    return tr, (bound[0].host, bound[0].port)


def _client() -> socket.socket:
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.bind(("127.0.0.1", 0))
    c.setblocking(False)
    return c


def _drain(c: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(c.recv(2048))
        except BlockingIOError:
            return out


def test_a_batch_answers_after_it_is_handled_in_order() -> None:
    async def main() -> None:
        c = _client()
        seen_early: list[int] = []
        handled: list[bytes] = []
        tr: Transports | None = None

        def handler(data: bytes, src: Source) -> None:
            assert tr is not None
            # what the client could read while the batch is still being handled
            seen_early.append(len(_drain(c)))
            handled.append(data)
            assert tr.send(src, b"answer " + data)
            assert tr.send(src, b"again " + data)

        tr, addr = await _serve([handler])
        try:
            for i in range(10):
                c.sendto(f"req{i}".encode(), addr)
            await asyncio.sleep(0.05)  # the reader wakes once for all ten
            got: list[bytes] = []
            for _ in range(50):
                got += _drain(c)
                if len(got) >= 20:
                    break
                await asyncio.sleep(0.01)
        finally:
            await tr.close()
            c.close()
        assert len(handled) == 10
        assert seen_early == [0] * 10, "an answer left before its batch ended"
        want = [w for i in range(10) for w in (b"answer req%d" % i, b"again req%d" % i)]
        assert got == want

    asyncio.run(main())


def test_sends_outside_a_batch_leave_at_once() -> None:
    async def main() -> None:
        c = _client()
        tr, addr = await _serve([lambda data, src: None])
        try:
            dest = Source("udp", "127.0.0.1", c.getsockname()[1], None, addr)
            assert tr.send(dest, b"now")
            await asyncio.sleep(0.01)
            assert _drain(c) == [b"now"]
            # no socket for this family: refused at once, held or not
            v6 = Source("udp", "::1", 5060, None, ("::1", 5060))
            assert tr.send(v6, b"x") is False
            assert tr.hold()
            assert not tr.hold()  # nested: the outer holder sends
            assert tr.send(v6, b"x") is False
            assert tr.send(dest, b"held")
            await asyncio.sleep(0.01)
            assert _drain(c) == []
            tr.send_held()
            await asyncio.sleep(0.01)
            assert _drain(c) == [b"held"]
        finally:
            await tr.close()
            c.close()

    asyncio.run(main())


def test_a_zero_length_datagram_does_not_hold_up_the_ones_behind_it() -> None:
    """A zero-length datagram is read and handed on like any other, and the ones queued
    behind it in the same burst are read too. (A reader that asked FIONREAD whether
    more is queued would see 0 for it, as for an empty socket.)"""
    async def main() -> None:
        c = _client()
        handled: list[bytes] = []
        tr, addr = await _serve([lambda data, src: handled.append(data)])
        try:
            for data in (b"first", b"", b"second", b"", b"", b"third"):
                c.sendto(data, addr)
            for _ in range(100):
                if len(handled) == 6:
                    break
                await asyncio.sleep(0.01)
        finally:
            await tr.close()
            c.close()
        assert handled == [b"first", b"", b"second", b"", b"", b"third"]

    asyncio.run(main())
