"""Wiring: builds every part from config and routes requests between them.

This is the only module that knows all the others. The request path is
``transport → parse → stateless checks → transaction → dispatch by method``;
everything below dispatch (registrar, redirect pipeline, chat) answers through
:meth:`App.respond`, which caches the response in the transaction so a
retransmission never reaches a handler twice.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import secrets
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import CoroutineType, coroutine
from typing import Any

from . import __version__
from .sip.errors import ParseError
from .sip.message import Limits, Request, Response, build_response, parse_message
from .sip.transaction import Outcome, ServerTransaction, TransactionLayer, make_key
from .sip.uri import SipUri
from .sip.validate import unsupported_requires, validate_request, validate_response
from .transport import Listen, Source, Transports
from .uac import Uac

__all__ = ["App", "KNOWN_METHODS", "ALLOW"]

log = logging.getLogger("sipyard")
reqlog = logging.getLogger("sipyard.request")

KNOWN_METHODS = frozenset({
    "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "SUBSCRIBE", "NOTIFY",
    "MESSAGE", "REFER", "INFO", "UPDATE", "PRACK", "PUBLISH",
})
#: Methods the server redirects when the Request-URI names a user.
REDIRECTED = frozenset({"INVITE", "SUBSCRIBE", "MESSAGE", "REFER", "OPTIONS"})
ALLOW = "INVITE, ACK, CANCEL, OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, MESSAGE, REFER"
SUPPORTED = frozenset({"path", "outbound"})
SUPPORTED_HEADER = "path, outbound"

_CLASS = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx")
_OPTIONS_HEADERS = (("Allow", ALLOW), ("Accept", "application/sdp, text/plain"),
                    ("Supported", SUPPORTED_HEADER))

RequestHandler = Callable[["App", Request, Source, ServerTransaction], Awaitable[None] | None]


class Stats:
    __slots__ = ("requests", "responses", "codes", "started", "auth_failures", "dropped")

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.responses: Counter[str] = Counter()
        self.codes: Counter[int] = Counter()
        self.started = time.time()
        self.auth_failures = 0
        self.dropped = 0


class App:
    """One running server. ``start()`` binds; ``stop()`` closes everything."""

    def __init__(self, config: Any, *, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        srv = config.server
        self.server_header = srv.server_header or f"sipyard/{__version__}"
        self.limits = Limits()
        self.txl = TransactionLayer()
        self.stats = Stats()
        self.transports = Transports(
            self._on_bytes, max_udp=srv.max_message_size, max_tcp_header=srv.max_message_size,
            tcp_idle=srv.tcp_idle,
            on_framing_error=self._on_framing_error, on_oversize=self._on_oversize)
        self.uac = Uac(self.transports.send, server_header=self.server_header)
        self._tag_prefix = secrets.token_hex(3)
        self._tag_seq = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._peer_logged: dict[tuple[str, object], float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: start handlers outside a Task (see _run_handler); off for a store that needs one
        self.eager_handlers = True
        self._notify: dict[str, Callable[[Request], None]] = {}
        self._stopped = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        #: method -> handler; filled by the feature modules in ``start()``.
        self.handlers: dict[str, RequestHandler] = {}
        self.features: dict[str, Any] = {}
        #: CLI overrides (data_dir, listen) that a reload must apply again
        self.load_args: dict[str, Any] = {}

    # -- life cycle -------------------------------------------------------------
    async def start(self, listens: Sequence[Listen] | None = None) -> list[Listen]:
        self.loop = asyncio.get_running_loop()
        from .features import install

        await install(self)
        specs = list(listens) if listens is not None else list(self.config.server.listen)
        bound = await self.transports.start(specs)
        for b in bound:
            log.info("listening on %s %s:%d", b.transport, b.host, b.port)
        _tune_gc()
        return bound

    async def stop(self) -> None:
        from .features import uninstall

        if self._timer is not None:
            self._timer.cancel()
        await self.transports.close()
        for task in list(self._tasks):
            task.cancel()
        await uninstall(self)
        self._stopped.set()

    def install_signals(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads (call once started, before announcing)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        reload = self.features.get("reload")
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, lambda: self.spawn(reload()))

    async def serve_forever(self) -> None:
        await self._stopped.wait()

    def request_stop(self) -> None:
        self._stopped.set()

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task failed: %r", task.exception(), exc_info=task.exception())

    def now(self) -> float:
        return time.time()

    def new_tag(self) -> str:
        return f"{self._tag_prefix}{next(self._tag_seq):x}"

    # -- inbound ------------------------------------------------------------------
    def _on_bytes(self, data: bytes, src: Source) -> None:
        try:
            msg = parse_message(data, self.limits)
        except ParseError as exc:
            self._bad_message(exc, src)
            return
        if isinstance(msg, Response):
            try:
                validate_response(msg)  # RFC 4475 scalarlg: a broken response is dropped
            except ParseError:
                self.stats.dropped += 1
                return
            if not self.uac.on_response(msg):
                self.stats.dropped += 1
            return
        self._on_request(msg, src)

    def _on_request(self, req: Request, src: Source) -> None:
        self.stats.requests[req.method] += 1
        try:
            via = req.top_via
        except ParseError as exc:
            self._stateless(req, src, exc.status, exc.reason)
            return
        method = req.method
        branch = via.branch
        sent_by = f"{via.host}:{via.port or ''}"
        txl = self.txl
        if branch is not None and len(branch) > 7 and branch.startswith("z9hG4bK"):
            key = make_key(branch, sent_by, method)
            tx = txl.get(key)
            if tx is not None:
                # A retransmission, or the ACK of our final: its transaction only
                # exists because the first copy passed validation, so it skips
                # validation (a server under load sees as many of these as new
                # requests). The answer goes where this copy came from.
                now = self.loop.time() if self.loop is not None else time.monotonic()
                outcome, tx, cached = txl.receive_request(key, method, src.reliable, tx.dest, now)
                if outcome is Outcome.RETRANSMISSION and cached is not None:
                    self.transports.send(_reply_dest(via, src), cached)
                return
            dest = self._checked(req, via, src)
            if dest is None:
                return
        else:
            dest = self._checked(req, via, src)
            if dest is None:
                return
            # RFC 3261 §17.2.3 / RFC 2543 matching; the To tag is left out so the
            # ACK (which carries our tag) finds its INVITE.
            key = make_key(branch, sent_by, method, fallback=(
                req.uri, req.from_.tag or "", req.call_id, str(req.cseq[0]), via.raw))
        now = self.loop.time() if self.loop is not None else time.monotonic()
        outcome, tx, cached = txl.receive_request(key, method, src.reliable, dest, now)
        if outcome is Outcome.RETRANSMISSION:
            if cached is not None:
                self.transports.send(dest, cached)
            return
        if outcome is not Outcome.NEW or tx is None:
            return  # ACK absorbed or stray ACK: hop-by-hop, nothing to do
        self._arm_timer()
        if method != "ACK" and method != "CANCEL":
            bad = unsupported_requires(req, SUPPORTED)
            if bad:
                self.respond(tx, req, 420, "Bad Extension", [("Unsupported", ", ".join(bad))])
                return
        handler = self.handlers.get(method)
        if handler is None:
            handler = self.handlers.get("*") if _has_user(req) else None
        if handler is None:
            if method == "OPTIONS":
                self.options(tx, req)
            elif method in KNOWN_METHODS:
                status, reason = (481, "Call/Transaction Does Not Exist") \
                    if method in ("BYE", "INFO", "UPDATE", "PRACK", "NOTIFY") \
                    else (405, "Method Not Allowed")
                self.respond(tx, req, status, reason, [("Allow", ALLOW)])
            else:
                self.respond(tx, req, 501, "Not Implemented", [("Allow", ALLOW)])
            return
        try:
            result = handler(self, req, src, tx)
        except Exception:
            log.exception("handler for %s failed", method)
            self.respond(tx, req, 500, "Server Internal Error")
            return
        if result is not None:
            self._run_handler(result, tx, req)

    def _run_handler(self, coro: Awaitable[Any], tx: ServerTransaction, req: Request) -> None:
        """Run an async handler eagerly, up to its first real wait.

        Most handlers finish without waiting (a challenge, a redirect served
        from memory) or wait once (a REGISTER's commit): starting them now
        instead of in a new Task saves the Task, one loop iteration of latency
        and several callbacks per request. Only a handler that does wait is
        handed to a Task, which resumes it where it stopped (Python 3.12's
        eager task factory, by hand).
        """
        if not self.eager_handlers or not isinstance(coro, CoroutineType):
            pending: Any = coro
            task = asyncio.ensure_future(pending)
        else:
            try:
                pending = coro.send(None)
            except StopIteration:
                return
            except Exception as exc:
                self._handler_failed(exc, tx, req)
                return
            task = asyncio.ensure_future(resume_started(coro, pending))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._handler_done(t, tx, req))

    def _checked(self, req: Request, via: Any, src: Source) -> Source | None:
        """Where the answers go, or None when the request was refused statelessly."""
        dest = self._response_dest(req, via, src)
        try:
            validate_request(req, KNOWN_METHODS)
        except ParseError as exc:
            self._reply_stateless(req, dest, exc.status, exc.reason,
                                  [("Allow", ALLOW)] if exc.status in (405, 501) else [])
            return None
        return dest

    def _handler_done(self, task: asyncio.Task[Any], tx: ServerTransaction, req: Request) -> None:
        """An async handler ended: a failure still gets its caller an answer (500)."""
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._handler_failed(exc, tx, req)

    def _handler_failed(self, exc: BaseException, tx: ServerTransaction, req: Request) -> None:
        log.error("handler for %s failed", req.method, exc_info=exc)
        if tx.last_status is None or tx.last_status < 200:
            self.respond(tx, req, 500, "Server Internal Error", [("Retry-After", "5")])

    def options(self, tx: ServerTransaction, req: Request) -> None:
        """OPTIONS to the server itself: the keep-alive and capability probe."""
        self.respond(tx, req, 200, "OK", _OPTIONS_HEADERS)

    @staticmethod
    def _response_dest(req: Request, via: Any, src: Source) -> Source:
        """RFC 3261 §18.2.2 + RFC 3581, and record received/rport in the Via."""
        rport = via.rport
        if rport == "" or via.host.strip("[]") != src.ip:
            raw = via.raw
            if rport == "":
                parts = raw.split(";")
                for i in range(1, len(parts)):
                    if parts[i].strip().lower() == "rport":
                        parts[i] = f"rport={src.port}"
                        break
                raw = ";".join(parts)
            # with rport, received goes in even when it equals sent-by (RFC 3581 §4)
            req.replace_top_via(f"{raw};received={src.ip}")
        return _reply_dest(via, src)

    # -- outbound -----------------------------------------------------------------
    def respond(self, tx: ServerTransaction, req: Request, status: int, reason: str,
                headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> None:
        data = build_response(req, status, reason, to_tag=self.new_tag(), headers=headers,
                              body=body, server=self.server_header)
        now = self.loop.time() if self.loop is not None else time.monotonic()
        try:
            self.txl.send_response(tx, status, data, now)
        except Exception as exc:  # transaction already finished (e.g. CANCELled)
            log.debug("response %d dropped: %s", status, exc)
            return
        dest: Source = tx.dest  # type: ignore[assignment]  # the app stores Sources
        self.transports.send(dest, data)
        stats = self.stats
        stats.responses[_CLASS[status // 100]] += 1
        stats.codes[status] += 1
        if status >= 200:
            self._arm_timer()
            if reqlog.isEnabledFor(logging.INFO):
                self._log_request(req, dest, status)

    def _reply_stateless(self, req: Request, dest: Source, status: int, reason: str,
                         headers: Sequence[tuple[str, str]] = ()) -> None:
        if req.method == "ACK":
            return
        data = build_response(req, status, reason, to_tag=self.new_tag(), headers=headers,
                              server=self.server_header)
        self.transports.send(dest, data)
        self.stats.responses[_CLASS[status // 100]] += 1
        self.stats.codes[status] += 1
        self._log_peer_once(dest.ip, status, "rejected %s from %s: %d %s",
                            req.method or "request", dest.ip, status, reason)
        if reqlog.isEnabledFor(logging.INFO):
            self._log_request(req, dest, status)

    def _stateless(self, req: Request, src: Source, status: int, reason: str) -> None:
        """Answer a request whose Via could not be read: to its source, as best we can."""
        if req.method == "ACK" or not req.get("via"):
            self._log_peer_once(src.ip, "unanswerable", "dropped unanswerable request from %s: %s",
                                src.ip, reason)
            return
        self._reply_stateless(req, src, status, reason)

    def _bad_message(self, exc: ParseError, src: Source) -> None:
        partial = exc.partial
        if isinstance(partial, Request) and partial.get("via"):
            try:
                via = partial.top_via
                dest = self._response_dest(partial, via, src)
            except ParseError:
                dest = src
            if partial.method != "ACK":
                if not partial.method:
                    partial.method = "UNKNOWN"
                self._reply_stateless(partial, dest, exc.status, exc.reason)
                return
        self.stats.dropped += 1
        self._log_peer_once(src.ip, "malformed", "dropped malformed message from %s: %s",
                            src.ip, exc.reason)

    def _on_framing_error(self, exc: ParseError, src: Source) -> None:
        self._log_peer_once(src.ip, "framing", "closing tcp connection from %s:%d: %s",
                            src.ip, src.port, exc.reason)

    def _on_oversize(self, src: Source, data: bytes) -> None:
        try:
            msg = parse_message(data[: self.config.server.max_message_size])
        except ParseError as exc:
            msg = exc.partial if isinstance(exc.partial, Request) else None  # type: ignore[assignment]
        if isinstance(msg, Request) and msg.get("via"):
            try:
                dest = self._response_dest(msg, msg.top_via, src)
            except ParseError:
                dest = src
            self._reply_stateless(msg, dest, 513, "Message Too Large")
            return
        self._log_peer_once(src.ip, "oversize", "dropped oversize datagram from %s (%d bytes)",
                            src.ip, len(data))

    def _log_peer_once(self, ip: str, kind: object, fmt: str, *args: object) -> None:
        """Log a peer's fault at most once a minute per kind, never per packet.

        The message is formatted only when it is logged: a flood of bad packets
        from one peer costs a dict lookup each, not a string per packet.
        """
        now = time.monotonic()
        key = (ip, kind)
        last = self._peer_logged.get(key)
        if last is not None and now - last < 60:
            return
        if len(self._peer_logged) > 10000:
            self._peer_logged.clear()
        self._peer_logged[key] = now
        log.warning(fmt, *args)

    def _log_request(self, req: Request, dest: Source, status: int) -> None:
        reqlog.info("%s from=%s to=%s src=%s:%s/%s status=%d", req.method,
                    _uri_of(req.get("from")), _uri_of(req.get("to")), dest.ip, dest.port,
                    dest.transport, status)

    # -- timers ---------------------------------------------------------------------
    def _arm_timer(self) -> None:
        deadline = self.txl.next_deadline()
        if deadline is None or self.loop is None:
            return
        if self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        assert self.loop is not None
        for tx, data in self.txl.handle_timer(self.loop.time()):
            if data is not None:
                self.transports.send(tx.dest, data)  # type: ignore[arg-type]
            elif tx.method == "INVITE":
                log.debug("INVITE transaction %s ended without ACK", tx.key.branch)
        self._arm_timer()

    # -- NOTIFY routing (pick-up) ---------------------------------------------------------
    def register_notify(self, call_id: str, callback: Callable[[Request], None]) -> None:
        self._notify[call_id] = callback

    def unregister_notify(self, call_id: str) -> None:
        self._notify.pop(call_id, None)

    def notify_handler(self, call_id: str) -> Callable[[Request], None] | None:
        return self._notify.get(call_id)

    @property
    def pid(self) -> int:
        return os.getpid()


def _tune_gc() -> None:
    """Keep the cyclic GC off the request path.

    At 10 000 requests/s a server holds ~300 000 live transactions (timer J is
    32 s) and a cache of bindings: with the default thresholds every young
    collection soon promotes into full collections that walk all of them. Those
    records hold no reference cycles, so the start-up objects are frozen out of
    the GC's view and collections are made rarer; reference counting frees the
    per-request garbage as before.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


def _reply_dest(via: Any, src: Source) -> Source:
    """Where responses to a request with this top Via go (RFC 3261 §18.2.2, RFC 3581):
    the source itself over TCP or with rport, else the source IP at the sent-by port."""
    if src.transport != "udp" or via.rport is not None:
        return src
    return Source("udp", src.ip, via.port or 5060, None, src.local)


@coroutine
def resume_started(coro: Any, pending: Any) -> Any:
    """Finish, under a Task, a coroutine started eagerly that is waiting on ``pending``.

    It re-yields what the coroutine yielded (a future the Task then waits on,
    or None for a bare yield) and forwards the Task's wake-up or its
    cancellation, exactly as if the Task had run the coroutine from the start.
    """
    while True:
        try:
            yield pending
        except BaseException as exc:
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            pending = coro.send(None)
        except StopIteration as stop:
            return stop.value


def _has_user(req: Request) -> bool:
    try:
        uri = req.ruri
    except ParseError:
        return False
    return isinstance(uri, SipUri) and bool(uri.user)


def _uri_of(value: str | None) -> str:
    if not value:
        return "-"
    lt = value.find("<")
    if lt >= 0:
        gt = value.find(">", lt)
        if gt > lt:
            return value[lt + 1:gt]
    return value.split(";", 1)[0].strip()
