"""Requests that need a target: the redirect server's side of the app.

INVITE, SUBSCRIBE, MESSAGE, REFER, OPTIONS to a user and unknown methods with a
user Request-URI run through :class:`~sipyard.redirect.pipeline.RedirectServer`;
CANCEL ends a pending INVITE (487); NOTIFYs for the pick-up subscriptions go to
their redirector; a MESSAGE to the system identity is a chat command.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .app import resume_started
from .redirect.pipeline import RedirectServer
from .sip.errors import ParseError
from .sip.message import Request
from .sip.transaction import ServerTransaction
from .sip.uri import SipUri
from .transport import Source

if TYPE_CHECKING:
    from .app import App

__all__ = ["install", "uninstall", "AppServices"]

log = logging.getLogger("sipyard.redirect")


class AppServices:
    """What the redirectors may ask of the app (``redirect.pipeline.Services``)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.logger = log

    @property
    def config(self) -> Any:
        return self.app.config

    def now(self) -> float:
        return self.app.now()

    async def lookup(self, aor: str) -> Sequence[Any]:
        found: Sequence[Any] = await self.app.features["store"].lookup(aor, self.app.now())
        return found

    def line_for_uri(self, uri: SipUri) -> str | None:
        cfg = self.app.config
        if not cfg.is_our_domain(uri.host_lower):
            return None
        user = uri.user_unescaped
        if user in cfg.lines:
            return user
        # Open registration accepts any user of the realm, so any user may have bindings.
        return user if user and cfg.security.open_registration else None

    async def send_request(self, method: str, request_uri: str, *,
                           dest: tuple[str, int, str] | None,
                           headers: Sequence[tuple[str, str]], body: bytes = b"") -> int:
        app = self.app
        tr = app.transports
        if dest is None:
            return 503
        ip, port, transport = dest
        transport = transport.lower()
        try:
            if transport == "udp":
                src = Source("udp", ip, port, None, _udp_local(tr, ip))
            else:
                # reuses the phone's own connection (the flow it registered over) while it lives
                src = await tr.connect_tcp(ip, port)
        except (TimeoutError, OSError):
            return 503
        result = await app.uac.request(method, request_uri, src, headers=headers, body=body)
        return result.status

    def register_notify(self, call_id: str, callback: Callable[[Any], None]) -> None:
        self.app.register_notify(call_id, callback)

    def unregister_notify(self, call_id: str) -> None:
        self.app.unregister_notify(call_id)


def _udp_local(tr: Any, ip: str) -> tuple[str, int]:
    """Our UDP socket of the destination's address family (a v6 socket cannot reach v4)."""
    v6 = ":" in ip
    for b in tr.bound:
        if b.transport == "udp" and (":" in b.host) == v6:
            return (b.host, b.port)
    local: tuple[str, int] = tr.local_for("udp", 5060)
    return local


async def install(app: App) -> None:
    services = AppServices(app)
    app.features["redirect"] = RedirectServer(app.config, services)
    from .redirect.loader import build_chain

    app.features["redirect_build"] = lambda cfg: build_chain(cfg, services)

    def swap(cfg: Any, chain: Any) -> None:
        old: RedirectServer = app.features["redirect"]
        app.features["redirect"] = RedirectServer(cfg, services, chain=chain)
        app.spawn(_retire(old))

    app.features["redirect_swap"] = swap
    for method in ("INVITE", "SUBSCRIBE", "MESSAGE", "REFER", "OPTIONS", "*"):
        app.handlers[method] = on_redirected
    app.handlers["CANCEL"] = on_cancel
    app.handlers["NOTIFY"] = on_notify


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


async def uninstall(app: App) -> None:
    server = app.features.pop("redirect", None)
    if server is not None:
        server.close("shutdown")


def _trusted(app: App, ip: str) -> bool:
    nets = app.config.security.trusted
    if not nets:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    # the config holds parsed networks; a version mismatch is simply "not in"
    return any(addr in n for n in nets)


def on_redirected(app: App, req: Request, src: Source, tx: ServerTransaction) -> Any:
    uri = req.ruri
    if req.method == "OPTIONS" and not (isinstance(uri, SipUri) and uri.user):
        app.options(tx, req)
        return None
    guard = app.features["guard"]
    if guard.banned(src.ip, app.now()):
        app.stats.dropped += 1
        app.txl.terminate(tx)
        return None
    cfg = app.config
    if (req.method == "MESSAGE" and isinstance(uri, SipUri)
            and uri.user_unescaped == cfg.server.system and cfg.is_our_domain(uri.host_lower)):
        return _chat(app, req, src, tx)
    return _redirect(app, req, src, tx)


