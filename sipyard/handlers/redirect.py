"""Requests that need a target: INVITE, SUBSCRIBE, MESSAGE, REFER, OPTIONS to a user,
and unknown methods with a user Request-URI, through the redirect pipeline;
CANCEL of a pending INVITE; NOTIFYs of the server's own subscriptions.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from ..redirect.pipeline import RedirectOutcome
from ..sip.errors import ParseError
from ..sip.message import Request
from ..sip.source import Source
from ..sip.transaction import ServerTransaction, TransactionLayer
from ..sip.uri import SipUri
from .chat import ChatHandler, caller_line

if TYPE_CHECKING:
    from ..config import Config
    from ..parts import Parts
    from ..services import NotifyRoutes
    from .base import Responder

__all__ = ["RedirectHandler", "CancelHandler", "NotifyHandler", "trusted", "answer_cancel"]

log = logging.getLogger("sipyard.redirect")


def trusted(cfg: Config, ip: str) -> bool:
    """Whether ``ip`` is in ``[security] trusted`` (no challenge from there)."""
    nets = cfg.security.trusted
    if not nets:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    # the config holds parsed networks; a version mismatch is simply "not in"
    return any(addr in n for n in nets)


class RedirectHandler:
    """Runs the redirector chain and answers 3xx/4xx/5xx (or the server's own OPTIONS)."""

    __slots__ = ("current", "guard", "auth", "stats", "out", "chat")

    def __init__(self, parts: Parts, out: Responder, chat: ChatHandler) -> None:
        self.current = parts.current
        self.guard = parts.guard
        self.auth = parts.auth
        self.stats = parts.stats
        self.out = out
        self.chat = chat

    def own_options(self, req: Request, src: Source) -> bool:
        """Whether this OPTIONS is for the server itself (no user in the Request-URI):
        :meth:`handle` would answer it with ``out.options``, which the app may do
        without a transaction."""
        uri = req.ruri
        return not (isinstance(uri, SipUri) and uri.user)

    def handle(self, req: Request, src: Source, tx: ServerTransaction) -> Awaitable[None] | None:
        uri = req.ruri
        out = self.out
        method = req.method
        if method == "OPTIONS" and not (isinstance(uri, SipUri) and uri.user):
            out.options(tx, req)
            return None
        if self.guard.banned(src.ip, out.now()):
            self.stats.dropped += 1
            out.drop(tx)
            return None
        cfg = self.current.config
        if (method == "MESSAGE" and isinstance(uri, SipUri)
                and uri.user_unescaped == cfg.server.system and cfg.is_our_domain(uri.host_lower)):
            return self.chat.handle(req, src, tx)
        required = cfg.redirect.require_auth and not trusted(cfg, src.ip)
        answered, caller = caller_line(self.auth, self.stats, out, req, src, tx, required)
        if answered:
            return None
        server = self.current.redirect
        if server is None:
            out.respond(tx, req, 503, "Service Unavailable", (("Retry-After", "5"),))
            return None
        # Run the chain at once: most requests are answered from memory in one pass,
        # with neither a coroutine nor a 100 Trying timer. Only a chain that waits (a
        # suspended redirector, bindings behind I/O) returns a coroutine to await.
        started = server.start(req, caller, key=tx)
        if isinstance(started, RedirectOutcome):
            self._answer(req, src, tx, started)
            return None
        return self._wait(req, src, tx, started)

    async def _wait(self, req: Request, src: Source, tx: ServerTransaction,
                    run: Awaitable[RedirectOutcome]) -> None:
        """Finish a chain that waits, with 100 Trying if it takes more than 200 ms."""
        trying = None
        out = self.out
        if req.method == "INVITE":
            # Stop the caller's retransmissions while the chain waits (RFC 3261 §8.2.6.1).
            trying = out.call_later(0.2, lambda: _trying(out, tx, req))
        try:
            outcome = await run
        finally:
            if trying is not None:
                trying.cancel()
        self._answer(req, src, tx, outcome)

    def _answer(self, req: Request, src: Source, tx: ServerTransaction,
                outcome: RedirectOutcome) -> None:
        out = self.out
        if outcome.needs_auth:
            try:
                result = self.auth.check(req, src.ip, out.now())
            except ParseError as exc:
                out.respond(tx, req, exc.status, exc.reason)
                return
            out.respond(tx, req, 401, "Unauthorized", result.challenge)
            return
        out.respond(tx, req, outcome.status, outcome.reason, outcome.headers)


def _trying(out: Responder, tx: ServerTransaction, req: Request) -> None:
    if tx.last_status is None:
        out.respond(tx, req, 100, "Trying")


def answer_cancel(txl: TransactionLayer, out: Responder, req: Request,
                  tx: ServerTransaction) -> ServerTransaction | None:
    """Answer a CANCEL (§9.2: 481 without its INVITE, else 200 at once); the INVITE's
    transaction when it has no final answer yet, so there is something to cancel."""
    invite = txl.find_invite(tx.key)
    if invite is None:
        out.respond(tx, req, 481, "Call/Transaction Does Not Exist")
        return None
    out.respond(tx, req, 200, "OK")
    if invite.last_status is not None and invite.last_status >= 200:
        return None
    return invite


class CancelHandler:
    """CANCEL: 200 for the CANCEL, and the pending INVITE ends with 487 (its chain cancelled)."""

    __slots__ = ("current", "txl", "out")

    def __init__(self, parts: Parts, txl: TransactionLayer, out: Responder) -> None:
        self.current = parts.current
        self.txl = txl
        self.out = out

    def handle(self, req: Request, src: Source, tx: ServerTransaction) -> Awaitable[None] | None:
        invite = answer_cancel(self.txl, self.out, req, tx)
        if invite is not None:
            server = self.current.redirect
            if server is not None:
                server.cancel_request(invite, "cancel")
        return None


class NotifyHandler:
    """NOTIFYs of the server's own subscriptions (pick-up); any other gets 481."""

    __slots__ = ("routes", "out")

    def __init__(self, routes: NotifyRoutes, out: Responder) -> None:
        self.routes = routes
        self.out = out

    def handle(self, req: Request, src: Source, tx: ServerTransaction) -> Awaitable[None] | None:
        try:
            call_id = req.call_id
        except ParseError:
            self.out.respond(tx, req, 400, "Bad Call-ID header")
            return None
        cb = self.routes.get(call_id)
        if cb is None:
            self.out.respond(tx, req, 481, "Subscription Does Not Exist")
            return None
        self.out.respond(tx, req, 200, "OK")
        try:
            cb(req)
        except Exception:
            log.exception("NOTIFY callback failed")
        return None
