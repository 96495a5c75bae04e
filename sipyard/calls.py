"""Calls the proxy routes, and the CDR written when each ends.

Why here and not in the proxy handler: the control operations (``sipyard
calls``, ``sipyard cdr``, ``status``) read the same records, and the per-line
call limit (``[lines.NN] max_calls``) is a count over them, so the table is
one of the server's parts. No asyncio and no sockets: the writer's blocking
work (write + fsync) is done by whoever calls :meth:`CdrLog.write_batch`
(the app runs it in a worker thread, see :class:`CdrWriter`).

A call starts when an INVITE passed authentication (an INVITE answered by our
own 407 is not a call), is answered by the first 2xx that goes upstream,
and ends with a BYE from either side, the caller's CANCEL, a final failure,
or ``[proxy] max_call_seconds`` without a BYE (``expired``: a phone lost
power). Its record then goes, as one JSON line, to ``cdr.jsonl`` in the data
dir — written and fsync'd *before* the ``cdr`` hook runs, so a hook never
reports a call the file does not have. The file is rotated to
``cdr.jsonl.1`` when it would pass ``[proxy] cdr_max_bytes``. One ``write()``
of whole lines on an ``O_APPEND`` file: a ``kill -9`` can lose the lines not
yet written, never damage one that was.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["Call", "CallTable", "CdrLog", "disposition_for", "read_cdr", "CDR_FILE"]

CDR_FILE = "cdr.jsonl"
#: one encoder for every record: ``json.dumps`` with arguments builds a new one per call
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

#: final status → disposition (anything else ≥ 300 is "failed")
_DISPOSITION = {486: "busy", 600: "busy", 603: "busy", 408: "no-answer", 480: "no-answer",
                487: "no-answer"}


def disposition_for(status: int, *, cancelled: bool = False) -> str:
    """The CDR disposition of a call that ended with ``status`` before an answer."""
    if 200 <= status < 300:
        return "answered"
    if cancelled:
        return "cancelled"
    return _DISPOSITION.get(status, "failed")


#: the last whole second formatted by _iso: a CDR has three times, mostly the same second
_ISO_SECOND: list[Any] = [None, ""]


def _iso(ts: float | None) -> str | None:
    """``2026-12-07T05:19:45.123Z`` (as ``datetime.isoformat`` with milliseconds, cheaper)."""
    if ts is None:
        return None
    frac_s, whole = math.modf(ts)  # as datetime.fromtimestamp rounds it
    frac = round(frac_s * 1_000_000)
    sec = int(whole)
    if frac >= 1_000_000:
        sec += 1
        frac -= 1_000_000
    cache = _ISO_SECOND
    if cache[0] != sec:
        cache[1] = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        cache[0] = sec
    return f"{cache[1]}.{frac // 1000:03d}Z"


def _call_ids() -> Iterator[str]:
    """Unique call ids without a random draw per call: a random prefix per process
    (restarts and workers differ), then a counter."""
    prefix = secrets.token_hex(4)
    n = 0
    while True:
        n += 1
        yield f"{prefix}{n:08x}"


_IDS = _call_ids()


@dataclass(slots=True, eq=False, init=False)
class Call:
    """One call routed by the proxy (in flight, then its CDR).

    The ``__init__`` is written out: a dataclass's generated one is
    interpreted Python even in a compiled module (20 fields, one per call).
    """

    call_id: str
    from_tag: str
    caller: str  # From URI
    target: str  # the Request-URI dialled
    caller_line: str | None
    start: float
    callee_line: str | None
    to_tag: str | None
    answered_by: str | None  # the Contact of the 2xx
    answer: float | None
    end: float | None
    state: str  # ringing | answered | ended
    disposition: str | None
    status: int | None
    reason: str | None
    hangup: str | None  # caller | callee | proxy
    trunk: str | None  # the provider trunk the call came in or went out through
    #: stops the call's ringing branches (CANCEL them, 487 to the caller), set by the proxy
    cancel: Callable[[], object] | None
    id: str

    def __init__(self, call_id: str, from_tag: str, caller: str, target: str,
                 caller_line: str | None, start: float, callee_line: str | None = None,
                 to_tag: str | None = None, answered_by: str | None = None,
                 answer: float | None = None, end: float | None = None,
                 state: str = "ringing", disposition: str | None = None,
                 status: int | None = None, reason: str | None = None,
                 hangup: str | None = None, trunk: str | None = None,
                 cancel: Callable[[], object] | None = None, id: str = "") -> None:
        self.call_id = call_id
        self.from_tag = from_tag
        self.caller = caller
        self.target = target
        self.caller_line = caller_line
        self.start = start
        self.callee_line = callee_line
        self.to_tag = to_tag
        self.answered_by = answered_by
        self.answer = answer
        self.end = end
        self.state = state
        self.disposition = disposition
        self.status = status
        self.reason = reason
        self.hangup = hangup
        self.trunk = trunk
        self.cancel = cancel
        self.id = id if id else next(_IDS)

    def cdr(self) -> dict[str, Any]:
        """The CDR record: JSON line and ``cdr`` hook record alike (None values are kept
        in JSON as null, and left out of the hook record by the hook runner)."""
        end = self.end if self.end is not None else self.start
        billsec = round(end - self.answer, 3) if self.answer is not None else 0.0
        return {
            "id": self.id, "call_id": self.call_id, "from_tag": self.from_tag,
            "to_tag": self.to_tag, "caller": self.caller, "caller_line": self.caller_line,
            "target": self.target, "callee_line": self.callee_line,
            "answered_by": self.answered_by, "start": _iso(self.start),
            "answer": _iso(self.answer), "end": _iso(end), "start_epoch": round(self.start, 3),
            "duration": round(end - self.start, 3), "billsec": billsec,
            "disposition": self.disposition, "status": self.status, "reason": self.reason,
            "hangup": self.hangup, "trunk": self.trunk,
        }

    def summary(self, now: float) -> dict[str, Any]:
        """One row of ``sipyard calls``."""
        return {"id": self.id, "call_id": self.call_id, "caller": self.caller,
                "caller_line": self.caller_line, "target": self.target,
                "callee_line": self.callee_line, "state": self.state, "trunk": self.trunk,
                "since": _iso(self.answer if self.answer is not None else self.start),
                "seconds": round(now - self.start, 1)}


class CallTable:
    """Calls in flight, by (Call-ID, From tag); counts per line for ``max_calls``."""

    def __init__(self) -> None:
        self._calls: dict[tuple[str, str], Call] = {}
        #: calls per line in the other workers and hosts (kept by sipyard.cluster.shared)
        self.elsewhere: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Iterator[Call]:
        return iter(list(self._calls.values()))

    def add(self, call: Call) -> None:
        self._calls[(call.call_id, call.from_tag)] = call

    def get(self, call_id: str, tag: str | None) -> Call | None:
        return self._calls.get((call_id, tag or ""))

    def find(self, call_id: str, tags: tuple[str | None, ...]) -> Call | None:
        """The call of an in-dialog request: its From tag is ours or the callee's."""
        for tag in tags:
            call = self._calls.get((call_id, tag or ""))
            if call is not None:
                return call
        return None

    def remove(self, call: Call) -> None:
        if self._calls.get((call.call_id, call.from_tag)) is call:
            del self._calls[(call.call_id, call.from_tag)]

    def count(self, line: str) -> int:
        """Calls from or to ``line`` right now (one call between two of its phones is one),
        here and in the other processes sharing the store (``elsewhere``)."""
        here = sum(1 for c in self._calls.values() if line in (c.caller_line, c.callee_line))
        return here + self.elsewhere.get(line, 0)

    def local_counts(self) -> dict[str, int]:
        """Calls per line in this process (what sipyard.cluster.shared publishes)."""
        out: dict[str, int] = {}
        for c in self._calls.values():
            for line in {c.caller_line, c.callee_line}:
                if line:
                    out[line] = out.get(line, 0) + 1
        return out

    def expired(self, now: float, max_seconds: float) -> list[Call]:
        return [c for c in self._calls.values() if now - c.start >= max_seconds]

    def doc(self, now: float) -> dict[str, Any]:
        return {"calls": [c.summary(now) for c in sorted(self._calls.values(),
                                                         key=lambda c: c.start)]}


