"""Tests for sipyard.control: real unix sockets in short /tmp directories."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from sipyard.control import (
    EXIT_NOT_RUNNING,
    EXIT_REFUSED,
    EXIT_SEND_FAILED,
    EXIT_TIMEOUT,
    ControlClientError,
    ControlServer,
    ControlServerError,
    Peer,
    acall,
    call,
    encode,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # sun_path is limited to 108 bytes: pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="sy", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(main())


async def echo(request: dict[str, Any], peer: Peer) -> dict[str, Any]:
    return {"request": request, "uid": peer.uid, "gid": peer.gid, "pid": peer.pid}


@asynccontextmanager
async def serving(path: Path, **kw: Any) -> AsyncIterator[ControlServer]:
    handlers: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = kw.pop("handlers", {})
    server = ControlServer(path, **kw)
    server.register("echo", echo)
    for op, fn in handlers.items():
        server.register(op, fn)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


class Raw:
    """A bare line-level client, to speak the wire protocol directly."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: Path) -> Raw:
        return cls(*await asyncio.open_unix_connection(str(path)))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self, timeout: float = 5.0) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), timeout)

    async def reply(self) -> dict[str, Any]:
        line = await self.line()
        assert line.endswith(b"\n"), line
        result: dict[str, Any] = json.loads(line)
        return result

    async def eof(self, timeout: float = 5.0) -> bool:
        return await asyncio.wait_for(self.reader.read(), timeout) == b""

    def close(self) -> None:
        self.writer.close()


def make_stale_socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens: what a crashed server leaves


# -- round trip and protocol ---------------------------------------------------------


