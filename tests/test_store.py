"""Location store: one contract suite run against sqlite and a real redis-server,
plus the backend-specific guarantees (group commit, durability, load time,
memory, error handling, cross-process redis updates)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sipyard.store import Binding, LocationStore, StoreError, open_store
from sipyard.store import binding as binding_mod
from sipyard.store.base import normalize_update
from sipyard.store.cache import BindingCache, KeyedLocks
from sipyard.store.sqlite import DB_NAME, SqliteStore

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
REDIS_SERVER = os.environ.get("SIPYARD_REDIS_SERVER") or shutil.which(
    "redis-server") or "/usr/bin/redis-server"
AOR = "sip:alice@example.com"


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def mk(bid: str = "c1", *, aor: str = AOR, exp: float = 1_000_000.0, reg: float = 0.0,
       contact: str | None = None, **kw: Any) -> Binding:
    fields: dict[str, Any] = dict(
        aor=aor, binding_id=bid, contact=contact if contact is not None else f"sip:{bid}@192.0.2.1",
        params="", q=None, expires_at=exp, registered_at=reg, call_id=f"call-{bid}", cseq=1,
        source_ip="192.0.2.1", source_port=5060, transport="UDP", conn_id=None, path=(),
        user_agent="test/1.0", instance=None, reg_id=None)
    fields.update(kw)
    return Binding(**fields)


def put(*bindings: Binding) -> Callable[[list[Binding]], tuple[list[Binding], list[str]]]:
    return lambda current: (list(bindings), [])


def drop(*ids: str) -> Callable[[list[Binding]], tuple[list[Binding], list[str]]]:
    return lambda current: ([], list(ids))


def spy(seen: list[list[Binding]]) -> Callable[[list[Binding]], tuple[list[Binding], list[str]]]:
    """An update fn that records what it was shown and writes nothing."""
    def fn(current: list[Binding]) -> tuple[list[Binding], list[str]]:
        seen.append(list(current))
        return [], []
    return fn


# -- a real redis-server ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_cmd(port: int, *args: str) -> bytes:
    """One RESP command over a plain socket (keeps the fixture free of the client under test)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(payload)
        return s.recv(65536)


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def start_redis(workdir: Path) -> RedisServer:
    if not os.path.exists(REDIS_SERVER):
        if os.environ.get("CI"):
            pytest.fail(f"{REDIS_SERVER} is missing (CI is set: redis tests must run)")
        pytest.skip(f"{REDIS_SERVER} not installed")
    for _ in range(5):  # a port picked free may be taken before redis binds it
        port = _free_port()
        proc = subprocess.Popen(
            [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if _redis_cmd(port, "PING").startswith(b"+PONG"):
                    return RedisServer(port, proc)
            except OSError:
                time.sleep(0.02)
        proc.kill()
        proc.wait(5)
    pytest.fail("redis-server did not start")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@dataclass
class Backend:
    name: str
    url: str | None
    data_dir: Path

    def make(self) -> LocationStore:
        return open_store(self.url, self.data_dir)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        assert _redis_cmd(server.port, "FLUSHALL").startswith(b"+OK")
        return Backend("redis", server.url, tmp_path)
    return Backend("sqlite", None, tmp_path)


async def opened(backend: Backend) -> LocationStore:
    store = backend.make()
    await store.open()
    return store


# -- the contract, both backends ----------------------------------------------------


def test_put_lookup_refresh_remove(backend: Backend) -> None:
    async def body() -> None:
        now = time.time()
        async with backend.make() as store:
            assert await store.lookup(AOR, now) == []
            a = mk("a", exp=now + 60, reg=now)
            b = mk("b", exp=now + 120, reg=now + 1, q=0.5)
            after = await store.update(AOR, now, put(a, b))
            assert after == [a, b]
            assert await store.lookup(AOR, now) == [a, b]
            assert await store.lookup("sip:bob@example.com", now) == []

            seen: list[list[Binding]] = []

            def refresh(current: list[Binding]) -> tuple[list[Binding], list[str]]:
                seen.append(current)
                return [replace(current[0], expires_at=now + 3600, cseq=2)], []

            after = await store.update(AOR, now, refresh)
            assert seen[-1] == [a, b]
            assert after == [replace(a, expires_at=now + 3600, cseq=2), b]
            after = await store.update(AOR, now, drop("b", "no-such-id"))
            assert [x.binding_id for x in after] == ["a"]
            assert await store.lookup(AOR, now) == after
            # nothing to do: no write, current bindings returned
            assert await store.update(AOR, now, lambda cur: ([], [])) == after

    run(body())


def test_put_and_remove_same_id_remove_wins(backend: Backend) -> None:
    async def body() -> None:
        now = time.time()
        async with backend.make() as store:
            await store.update(AOR, now, put(mk("a", exp=now + 60)))
            after = await store.update(
                AOR, now, lambda cur: ([mk("a", exp=now + 99), mk("b", exp=now + 99)], ["a"]))
            assert [b.binding_id for b in after] == ["b"]

    run(body())


def test_update_is_atomic_under_50_concurrent_calls(backend: Backend) -> None:
    async def body() -> None:
        now = time.time()
        async with backend.make() as store:
            counter = mk("counter", exp=now + 3600, cseq=0)
            await store.update(AOR, now, put(counter))

            def add(i: int) -> Callable[[list[Binding]], tuple[list[Binding], list[str]]]:
                def fn(current: list[Binding]) -> tuple[list[Binding], list[str]]:
                    ctr = next(b for b in current if b.binding_id == "counter")
                    # read-modify-write: a lost update would leave cseq < 50
                    return [mk(f"d{i}", exp=now + 3600, reg=now + i),
                            replace(ctr, cseq=ctr.cseq + 1)], []
                return fn

            await asyncio.gather(*(store.update(AOR, now, add(i)) for i in range(50)))
            final = await store.lookup(AOR, now)
            assert {b.binding_id for b in final} == {"counter"} | {f"d{i}" for i in range(50)}
            assert next(b for b in final if b.binding_id == "counter").cseq == 50

    run(body())


def test_fn_raising_aborts_with_nothing_written(backend: Backend) -> None:
    class Refused(Exception):
        pass

    async def body() -> None:
        now = time.time()
        async with backend.make() as store:
            a = mk("a", exp=now + 60)
            await store.update(AOR, now, put(a))

            def boom(current: list[Binding]) -> tuple[list[Binding], list[str]]:
                current.clear()  # even mutating the list it was given changes nothing
                raise Refused("400 Out of Order CSeq")

            with pytest.raises(Refused):
                await store.update(AOR, now, boom)
            with pytest.raises(ValueError):  # a binding of another AOR: caller bug
                await store.update(AOR, now, put(mk("x", aor="sip:bob@example.com")))
            with pytest.raises(TypeError):
                await store.update(AOR, now, lambda cur: (["nope"], []))  # type: ignore[list-item]
            assert await store.lookup(AOR, now) == [a]
            assert await store.lookup("sip:bob@example.com", now) == []
            assert await store.count(now) == 1
            # the AOR is not left locked
            assert await store.update(AOR, now, drop("a")) == []

    run(body())


def test_expiry_hides_and_expire_returns_once(backend: Backend) -> None:
    async def body() -> None:
        t0 = time.time()
        async with backend.make() as store:
            keep = mk("keep", exp=t0 + 3600)
            short = mk("short", exp=t0 + 0.3, reg=1.0)
            await store.update(AOR, t0, put(keep, short))
            assert await store.count(t0) == 2
            later = t0 + 1
            assert await store.lookup(AOR, later) == [keep]
            assert await store.count(later) == 1
            assert await store.all(later) == [keep]
            # fn only ever sees unexpired bindings
            seen: list[list[Binding]] = []
            await store.update(AOR, later, spy(seen))
            assert seen == [[keep]]
            assert await store.expire(later) == [short]
            assert await store.expire(later) == []
            assert await store.lookup(AOR, later) == [keep]
            assert await store.expire(t0 + 7200) == [keep]
            assert await store.count(t0 + 7200) == 0

    run(body())


def test_remove_aor(backend: Backend) -> None:
    async def body() -> None:
        now = time.time()
        async with backend.make() as store:
            a, b = mk("a", exp=now + 60), mk("b", exp=now + 60, reg=1)
            other = mk("o", aor="sip:bob@example.com", exp=now + 60)
            await store.update(AOR, now, put(a, b))
            await store.update(other.aor, now, put(other))
            assert sorted(await store.remove_aor(AOR), key=lambda x: x.binding_id) == [a, b]
            assert await store.lookup(AOR, now) == []
            assert await store.remove_aor(AOR) == []
            assert await store.all(now) == [other]
            # nothing removed is reported as expired later
            assert await store.expire(now + 100) == [other]

    run(body())


def test_all_and_count(backend: Backend) -> None:
    async def body() -> None:
        now = time.time()
        async with backend.make() as store:
            expected = []
            for i in range(30):
                aor = f"sip:user{i}@example.com"
                bs = [mk(f"c{j}", aor=aor, exp=now + 60 + i, reg=j) for j in range(i % 3 + 1)]
                await store.update(aor, now, put(*bs))
                expected += bs
            got = await store.all(now)
            assert sorted(got, key=lambda b: (b.aor, b.binding_id)) == sorted(
                expected, key=lambda b: (b.aor, b.binding_id))
            assert await store.count(now) == len(expected) == 60
            # bindings expiring at now+60 .. now+69 (users 0-9: 1+2+3+1+2+3+1+2+3+1)
            assert await store.count(now + 69.5) == 60 - 19
            assert len(await store.all(now + 69.5)) == 41

    run(body())


def test_state_get_set_clear(backend: Backend) -> None:
    async def body() -> None:
        async with backend.make() as store:
            assert await store.get_state("runstate") is None
            await store.set_state("runstate", "night")
            await store.set_state("presence:10", "dnd ☎ \x00 \udcff")
            assert await store.get_state("runstate") == "night"
            await store.set_state("runstate", "day")
            assert await store.get_state("runstate") == "day"
            await store.set_state("runstate", None)
            assert await store.get_state("runstate") is None
            await store.set_state("runstate", None)  # clearing twice is fine
        async with backend.make() as store:
            assert await store.get_state("runstate") is None
            assert await store.get_state("presence:10") == "dnd ☎ \x00 \udcff"

    run(body())


CONTACTS = [
    "sip:user@host;unknownparam?Route=%3Csip:sip.example.com%3E",
    "sip:%61lice@example.com;transport=TCP",
    "sip:user%00@example.com",
    "sip:j\u00f6rg@m\u00fcnchen.example;lr",
    "sip:\u7535\u8bdd@\u4f8b\u5b50.example",
    "sip:nul\x00byte@example.com",
    "sip:bad\udcffutf8@example.com",  # a surrogateescape'd invalid byte
    "sip:[2001:db8::1]:5070;maddr=\"x\"",
    "tel:+1-201-555-0123;phone-context=example.com",
    "sip:a'b\"c,d;e=f?g=h&i=%3B@example.com",
]


def test_strings_are_byte_faithful_across_restart(backend: Backend) -> None:
    async def body() -> None:
        now = time.time()
        weird_aor = "sip:%00w\u00e9ird:aor@example.com"
        bindings = [
            mk(f"id:{i}:{c}", aor=weird_aor, contact=c, exp=now + 600, reg=i,
               params=';+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1',
               q=0.125 * i if i < 8 else None, call_id=f"{c}@\u00e9", cseq=2**31 + i,
               source_ip="2001:db8::1", source_port=65535, transport="TLS",
               conn_id=f"conn-{i}" if i % 2 else None,
               path=("<sip:p1.example.com;lr>", "<sip:p2,x@example.com;lr>\n\udcff") if i % 3 else (),
               user_agent=f"UA \u2603 {c}", instance="<urn:uuid:x>" if i % 2 else None,
               reg_id=i if i % 2 else None)
            for i, c in enumerate(CONTACTS)
        ]
        async with backend.make() as store:
            after = await store.update(weird_aor, now, put(*bindings))
            assert after == bindings
            assert await store.lookup(weird_aor, now) == bindings
        async with backend.make() as store:
            got = await store.lookup(weird_aor, now)
            assert got == bindings
            for g, b in zip(got, bindings, strict=True):
                assert g.contact.encode("utf-8", "surrogatepass") == b.contact.encode(
                    "utf-8", "surrogatepass")
            assert await store.remove_aor(weird_aor) == bindings

    run(body())


def test_restart_keeps_unexpired_and_drops_expired(backend: Backend) -> None:
    async def body() -> None:
        t0 = time.time()
        long = mk("long", exp=t0 + 3600)
        short = mk("short", exp=t0 + 0.2)
        async with backend.make() as store:
            await store.update(AOR, t0, put(long, short))
            await store.set_state("k", "v")
        await asyncio.sleep(0.3)
        async with backend.make() as store:
            now = time.time()
            assert await store.lookup(AOR, now) == [long]
            assert await store.all(now) == [long]
            assert await store.count(now) == 1
            assert await store.get_state("k") == "v"
        if backend.name == "sqlite":  # expired rows are deleted at open, not only hidden
            with sqlite3.connect(backend.data_dir / DB_NAME) as db:
                assert db.execute("SELECT binding_id FROM bindings").fetchall() == [("long",)]

    run(body())


def test_closed_store_raises_store_error(backend: Backend) -> None:
    async def body() -> None:
        store = backend.make()
        with pytest.raises(StoreError):
            await store.lookup(AOR, 0.0)
        await store.open()
        with pytest.raises(StoreError):
            await store.open()
        await store.close()
        await store.close()  # idempotent
        for call in (store.lookup(AOR, 0.0), store.update(AOR, 0.0, put(mk())),
                     store.expire(0.0), store.count(0.0), store.set_state("a", "b")):
            with pytest.raises(StoreError):
                await call

    run(body())


# -- redis specifics ------------------------------------------------------------------------


def redis_backend(server: RedisServer, tmp_path: Path) -> Backend:
    assert _redis_cmd(server.port, "FLUSHALL").startswith(b"+OK")
    return Backend("redis", server.url, tmp_path)


def test_redis_key_layout(redis_server: RedisServer, tmp_path: Path) -> None:
    async def body() -> None:
        now = time.time()
        async with redis_backend(redis_server, tmp_path).make() as store:
            await store.update(AOR, now, put(mk("b1", exp=now + 100)))
            await store.set_state("runstate", "night")
        port = redis_server.port
        # the AOR is the hash tag of each of its keys (one Redis Cluster slot)
        assert _redis_cmd(port, "EXISTS", f"sipyard:b:{{{AOR}}}:b1") == b":1\r\n"
        ttl = int(_redis_cmd(port, "PTTL", f"sipyard:b:{{{AOR}}}:b1")[1:])
        assert 95_000 < ttl <= 100_000
        assert b"b1" in _redis_cmd(port, "SMEMBERS", f"sipyard:aor:{{{AOR}}}")
        assert AOR.encode() in _redis_cmd(port, "SMEMBERS", "sipyard:aors")
        assert b"night" in _redis_cmd(port, "GET", "sipyard:state:runstate")

    run(body())


def test_two_redis_stores_share_bindings(redis_server: RedisServer, tmp_path: Path) -> None:
    async def body() -> None:
        now = time.time()
        b = redis_backend(redis_server, tmp_path)
        async with b.make() as one, b.make() as two:
            a = mk("a", exp=now + 60)
            await one.update(AOR, now, put(a))
            assert await two.lookup(AOR, now) == [a]
            await two.update(AOR, now, put(mk("b", exp=now + 60, reg=1)))
            assert [x.binding_id for x in await one.lookup(AOR, now)] == ["a", "b"]
            await two.set_state("s", "1")
            assert await one.get_state("s") == "1"

            # Two "processes" racing on one AOR: WATCH/MULTI/EXEC retries lose nothing.
            def bump(current: list[Binding]) -> tuple[list[Binding], list[str]]:
                ctr = next((x for x in current if x.binding_id == "ctr"), None)
                n = ctr.cseq if ctr else 0
                return [mk("ctr", exp=now + 60, cseq=n + 1, reg=2)], []

            await asyncio.gather(*(s.update(AOR, now, bump)
                                   for _ in range(25) for s in (one, two)))
            ctr = next(x for x in await one.lookup(AOR, now) if x.binding_id == "ctr")
            assert ctr.cseq == 50
            assert isinstance(one, type(two))
            conflicts = one.conflicts + two.conflicts  # type: ignore[attr-defined]
            assert conflicts > 0  # the race really happened

            # Both know "a" and "b": each expired binding is reported by exactly one store.
            later = now + 3600
            reported = await one.expire(later) + await two.expire(later)
            assert sorted(x.binding_id for x in reported) == ["a", "b", "ctr"]
            # a binding removed by one store is never reported as expired by the other
            await one.update(AOR, now, put(mk("r", exp=now + 60)))
            await two.lookup(AOR, now)
            async with b.make() as three:  # loads "r" at open
                await one.update(AOR, now, drop("r"))
                assert await three.expire(later) == []

    run(body())


def test_redis_down_raises_store_error_quickly(tmp_path: Path) -> None:
    server = start_redis(tmp_path)

    async def body() -> None:
        store = open_store(server.url, tmp_path)
        await store.open()
        now = time.time()
        await store.update(AOR, now, put(mk("a", exp=now + 60)))
        server.stop()
        started = time.monotonic()
        with pytest.raises(StoreError):
            await store.lookup(AOR, now)
        with pytest.raises(StoreError):
            await store.update(AOR, now, put(mk("b", exp=now + 60)))
        with pytest.raises(StoreError):
            await store.get_state("x")
        assert time.monotonic() - started < 5
        await store.close()
        dead = open_store(f"redis://127.0.0.1:{_free_port()}/0", tmp_path)
        with pytest.raises(StoreError):
            await dead.open()

    try:
        run(body())
    finally:
        if server.proc.poll() is None:
            server.stop()


# -- sqlite specifics -----------------------------------------------------------------------


def test_open_store_urls(tmp_path: Path) -> None:
    for url in (None, "", "sqlite", "sqlite:"):
        store = open_store(url, tmp_path)
        assert isinstance(store, SqliteStore) and store.path == tmp_path / DB_NAME
    store = open_store(f"sqlite://{tmp_path}/x/other.db?synchronous=full", Path("/nonexistent"))
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "x" / "other.db" and store.synchronous == "FULL"
    store = open_store("sqlite:rel.db", tmp_path)
    assert isinstance(store, SqliteStore) and store.path == tmp_path / "rel.db"
    assert type(open_store("redis://127.0.0.1:1/0", tmp_path)).__name__ == "RedisStore"
    for bad in ("mysql://x", "sqlite://host/x.db", "sqlite:///x.db?bogus=1",
                "sqlite:///x.db?synchronous=sometimes"):
        with pytest.raises(ValueError):
            open_store(bad, tmp_path)


def test_sqlite_one_commit_merges_the_batch_and_isolates_a_bad_write(tmp_path: Path) -> None:
    """A batch's deltas go in as one DELETE and one INSERT executemany; when that fails,
    the writes are retried one by one, so only the bad one fails (and nothing is half
    written)."""
    async def body() -> None:
        now = time.time()
        aors = [f"sip:{i}@example.com" for i in range(6)]
        async with SqliteStore(tmp_path / DB_NAME) as store:
            for aor in aors:  # old bindings, each to be replaced by a new id below
                await store.update(aor, now, put(mk("old", aor=aor, exp=now + 60)))
            before = store.commits

            def swap(aor: str) -> Callable[[list[Binding]], tuple[list[Binding], list[str]]]:
                new = mk("new", aor=aor, exp=now + 90)
                if aor == aors[3]:  # too big for an SQLite INTEGER: this write alone fails
                    new = replace(new, cseq=2 ** 70)
                return lambda current: ([new], ["old"])

            results = await asyncio.gather(
                *(store.update(aor, now, swap(aor)) for aor in aors), return_exceptions=True)
            assert isinstance(results[3], OverflowError)
            assert all(isinstance(r, list) for i, r in enumerate(results) if i != 3)
            assert store.commits - before == 1  # merged try rolled back; the rest in one commit
            assert [b.binding_id for b in await store.lookup(aors[3], now)] == ["old"]
            assert [b.binding_id for b in await store.lookup(aors[0], now)] == ["new"]
            before = store.commits
            await asyncio.gather(*(store.update(aor, now, drop("new")) for aor in aors))
            assert store.commits - before == 1  # all six deletes in one merged commit
        async with SqliteStore(tmp_path / DB_NAME) as store:
            assert {b.aor: b.binding_id for b in await store.all(now)} == {aors[3]: "old"}

    run(body())


@pytest.mark.parametrize("sync", ["NORMAL", "FULL"])
def test_sqlite_opens_and_closes_inside_an_except_block(tmp_path: Path, sync: str) -> None:
    """`sipyard runstate` with the server down opens the store while handling the
    control socket's error; a compiled close() once re-raised that error."""
    async def body() -> str | None:
        try:
            raise KeyError("being handled")
        except KeyError:
            store = SqliteStore(tmp_path / DB_NAME, synchronous=sync)
            await store.open()
            try:
                await store.set_state("runstate", "night")
                return await store.get_state("runstate")
            finally:
                await store.close()

    assert run(body()) == "night"


def test_sqlite_synchronous_setting(tmp_path: Path) -> None:
    async def level(url: str | None) -> int:
        async with open_store(url, tmp_path) as store:
            assert isinstance(store, SqliteStore)
            return int(await store._call(
                lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]))

    assert run(level(None)) == 1  # NORMAL: see the sqlite module docstring
    assert run(level("sqlite:full.db?synchronous=full")) == 2


def test_sqlite_group_commit(tmp_path: Path) -> None:
    async def body() -> None:
        now = time.time()
        async with SqliteStore(tmp_path / DB_NAME) as store:
            assert isinstance(store, SqliteStore)
            before = store.commits
            await asyncio.gather(*(
                store.update(f"sip:{i}@example.com", now,
                             put(mk("c", aor=f"sip:{i}@example.com", exp=now + 60)))
                for i in range(200)))
            commits = store.commits - before
            print(f"\n200 concurrent updates -> {commits} commits")
            assert 1 <= commits < 50
            assert await store.count(now) == 200
        with sqlite3.connect(tmp_path / DB_NAME) as db:
            assert db.execute("SELECT count(*) FROM bindings").fetchone() == (200,)
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)

    run(body())


