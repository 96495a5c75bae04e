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
import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from .base import Binding, LocationStore, StoreError, UpdateDone, UpdateFn, normalize_update
from .cache import BindingCache, KeyedLocks

__all__ = ["SqliteStore", "DB_NAME"]

log = logging.getLogger("sipyard.store")

DB_NAME = "sipyard.db"
SCHEMA_VERSION = 2
#: most operations committed in one transaction (bounds one commit's latency)
MAX_BATCH = 1024
#: group commit: writes wait at most this long for others to share their commit
COMMIT_WINDOW = 0.001
#: ... or until this many are queued
COMMIT_GROUP = 64

_COLUMNS = (
    "aor, binding_id, contact, params, q, expires_at, registered_at, call_id, cseq, "
    "source_ip, source_port, transport, conn_id, path, user_agent, instance, reg_id, blobs"
)
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
INSERT_SQL = f"INSERT OR REPLACE INTO bindings ({_COLUMNS}) VALUES ({', '.join('?' * 18)})"
_DELETE_ONE = "DELETE FROM bindings WHERE aor = ? AND binding_id = ?"
_DELETE_EXPIRED_ONE = "DELETE FROM bindings WHERE aor = ? AND binding_id = ? AND expires_at <= ?"
_SELECT_LIVE = f"SELECT {_COLUMNS} FROM bindings WHERE expires_at > ? ORDER BY aor"


# -- row mapping ---------------------------------------------------------------


def binding_row(b: Binding) -> tuple[Any, ...]:
    """The ``bindings`` row of a binding (INSERT_SQL parameter order)."""
    return (
        b.aor, b.binding_id, b.contact, b.params, b.q, b.expires_at, b.registered_at,
        b.call_id, b.cseq, b.source_ip, b.source_port, b.transport, b.conn_id,
        json.dumps(b.path, ensure_ascii=False) if b.path else "", b.user_agent,
        b.instance, b.reg_id, 0,
    )


