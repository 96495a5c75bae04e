"""The SQLite store's writer: queued operations committed in groups (group commit).

Apart from :mod:`sipyard.store.sqlite` (the store: schema, loading, the cache and the
public API) because this is the part every REGISTER runs through. A commit merges its
binding deltas into one DELETE and one INSERT ``executemany``; with ``synchronous=NORMAL``
it runs in the loop (``Committer``), with FULL or EXTRA in a thread (``Writer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .base import UpdateDone

__all__ = ["COLUMNS", "DELETE_ONE", "INSERT_SQL", "MAX_BATCH", "STOP", "Committer", "Op", "Writer",
           "executemany", "run_op"]

#: most operations committed in one transaction (bounds one commit's latency)
MAX_BATCH = 1024

COLUMNS = (
    "aor, binding_id, contact, params, q, expires_at, registered_at, call_id, cseq, "
    "source_ip, source_port, transport, conn_id, path, user_agent, instance, reg_id, blobs"
)
INSERT_SQL = f"INSERT OR REPLACE INTO bindings ({COLUMNS}) VALUES ({', '.join('?' * 18)})"
DELETE_ONE = "DELETE FROM bindings WHERE aor = ? AND binding_id = ?"

def _blobify(value: Any) -> Any:
    """A str UTF-8 cannot encode becomes the BLOB of its surrogatepass encoding."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass")
    return value


def executemany(conn: sqlite3.Connection, sql: str, rows: Sequence[tuple[Any, ...]],
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


class Op:
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


STOP = object()


class Committer:
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
                 deliver: Callable[[list[Op]], None]) -> None:
        self.conn = conn
        self.commits = 0
        self._deliver = deliver
        self._stopped = False

    def start(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass

    def submit(self, op: Op | object | list[Op]) -> None:
        self.process(list(op) if isinstance(op, list) else [op])

    def process(self, items: list[Op | object]) -> bool:
        """Commit ``items`` (alone ops by themselves); True once STOP was seen."""
        stop = self._stopped
        batch: list[Op] = []
        for item in items:
            if item is STOP:
                stop = True  # ops queued after close() fail below
            elif stop:
                assert isinstance(item, Op)
                item.outcome = (False, sqlite3.ProgrammingError("store closed"))
                self._hand_back([item])
            else:
                assert isinstance(item, Op)
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

    def _run_alone(self, op: Op) -> None:
        try:
            op.outcome = (True, run_op(op, self.conn))
        except Exception as exc:
            op.outcome = (False, exc)
        self._hand_back([op])

    def _commit(self, batch: list[Op]) -> None:
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
            running: Op | None = None
            try:
                conn.execute("BEGIN IMMEDIATE")
                for op in pending:
                    running = op
                    op.outcome = (True, run_op(op, conn))
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

    def _commit_merged(self, batch: list[Op]) -> bool:
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
                executemany(conn, DELETE_ONE, dels)
            if rows:
                executemany(conn, INSERT_SQL, rows, flag=True)
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

    def _hand_back(self, ops: list[Op]) -> None:
        self._deliver(ops)


class Writer(Committer):
    """A thread that owns the connection, for ``synchronous=FULL``/``EXTRA``:
    there every commit waits for an fsync (0.1–10 ms), which must not stall
    the event loop. Whatever was queued while a commit ran goes in the next one.

    It holds its thread rather than being one: a compiled class cannot also
    subclass ``threading.Thread``."""

    def __init__(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop,
                 deliver: Callable[[list[Op]], None]) -> None:
        super().__init__(conn, deliver)
        self._worker = threading.Thread(target=self.run, name="sipyard-store-writer",
                                        daemon=True)
        self._loop = loop
        self._queue: queue.SimpleQueue[Op | object | list[Op]] = queue.SimpleQueue()

    def start(self) -> None:
        self._worker.start()

    def join(self, timeout: float | None = None) -> None:
        self._worker.join(timeout)

    def submit(self, op: Op | object | list[Op]) -> None:
        self._queue.put(op)

    def run(self) -> None:
        q = self._queue
        stop = False
        while not stop:
            first = q.get()
            items: list[Op | object] = list(first) if isinstance(first, list) else [first]
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

    def _hand_back(self, ops: list[Op]) -> None:
        # RuntimeError: the loop is gone, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._deliver, ops)


def run_op(op: Op, conn: sqlite3.Connection) -> Any:
    run = op.run
    if run is not None:
        return run(conn)
    if op.dels:
        executemany(conn, DELETE_ONE, op.dels)
    if op.rows:
        executemany(conn, INSERT_SQL, op.rows, flag=True)
    return None