def realistic(i: int, now: float) -> Binding:
    """What phones behind NAT register, in a mix of three client styles (desk phone;
    RFC 5626 softphone with +sip.instance; softphone with a rinstance parameter)."""
    ip = f"198.51.{(i >> 8) & 255}.{i & 255}"
    port = 20000 + i % 40000
    kind = i % 3
    instance = f"<urn:uuid:0000{i:04x}-0000-1000-8000-000a95a0e128>" if kind == 1 else None
    if kind == 0:
        contact, call_id = f"sip:{1000 + i}@{ip}:{port}", f"0_{i * 7919}@{ip}"
    elif kind == 1:
        contact, call_id = f"sip:{1000 + i}@{ip}:{port};transport=udp", f"{i:08x}-5b1f-4f7c-a5e2"
    else:
        contact, call_id = f"sip:{1000 + i}@{ip}:{port};rinstance=a1b2c3d4", f"Zx{i:020d}"
    return Binding(
        aor=f"sip:{1000 + i}@pbx.example.com",
        binding_id=f"i:{instance}:1" if instance else f"c:{contact}",
        contact=contact,
        params=f';+sip.instance="{instance}";reg-id=1' if instance else "",
        q=None, expires_at=now + 60 + i % 3600, registered_at=now - i % 7200,
        call_id=call_id, cseq=2 + i % 300, source_ip=ip, source_port=port, transport="UDP",
        conn_id=None, path=(),
        user_agent=("Yealink SIP-T46U 108.86.0.45", "Linphone/5.2.0", "Zoiper rv2.10")[kind],
        instance=instance, reg_id=1 if instance else None)