def test_round_trip_async_sync_and_wire_format(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"

    async def main() -> None:
        async with serving(path):
            reply = await acall(path, {"op": "echo", "x": [1, 2], "a": "é"})
            assert reply["ok"] is True
            assert reply["request"] == {"op": "echo", "x": [1, 2], "a": "é"}
            # Peer credentials come from SO_PEERCRED: it is us.
            assert (reply["uid"], reply["gid"], reply["pid"]) == (
                os.geteuid(),
                os.getegid(),
                os.getpid(),
            )
            sync_reply = await asyncio.to_thread(call, path, {"op": "echo", "n": 1})
            assert sync_reply["ok"] is True and sync_reply["request"] == {"op": "echo", "n": 1}
            # Replies are one compact line with sorted keys.
            raw = await Raw.open(path)
            await raw.send(b'{"op":"echo","z":1}\n')
            line = await raw.line()
            assert line == encode(json.loads(line))
            assert b" " not in line and line.count(b"\n") == 1
            assert list(json.loads(line)) == sorted(json.loads(line))
            raw.close()

    run(main())


def test_pipelined_requests_answered_in_order(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"

    async def slow(request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        await asyncio.sleep(request["delay"])
        return {"n": request["n"]}

    async def main() -> None:
        async with serving(path, handlers={"slow": slow}):
            raw = await Raw.open(path)
            # First request slowest: replies must still come in request order.
            batch = (
                b"".join(
                    encode({"op": "slow", "n": n, "delay": d})
                    for n, d in enumerate([0.2, 0.05, 0.0, 0.1])
                )
                + b"\n\r\n"
                + encode({"op": "echo"})
            )  # blank lines are ignored
            await raw.send(batch)
            got = [await raw.reply() for _ in range(5)]
            assert [r.get("n") for r in got[:4]] == [0, 1, 2, 3]
            assert got[4]["request"] == {"op": "echo"}
            raw.close()

    run(main())


def test_twenty_concurrent_clients(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    inside = 0
    all_in = asyncio.Event()
    peak = 0
    servers: list[ControlServer] = []

    async def gather_up(request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, servers[0].clients)
        if inside == 20:
            all_in.set()
        # Only returns once all 20 are inside at the same time: proves concurrency.
        await asyncio.wait_for(all_in.wait(), 4)
        return {"i": request["i"]}

    async def main() -> None:
        async with serving(path, handlers={"wait": gather_up}) as server:
            servers.append(server)
            replies = await asyncio.gather(
                *(acall(path, {"op": "wait", "i": i}) for i in range(20))
            )
            assert [r["i"] for r in replies] == list(range(20))
            assert all(r["ok"] for r in replies)
            assert peak == 20
            for _ in range(50):
                if server.clients == 0:
                    break
                await asyncio.sleep(0.01)
            assert server.clients == 0

    run(main())


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe{}", "malformed JSON"),
        (b"[" * 5000 + b"]" * 5000, "malformed JSON"),  # too deep: RecursionError, not a crash
        (b'["op", "echo"]', "request must be a JSON object"),
        (b'"echo"', "request must be a JSON object"),
        (b'{"x": 1}', "missing op"),
        (b'{"op": 7}', "op must be a string"),
        (b'{"op": "nosuch"}', "unknown op: 'nosuch'"),
    ],
)
def test_bad_requests_get_error_and_keep_connection(
    sock_dir: Path, line: bytes, error: str
) -> None:
    path = sock_dir / "c.sock"

    async def main() -> None:
        async with serving(path):
            raw = await Raw.open(path)
            await raw.send(line + b"\n")
            reply = await raw.reply()
            assert reply["ok"] is False
            assert reply["error"].startswith(error)
            await raw.send(b'{"op":"echo"}\n')
            assert (await raw.reply())["ok"] is True
            raw.close()

    run(main())


def test_garbage_lines_each_get_one_reply(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    rng = random.Random(4475)
    lines = [
        bytes(
            rng.choice(b'{}[]":,op echo\\0123456789\xff\x00\r') for _ in range(rng.randint(1, 60))
        )
        for _ in range(200)
    ]
    lines = [ln for ln in lines if ln.strip()]  # blank lines get no reply by design

    async def main() -> None:
        async with serving(path):
            raw = await Raw.open(path)
            await raw.send(b"".join(ln + b"\n" for ln in lines))
            for _ in lines:
                reply = await raw.reply()
                assert isinstance(reply["ok"], bool)
            await raw.send(b'{"op":"echo"}\n')
            assert (await raw.reply())["ok"] is True
            raw.close()

    run(main())


def test_oversize_request_error_then_close(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"

    async def main() -> None:
        async with serving(path, max_request=1024) as server:
            # Exactly at the limit is fine.
            ok_line = b'{"op":"echo","pad":"' + b"x" * (1024 - 22) + b'"}'
            assert len(ok_line) == 1024
            raw = await Raw.open(path)
            await raw.send(ok_line + b"\n")
            assert (await raw.reply())["ok"] is True
            # One byte more is not, and the connection is dropped (framing lost).
            big = b'{"op":"echo","pad":"' + b"x" * (1024 - 21) + b'"}'
            await raw.send(big + b"\n")
            reply = await raw.reply()
            assert reply == {"ok": False, "error": "request too large (max 1024 bytes)"}
            assert await raw.eof()
            raw.close()
            # Also without any newline at all (a stream of junk).
            raw = await Raw.open(path)
            await raw.send(b"y" * 5000)
            assert (await raw.reply())["error"].startswith("request too large")
            assert await raw.eof()
            raw.close()
            # The server is unaffected.
            assert (await acall(path, {"op": "echo"}))["ok"] is True
            assert server.clients <= 1

    run(main())


def test_slow_client_closed_after_idle_timeout(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"

    async def main() -> None:
        async with serving(path, idle_timeout=0.5) as server:
            raw = await Raw.open(path)
            await raw.send(b'{"op": "ec')  # partial line, then nothing
            t0 = time.monotonic()
            assert await raw.eof(timeout=5)
            elapsed = time.monotonic() - t0
            assert 0.3 < elapsed < 2.0, elapsed
            raw.close()
            # A trickling client (one byte at a time) is bounded too.
            raw = await Raw.open(path)
            t0 = time.monotonic()
            closed = False
            for ch in b'{"op":"echo","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}':
                try:
                    await raw.send(bytes([ch]))
                except ConnectionError:
                    closed = True
                    break
                await asyncio.sleep(0.05)
                if raw.reader.at_eof():
                    closed = True
                    break
            closed = closed or await raw.eof(timeout=2)
            assert closed and time.monotonic() - t0 < 2.5
            raw.close()
            await asyncio.sleep(0.05)
            assert server.clients == 0
            # A silent client that never sends a byte is dropped as well.
            raw = await Raw.open(path)
            assert await raw.eof(timeout=3)
            raw.close()

    run(main())


def test_handler_timeout(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    cancelled = asyncio.Event()

    async def hang(request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    async def main() -> None:
        async with serving(path, request_timeout=0.2, handlers={"hang": hang}):
            raw = await Raw.open(path)
            t0 = time.monotonic()
            await raw.send(b'{"op":"hang"}\n')
            assert await raw.reply() == {"ok": False, "error": "timed out"}
            assert time.monotonic() - t0 < 2
            assert cancelled.is_set()  # the handler does not linger
            await raw.send(b'{"op":"echo"}\n')
            assert (await raw.reply())["ok"] is True
            raw.close()

    run(main())


def test_handler_exception_and_bad_results(
    sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = sock_dir / "c.sock"

    async def boom(request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        raise ValueError("boom: line 12 unknown")

    async def silent(request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        raise KeyError

    async def refuse(request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"ok": False, "error": "not allowed"}

    async def not_dict(request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return [1]  # type: ignore[return-value]

    async def unserialisable(request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"x": object()}

    handlers = {
        "boom": boom,
        "silent": silent,
        "refuse": refuse,
        "list": not_dict,
        "obj": unserialisable,
    }

    async def main() -> None:
        async with serving(path, handlers=handlers):
            raw = await Raw.open(path)
            for op, expected in [
                ("boom", "boom: line 12 unknown"),
                ("silent", "KeyError"),
                ("refuse", "not allowed"),
                ("list", "internal error: op list returned list"),
                ("obj", "internal error: reply not serialisable"),
            ]:
                await raw.send(encode({"op": op}))
                reply = await raw.reply()
                assert reply["ok"] is False
                assert reply["error"].startswith(expected), reply
            await raw.send(b'{"op":"echo"}\n')
            assert (await raw.reply())["ok"] is True
            raw.close()

    with caplog.at_level(logging.ERROR, logger="sipyard.control"):
        run(main())
    failed = [r for r in caplog.records if "control op boom failed" in r.getMessage()]
    assert failed and failed[0].exc_info is not None


def test_stale_socket_file_replaced(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    make_stale_socket(path)
    # A client sees a stale socket as "not running".
    with pytest.raises(ControlClientError) as ei:
        call(path, {"op": "echo"})
    assert ei.value.exit_code == EXIT_NOT_RUNNING
    assert "not running" in str(ei.value)

    async def main() -> None:
        async with serving(path):
            assert stat.S_ISSOCK(path.lstat().st_mode)
            assert (await acall(path, {"op": "echo"}))["ok"] is True
            # No temporary bind names are left behind.
            assert sorted(p.name for p in sock_dir.iterdir()) == ["c.sock"]

    run(main())


def test_non_socket_file_is_not_replaced(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    path.write_text("precious")

    async def main() -> None:
        with pytest.raises(ControlServerError, match="not a socket"):
            await ControlServer(path).start()

    run(main())
    assert path.read_text() == "precious"


def test_second_server_refused(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"

    async def main() -> None:
        async with serving(path):
            ino = path.lstat().st_ino
            second = ControlServer(path)
            with pytest.raises(ControlServerError, match="another sipyard is running on"):
                await second.start()
            await second.close()  # harmless, and must not remove the first one's socket
            assert path.lstat().st_ino == ino
            assert (await acall(path, {"op": "echo"}))["ok"] is True

    run(main())


def test_socket_mode_and_group(sock_dir: Path) -> None:
    async def main() -> None:
        async with serving(sock_dir / "a.sock"):
            assert stat.S_IMODE((sock_dir / "a.sock").lstat().st_mode) == 0o660
        async with serving(sock_dir / "b.sock", mode=0o600):
            assert stat.S_IMODE((sock_dir / "b.sock").lstat().st_mode) == 0o600
        async with serving(sock_dir / "e.sock", group=""):  # "" = our own group
            assert (sock_dir / "e.sock").lstat().st_gid == os.getegid()
        gid = os.getegid()
        async with serving(sock_dir / "c.sock", group=gid) as server:
            assert (sock_dir / "c.sock").lstat().st_gid == gid
            assert server.privileged(Peer(uid=None, gid=gid, pid=None)) is False
        with pytest.raises(ControlServerError, match="group 'no-such-group-xyz' does not exist"):
            await ControlServer(sock_dir / "d.sock", group="no-such-group-xyz").start()
        assert not (sock_dir / "d.sock").exists()

    run(main())


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to a foreign group needs root")
def test_socket_group_by_name_as_root(sock_dir: Path) -> None:
    async def main() -> None:
        async with serving(sock_dir / "c.sock", group="daemon") as server:
            import grp

            gid = grp.getgrnam("daemon").gr_gid
            assert (sock_dir / "c.sock").lstat().st_gid == gid
            assert server.privileged(Peer(uid=4321, gid=gid, pid=1))
            assert not server.privileged(Peer(uid=4321, gid=gid + 1, pid=1))
            assert server.privileged(Peer(uid=0, gid=gid + 1, pid=1))

    run(main())


def test_not_running_client_errors(sock_dir: Path) -> None:
    path = sock_dir / "none.sock"
    with pytest.raises(ControlClientError) as ei:
        call(path, {"op": "status"})
    assert ei.value.exit_code == EXIT_NOT_RUNNING
    assert str(ei.value) == f"sipyard is not running (no control socket at {path})"

    async def main() -> None:
        with pytest.raises(ControlClientError) as ei:
            await acall(path, {"op": "status"})
        assert ei.value.exit_code == EXIT_NOT_RUNNING

    run(main())
    with pytest.raises(ControlClientError) as ei:
        call(path, {"op": "x", "v": object()})
    assert ei.value.exit_code == EXIT_REFUSED


def test_client_timeout_and_send_failed(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"

    async def slow(request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        await asyncio.sleep(3)
        return {}

    async def main() -> None:
        async with serving(path, handlers={"slow": slow}):
            t0 = time.monotonic()
            with pytest.raises(ControlClientError) as ei:
                await asyncio.to_thread(call, path, {"op": "slow"}, timeout=0.3)
            assert ei.value.exit_code == EXIT_TIMEOUT
            with pytest.raises(ControlClientError) as ei:
                await acall(path, {"op": "slow"}, timeout=0.3)
            assert ei.value.exit_code == EXIT_TIMEOUT
            assert time.monotonic() - t0 < 2

        # A peer that hangs up without replying: "send failed" (3).
        async def hang_up(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.readline()
            w.close()

        rude = await asyncio.start_unix_server(hang_up, path=str(path))
        try:
            with pytest.raises(ControlClientError) as ei:
                await asyncio.to_thread(call, path, {"op": "echo"})
            assert ei.value.exit_code == EXIT_SEND_FAILED
            with pytest.raises(ControlClientError) as ei:
                await acall(path, {"op": "echo"})
            assert ei.value.exit_code == EXIT_SEND_FAILED
        finally:
            rude.close()
            await rude.wait_closed()

    run(main())


def test_close_removes_socket_and_drops_clients(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"

    async def main() -> None:
        server = ControlServer(path)
        server.register("echo", echo)
        await server.start()
        assert path.exists()
        raw = await Raw.open(path)
        await raw.send(b'{"op":"echo"}\n')
        await raw.reply()
        assert server.clients == 1
        await server.close()
        assert not path.exists()
        assert server.clients == 0
        assert await raw.eof()
        raw.close()
        with pytest.raises(ControlClientError) as ei:
            await acall(path, {"op": "echo"})
        assert ei.value.exit_code == EXIT_NOT_RUNNING
        # The server can be started again afterwards.
        await server.start()
        assert (await acall(path, {"op": "echo"}))["ok"] is True
        await server.close()
        assert not path.exists()

    run(main())


def test_close_from_inside_a_handler_still_replies(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    servers: list[ControlServer] = []

    async def stop(request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        await servers[0].close()
        return {"stopping": True}

    async def main() -> None:
        server = ControlServer(path)
        servers.append(server)
        server.register("stop", stop)
        await server.start()
        other = await Raw.open(path)
        await other.send(b"{")  # an idle bystander connection
        assert await acall(path, {"op": "stop"}) == {"ok": True, "stopping": True}
        assert not path.exists()
        assert await other.eof()
        other.close()

    run(main())


def test_max_clients(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"

    async def main() -> None:
        async with serving(path, max_clients=2) as server:
            a, b = await Raw.open(path), await Raw.open(path)
            for r in (a, b):
                await r.send(b'{"op":"echo"}\n')
                assert (await r.reply())["ok"] is True
            assert server.clients == 2
            c = await Raw.open(path)
            assert await c.reply() == {"ok": False, "error": "too many control clients"}
            assert await c.eof()
            for r in (a, b, c):
                r.close()

    run(main())


def test_register_and_path_checks(sock_dir: Path) -> None:
    server = ControlServer(sock_dir / "c.sock")
    server.register("b", echo)
    server.register("a", echo)
    assert server.ops == ["a", "b"]
    with pytest.raises(ValueError, match="already registered"):
        server.register("a", echo)
    with pytest.raises(ValueError):
        server.register("", echo)
    assert server.privileged(Peer(uid=0, gid=0, pid=1))
    assert server.privileged(Peer(uid=os.geteuid(), gid=12345, pid=1))
    assert not server.privileged(Peer(uid=None, gid=None, pid=None))

    async def main() -> None:
        with pytest.raises(ControlServerError, match="path too long"):
            await ControlServer(sock_dir / ("x" * 120)).start()
        with pytest.raises(ControlServerError, match="does not exist"):
            await ControlServer(sock_dir / "nodir" / "c.sock").start()

    run(main())


# -- permission enforcement (needs root to switch users) ---------------------------------


def _call_as(uid: int, gid: int, path: Path) -> tuple[int, int]:
    """Fork a child that drops to uid/gid and calls the server; returns (pid, read fd)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        status = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            try:
                out: dict[str, Any] = {"reply": call(path, {"op": "echo"}, timeout=3)}
            except ControlClientError as exc:
                out = {"exit": exc.exit_code, "message": exc.message}
            os.write(w, json.dumps(out).encode())
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent
            os.write(w, json.dumps({"crash": repr(exc)}).encode())
            status = 1
        finally:
            os._exit(status)
    os.close(w)
    return pid, r


def _collect(child: tuple[int, int]) -> dict[str, Any]:
    """Wait for a _call_as child (in a thread, so the server keeps serving)."""
    pid, r = child
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(data or b'{"crash": "no output"}')
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_permission_enforced_by_socket_mode_and_group(sock_dir: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    group = 54321  # a gid nobody is not a member of
    os.chmod(sock_dir, 0o711)  # let nobody traverse the directory; the socket decides
    path = sock_dir / "c.sock"

    async def main() -> None:
        async with serving(path, group=group):
            assert stat.S_IMODE(path.lstat().st_mode) == 0o660
            assert path.lstat().st_gid == group
            denied = await asyncio.to_thread(_collect, _call_as(nobody.pw_uid, nobody.pw_gid, path))
            assert denied.get("exit") == EXIT_REFUSED, denied
            assert denied["message"].startswith(f"permission denied on {path}")
            # Same user, but in the socket's group: let in, and the handler sees who it is.
            allowed = await asyncio.to_thread(_collect, _call_as(nobody.pw_uid, group, path))
            reply = allowed.get("reply")
            assert reply is not None, allowed
            assert reply["ok"] is True
            assert (reply["uid"], reply["gid"]) == (nobody.pw_uid, group)

    run(main())
