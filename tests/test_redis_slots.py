"""Redis Cluster readiness: every atomic unit the redis code sends touches one hash slot.

Why watch a real server instead of reading our code: the keys a Lua script
touches are computed inside the script, and a pipeline's commands are built
at run time. So the store (and the shared-state mirror) run against a real
redis-server while a ``MONITOR`` connection records every command it executes,
scripts' inner commands included (``[0 lua]`` lines). The keys of each command
come from the server itself (``COMMAND GETKEYS``), their slots from CRC16 as
Redis Cluster computes it (redis-py's ``key_slot``). Units that must stay in one
slot: a script call with the commands it runs, WATCH … EXEC of one connection,
and any single command.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from redis.cluster import key_slot
from test_store import AOR, RedisServer, mk, put, start_redis

from sipyard.cluster.shared import SharedState
from sipyard.security import Ban, Guard
from sipyard.store.redis_keys import Keys
from sipyard.store.redis_store import RedisStore

_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _resp(sock: socket.socket, *args: str) -> Any:
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
    sock.sendall(payload)
    return _read(sock.makefile("rb"))


def _read(f: Any) -> Any:
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"*":
        return [_read(f) for _ in range(int(rest))]
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode()
    if kind == b"-":
        return RuntimeError(rest.decode())
    return rest.decode()


def _unescape(text: str) -> str:
    return re.sub(r"\\x([0-9a-f]{2})|\\(.)",
                  lambda m: chr(int(m.group(1), 16)) if m.group(1) else
                  {"n": "\n", "r": "\r", "t": "\t"}.get(m.group(2), m.group(2)), text)


class Monitor:
    """Records ``(client, [args])`` of every command the server executes."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(b"MONITOR\r\n")
        self.file = self.sock.makefile("rb")
        assert self.file.readline().startswith(b"+OK")
        self.lines: list[tuple[str, list[str]]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                raw = self.file.readline()
            except OSError:
                return
            if not raw:
                return
            m = re.match(r"\+[\d.]+ \[\d+ ([^\]]+)\] (.*)", raw.decode("utf-8", "replace"))
            if m:
                self.lines.append((m.group(1), [_unescape(a) for a in _ARG.findall(m.group(2))]))

    def take(self) -> list[tuple[str, list[str]]]:
        time.sleep(0.2)  # let the last lines arrive
        out, self.lines = self.lines, []
        return out

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def units(lines: list[tuple[str, list[str]]]) -> list[list[list[str]]]:
    """Group commands into the units that Redis Cluster must serve from one slot."""
    out: list[list[list[str]]] = []
    open_tx: dict[str, list[list[str]]] = {}
    last: list[list[str]] | None = None
    for client, args in lines:
        if not args:
            continue
        name = args[0].upper()
        if client == "lua":
            assert last is not None, "a script command without its script"
            last.append(args)
            continue
        tx = open_tx.get(client)
        if name == "WATCH" and tx is None:
            tx = open_tx[client] = []
        if tx is not None:
            tx.append(args)
            last = tx
            if name in ("EXEC", "DISCARD", "UNWATCH"):
                out.append(open_tx.pop(client))
            continue
        last = [args]
        out.append(last)
    out.extend(open_tx.values())
    return out


def slots_of(ctl: socket.socket, unit: list[list[str]]) -> dict[str, int]:
    keys: dict[str, int] = {}
    for args in unit:
        if args[0].upper() in ("MULTI", "EXEC", "DISCARD", "UNWATCH", "PING", "HELLO",
                               "CLIENT", "SCRIPT", "SELECT", "INFO", "COMMAND"):
            continue
        got = _resp(ctl, "COMMAND", "GETKEYS", *args)
        if isinstance(got, RuntimeError):  # a command without key arguments (SCAN …)
            continue
        for k in got:
            keys[k] = key_slot(k.encode("utf-8", "surrogatepass"))
    return keys


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis-slots"))
    yield server
    server.stop()


def check(mon: Monitor, ctl: socket.socket, what: str) -> list[dict[str, int]]:
    seen = []
    for unit in units(mon.take()):
        keys = slots_of(ctl, unit)
        assert len(set(keys.values())) <= 1, (what, keys, unit)
        seen.append(keys)
    return seen


def test_every_store_operation_touches_one_slot(redis_server: RedisServer,
                                                tmp_path: Path) -> None:
    ctl = socket.create_connection(("127.0.0.1", redis_server.port), timeout=5)
    assert _resp(ctl, "FLUSHALL") == "OK"
    mon = Monitor(redis_server.port)
    other = "sip:bob}x@example.com"  # a "}" in the user part: still one slot per AOR
    try:
        async def body() -> None:
            now = time.time()
            store = RedisStore(redis_server.url)
            await store.open()
            check(mon, ctl, "open")
            try:
                await store.update(AOR, now, put(mk("a1", exp=now + 60), mk("a2", exp=now + 2.0)))
                await store.update(other, now, put(mk("b1", aor=other, exp=now + 60)))
                seen = check(mon, ctl, "fresh updates")
                assert any(k == f"sipyard:aor:{{{AOR}}}" for s in seen for k in s)
                await store.update(AOR, now, put(mk("a1", exp=now + 120)))
                check(mon, ctl, "refresh")
                assert [b.binding_id for b in await store.lookup(AOR, now)] == ["a1", "a2"]
                assert len(await store.all(now)) == 3 and await store.count(now) == 3
                check(mon, ctl, "reads")
                await asyncio.sleep(max(0.0, now + 2.1 - time.time()))
                assert [b.binding_id for b in await store.expire(time.time())] == ["a2"]
                check(mon, ctl, "expire")
                await store.remove_aor(other)
                await store.update(AOR, now, lambda cur: ([], [b.binding_id for b in cur]))
                check(mon, ctl, "removals")
                assert await store.all(time.time()) == []
                assert _resp(ctl, "SMEMBERS", "sipyard:aors") == []
                await store.set_state("runstate", "night")
                assert await store.get_state("runstate") == "night"
                check(mon, ctl, "state")
            finally:
                await store.close()

        asyncio.run(body())
    finally:
        mon.close()
        ctl.close()


def test_layout_1_is_migrated_in_one_slot_per_aor(redis_server: RedisServer) -> None:
    """Bindings written by an older version (no hash tags) are moved at open()."""
    ctl = socket.create_connection(("127.0.0.1", redis_server.port), timeout=5)
    assert _resp(ctl, "FLUSHALL") == "OK"
    keys = Keys("sipyard:")
    now = time.time()
    live, gone = mk("old1", exp=now + 300), mk("old2", exp=now - 5)
    from sipyard.store.redis_store import _encode

    for b in (live, gone):
        fields = [x for kv in _encode(b).items() for x in kv]
        _resp(ctl, "HSET", keys.v1_binding(AOR, b.binding_id), *fields)
        _resp(ctl, "SADD", keys.v1_ids(AOR), b.binding_id)
    _resp(ctl, "SADD", keys.index, AOR)
    mon = Monitor(redis_server.port)
    try:
        async def body() -> None:
            store = RedisStore(redis_server.url)
            await store.open()
            try:
                assert store.migrated == 1
                assert await store.lookup(AOR, time.time()) == [live]
            finally:
                await store.close()
            again = RedisStore(redis_server.url)
            await again.open()  # the layout marker: nothing left to move
            assert again.migrated == 0
            await again.close()

        asyncio.run(body())
        check(mon, ctl, "migration")
        assert _resp(ctl, "EXISTS", keys.v1_ids(AOR)) == "0"
        assert _resp(ctl, "EXISTS", keys.v1_binding(AOR, "old1")) == "0"
        assert _resp(ctl, "GET", keys.layout) == "2"
    finally:
        mon.close()
        ctl.close()


def test_shared_state_commands_touch_one_slot(redis_server: RedisServer) -> None:
    """Bans, failures, call counts and the nonce secret (sipyard.cluster.shared)."""
    ctl = socket.create_connection(("127.0.0.1", redis_server.port), timeout=5)
    assert _resp(ctl, "FLUSHALL") == "OK"
    mon = Monitor(redis_server.port)
    guard = Guard(max_failures=2, window=60, ban_seconds=60)
    shared_secret: list[bytes] = []
    calls = SimpleNamespace(local_counts=lambda: {"10": 1, "11": 2}, elsewhere={})
    parts = SimpleNamespace(
        guard=guard, calls=calls,
        auth=SimpleNamespace(share=lambda secret, node: shared_secret.append(secret)),
        current=SimpleNamespace(config=SimpleNamespace(state=None)))
    ctx = SimpleNamespace(parts=parts, now=time.time)
    try:
        async def body() -> None:
            state = SharedState(ctx, redis_server.url)
            await state.start()
            try:
                now = time.time()
                await state._failure("192.0.2.7", now)
                await state._failure("192.0.2.7", now)  # the second one bans
                assert guard.banned("192.0.2.7", now)
                await state._ban(Ban("198.51.100.1", now + 60, 3))
                await state.sync()  # reads every ban, publishes and reads call counts
                await state._unban("192.0.2.7")  # the ban and the failure count
                await state._failure("203.0.113.9", now)
                await state._unban(None)  # every ban
            finally:
                await state.close()

        asyncio.run(body())
        assert shared_secret
        seen = check(mon, ctl, "shared state")
        touched = {k for unit in seen for k in unit}
        assert {"sipyard:ban:192.0.2.7", "sipyard:fail:192.0.2.7",
                "sipyard:ban:198.51.100.1"} <= touched, touched
        assert _resp(ctl, "KEYS", "sipyard:ban:*") == []
    finally:
        mon.close()
        ctl.close()


def test_a_refresh_is_one_script_call_and_a_stale_guess_is_redone(
        redis_server: RedisServer) -> None:
    """The write path's commands: a new AOR is its index entry, the UPDATE script and the
    entry again (one pipeline); a refresh of what this process wrote is the script alone;
    a binding rewritten by another process meanwhile makes the script refuse, and the
    update is decided again on what redis returned (nothing of the other write lost)."""
    ctl = socket.create_connection(("127.0.0.1", redis_server.port), timeout=5)
    assert _resp(ctl, "FLUSHALL") == "OK"
    mon = Monitor(redis_server.port)

    def top(lines: list[tuple[str, list[str]]]) -> list[str]:
        return [a[0].upper() for c, a in lines if c != "lua" and a]

    try:
        async def body() -> None:
            now = time.time()
            one, two = RedisStore(redis_server.url), RedisStore(redis_server.url)
            await one.open()
            await two.open()
            try:
                mon.take()
                await one.update(AOR, now, put(mk("a1", exp=now + 60, cseq=1)))
                got = top(mon.take())
                if "SCRIPT" in got:  # the first use of UPDATE on this server loads it
                    got = got[got.index("SCRIPT") + 1:]
                assert got == ["SADD", "EVALSHA", "SADD"]
                await one.update(AOR, now, put(mk("a1", exp=now + 61, cseq=2)))
                assert top(mon.take()) == ["EVALSHA"]
                # two never saw this AOR: it guesses "empty", is refused, and sees cseq 2
                seen: list[int] = []

                def bump(cur: list[Any]) -> tuple[list[Any], list[str]]:
                    seen.append(max((b.cseq for b in cur), default=0))
                    return [mk("a1", exp=now + 62, cseq=seen[-1] + 1)], []

                await two.update(AOR, now, bump)
                assert seen == [0, 2] and two.conflicts == 1
                # one's guess (cseq 2) is stale now: refused once, redone on cseq 3
                before = one.conflicts
                await one.update(AOR, now, bump)
                assert seen[-2:] == [2, 3] and one.conflicts == before + 1
                assert [b.cseq for b in await one.lookup(AOR, now)] == [4]
            finally:
                await one.close()
                await two.close()

        asyncio.run(body())
    finally:
        mon.close()
        ctl.close()


def test_bans_and_call_counts_reach_another_process_without_a_scan(
        redis_server: RedisServer) -> None:
    """Two processes' mirrors: a ban (with its failure count) and per-line call counts made
    in one are seen by the other's poll, a lifted ban is lifted there too, a stopped
    process's counts go; and the poll reads the indexes, never SCANs the keyspace (which
    holds every binding)."""
    ctl = socket.create_connection(("127.0.0.1", redis_server.port), timeout=5)
    assert _resp(ctl, "FLUSHALL") == "OK"
    for i in range(500):  # bindings and whatever else: the poll must not walk them
        _resp(ctl, "SET", f"sipyard:b:{{sip:{i}@x}}:id", "x")

    def process(counts: dict[str, int]) -> tuple[Guard, SimpleNamespace, SimpleNamespace]:
        guard = Guard(max_failures=2, window=60, ban_seconds=60)
        calls = SimpleNamespace(local_counts=lambda: dict(counts), elsewhere={})
        parts = SimpleNamespace(
            guard=guard, calls=calls, auth=SimpleNamespace(share=lambda secret, node: None),
            current=SimpleNamespace(config=SimpleNamespace(state=None)))
        return guard, calls, SimpleNamespace(parts=parts, now=time.time)

    ga, _, ctx_a = process({"10": 1, "11": 2})
    gb, calls_b, ctx_b = process({})
    mon = Monitor(redis_server.port)
    try:
        async def body() -> None:
            a, b = SharedState(ctx_a, redis_server.url), SharedState(ctx_b, redis_server.url)
            await a.start()
            await b.start()
            try:
                now = time.time()
                await a._failure("192.0.2.7", now)
                await a._failure("192.0.2.7", now)  # the second one bans, in a
                await a.sync()
                await b.sync()
                assert gb.banned("192.0.2.7", now)
                (ban,) = [x for x in gb.bans(now) if x.address == "192.0.2.7"]
                assert ban.failures == 2 and abs(ban.until - (now + 60)) < 2
                assert calls_b.elsewhere == {"10": 1, "11": 2}
                await a._unban("192.0.2.7")
                await b.sync()
                assert not gb.banned("192.0.2.7", time.time())
                await a.close()
                await b.sync()
                assert calls_b.elsewhere == {}
            finally:
                await b.close()

        asyncio.run(body())
        commands = {args[0].upper() for c, args in mon.take() if args}
        assert "SCAN" not in commands and "KEYS" not in commands, commands
    finally:
        mon.close()
        ctl.close()


def test_scripts_flushed_by_redis_are_loaded_again(redis_server: RedisServer) -> None:
    """A redis that restarted (or ran SCRIPT FLUSH) no longer knows our scripts: the next
    update, lookup and expiry load them and go on, nothing refused."""
    ctl = socket.create_connection(("127.0.0.1", redis_server.port), timeout=5)
    assert _resp(ctl, "FLUSHALL") == "OK"
    try:
        async def body() -> None:
            now = time.time()
            store = RedisStore(redis_server.url)
            await store.open()
            try:
                await store.update(AOR, now, put(mk("a1", exp=now + 60)))
                assert _resp(ctl, "SCRIPT", "FLUSH") == "OK"
                await store.update(AOR, now, put(mk("a2", exp=now + 60)))
                assert _resp(ctl, "SCRIPT", "FLUSH") == "OK"
                assert [b.binding_id for b in await store.lookup(AOR, now)] == ["a1", "a2"]
                assert _resp(ctl, "SCRIPT", "FLUSH") == "OK"
                assert await store.count(now) == 2 and await store.expire(now) == []
            finally:
                await store.close()

        asyncio.run(body())
    finally:
        ctl.close()