#: realistic() in SQL, so 100 000 rows are made in C in a fraction of a second
_GENERATE = """
WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < :n - 1),
r AS (SELECT i, i % 3 AS kind, '198.51.' || ((i >> 8) & 255) || '.' || (i & 255) AS ip,
             20000 + i % 40000 AS port,
             printf('<urn:uuid:0000%04x-0000-1000-8000-000a95a0e128>', i) AS inst FROM c),
s AS (SELECT *, CASE kind WHEN 0 THEN printf('sip:%d@%s:%d', 1000 + i, ip, port)
                          WHEN 1 THEN printf('sip:%d@%s:%d;transport=udp', 1000 + i, ip, port)
                          ELSE printf('sip:%d@%s:%d;rinstance=a1b2c3d4', 1000 + i, ip, port)
                          END AS contact FROM r)
INSERT INTO bindings SELECT
    printf('sip:%d@pbx.example.com', 1000 + i),
    CASE kind WHEN 1 THEN 'i:' || inst || ':1' ELSE 'c:' || contact END, contact,
    CASE kind WHEN 1 THEN ';+sip.instance="' || inst || '";reg-id=1' ELSE '' END,
    NULL, :now + 60 + i % 3600, :now - i % 7200,
    CASE kind WHEN 0 THEN printf('0_%d@%s', i * 7919, ip)
              WHEN 1 THEN printf('%08x-5b1f-4f7c-a5e2', i) ELSE printf('Zx%020d', i) END,
    2 + i % 300, ip, port, 'UDP', NULL, '',
    CASE kind WHEN 0 THEN 'Yealink SIP-T46U 108.86.0.45' WHEN 1 THEN 'Linphone/5.2.0'
              ELSE 'Zoiper rv2.10' END,
    CASE kind WHEN 1 THEN inst END, CASE kind WHEN 1 THEN 1 END, 0
FROM s
"""


