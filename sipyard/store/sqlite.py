"""SQLite location store: write-through, every read served from memory.

Layout. One file (``sipyard.db`` in the data dir, WAL mode) with a
``bindings`` table keyed by ``(aor, binding_id)`` and a ``state`` key/value
table. At :meth:`SqliteStore.open` expired rows are deleted and the rest is
loaded into a :class:`~sipyard.store.cache.BindingCache`; from then on
``lookup``/``all``/``count``/``get_state`` never touch the database. The cache
assumes this process is the only writer while it runs (several workers
sharing bindings is what the redis backend is for).

Writes. Each write is an operation queued in the loop; the writes of a short
window (``COMMIT_WINDOW``, 1 ms, or ``COMMIT_GROUP`` writes, whichever comes
first) are committed in one ``BEGIN IMMEDIATE … COMMIT`` (an operation that fails is dropped and the rest retried, so one
failing write does not fail its neighbours), and the outcomes are handed back
in order. This is group commit: a burst of N REGISTERs costs a handful of
commits, not N (a test makes 200 concurrent updates and sees a few commits at
most). With ``synchronous=NORMAL`` the commit runs in the loop itself (no
fsync, tens of µs); with FULL or EXTRA a writer thread owns the connection so
the fsync never stalls the loop, and writes that arrive while it commits go in
the next transaction. ``update()`` returns only after its transaction
committed, and the cache changes only then (in the loop, in commit order): a
failed commit (disk full, locked, read-only, closed) raises
:class:`StoreError` and leaves no trace in memory.

Atomicity. ``update(aor, now, fn)`` holds a per-AOR lock from reading the
bindings ``fn`` sees until its write is applied to the cache (released by the
write's completion, so even a cancelled caller cannot let a second update of
the AOR read a stale list). Writes are applied to the cache as deltas, so an
``expire()`` committed in between is never undone.

Durability: ``PRAGMA synchronous=NORMAL`` (default). In WAL mode a COMMIT
with NORMAL has written the transaction's frames to the WAL file with
``write()`` before it returns; from then on it is in the kernel's page cache
and survives the process dying in any way (kill -9, OOM, crash): a committed
binding is never lost while the machine keeps running. Only an OS crash or a
power loss can drop the last transactions before the next checkpoint's fsync
(the database stays consistent). FULL would fsync the WAL on every commit:
with group commit that is one fsync per batch, but it still adds a disk flush
(0.1–10 ms) to every REGISTER's latency. Bindings are soft state that clients
refresh on their own, and a power loss takes the server down with them, so
NORMAL is the default; ``sqlite:///path/to.db?synchronous=full`` selects FULL
where power-loss durability matters more than latency.

Strings are bound as TEXT; a string that UTF-8 cannot encode (a lone
surrogate from a ``surrogateescape`` decode) is stored as a BLOB of its
``surrogatepass`` encoding and decoded back on load, so every ``str``
round-trips exactly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from .base import Binding, LocationStore, StoreError, UpdateDone, UpdateFn, normalize_update
from .cache import BindingCache, KeyedLocks
from .sqlite_writer import (
    COLUMNS,
    STOP,
    Committer,
    Op,
    Writer,
    executemany,
)

__all__ = ["SqliteStore", "DB_NAME"]

log = logging.getLogger("sipyard.store")

DB_NAME = "sipyard.db"
SCHEMA_VERSION = 2
#: group commit: writes wait at most this long for others to share their commit
COMMIT_WINDOW = 0.001
#: ... or until this many are queued
COMMIT_GROUP = 64

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS bindings (
    aor TEXT NOT NULL, binding_id TEXT NOT NULL, contact TEXT NOT NULL, params TEXT NOT NULL,
    q REAL, expires_at REAL NOT NULL, registered_at REAL NOT NULL, call_id TEXT NOT NULL,
    cseq INTEGER NOT NULL, source_ip TEXT NOT NULL, source_port INTEGER NOT NULL,
    transport TEXT NOT NULL, conn_id TEXT, path TEXT NOT NULL, user_agent TEXT NOT NULL,
    instance TEXT, reg_id INTEGER,
    -- 1 when some text column holds a BLOB (a str UTF-8 cannot encode, see above)
    blobs INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (aor, binding_id)
) WITHOUT ROWID;
-- no index on expires_at: the cache's expiry wheel finds due bindings, and the
-- one scan by expires_at happens at open (schema 1 had the index: dropped below)
DROP INDEX IF EXISTS bindings_expires_at;
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
PRAGMA user_version = {SCHEMA_VERSION};
"""
#: column order == Binding field order (+ blobs), so a row maps to Binding positionally
_DELETE_EXPIRED_ONE = "DELETE FROM bindings WHERE aor = ? AND binding_id = ? AND expires_at <= ?"
_SELECT_LIVE = f"SELECT {COLUMNS} FROM bindings WHERE expires_at > ? ORDER BY aor"


