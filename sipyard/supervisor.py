"""``sipyard serve --workers N``: one supervisor, N worker processes on shared ports.

Why processes started afresh (``python -m sipyard.cli serve`` again) rather
than ``fork()`` of a loaded server: a worker is then exactly the server a
single-process start makes (same code path, same signal handling, same
logs), nothing of the supervisor's event loop or sockets leaks into it, and
a restarted worker is a clean one.

What the supervisor does, and nothing more (it never sees a SIP packet):

* refuses N > 1 without a shared store: SQLite reads come from a
  per-process cache that would go stale across workers, so N > 1 needs
  ``[store] url = "redis://…"`` (one place of truth for bindings, run state,
  presence; see :mod:`sipyard.cluster` for the rest of the shared state);
* resolves ``port 0`` listeners to one concrete port, then starts worker i
  with ``SIPYARD_WORKER=i/N`` and ``SIPYARD_RUN=<data_dir>/run`` (mode 0700:
  the workers' private control and hand-off sockets live there), pinned to
  CPU i when ``[server] pin_workers`` or ``SIPYARD_PIN_WORKERS=1``;
* prints its "listening on" lines once every worker listens;
* restarts a worker that dies, after 0.1 s doubling to 10 s while it keeps
  dying within 30 s of its start (a crash loop must not spin a core);
* SIGHUP → every worker reloads; SIGTERM/SIGINT → every worker stops, the
  supervisor waits for them (10 s, then SIGKILL);
* owns ``control.sock``: ``status``/``calls``/``bans`` merge every worker's
  answer, ``reload``/``level``/``runstate``/``unban`` go to all, the store
  readers (``registry``, ``cdr`` …) to one live worker, ``stop`` stops all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .cluster.worker import ENV_RUN, ENV_WORKER
from .control import ControlClientError, ControlServer, Peer, acall
from .sip.source import Listen

__all__ = ["Supervisor", "SupervisorError", "resolve_listens", "check_store"]

log = logging.getLogger("sipyard.supervisor")

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0
#: a worker that ran this long before dying restarts at once (back-off reset)
STABLE_AFTER = 30.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_TO_ALL = ("reload", "level")
_SUMMED = ("transactions", "suspended", "redirect_in_flight", "auth_failures",
           "tcp_connections", "calls", "cdr_written")


class SupervisorError(Exception):
    """The workers cannot be started (bad store, no port); one line for the user."""


def check_store(url: str, workers: int) -> None:
    if workers > 1 and not url.startswith(("redis://", "rediss://", "unix://")):
        raise SupervisorError(
            f"{workers} workers need a shared store: set [store] url = \"redis://…\" "
            "(SQLite reads come from a per-process cache that would go stale across workers)")


def resolve_listens(listens: Sequence[Listen]) -> list[Listen]:
    """Port 0 becomes one free port, the same for UDP and TCP of that host."""
    chosen: dict[str, int] = {}
    out: list[Listen] = []
    for spec in listens:
        port = spec.port or chosen.get(spec.host, 0)
        if not port:
            port = _free_port(spec.host)
        chosen.setdefault(spec.host, port)
        out.append(Listen(spec.transport, spec.host, port))
    return out


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = int(u.getsockname()[1])
            with socket.socket(family, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
            return port
    raise SupervisorError(f"no free port on {host}")


def _spec(b: Listen) -> str:
    host = f"[{b.host}]" if ":" in b.host else b.host
    return f"{b.transport}:{host}:{b.port}"


class _Worker:
    __slots__ = ("index", "proc", "started", "restarts", "backoff", "ready", "reader")

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.restarts = 0
        self.backoff = BACKOFF_FIRST
        self.ready = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Supervisor:
    def __init__(self, *, config_path: Path, data_dir: Path, listens: Sequence[Listen],
                 count: int, log_level: str | None, data_arg: str | None, pin: bool,
                 control_mode: int = 0o660, control_group: str | None = None,
                 request_timeout: float = 5.0) -> None:
        self.config_path = config_path
        self.data_dir = data_dir
        self.listens = list(listens)
        self.count = count
        self.log_level = log_level
        self.data_arg = data_arg
        self.pin = pin
        self.run_dir = data_dir / "run"
        self.workers = [_Worker(i) for i in range(count)]
        self.control = ControlServer(data_dir / "control.sock", mode=control_mode,
                                     group=control_group, request_timeout=request_timeout)
        self.request_timeout = request_timeout
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.started = time.time()
        self._cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []

    # -- life cycle -----------------------------------------------------------------
    async def run(self) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
        for w in self.workers:
            await self._spawn(w)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(w.ready.wait() for w in self.workers)), START_TIMEOUT)
        except TimeoutError:
            await self._stop_all()
            raise SupervisorError("workers did not start (see their log lines above)") from None
        self._register_ops()
        await self.control.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._signal_all(signal.SIGHUP))
        for b in self.listens:
            print(f"sipyard {__version__} listening on {_spec(b)}", flush=True)
        log.info("supervisor %d: %d workers", os.getpid(), self.count)
        await self._stopping.wait()
        await self.control.close()
        await self._stop_all()
        return 0

    def request_stop(self) -> None:
        self._stopping.set()

    async def _spawn(self, w: _Worker) -> None:
        cmd = [sys.executable, "-m", "sipyard.cli", "serve", "-c", str(self.config_path)]
        if self.data_arg:
            cmd += ["--data", self.data_arg]
        if self.log_level:
            cmd += ["--log-level", self.log_level]
        for b in self.listens:
            cmd += ["--listen", _spec(b)]
        env = dict(os.environ)
        env[ENV_WORKER] = f"{w.index}/{self.count}"
        env[ENV_RUN] = str(self.run_dir)
        w.ready.clear()
        w.proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)
        w.started = time.monotonic()
        if self.pin and self._cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(w.proc.pid, {self._cpus[w.index % len(self._cpus)]})
        w.reader = asyncio.ensure_future(self._read(w, w.proc))

    async def _read(self, w: _Worker, proc: asyncio.subprocess.Process) -> None:
        """Watch a worker's stdout for readiness, then wait for its end."""
        assert proc.stdout is not None
        seen = 0
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            if b"listening on" in line:
                seen += 1
                if seen >= len(self.listens):
                    w.ready.set()
        rc = await proc.wait()
        if self._stopping.is_set():
            return
        ran = time.monotonic() - w.started
        if ran >= STABLE_AFTER:
            w.backoff = BACKOFF_FIRST
        delay = w.backoff
        w.backoff = min(w.backoff * 2, BACKOFF_MAX)
        log.error("worker %d (pid %d) exited with %s after %.1f s; restarting in %.1f s",
                  w.index, proc.pid, rc, ran, delay)
        try:
            await asyncio.wait_for(self._stopping.wait(), delay)
            return
        except TimeoutError:
            pass
        w.restarts += 1
        await self._spawn(w)

    def _signal_all(self, sig: int) -> None:
        for w in self.workers:
            if w.alive and w.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    async def _stop_all(self) -> None:
        self._stopping.set()
        self._signal_all(signal.SIGTERM)
        procs = [w.proc for w in self.workers if w.proc is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), STOP_TIMEOUT)
        except TimeoutError:
            self._signal_all(signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in procs))
        for w in self.workers:
            if w.reader is not None:
                w.reader.cancel()

    # -- control fan-out ------------------------------------------------------------------
    def _register_ops(self) -> None:
        srv = self.control
        srv.register("status", self._status)
        srv.register("calls", self._calls)
        srv.register("bans", self._bans)
        srv.register("unban", self._unban)
        srv.register("runstate", self._runstate)
        srv.register("stop", self._stop)
        for op in _TO_ALL:
            srv.register(op, self._all_first)
        for op in ("registry", "message", "presence", "unregister", "cdr"):
            srv.register(op, self._one)

    async def _ask(self, w: _Worker, req: dict[str, Any]) -> dict[str, Any] | None:
        if not w.alive:
            return None
        path = self.run_dir / f"w{w.index}.ctl"
        try:
            return await acall(path, req, timeout=self.request_timeout)
        except ControlClientError as exc:
            log.warning("worker %d did not answer %s: %s", w.index, req.get("op"), exc)
            return None

    async def _ask_all(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        replies = await asyncio.gather(*(self._ask(w, req) for w in self.workers))
        return [r for r in replies if r is not None]

    async def _one(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Ops that read or write the shared store: any live worker will do."""
        for w in self.workers:
            reply = await self._ask(w, req)
            if reply is not None:
                return reply
        return {"ok": False, "error": "no worker answered"}

    async def _all_first(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Ops every worker must apply: the first refusal, else worker 0's answer."""
        if req.get("op") == "reload" and not self.control.privileged(peer):
            return {"ok": False, "error": "permission denied"}
        replies = await self._ask_all(req)
        if not replies:
            return {"ok": False, "error": "no worker answered"}
        for r in replies:
            if not r.get("ok", True):
                return r
        out = dict(replies[0])
        out["workers"] = len(replies)
        return out

    async def _runstate(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        if "state" not in req:
            return await self._one(req, peer)
        return await self._all_first(req, peer)

    async def _status(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        replies = await self._ask_all(req)
        if not replies:
            return {"ok": False, "error": "no worker answered"}
        out = dict(replies[0])
        for key in _SUMMED:
            out[key] = sum(int(r.get(key, 0) or 0) for r in replies)
        for key in ("requests", "responses"):
            merged: dict[str, int] = {}
            for r in replies:
                for k, v in (r.get(key) or {}).items():
                    merged[k] = merged.get(k, 0) + int(v)
            out[key] = merged
        handoff: dict[str, int] = {}
        for r in replies:
            for k, v in (r.get("handoff") or {}).items():
                handoff[k] = handoff.get(k, 0) + int(v)
        out["handoff"] = handoff
        out.pop("worker", None)
        out["pid"] = os.getpid()
        out["uptime"] = round(time.time() - self.started, 1)
        out["workers"] = [{"index": w.index, "pid": w.proc.pid if w.proc else None,
                           "alive": w.alive, "restarts": w.restarts} for w in self.workers]
        return out

    async def _calls(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        calls: list[Any] = []
        for r in await self._ask_all(req):
            calls.extend(r.get("calls") or [])
        return {"ok": True, "calls": calls}

    async def _bans(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        best: dict[str, dict[str, Any]] = {}
        for r in await self._ask_all(req):
            for b in r.get("bans") or []:
                cur = best.get(b["address"])
                if cur is None or b["until"] > cur["until"]:
                    best[b["address"]] = b
        return {"ok": True, "bans": sorted(best.values(), key=lambda b: b["until"])}

    async def _unban(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        replies = await self._ask_all(req)
        removed: Any = False
        for r in replies:
            got = r.get("removed")
            if isinstance(got, bool):
                removed = bool(removed) or got
            elif isinstance(got, int):
                removed = max(int(removed), got)
        return {"ok": True, "address": req.get("address"), "removed": removed}

    async def _stop(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        if not self.control.privileged(peer):
            return {"ok": False, "error": "permission denied"}
        asyncio.get_running_loop().call_later(0.05, self._stopping.set)
        return {"ok": True, "stopping": True, "at": time.time()}


def worker_count(arg: str | None, configured: int) -> int:
    """``--workers`` (N or auto) over ``[server] workers``."""
    if arg is None:
        return configured
    if arg == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
    try:
        n = int(arg)
    except ValueError:
        raise SupervisorError(f"--workers: expected a number or auto, not {arg!r}") from None
    if not 1 <= n <= 256:
        raise SupervisorError("--workers: expected 1 to 256")
    return n


def supervise(args: Any, cfg: Any, count: int) -> int:
    """Run the supervisor in the foreground (``sipyard serve`` with more than one worker)."""
    check_store(cfg.store.url or "", count)
    srv = cfg.server
    pin = srv.pin_workers or os.environ.get("SIPYARD_PIN_WORKERS", "") in ("1", "true", "yes")
    sup = Supervisor(config_path=Path(args.config), data_dir=Path(srv.data_dir),
                     listens=resolve_listens(srv.listen), count=count,
                     log_level=args.log_level, data_arg=args.data, pin=pin,
                     control_mode=cfg.control.socket_mode, control_group=cfg.control.group,
                     request_timeout=cfg.control.request_timeout)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return asyncio.run(sup.run())