def _caller(app: App, req: Request, src: Source, tx: ServerTransaction,
            required: bool) -> tuple[bool, str | None]:
    """(answered, caller line). Challenges when authentication is required."""
    auth = app.features["auth"]
    if not required and not req.has("authorization"):
        return False, None
    try:
        result = auth.check(req, src.ip, app.now())
    except ParseError as exc:
        app.respond(tx, req, exc.status, exc.reason)
        return True, None
    if result.line is not None:
        return False, result.line
    if required:
        app.stats.auth_failures += 1
        app.respond(tx, req, 401, "Unauthorized", result.challenge)
        return True, None
    return False, None


async def _redirect(app: App, req: Request, src: Source, tx: ServerTransaction) -> None:
    cfg = app.config
    required = cfg.redirect.require_auth and not _trusted(app, src.ip)
    answered, caller = _caller(app, req, src, tx, required)
    if answered:
        return
    server: RedirectServer = app.features["redirect"]
    # Run the chain at once: most requests are answered from memory without
    # waiting, and those need no 100 Trying timer (one timer per INVITE showed
    # in the profile). Only a chain that waits arms it.
    run = server.redirect(req, caller, key=tx)
    try:
        pending = run.send(None)
    except StopIteration as stop:
        outcome = stop.value
    else:
        trying = None
        if req.method == "INVITE" and app.loop is not None:
            # Stop the caller's retransmissions if the chain suspends (RFC 3261 §8.2.6.1).
            trying = app.loop.call_later(0.2, lambda: _trying(app, tx, req))
        try:
            outcome = await resume_started(run, pending)
        finally:
            if trying is not None:
                trying.cancel()
    if outcome.needs_auth:
        try:
            result = app.features["auth"].check(req, src.ip, app.now())
        except ParseError as exc:
            app.respond(tx, req, exc.status, exc.reason)
            return
        app.respond(tx, req, 401, "Unauthorized", result.challenge)
        return
    app.respond(tx, req, outcome.status, outcome.reason, outcome.headers)


def _trying(app: App, tx: ServerTransaction, req: Request) -> None:
    if tx.last_status is None:
        app.respond(tx, req, 100, "Trying")


def on_cancel(app: App, req: Request, src: Source, tx: ServerTransaction) -> None:
    invite = app.txl.find_invite(tx.key)
    if invite is None:
        app.respond(tx, req, 481, "Call/Transaction Does Not Exist")
        return
    app.respond(tx, req, 200, "OK")
    if invite.last_status is None or invite.last_status < 200:
        server: RedirectServer = app.features["redirect"]
        server.cancel_request(invite, "cancel")


def on_notify(app: App, req: Request, src: Source, tx: ServerTransaction) -> None:
    try:
        call_id = req.call_id
    except ParseError:
        app.respond(tx, req, 400, "Bad Call-ID header")
        return
    cb = app.notify_handler(call_id)
    if cb is None:
        app.respond(tx, req, 481, "Subscription Does Not Exist")
        return
    app.respond(tx, req, 200, "OK")
    try:
        cb(req)
    except Exception:
        log.exception("NOTIFY callback failed")


async def _chat(app: App, req: Request, src: Source, tx: ServerTransaction) -> None:
    answered, caller = _caller(app, req, src, tx, True)
    if answered or caller is None:
        return
    ctype = (req.get("content-type") or "text/plain").split(";")[0].strip().lower()
    if ctype != "text/plain":
        app.respond(tx, req, 415, "Unsupported Media Type", [("Accept", "text/plain")])
        return
    app.respond(tx, req, 202, "Accepted")
    text = req.body.decode("utf-8", "replace")
    lc = app.config.lines.get(caller)
    display = lc.display if lc is not None and lc.display else ""
    replies = await app.features["chat"].handle(text, line=caller, display=display)
    system = f"sip:{app.config.server.system}@{app.config.server.realm}"
    await _send_replies(app, caller, replies, system)


async def _send_replies(app: App, line: str, replies: Sequence[str], from_uri: str) -> None:
    """Each of the sender's bindings gets the reply lines in order, the bindings in parallel:
    a phone that is gone (no answer for 64*T1) holds up only itself, and gets no more lines
    after the first it did not take."""
    from .messaging import send_to_binding

    bindings = await app.features["store"].lookup(f"sip:{line}@{app.config.server.realm}",
                                                  app.now())
    headers = [("Content-Type", "text/plain;charset=UTF-8")]

    async def one(b: Any) -> None:
        for reply in replies:
            status = await send_to_binding(app, b, "MESSAGE", headers=headers,
                                           body=reply.encode("utf-8"), from_uri=from_uri)
            if not 200 <= status < 300:
                return

    await asyncio.gather(*(one(b) for b in bindings))