def _make_db(path: Path, n: int, now: float) -> None:
    async def create() -> None:
        async with SqliteStore(path) as store:  # creates the schema
            assert isinstance(store, SqliteStore)
            await store._call(lambda conn: conn.execute(_GENERATE, {"n": n, "now": now}))

    run(create())


@pytest.mark.slow
def test_sqlite_loads_100k_bindings(tmp_path: Path) -> None:
    """Correctness of a 100k load; its speed is measured by `make bench`, not here."""
    n, now = 100_000, time.time()
    _make_db(tmp_path / DB_NAME, n, now)

    async def load() -> float:
        store = SqliteStore(tmp_path / DB_NAME)
        started = time.perf_counter()
        await store.open()
        elapsed = time.perf_counter() - started
        assert await store.count(now) == n
        for i in (0, 7, 8, n - 1):  # the SQL generator agrees with realistic()
            assert await store.lookup(f"sip:{1000 + i}@pbx.example.com", now) == [
                realistic(i, now)]
        due = await store.expire(now + 60.5)  # i % 3600 == 0 expire first
        assert sorted(due, key=lambda b: b.aor) == sorted(
            (realistic(i, now) for i in range(0, n, 3600)), key=lambda b: b.aor)
        await store.close()
        return elapsed

    elapsed = run(load())
    print(f"\nopen() loading {n} bindings: {elapsed:.2f} s")