def _blobify(value: Any) -> Any:
    """A str UTF-8 cannot encode becomes the BLOB of its surrogatepass encoding."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass")
    return value


def _unblob(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return value


def _executemany(conn: sqlite3.Connection, sql: str, rows: Sequence[tuple[Any, ...]],
                 *, flag: bool = False) -> None:
    """executemany, retrying with BLOB-encoded strings when a str is not UTF-8 encodable.

    With ``flag`` the last column of a row is the ``blobs`` marker, set to 1
    where a value was blob-encoded. Every statement used here is idempotent,
    so re-running rows that went through before the failing one is harmless.
    """
    try:
        conn.executemany(sql, rows)
    except UnicodeEncodeError:
        conn.executemany(sql, [_blobify_row(row, flag) for row in rows])


def _blobify_row(row: tuple[Any, ...], flag: bool) -> tuple[Any, ...]:
    new = tuple(_blobify(v) for v in row)
    if flag and new != row:
        return (*new[:-1], 1)
    return new


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


# -- the writer thread ---------------------------------------------------------


class _Op:
    """One write: ``run(conn)`` in the writer thread inside a transaction, then
    ``on_commit(result)`` in the loop, in commit order (never for a failed write).

    A plain slotted class: one is made per REGISTER, and a dataclass's generated
    ``__init__`` stays interpreted Python even in a compiled module."""

    __slots__ = ("run", "future", "on_commit", "alone", "unlock", "outcome", "done", "rows",
                 "dels")

    def __init__(self, run: Callable[[sqlite3.Connection], Any] | None,
                 future: asyncio.Future[Any] | None,
                 on_commit: Callable[[Any], Any] | None = None, alone: bool = False,
                 unlock: str | None = None, done: UpdateDone | None = None,
                 rows: list[tuple[Any, ...]] | None = None,
                 dels: list[tuple[str, str]] | None = None) -> None:
        #: what to run in the transaction; None for a binding delta (``rows``/``dels``),
        #: which a commit merges with the other deltas of its batch
        self.run = run
        #: a delta's INSERT_SQL rows and (aor, binding_id) keys to delete
        self.rows = rows
        self.dels = dels
        #: the waiting coroutine's future, or None when ``done`` is called instead
        self.future = future
        self.on_commit = on_commit
        #: run alone, outside any transaction (close, pragmas)
        self.alone = alone
        #: the AOR lock to release once the outcome is applied (success or not)
        self.unlock = unlock
        self.outcome: tuple[bool, Any] = (False, None)
        #: callback of update_soon: (result, None) or (None, StoreError)
        self.done = done


_STOP = object()


class _Committer:
    """Commits queued operations in groups and hands the outcomes back.

    This base runs in the caller's thread: ``submit`` commits at once and
    delivers the outcomes before it returns. The store uses it when
    ``synchronous=NORMAL``: a WAL commit is then a few ``write()`` calls and no
    fsync (15–40 µs), cheaper than waking a thread and handing the GIL back
    and forth twice for every burst (measured: 500–800 µs of CPU per REGISTER
    with the thread on one pinned core). Batching is unchanged, because
    ``SqliteStore`` still hands over the writes of one loop iteration as one list.
    """

    def __init__(self, conn: sqlite3.Connection,
                 deliver: Callable[[list[_Op]], None]) -> None:
        self.conn = conn
        self.commits = 0
        self._deliver = deliver
        self._stopped = False

    def start(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass

    def submit(self, op: _Op | object | list[_Op]) -> None:
        self.process(list(op) if isinstance(op, list) else [op])

    def process(self, items: list[_Op | object]) -> bool:
        """Commit ``items`` (alone ops by themselves); True once _STOP was seen."""
        stop = self._stopped
        batch: list[_Op] = []
        for item in items:
            if item is _STOP:
                stop = True  # ops queued after close() fail below
            elif stop:
                assert isinstance(item, _Op)
                item.outcome = (False, sqlite3.ProgrammingError("store closed"))
                self._hand_back([item])
            else:
                assert isinstance(item, _Op)
                if item.alone:
                    self._commit(batch)
                    batch = []
                    self._run_alone(item)
                else:
                    batch.append(item)
        self._commit(batch)
        if stop and not self._stopped:
            self._stopped = True
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
        return stop

    def _run_alone(self, op: _Op) -> None:
        try:
            op.outcome = (True, _run(op, self.conn))
        except Exception as exc:
            op.outcome = (False, exc)
        self._hand_back([op])

    def _commit(self, batch: list[_Op]) -> None:
        """One transaction for the whole batch.

        If an operation fails, the others are retried without it, so one bad
        write does not fail its neighbours (and the common, successful path
        pays no savepoint per operation). If BEGIN or COMMIT fails (locked,
        I/O error) nothing can be isolated: every operation of the batch fails.
        """
        if not batch:
            return
        if len(batch) > 1 and self._commit_merged(batch):
            self._hand_back(batch)
            return
        pending = batch
        while pending:
            conn = self.conn
            running: _Op | None = None
            try:
                conn.execute("BEGIN IMMEDIATE")
                for op in pending:
                    running = op
                    op.outcome = (True, _run(op, conn))
                running = None
                conn.execute("COMMIT")
                self.commits += 1
                break
            except Exception as exc:
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                if running is None or len(pending) == 1:
                    for op in pending:
                        op.outcome = (False, exc)
                    break
                running.outcome = (False, exc)
                pending = [op for op in pending if op is not running]
        self._hand_back(batch)

    def _commit_merged(self, batch: list[_Op]) -> bool:
        """The batch's binding deltas as one DELETE and one INSERT ``executemany``.

        One statement run over every row costs less than one per REGISTER
        (measured: the per-call overhead was most of ``executemany``'s time at a
        dozen writes per commit). Ops of one batch never share an AOR (each
        holds its AOR's lock until delivered), so deleting all, then inserting
        all is the same as running them one by one. False, with nothing
        written, when the batch has other kinds of op or a statement fails: the
        caller then runs the ops one by one and isolates the failing one.
        """
        dels: list[tuple[str, str]] = []
        rows: list[tuple[Any, ...]] = []
        for op in batch:
            if op.run is not None:
                return False
            if op.dels:
                dels.extend(op.dels)
            if op.rows:
                rows.extend(op.rows)
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            if dels:
                _executemany(conn, _DELETE_ONE, dels)
            if rows:
                _executemany(conn, INSERT_SQL, rows, flag=True)
            conn.execute("COMMIT")
        except Exception:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            return False
        self.commits += 1
        for op in batch:
            op.outcome = (True, None)
        return True

    def _hand_back(self, ops: list[_Op]) -> None:
        self._deliver(ops)


class _Writer(_Committer):
    """A thread that owns the connection, for ``synchronous=FULL``/``EXTRA``:
    there every commit waits for an fsync (0.1–10 ms), which must not stall
    the event loop. Whatever was queued while a commit ran goes in the next one.

    It holds its thread rather than being one: a compiled class cannot also
    subclass ``threading.Thread``."""

    def __init__(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop,
                 deliver: Callable[[list[_Op]], None]) -> None:
        super().__init__(conn, deliver)
        self._worker = threading.Thread(target=self.run, name="sipyard-store-writer",
                                        daemon=True)
        self._loop = loop
        self._queue: queue.SimpleQueue[_Op | object | list[_Op]] = queue.SimpleQueue()

    def start(self) -> None:
        self._worker.start()

    def join(self, timeout: float | None = None) -> None:
        self._worker.join(timeout)

    def submit(self, op: _Op | object | list[_Op]) -> None:
        self._queue.put(op)

    def run(self) -> None:
        q = self._queue
        stop = False
        while not stop:
            first = q.get()
            items: list[_Op | object] = list(first) if isinstance(first, list) else [first]
            while len(items) < MAX_BATCH:
                try:
                    more = q.get_nowait()
                except queue.Empty:
                    break
                if isinstance(more, list):
                    items.extend(more)
                else:
                    items.append(more)
            stop = self.process(items)

    def _hand_back(self, ops: list[_Op]) -> None:
        # RuntimeError: the loop is gone, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._deliver, ops)


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
        self._writer: _Committer | None = None
        self._pending: list[_Op] = []
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
            self._writer = _Committer(conn, self._deliver)
        else:
            self._writer = _Writer(conn, asyncio.get_running_loop(), self._deliver)
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
        self._closing = True  # from here on _submit refuses, so nothing queues behind _STOP
        fut = self._new_future()
        writer.submit(_Op(lambda conn: None, fut, alone=True))
        writer.submit(_STOP)
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
            fut = self._submit(_Op(
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
            self._submit(_Op(
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
            fut = self._submit(_Op(
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
            fut = self._submit(_Op(
                partial(_executemany_op, _DELETE_EXPIRED_ONE, keys), self._new_future(),
                on_commit=lambda _: self._cache.discard(due)))
            result: list[Binding] = await asyncio.shield(fut)
            return result

    async def set_state(self, key: str, value: str | None) -> None:
        self._check_open()
        fut = self._submit(_Op(
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

    def _submit(self, op: _Op) -> asyncio.Future[Any]:
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
        return await self._submit(_Op(fn, self._new_future(), alone=alone))

    def _deliver(self, ops: list[_Op]) -> None:
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

    def _wake(self, ops: list[_Op]) -> None:
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


def _run(op: _Op, conn: sqlite3.Connection) -> Any:
    run = op.run
    if run is not None:
        return run(conn)
    if op.dels:
        _executemany(conn, _DELETE_ONE, op.dels)
    if op.rows:
        _executemany(conn, INSERT_SQL, op.rows, flag=True)
    return None


def _delete_aor(aor: str, conn: sqlite3.Connection) -> None:
    _executemany(conn, "DELETE FROM bindings WHERE aor = ?", [(aor,)])


def _executemany_op(sql: str, rows: list[tuple[Any, ...]], conn: sqlite3.Connection) -> None:
    _executemany(conn, sql, rows)


def _write_state(key: str, value: str | None, conn: sqlite3.Connection) -> None:
    if value is None:
        _executemany(conn, "DELETE FROM state WHERE key = ?", [(key,)])
    else:
        _executemany(conn, "INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)",
                     [(key, value)])