class CdrLog:
    """``cdr.jsonl`` in the data dir: append whole lines, fsync, rotate by size."""

    def __init__(self, data_dir: Path, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.path = data_dir / CDR_FILE
        self.max_bytes = max_bytes
        self.written = 0

    def write_batch(self, records: list[dict[str, Any]]) -> None:
        """Append ``records`` durably (blocking: write + fsync). Raises OSError."""
        encode = _JSON.encode
        data = "".join(encode(r) + "\n" for r in records).encode("utf-8", "surrogateescape")
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(data) > self.max_bytes:
            os.replace(self.path, self.path.with_name(CDR_FILE + ".1"))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.written += len(records)


def read_cdr(data_dir: Path, *, since: float | None = None, line: str | None = None,
             limit: int = 1000) -> list[dict[str, Any]]:
    """The newest ``limit`` CDRs (rotated file first), filtered; a torn last line is skipped."""
    out: list[dict[str, Any]] = []
    for path in (data_dir / (CDR_FILE + ".1"), data_dir / CDR_FILE):
        try:
            text = path.read_text("utf-8", "surrogateescape")
        except FileNotFoundError:
            continue
        for raw in text.splitlines():
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(rec, dict):
                continue
            if since is not None and float(rec.get("start_epoch") or 0) < since:
                continue
            if line is not None and line not in (rec.get("caller_line"), rec.get("callee_line")):
                continue
            out.append(rec)
    return out[-limit:]