# -- row mapping ---------------------------------------------------------------


def binding_row(b: Binding) -> tuple[Any, ...]:
    """The ``bindings`` row of a binding (INSERT_SQL parameter order)."""
    return (
        b.aor, b.binding_id, b.contact, b.params, b.q, b.expires_at, b.registered_at,
        b.call_id, b.cseq, b.source_ip, b.source_port, b.transport, b.conn_id,
        json.dumps(b.path, ensure_ascii=False) if b.path else "", b.user_agent,
        b.instance, b.reg_id, 0,
    )


def _unblob(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return value


def _load_rows(conn: sqlite3.Connection, now: float) -> list[Binding]:
    """Every unexpired binding, with repeated strings shared to keep the cache small."""
    pool: dict[str, str] = {"": ""}
    out: list[Binding] = []
    append = out.append
    last_aor = ""
    for (aor, bid, contact, params, q, exp, reg, call_id, cseq, ip, port, transport, conn_id,
         path, ua, instance, reg_id, blobs) in conn.execute(_SELECT_LIVE, (now,)):
        if blobs:
            aor, bid, contact, params, call_id, ip, transport, conn_id, path, ua, instance = map(
                _unblob,
                (aor, bid, contact, params, call_id, ip, transport, conn_id, path, ua, instance))
        if aor == last_aor:
            aor = last_aor  # rows come ordered by aor: share one object per AOR
        last_aor = aor
        params = pool.setdefault(params, params)
        transport = pool.setdefault(transport, transport)
        ua = pool.setdefault(ua, ua)
        append(Binding(aor, bid, contact, params, q, exp, reg, call_id, cseq, ip, port,
                       transport, conn_id, tuple(json.loads(path)) if path else (), ua,
                       instance, reg_id))
    return out


# -- the store -----------------------------------------------------------------


def _store_error(exc: BaseException) -> BaseException:
    if isinstance(exc, (sqlite3.Error, OSError)):
        err = StoreError(f"sqlite: {exc}")
        err.__cause__ = exc
        return err
    return exc


class SqliteStore(LocationStore):
    """The default backend (see the module docstring)."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        synchronous = synchronous.upper()
        if synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self._cache = BindingCache()
        self._state: dict[str, str] = {}
        self._locks = KeyedLocks()
        self._expire_lock = asyncio.Lock()
        self._writer: Committer | None = None
        self._pending: list[Op] = []
        self._flush_at: asyncio.TimerHandle | None = None
        #: seconds a write may wait for company (0: commit in the next loop iteration)
        self.commit_window = COMMIT_WINDOW
        self._closing = False
        #: seconds the last open() took (schema, sweep, load)
        self.load_seconds = 0.0

    # -- life cycle ----------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            raise StoreError("store already open")
        started = time.monotonic()
        try:
            conn, bindings, state = await asyncio.to_thread(self._open_sync, time.time())
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"sqlite: cannot open {self.path}: {exc}") from exc
        cache = BindingCache()
        cache.load(bindings)
        self._cache = cache
        self._state = state
        self._closing = False
        if self.synchronous == "NORMAL":
            self._writer = Committer(conn, self._deliver)
        else:
            self._writer = Writer(conn, asyncio.get_running_loop(), self._deliver)
        self._writer.start()
        self.load_seconds = time.monotonic() - started

    def _open_sync(self, now: float) -> tuple[sqlite3.Connection, list[Binding], dict[str, str]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL journal mode (got {mode})")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA journal_size_limit=67108864")
            # locking_mode=EXCLUSIVE was measured (0.1 us per binding at 32 writes per
            # commit, 2 us alone) and left out: it would lock out `sqlite3 .backup` and
            # any reader of a running server's file.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"schema version {version} is newer than this sipyard ({SCHEMA_VERSION})")
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
            conn.execute("DELETE FROM bindings WHERE expires_at <= ?", (now,))
            bindings = _load_rows(conn, now)
            state = {_unblob(k): _unblob(v)
                     for k, v in conn.execute("SELECT key, value FROM state")}
        except BaseException:
            conn.close()
            raise
        return conn, bindings, state

    async def close(self) -> None:
        writer = self._writer
        if writer is None or self._closing:
            return
        self._flush()  # writes queued in this loop iteration go first
        self._closing = True  # from here on _submit refuses, so nothing queues behind STOP
        fut = self._new_future()
        writer.submit(Op(lambda conn: None, fut, alone=True))
        writer.submit(STOP)
        # Not try/finally: compiled, a finally that awaits re-raised the exception its
        # caller was handling (an `except` block up the stack) instead of finishing.
        failed: BaseException | None = None
        try:
            await fut
        except BaseException as exc:
            failed = exc
        self._writer = None
        await asyncio.to_thread(writer.join, 5.0)
        if failed is not None:
            raise failed

    @property
    def commits(self) -> int:
        """Transactions committed since open (group commit makes it < writes)."""
        return self._writer.commits if self._writer is not None else 0

    # -- reads (memory only) ---------------------------------------------------

    async def lookup(self, aor: str, now: float) -> list[Binding]:
        self._check_open()
        return self._cache.visible(aor, now)

    async def all(self, now: float) -> list[Binding]:
        self._check_open()
        return self._cache.all(now)

    async def count(self, now: float) -> int:
        self._check_open()
        return self._cache.count(now)

    async def get_state(self, key: str) -> str | None:
        self._check_open()
        return self._state.get(key)

    # -- writes ----------------------------------------------------------------

    async def update(self, aor: str, now: float, fn: UpdateFn) -> list[Binding]:
        self._check_open()
        locks = self._locks
        if not locks.try_acquire(aor):
            await locks.acquire(aor)
        try:
            current = self._cache.visible(aor, now)
            puts, removes = normalize_update(aor, fn(list(current)))
            if not puts and not removes:
                locks.release(aor)
                return current
            fut = self._submit(Op(
                None, self._new_future(), rows=[binding_row(b) for b in puts],
                dels=[(aor, rid) for rid in removes],
                on_commit=partial(self._committed_update, aor, puts, removes, now),
                unlock=aor))
        except BaseException:
            locks.release(aor)
            raise
        # The lock is released in _deliver, when the write is applied, whatever
        # the caller does: a cancelled caller cannot let a second update of the
        # AOR read the bindings before this write reached the cache.
        result: list[Binding] = await fut
        return result

    def update_soon(self, aor: str, now: float, fn: UpdateFn, done: UpdateDone) -> bool:
        if self._writer is None or self._closing:
            return False  # update() raises the StoreError
        locks = self._locks
        if not locks.try_acquire(aor):
            return False
        try:
            current = self._cache.visible(aor, now)
            puts, removes = normalize_update(aor, fn(list(current)))
            if not puts and not removes:
                locks.release(aor)
                done(current, None)
                return True
            self._submit(Op(
                None, None, rows=[binding_row(b) for b in puts],
                dels=[(aor, rid) for rid in removes],
                on_commit=partial(self._committed_update, aor, puts, removes, now),
                unlock=aor, done=done))
        except BaseException:
            locks.release(aor)
            raise
        return True

    def lookup_now(self, aor: str, now: float) -> list[Binding] | None:
        if self._writer is None or self._closing:
            return None
        return self._cache.visible(aor, now)

    def _committed_update(self, aor: str, puts: tuple[Binding, ...],
                          removes: tuple[str, ...], now: float, _: Any) -> list[Binding]:
        self._cache.apply(aor, puts, removes)
        return self._cache.visible(aor, now)

    async def remove_aor(self, aor: str) -> list[Binding]:
        self._check_open()
        locks = self._locks
        if not locks.try_acquire(aor):
            await locks.acquire(aor)
        try:
            fut = self._submit(Op(
                partial(_delete_aor, aor), self._new_future(),
                on_commit=lambda _: list(self._cache.pop_aor(aor)), unlock=aor))
        except BaseException:
            locks.release(aor)
            raise
        result: list[Binding] = await fut
        return result

    async def expire(self, now: float) -> list[Binding]:
        self._check_open()
        async with self._expire_lock:
            due = self._cache.expired(now)
            if not due:
                return []
            keys = [(b.aor, b.binding_id, now) for b in due]
            fut = self._submit(Op(
                partial(_executemany_op, _DELETE_EXPIRED_ONE, keys), self._new_future(),
                on_commit=lambda _: self._cache.discard(due)))
            result: list[Binding] = await asyncio.shield(fut)
            return result

    async def set_state(self, key: str, value: str | None) -> None:
        self._check_open()
        fut = self._submit(Op(
            partial(_write_state, key, value), self._new_future(),
            on_commit=lambda _: self._apply_state(key, value)))
        await asyncio.shield(fut)

    def _apply_state(self, key: str, value: str | None) -> None:
        if value is None:
            self._state.pop(key, None)
        else:
            self._state[key] = value

    # -- plumbing --------------------------------------------------------------

    def _check_open(self) -> None:
        if self._writer is None or self._closing:
            raise StoreError("sqlite: store is not open")

    def _new_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def _submit(self, op: Op) -> asyncio.Future[Any]:
        writer = self._writer
        if writer is None or self._closing:
            raise StoreError("sqlite: store is not open")
        if op.alone:
            self._flush()
            writer.submit(op)
            return op.future  # type: ignore[return-value]  # alone ops always have one
        # Group commit starts in the loop: every write of one loop iteration (all
        # REGISTERs of one burst of datagrams) reaches the writer as one item, so
        # the thread wakes, commits and hands back once per burst, not per write.
        # Group commit over a short window: a write waits up to COMMIT_WINDOW (or
        # until COMMIT_GROUP writes are queued) so that, at a few thousand REGISTERs
        # a second, one commit carries several: a commit alone costs about twice
        # its rows. Nobody is answered before the commit, so durability is the same.
        pending = self._pending
        pending.append(op)
        if len(pending) == 1:
            self._flush_at = asyncio.get_running_loop().call_later(self.commit_window,
                                                                   self._flush)
        elif len(pending) >= COMMIT_GROUP:
            self._flush()
        return op.future  # type: ignore[return-value]  # None only for update_soon

    def _flush(self) -> None:
        timer, self._flush_at = self._flush_at, None
        if timer is not None:
            timer.cancel()
        pending = self._pending
        if pending and self._writer is not None:
            self._pending = []
            self._writer.submit(pending)

    async def _call(self, fn: Callable[[sqlite3.Connection], Any], *, alone: bool = True) -> Any:
        """Run ``fn(conn)`` on the writer thread (maintenance and tests); StoreError on failure."""
        self._check_open()
        return await self._submit(Op(fn, self._new_future(), alone=alone))

    def _deliver(self, ops: list[Op]) -> None:
        """In the loop, in commit order: apply committed changes, then wake the callers.

        A caller that was cancelled meanwhile finds its future cancelled: the
        change is applied all the same (it is committed) and nobody is woken.
        """
        answers = self.answers
        held = answers is not None and answers.hold()
        try:
            self._wake(ops)
        finally:
            if held:
                answers.send_held()  # type: ignore[union-attr]  # held implies answers

    def _wake(self, ops: list[Op]) -> None:
        for op in ops:
            ok, value = op.outcome
            if ok and op.on_commit is not None:
                try:
                    value = op.on_commit(value)
                except Exception as exc:  # a bug; never leave the caller hanging
                    ok, value = False, exc
            if op.unlock is not None:
                self._locks.release(op.unlock)
            done = op.done
            if done is not None:
                try:
                    if ok:
                        done(value, None)
                    else:
                        done(None, _store_error(value))
                except Exception:  # a bug in the caller's callback: the others still run
                    log.exception("store: update callback failed")
                continue
            fut = op.future
            if fut is None or fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(_store_error(value))


# -- write operations (writer thread) -------------------------------------------


def _delete_aor(aor: str, conn: sqlite3.Connection) -> None:
    executemany(conn, "DELETE FROM bindings WHERE aor = ?", [(aor,)])


def _executemany_op(sql: str, rows: list[tuple[Any, ...]], conn: sqlite3.Connection) -> None:
    executemany(conn, sql, rows)


def _write_state(key: str, value: str | None, conn: sqlite3.Connection) -> None:
    if value is None:
        executemany(conn, "DELETE FROM state WHERE key = ?", [(key,)])
    else:
        executemany(conn, "INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)",
                     [(key, value)])