def test_sqlite_cache_is_compact(tmp_path: Path) -> None:
    n, now = 20_000, time.time()
    _make_db(tmp_path / DB_NAME, n, now)

    async def load() -> float:
        store = SqliteStore(tmp_path / DB_NAME)
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            await store.open()
            per_binding = (tracemalloc.get_traced_memory()[0] - base) / n
        finally:
            tracemalloc.stop()
        assert await store.count(now) == n
        await store.close()
        return per_binding

    per_binding = run(load())
    # Python objects only (sqlite's page cache is not traced): Binding 168 B, strings,
    # floats, ints, the AOR dict and the expiry wheel
    print(f"\ncache memory: {per_binding:.0f} B per binding, strings included")
    assert per_binding < 900


def test_sqlite_write_failure_leaves_cache_unchanged(tmp_path: Path) -> None:
    async def body() -> None:
        now = time.time()
        async with SqliteStore(tmp_path / DB_NAME) as store:
            assert isinstance(store, SqliteStore)
            a = mk("a", exp=now + 60)
            await store.update(AOR, now, put(a))
            await store.set_state("k", "v")

            # read-only database (as after a remount ro)
            await store._call(lambda conn: conn.execute("PRAGMA query_only=1"))
            with pytest.raises(StoreError, match="readonly"):
                await store.update(AOR, now, put(mk("b", exp=now + 60)))
            with pytest.raises(StoreError):
                await store.update(AOR, now, drop("a"))
            with pytest.raises(StoreError):
                await store.remove_aor(AOR)
            with pytest.raises(StoreError):
                await store.set_state("k", "w")
            with pytest.raises(StoreError):
                await store.expire(now + 100)
            assert await store.lookup(AOR, now) == [a]
            assert await store.get_state("k") == "v"
            # the failed expire is retried once the disk is writable again
            await store._call(lambda conn: conn.execute("PRAGMA query_only=0"))
            assert await store.expire(now + 100) == [a]
            await store.update(AOR, now, put(a))

            # disk full: fill the file to its page limit, then keep writing
            def cap(conn: sqlite3.Connection) -> None:
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count={pages}")

            await store._call(cap)
            big = "x" * 4000
            results = await asyncio.gather(
                *(store.update(f"sip:{i}@example.com", now,
                               put(mk("c", aor=f"sip:{i}@example.com", exp=now + 60,
                                      user_agent=big)))
                  for i in range(200)),
                return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            assert failures and all(isinstance(r, StoreError) for r in failures)
            assert "full" in str(failures[0])
            stored = {f"sip:{i}@example.com" for i, r in enumerate(results)
                      if not isinstance(r, BaseException)}
            cached = {b.aor for b in await store.all(now)} - {AOR}
            assert cached == stored

        # what the cache claimed is exactly what is on disk
        async with SqliteStore(tmp_path / DB_NAME) as store:
            assert {b.aor for b in await store.all(now)} - {AOR} == stored
            assert await store.lookup(AOR, now) == [a]

    run(body())


def test_sqlite_locked_database_raises_store_error(tmp_path: Path) -> None:
    async def body() -> None:
        now = time.time()
        async with SqliteStore(tmp_path / DB_NAME) as store:
            assert isinstance(store, SqliteStore)
            await store._call(lambda conn: conn.execute("PRAGMA busy_timeout=50"))
            other = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            try:
                with pytest.raises(StoreError, match="locked"):
                    await store.update(AOR, now, put(mk("a", exp=now + 60)))
                assert await store.lookup(AOR, now) == []
            finally:
                other.execute("ROLLBACK")
                other.close()
            await store.update(AOR, now, put(mk("a", exp=now + 60)))
            assert len(await store.lookup(AOR, now)) == 1

    run(body())


def test_sqlite_closed_connection_raises_store_error(tmp_path: Path) -> None:
    async def body() -> None:
        now = time.time()
        store = SqliteStore(tmp_path / DB_NAME)
        await store.open()
        a = mk("a", exp=now + 60)
        await store.update(AOR, now, put(a))
        assert store._writer is not None
        store._writer.conn.close()
        with pytest.raises(StoreError):
            await store.update(AOR, now, put(mk("b", exp=now + 60)))
        with pytest.raises(StoreError):
            await store.set_state("k", "v")
        assert await store.lookup(AOR, now) == [a]
        assert await store.get_state("k") is None
        await store.close()

    run(body())


def test_sqlite_open_failures(tmp_path: Path) -> None:
    async def body() -> None:
        blocker = tmp_path / "file"
        blocker.write_text("not a dir")
        with pytest.raises(StoreError):  # data dir path runs through a regular file
            await SqliteStore(blocker / "sub" / DB_NAME).open()
        garbage = tmp_path / "garbage.db"
        garbage.write_bytes(b"this is not an sqlite database" * 100)
        with pytest.raises(StoreError):
            await SqliteStore(garbage).open()

    run(body())


_CHILD = """
import asyncio, sys, time
from pathlib import Path
from sipyard.store import Binding, open_store

async def main():
    store = open_store(None, Path(sys.argv[1]))
    await store.open()
    now = time.time()
    for i in range(20):
        aor = f"sip:{i}@example.com"
        b = Binding(aor, "c", f"sip:{i}@192.0.2.1", "", None, now + 3600, now, "cid", 1,
                    "192.0.2.1", 5060, "UDP", None, (), "ua", None, None)
        await store.update(aor, now, lambda cur, b=b: ([b], []))
    print("committed", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_sqlite_kill_9_loses_no_committed_binding(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)], stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tempfile.gettempdir())
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"committed"
    finally:
        proc.kill()  # SIGKILL: no close(), no checkpoint
        proc.wait(5)

    async def body() -> None:
        async with open_store(None, tmp_path) as store:
            assert await store.count(time.time()) == 20

    run(body())


def test_sqlite_cancelled_caller_keeps_aor_consistent(tmp_path: Path) -> None:
    async def body() -> None:
        now = time.time()
        async with SqliteStore(tmp_path / DB_NAME) as store:
            task = asyncio.ensure_future(store.update(AOR, now, put(mk("a", exp=now + 60))))
            await asyncio.sleep(0)  # fn ran, the write is queued
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the next update of the AOR sees the committed write, never a stale list
            seen: list[list[Binding]] = []
            await store.update(AOR, now, spy(seen))
            assert [[b.binding_id for b in cur] for cur in seen] == [["a"]]

    run(body())


# -- units ------------------------------------------------------------------------------


def test_binding_is_immutable_and_slotted() -> None:
    """Immutable by ``Final``: mypy refuses the assignment below (the ignore would be
    reported unused otherwise); a compiled build also refuses it at run time."""
    b = mk()
    if binding_mod.__file__.endswith(".so"):
        with pytest.raises(AttributeError):
            b.contact = "sip:x@y"  # type: ignore[misc]
    assert not hasattr(b, "__dict__")
    assert b == mk() and hash(b) == hash(mk()) and b != mk(cseq=99)


def test_normalize_update_dedupes() -> None:
    a1, a2, b = mk("a", cseq=1), mk("a", cseq=2), mk("b")
    puts, removes = normalize_update(AOR, ([a1, b, a2], ["x", "x", "b"]))
    assert puts == (a2,) and removes == ("x", "b")


def test_binding_cache_wheel() -> None:
    cache = BindingCache()
    cache.load([mk("a", exp=10.5), mk("b", exp=10.7, reg=1), mk("c", aor="sip:c@x", exp=12.0)])
    assert cache.count(10.6) == 2 and cache.count(100.0) == 0 and len(cache) == 3
    assert [b.binding_id for b in cache.expired(10.6)] == ["a"]
    # refresh "b" before it is swept: the stale wheel entry must not report it
    cache.apply(AOR, [mk("b", exp=20.0, reg=1)], [])
    due = cache.expired(10.8)
    assert [b.binding_id for b in due] == ["a"]
    assert cache.discard(due) == due and cache.discard(due) == []
    assert cache.count(10.8) == 2
    # a binding put already in the past is still found (the cursor moves back)
    cache.apply(AOR, [mk("old", exp=1.0)], [])
    assert [b.binding_id for b in cache.expired(11.0)] == ["old"]
    # a clock far ahead walks the buckets instead of every second in between
    assert sorted(b.binding_id for b in cache.expired(1e12)) == ["b", "c", "old"]
    assert cache.pop_aor(AOR) and cache.count(0.0) == 1
    assert cache.discard(cache.expired(1e12)) and len(cache) == 0 and cache.expired(1e12) == []


def test_keyed_locks_are_dropped_when_idle() -> None:
    async def body() -> None:
        locks = KeyedLocks()
        order: list[str] = []

        async def worker(name: str) -> None:
            await locks.acquire("k")
            order.append(name + "+")
            await asyncio.sleep(0.001)
            order.append(name + "-")
            locks.release("k")

        await asyncio.gather(worker("a"), worker("b"))
        assert order == ["a+", "a-", "b+", "b-"]
        assert len(locks) == 0

    run(body())


def test_keyed_locks_fifo_handoff_and_cancelled_waiters() -> None:
    """The lock passes to the oldest live waiter; a waiter cancelled before or just after
    the hand-over never leaves the key locked for ever."""
    async def body() -> None:
        locks = KeyedLocks()
        assert locks.try_acquire("k") and not locks.try_acquire("k")
        order: list[str] = []

        async def waiter(name: str) -> None:
            await locks.acquire("k")
            order.append(name)
            locks.release("k")

        tasks = {n: asyncio.ensure_future(waiter(n)) for n in ("a", "b", "c", "d")}
        await asyncio.sleep(0)  # all four queued behind the holder
        tasks["b"].cancel()  # cancelled while waiting: it must simply leave the queue
        await asyncio.sleep(0)
        locks.release("k")  # hands over to "a"
        tasks["c"].cancel()  # cancelled while still queued behind "a"
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        assert order == ["a", "d"]
        assert len(locks) == 0 and locks.try_acquire("k")
        locks.release("k")

        # Cancelled after the lock was handed to it but before it ran: it passes it on.
        assert locks.try_acquire("k")
        late = asyncio.ensure_future(waiter("late"))
        after = asyncio.ensure_future(waiter("after"))
        await asyncio.sleep(0)
        locks.release("k")  # "late" now owns the lock, but has not resumed yet
        late.cancel()
        await asyncio.gather(late, after, return_exceptions=True)
        assert late.cancelled() and order[-1] == "after"
        assert len(locks) == 0

    run(body())


def test_sqlite_commits_in_the_loop_with_normal_and_in_a_thread_with_full(tmp_path: Path) -> None:
    """NORMAL needs no fsync, so its commits run in the loop; FULL keeps the writer thread.
    Both commit a burst of concurrent updates in a handful of transactions, and a caller
    cancelled while its write is pending still sees the write applied and the AOR unlocked."""
    import threading

    async def body(sync: str) -> None:
        before = {t.name for t in threading.enumerate()}
        store = SqliteStore(tmp_path / sync / DB_NAME, synchronous=sync)
        await store.open()
        try:
            writers = {t.name for t in threading.enumerate()} - before
            assert ("sipyard-store-writer" in writers) == (sync == "FULL")
            await asyncio.gather(*(store.update(f"sip:{i}@x", 0.0, put(mk(aor=f"sip:{i}@x")))
                                   for i in range(100)))
            assert await store.count(0.0) == 100 and store.commits <= 3
            task = asyncio.ensure_future(store.update(AOR, 0.0, put(mk("gone-caller"))))
            await asyncio.sleep(0)  # the write is queued
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            # the next update of the AOR waits for the cancelled one's write, then sees it
            after = await store.update(AOR, 0.0, put(mk("next")))
            assert {b.binding_id for b in after} == {"gone-caller", "next"}
        finally:
            await store.close()

    run(body("NORMAL"))
    run(body("FULL"))


def test_sqlite_one_commit_wakes_its_callers_inside_one_hold(tmp_path: Path) -> None:
    """Group commit: the answers of every REGISTER one commit stored leave together."""
    events: list[str] = []

    class Answers:
        def __init__(self) -> None:
            self.held = False

        def hold(self) -> bool:
            if self.held:
                return False
            self.held = True
            events.append("hold")
            return True

        def send_held(self) -> None:
            self.held = False
            events.append("send")

    async def main() -> None:
        store = open_store(None, tmp_path)
        store.answers = Answers()
        await store.open()
        try:
            done = asyncio.get_running_loop().create_future()
            woken: list[str] = []

            def cb(aor: str) -> Callable[[list[Binding] | None, BaseException | None], None]:
                def on_done(result: list[Binding] | None, exc: BaseException | None) -> None:
                    assert exc is None and result
                    woken.append(aor)
                    events.append("woke")
                    if len(woken) == 5 and not done.done():
                        done.set_result(None)
                return on_done

            for i in range(5):
                aor = f"sip:{i}@example.com"
                b = mk(aor=aor)
                assert store.update_soon(aor, 0.0, lambda cur, b=b: ([b], []), cb(aor))
            await asyncio.wait_for(done, 5)
        finally:
            await store.close()
        assert woken == [f"sip:{i}@example.com" for i in range(5)]
        # every wake-up between a hold and its send, none outside
        depth = 0
        for e in events:
            depth += {"hold": 1, "send": -1}.get(e, 0)
            assert e != "woke" or depth == 1, events
        assert depth == 0 and "hold" in events

    run(main())
