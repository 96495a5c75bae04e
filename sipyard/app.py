"""The top of the package: wires the parts, handlers and transports, and runs the request path.

This is the only module that knows all the others; nothing imports it. The
request path is ``transport → parse → stateless checks → transaction →
dispatch table → handler``. Handlers answer through :meth:`App.respond`
(the :class:`~sipyard.handlers.base.Responder` they are given), which caches
the response in the transaction, so a retransmission is answered from there
and never reaches a handler twice.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import __version__
from .adminops import ADMIN_COMMANDS, run_admin
from .eager import resume_started
from .flowtoken import EdgePath, FlowTokens
from .forwarder import Forwarder, Wire
from .handlers.admin import AdminChatHandler
from .handlers.base import Cancel, Handle
from .handlers.calls import CallKeeper
from .handlers.chat import ChatHandler
from .handlers.proxy import ProxyCancelHandler, ProxyHandler
from .handlers.redirect import CancelHandler, NotifyHandler, RedirectHandler
from .handlers.register import RegisterHandler
from .housekeeping import Housekeeper, tune_gc
from .messaging import Sender
from .natping import NatPinger
from .ops import Operations, OpsContext, reload
from .parts import Parts, build_parts, close_parts, open_parts
from .peerlog import PeerLog, log_request, reqlog
from .redirect.loader import build_chain
from .redirect.pipeline import RedirectServer
from .services import NotifyRoutes, RedirectServices
from .sip.errors import ParseError
from .sip.message import Limits, Request, Response, build_response, parse_message
from .sip.reader import ack_key
from .sip.source import Listen, Source, bare_host
from .sip.transaction import Outcome, ServerTransaction, TransactionLayer, make_key
from .sip.uri import SipUri
from .sip.validate import unsupported_requires, validate_request, validate_response
from .stats import KNOWN_METHODS
from .sweeper import sweep_bindings
from .transport import Transports
from .trunks.manager import AsyncIO, TrunkManager
from .trunks.routing import TrunkRouter
from .uac import Uac
from .web.server import Web, start_web

if TYPE_CHECKING:
    from .config import Config
    from .sip.headers import Via

__all__ = ["App", "Clock", "KNOWN_METHODS", "ALLOW"]

log = logging.getLogger("sipyard")

#: Methods the redirect server routes when the Request-URI names a user.
REDIRECTED = ("INVITE", "SUBSCRIBE", "MESSAGE", "REFER", "OPTIONS")
ALLOW = "INVITE, ACK, CANCEL, OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, MESSAGE, REFER"
SUPPORTED = frozenset({"path", "outbound"})
SUPPORTED_HEADER = "path, outbound"
#: the loop timer's granularity in seconds (App._arm_timer)
_TICK = 0.01
#: in-dialog methods: without a dialog of ours they get 481, not 405
_IN_DIALOG = frozenset({"BYE", "INFO", "UPDATE", "PRACK", "NOTIFY"})
_OPTIONS_HEADERS = (("Allow", ALLOW), ("Accept", "application/sdp, text/plain"),
                    ("Supported", SUPPORTED_HEADER))


class Clock(Protocol):
    """Where the app reads time: wall seconds (bindings) and monotonic seconds (timers)."""

    def wall(self) -> float: ...
    def mono(self) -> float: ...


class App:
    """One running server. ``start()`` binds; ``stop()`` closes everything."""

    def __init__(self, config: Config, *, config_path: Path | None = None,
                 clock: Clock | None = None) -> None:
        srv = config.server
        self.config_path = config_path
        #: a test's fake clock (tests/pair.py); None: the wall clock and the loop's clock
        self.fake_clock = clock
        self.server_header = srv.server_header or f"sipyard/{__version__}"
        self.limits = Limits()
        self.txl = TransactionLayer()
        self.parts: Parts = build_parts(config)
        self.stats = self.parts.stats
        self.transports = Transports(
            self._on_bytes, max_udp=srv.max_message_size, max_tcp_header=srv.max_message_size,
            tcp_idle=srv.tcp_idle, max_conns_per_peer=srv.max_tcp_per_source,
            max_connections=srv.max_tcp_connections,
            max_handshakes_per_net=srv.tcp_handshakes_per_net,
            handshake_timeout=srv.tcp_handshake_timeout,
            on_framing_error=self._on_framing_error, on_oversize=self._on_oversize)
        self.parts.store.answers = self.transports  # one commit's 200s leave together
        #: parse caches emptied, quiet-time collections (issue #16: memory comes back)
        self.housekeeper = Housekeeper(config.security.sweep_interval,
                                       load=lambda: len(self.txl),
                                       sweeps=[lambda: self.parts.auth.sweep(self.now())])
        self.uac = Uac(self.transports.send, server_header=self.server_header)
        self.sender = Sender(self.transports, self.uac, self.parts.store, self.parts.current)
        self.routes = NotifyRoutes()
        self.services = RedirectServices(self.parts, self.sender, self.routes, self.now)
        self.ops = Operations(OpsContext(
            parts=self.parts, transports=self.transports, txl=self.txl, sender=self.sender,
            build_chain=self._build_chain, swap_chain=self._swap_chain,
            request_stop=self.request_stop, now=self.now, config_path=config_path,
            mode=srv.mode))
        self._tag_prefix = secrets.token_hex(3)
        self._tag_seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._peer_log = PeerLog()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: start handlers outside a Task (see _run_handler); off for a store that needs one
        self.eager_handlers = not self.parts.store.needs_task
        self._stopped = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        #: proxy mode (read at start; a reload does not switch modes)
        self.forwarder: Forwarder | None = None
        self.proxy: ProxyHandler | None = None
        self.keeper: CallKeeper | None = None
        #: a CANCEL or ACK that matches no transaction here goes to this hook first: with
        #: several workers the INVITE may live in another (sipyard.cluster.worker); True =
        #: passed on, nothing to answer here
        self.unmatched: Callable[[Request, Source], bool] | None = None
        self._natping: asyncio.Task[None] | None = None
        #: the status page and /metrics listeners ([web] listen, [server] metrics)
        self.web: Web | None = None
        #: provider trunks (issue #13): the registration loops run only where this is true
        #: (one registration per trunk per site: a scale-out sets it in one worker only)
        self.run_trunks = True
        self.trunk_manager = TrunkManager(
            self.parts.trunks, AsyncIO(self.transports, self.uac, self.now,
                                       self.transports.udp_local),
            site=str(config.server.data_dir))
        self.ops.ctx.reload_listeners.append(
            lambda cfg: self.spawn(self.trunk_manager.update(cfg.trunks)))
        self.ops.ctx.reload_listeners.append(self._reconfigure_housekeeping)
        self.handlers: dict[str, Handle] = self._dispatch_table()

    def _reconfigure_housekeeping(self, cfg: Config) -> None:
        self.housekeeper.interval = cfg.security.sweep_interval

    def _dispatch_table(self) -> dict[str, Handle]:
        """Method → handler; ``*`` takes any other method whose Request-URI names a user."""
        parts = self.parts
        chat: ChatHandler = AdminChatHandler(
            parts, self.sender, self, lambda word, args: run_admin(self.ops.ctx, word, args),
            ADMIN_COMMANDS)
        redirector = RedirectHandler(parts, self, chat)
        self.own_options: Callable[[Request, Source], bool] = redirector.own_options
        redirect = redirector.handle
        table: dict[str, Handle] = {m: redirect for m in REDIRECTED}
        table["*"] = redirect
        self.register_handler = RegisterHandler(parts, self)
        table["REGISTER"] = self.register_handler.handle
        table["CANCEL"] = CancelHandler(parts, self.txl, self).handle
        table["NOTIFY"] = NotifyHandler(self.routes, self).handle
        if self.config.server.mode == "proxy":
            table = self._proxy_table(table, chat)
        return table

    def _proxy_table(self, table: dict[str, Handle], chat: ChatHandler) -> dict[str, Handle]:
        """Proxy mode: everything but REGISTER goes to the proxy handler (issue #12)."""
        parts = self.parts
        pcfg = self.config.proxy
        self.forwarder = fw = Forwarder(
            Wire(send=self.transports.send, relay=self.relay, respond=self.respond,
                 drop=self.drop, clock=self._clock, arm=self._arm_timer,
                 udp_local=self.transports.udp_local),
            timer_c=pcfg.timer_c, group_timeout=pcfg.fork_group_timeout,
            max_branches=pcfg.max_branches)
        self.keeper = CallKeeper(parts, self)
        self.proxy = proxy = ProxyHandler(parts, self, fw, chat, NotifyHandler(self.routes, self),
                                          self.services, self.sender, self.keeper)
        self.own_options = proxy.own_options
        out = {m: h for m, h in table.items() if m == "REGISTER"}
        for m in (*REDIRECTED, "*", "BYE", "ACK", "NOTIFY", "INFO", "UPDATE", "PRACK"):
            out[m] = proxy.handle
        out["CANCEL"] = ProxyCancelHandler(parts, self.txl, self, fw, proxy).handle
        # the edge proxy of the phones registering here: a Path naming their flow, so
        # another host sharing the store routes their calls through us (sipyard.flowtoken)
        proxy.edge = self.register_handler.edge = EdgePath(
            FlowTokens(lambda: parts.auth.secret), fw.reach_interface,
            lambda uri: fw.local.is_our_uri(uri))
        self.sender.edge = proxy.edge
        proxy.trunks = router = TrunkRouter(parts, self.transports.connect_tcp,
                                            self.transports.has_connection,
                                            self.transports.udp_local)
        self.keeper.on_end.append(lambda call: router.forget(call.call_id))
        return out

    @property
    def config(self) -> Config:
        return self.parts.current.config

    @property
    def load_args(self) -> dict[str, Any]:
        """CLI overrides (data_dir, listen) that a reload must apply again."""
        return self.ops.ctx.load_args

    @load_args.setter
    def load_args(self, value: dict[str, Any]) -> None:
        self.ops.ctx.load_args = value

    # -- life cycle -------------------------------------------------------------
    async def start(self, listens: Sequence[Listen] | None = None) -> list[Listen]:
        self.loop = asyncio.get_running_loop()
        parts = self.parts
        await open_parts(parts)
        parts.current.redirect = RedirectServer(
            self.config, self.services, chain=build_chain(self.config, self.services))
        self._sweeper = asyncio.ensure_future(sweep_bindings(parts, self.now))
        await self.ops.start()
        self.web = await start_web(self.ops.ctx)
        specs = list(listens) if listens is not None else list(self.config.server.listen)
        bound = await self.transports.start(specs)
        if self.forwarder is not None:
            self.forwarder.set_addresses(bound, self.config.server.our_domains)
            # [proxy] nat_ping_interval (off by default; read every round, so a reload applies)
            self._natping = asyncio.ensure_future(NatPinger(parts, self.sender, self.now).run())
        if self.run_trunks:
            await self.trunk_manager.start(self.config.trunks)
        else:
            await self.trunk_manager.resolve_all(self.config.trunks)
        for b in bound:
            log.info("listening on %s %s:%d", b.transport, b.host, b.port)
        tune_gc()
        self.housekeeper.start()
        return bound

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.keeper is not None:
            self.keeper.close()
            await self.keeper.flush()
        await self.trunk_manager.stop()  # un-register while the transports still run
        await self.transports.close()
        for task in list(self._tasks):
            task.cancel()
        if self.web is not None:
            await self.web.close()
        await self.ops.close()
        server, self.parts.current.redirect = self.parts.current.redirect, None
        if server is not None:
            server.close("shutdown")
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._natping is not None:
            self._natping.cancel()
        self.housekeeper.close()
        await close_parts(self.parts)
        self._stopped.set()

    def install_signals(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads (call once started, before announcing)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.spawn(reload(self.ops.ctx)))

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

    # -- the redirect chain (built per config; a reload swaps it) ---------------
    def _build_chain(self, cfg: Config) -> Any:
        return build_chain(cfg, self.services)

    def _swap_chain(self, cfg: Config, chain: Any) -> None:
        current = self.parts.current
        old = current.redirect
        current.redirect = RedirectServer(cfg, self.services, chain=chain)
        if old is not None:
            self.spawn(_retire(old))

    # -- the Responder side (what handlers may ask) ----------------------------------
    def now(self) -> float:
        clock = self.fake_clock
        return time.time() if clock is None else clock.wall()

    def call_later(self, delay: float, fn: Callable[[], Any]) -> Cancel:
        return (self.loop or asyncio.get_running_loop()).call_later(delay, fn)

    def drop(self, tx: ServerTransaction) -> None:
        self.txl.terminate(tx)

    def new_tag(self) -> str:  # str() of a native int: cheaper than format(n, "x")
        self._tag_seq = n = self._tag_seq + 1
        return self._tag_prefix + str(n)

    def options(self, tx: ServerTransaction, req: Request) -> None:
        """OPTIONS to the server itself: the keep-alive and capability probe."""
        self.respond(tx, req, 200, "OK", _OPTIONS_HEADERS)

    def _own_options(self, req: Request, dest: Source, via: Via) -> None:
        """The same answer without a transaction (a stateless UAS, RFC 3261 §8.2.7).

        Why: phones send these every few seconds as keep-alives, and a transaction would
        hold each 200 for 32 s (timer J) only to answer a retransmission the same way
        again. The To tag is a function of the request, so a retransmission gets the
        same answer (within this process; the client's 4-tuple keeps it here)."""
        tag = f"{self._tag_prefix}-{hash((via.branch, req.call_id)) & 0xFFFFFFFF:x}"
        self.transports.send(dest, build_response(
            req, 200, "OK", to_tag=tag, headers=_OPTIONS_HEADERS, server=self.server_header))
        self.stats.response(200)
        if reqlog.isEnabledFor(logging.INFO):
            log_request(req, dest, 200)

    def _clock(self) -> float:
        """Monotonic seconds for transaction timers: the loop's clock (or a test's)."""
        clock = self.fake_clock
        if clock is not None:
            return clock.mono()
        loop = self.loop
        return loop.time() if loop is not None else time.monotonic()

    def relay(self, tx: ServerTransaction, req: Request, resp: Response) -> None:
        """Forward a response from downstream on ``tx`` (proxy mode; our Via is already off).

        A 2xx to an INVITE goes upstream even when the transaction no longer
        takes it (a late 2xx of another branch, §16.7 step 5)."""
        data = resp.to_bytes()
        status = resp.status
        now = self._clock()
        try:
            self.txl.send_response(tx, status, data, now)
        except Exception as exc:
            if not 200 <= status < 300:
                log.debug("relayed %d dropped: %s", status, exc)
                return
        self.transports.send(tx.dest, data)  # type: ignore[arg-type]  # the app stores Sources
        self.stats.response(status)
        if status >= 200:
            self._arm_after_final(now)
            if reqlog.isEnabledFor(logging.INFO):
                log_request(req, tx.dest, status)  # type: ignore[arg-type]

    def respond(self, tx: ServerTransaction, req: Request, status: int, reason: str,
                headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> None:
        data = build_response(req, status, reason, to_tag=self.new_tag(), headers=headers,
                              body=body, server=self.server_header)
        now = self._clock()
        try:
            self.txl.send_response(tx, status, data, now)
        except Exception as exc:  # transaction already finished (e.g. CANCELled)
            log.debug("response %d dropped: %s", status, exc)
            return
        dest: Source = tx.dest  # type: ignore[assignment]  # the app stores Sources
        self.transports.send(dest, data)
        self.stats.response(status)
        if status >= 200:
            self._arm_after_final(now)
            if reqlog.isEnabledFor(logging.INFO):
                log_request(req, dest, status)

    # -- inbound ------------------------------------------------------------------
    def _on_bytes(self, data: bytes, src: Source) -> None:
        key = ack_key(data) if data[:4] == b"ACK " else None
        if key is not None and self.txl.absorb_ack(key, self._clock()):
            self.stats.request("ACK")  # the ACK of a 3xx-6xx of ours: its Via alone says so
            return
        try:
            msg = parse_message(data, self.limits)
        except ParseError as exc:
            self._bad_message(exc, src)
            return
        if type(msg) is not Request:
            try:
                validate_response(msg)  # type: ignore[arg-type]  # RFC 4475 scalarlg
            except ParseError:
                self.stats.dropped += 1
                return
            fw = self.forwarder
            if fw is not None and fw.on_response(msg, src):  # type: ignore[arg-type]
                return
            if not self.uac.on_response(msg):  # type: ignore[arg-type]
                self.stats.dropped += 1
                if fw is not None:
                    self._peer_log.once(src.ip, "stray-response",
                                        "dropped response(s) from %s matching no transaction",
                                        src.ip)
            return
        self._on_request(msg, src)

    def _on_request(self, req: Request, src: Source) -> None:
        method = req.method
        self.stats.request(method)
        try:
            via = req.top_via
        except ParseError as exc:
            self._stateless(req, src, exc.status, exc.reason)
            return
        branch = via.branch
        port = via.port
        sent_by = f"{via.host}:{port}" if port is not None else via.host + ":"
        txl = self.txl
        if branch is not None and len(branch) > 7 and branch.startswith("z9hG4bK"):
            key = make_key(branch, sent_by, method)
            tx = txl.get(key)
            if tx is not None:
                # A retransmission, or the ACK of our final: its transaction only
                # exists because the first copy passed validation, so it skips
                # validation. The answer goes where this copy came from.
                now = self._clock()
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
        if method == "OPTIONS" and not req.has("require") and self.own_options(req, src):
            self._own_options(req, dest, via)
            return
        unmatched = self.unmatched
        if (unmatched is not None and method == "CANCEL" and txl.find_invite(key) is None
                and unmatched(req, src)):
            return
        now = self._clock()
        outcome, tx, cached = txl.receive_request(key, method, src.reliable, dest, now)
        if outcome is not Outcome.NEW or tx is None:
            if outcome is Outcome.RETRANSMISSION and cached is not None:
                self.transports.send(dest, cached)
            elif outcome is Outcome.ACK_UNMATCHED:
                if self.proxy is not None:
                    self.proxy.on_ack(req, src)  # a 2xx's ACK: end to end, along the route set
                elif unmatched is not None:
                    unmatched(req, src)
            return  # ACK absorbed or stray ACK: hop-by-hop, nothing to do
        if method != "ACK" and method != "CANCEL" and req.has("require"):
            bad = unsupported_requires(req, SUPPORTED)
            if bad:
                self.respond(tx, req, 420, "Bad Extension", [("Unsupported", ", ".join(bad))])
                return
        handler = self.handlers.get(method)
        if handler is None:
            handler = self.handlers.get("*") if _has_user(req) else None
            if handler is None:
                self._no_handler(tx, req, method)
                return
        try:
            result = handler(req, src, tx)
        except Exception:
            log.exception("handler for %s failed", method)
            self.respond(tx, req, 500, "Server Internal Error")
            return
        if result is not None:
            self._run_handler(result, tx, req)

    def _no_handler(self, tx: ServerTransaction, req: Request, method: str) -> None:
        if method == "OPTIONS":
            self.options(tx, req)
        elif method in KNOWN_METHODS:
            if method in _IN_DIALOG:
                self.respond(tx, req, 481, "Call/Transaction Does Not Exist", [("Allow", ALLOW)])
            else:
                self.respond(tx, req, 405, "Method Not Allowed", [("Allow", ALLOW)])
        else:
            self.respond(tx, req, 501, "Not Implemented", [("Allow", ALLOW)])

    def _run_handler(self, coro: Awaitable[Any], tx: ServerTransaction, req: Request) -> None:
        """Run a handler's coroutine eagerly (:mod:`sipyard.eager`); a compiled one has send()."""
        send = getattr(coro, "send", None) if self.eager_handlers else None
        if send is None:
            pending: Any = coro
            task = asyncio.ensure_future(pending)
        else:
            try:
                pending = send(None)
            except StopIteration:
                return
            except Exception as exc:
                self._handler_failed(exc, tx, req)
                return
            task = asyncio.ensure_future(resume_started(coro, pending))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._handler_done(t, tx, req))

    def _checked(self, req: Request, via: Via, src: Source) -> Source | None:
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

    @staticmethod
    def _response_dest(req: Request, via: Via, src: Source) -> Source:
        """RFC 3261 §18.2.2 + RFC 3581, and record received/rport in the Via."""
        rport = via.rport
        if rport == "" or bare_host(via.host) != src.ip:
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

    # -- stateless answers --------------------------------------------------------------
    def _reply_stateless(self, req: Request, dest: Source, status: int, reason: str,
                         headers: Sequence[tuple[str, str]] = ()) -> None:
        if req.method == "ACK":
            return
        data = build_response(req, status, reason, to_tag=self.new_tag(), headers=headers,
                              server=self.server_header)
        self.transports.send(dest, data)
        self.stats.response(status)
        self._peer_log.once(dest.ip, status, "rejected %s from %s: %d %s",
                            req.method or "request", dest.ip, status, reason)
        if reqlog.isEnabledFor(logging.INFO):
            log_request(req, dest, status)

    def _stateless(self, req: Request, src: Source, status: int, reason: str) -> None:
        """Answer a request whose Via could not be read: to its source, as best we can."""
        if req.method == "ACK" or not req.get("via"):
            self._peer_log.once(src.ip, "unanswerable", "dropped unanswerable request from %s: %s",
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
        self._peer_log.once(src.ip, "malformed", "dropped malformed message from %s: %s",
                            src.ip, exc.reason)

    def _on_framing_error(self, exc: ParseError, src: Source) -> None:
        self._peer_log.once(src.ip, "framing", "closing tcp connection from %s:%d: %s",
                            src.ip, src.port, exc.reason)

    def _on_oversize(self, src: Source, data: bytes) -> None:
        try:
            msg: Any = parse_message(data[: self.config.server.max_message_size])
        except ParseError as exc:
            msg = exc.partial if isinstance(exc.partial, Request) else None
        if isinstance(msg, Request) and msg.get("via"):
            try:
                dest = self._response_dest(msg, msg.top_via, src)
            except ParseError:
                dest = src
            self._reply_stateless(msg, dest, 513, "Message Too Large")
            return
        self._peer_log.once(src.ip, "oversize", "dropped oversize datagram from %s (%d bytes)",
                            src.ip, len(data))

    # -- timers ---------------------------------------------------------------------
    def _arm_after_final(self, now: float) -> None:
        """A final answer arms a transaction timer at least T1 from now (G, or H/I/J/L
        later still; none over TCP): when the loop timer is due before that, it will
        re-arm itself and nothing needs computing now."""
        at = self._timer_at
        if at is None or at > now + self.txl.t1:
            self._arm_timer()

    def _arm_timer(self) -> None:
        """Keep one loop timer at the next deadline, rounded up to a tick.

        Why the tick: under load every final answer brings its own deadline, a few
        microseconds after the previous one, and a timer per deadline would fire about
        as often as requests arrive. Rounded up to :data:`_TICK` it fires at most 100
        times a second and handles whatever fell due together; RFC 3261's timers
        (T1 = 500 ms and up) are not harmed by 10 ms."""
        if self.fake_clock is not None:
            return  # a test moves its clock and calls run_timers itself
        deadline = self.txl.next_deadline()
        if self.forwarder is not None:
            other = self.forwarder.next_deadline()
            if other is not None and (deadline is None or other < deadline):
                deadline = other
        if deadline is None or self.loop is None:
            return
        deadline = math.ceil(deadline / _TICK) * _TICK
        if self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.run_timers()
        self._arm_timer()

    def run_timers(self) -> None:
        """Fire every transaction timer due now (the loop's timer calls it; so does a test
        that drives the app with a fake clock, after moving the clock on)."""
        now = self._clock()
        for tx, data in self.txl.handle_timer(now):
            if data is not None:
                self.transports.send(tx.dest, data)  # type: ignore[arg-type]
            elif tx.method == "INVITE":
                log.debug("INVITE transaction %s ended without ACK", tx.key.branch)
        if self.forwarder is not None:
            self.forwarder.handle_timer(now)


async def _retire(old: RedirectServer, grace: float = 2.0) -> None:
    """Let the old chain finish requests that are merely running (a store lookup in
    flight); requests suspended on it are answered 500 + Retry-After by close()."""
    loop = asyncio.get_running_loop()
    end = loop.time() + grace
    try:
        while old.in_flight > old.suspended and loop.time() < end:
            await asyncio.sleep(0.005)
    finally:
        old.close()


def _reply_dest(via: Via, src: Source) -> Source:
    """Where responses to a request with this top Via go (RFC 3261 §18.2.2, RFC 3581):
    the source itself over TCP or with rport, else the source IP at the sent-by port."""
    if src.transport != "udp" or via.rport is not None or (via.port or 5060) == src.port:
        return src  # (the last: the same address, without building it again)
    return Source("udp", src.ip, via.port or 5060, None, src.local)


def _has_user(req: Request) -> bool:
    try:
        uri = req.ruri
    except ParseError:
        return False
    return isinstance(uri, SipUri) and bool(uri.user)

