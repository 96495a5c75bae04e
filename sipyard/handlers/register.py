"""REGISTER: guard, authenticate, plan the update, answer once it is stored.

The fast lane: with a store that keeps its bindings in memory (sqlite), a
REGISTER is checked, applied to the cache's view and queued for the next
group commit without a coroutine; its 200 is sent from the commit's callback,
so no 200 ever leaves before the binding is durable. A REGISTER whose AOR is
being written, or a store that needs I/O (redis), takes the async path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from email.utils import formatdate
from typing import TYPE_CHECKING

from ..flowtoken import EdgePath
from ..hooks import iso_time
from ..nat import Flow
from ..registrar import Plan, Reject, Reply
from ..security import log_safe
from ..sip.errors import ParseError
from ..sip.message import Request
from ..sip.source import Source
from ..sip.transaction import ServerTransaction
from ..store import Binding, StoreError

if TYPE_CHECKING:
    from ..config import Config
    from ..parts import Parts
    from .base import Responder

__all__ = ["RegisterHandler", "may_register_for", "http_date"]

log = logging.getLogger("sipyard")


class RegisterHandler:
    """RFC 3261 §10.3 on the wire; the rules themselves are the registrar's."""

    __slots__ = ("current", "guard", "auth", "registrar", "store", "hooks", "stats", "out",
                 "edge")

    def __init__(self, parts: Parts, out: Responder) -> None:
        self.current = parts.current
        self.guard = parts.guard
        self.auth = parts.auth
        self.registrar = parts.registrar
        self.store = parts.store
        self.hooks = parts.hooks
        self.stats = parts.stats
        self.out = out
        #: proxy mode: this server is the edge proxy of the phones registering here
        #: (a Path naming their flow, :mod:`sipyard.flowtoken`); None in redirect mode
        self.edge: EdgePath | None = None

    def handle(self, req: Request, src: Source, tx: ServerTransaction) -> Awaitable[None] | None:
        out = self.out
        now = out.now()
        guard = self.guard
        if guard.banned(src.ip, now):
            self.stats.dropped += 1
            out.drop(tx)
            return None
        if not guard.rate_ok(src.ip, now):
            out.respond(tx, req, 503, "Service Unavailable", (("Retry-After", "1"),))
            return None
        cfg = self.current.config
        try:
            plan = self._plan(cfg, req, src, tx, now)
            if plan is None:
                return None
            fn = plan.fn
            if fn is None:  # a fetch: no Contact
                found = self.store.lookup_now(plan.aor, now)
                if found is None:
                    return self._fetch(req, src, tx, plan, now)
                plan.seen.append(len(found))
                self._answer(req, src, tx, plan, now, found)
                return None
            if self.store.update_soon(plan.aor, now, fn, _Done(self, req, src, tx, plan, now)):
                return None
        except Reject as rej:
            out.respond(tx, req, rej.status, rej.reason, rej.headers)
            return None
        except ParseError as exc:
            out.respond(tx, req, exc.status, exc.reason)
            return None
        except StoreError as exc:
            self._store_failed(req, tx, exc)
            return None
        return self._update(req, src, tx, plan, now)

    def _plan(self, cfg: Config, req: Request, src: Source, tx: ServerTransaction,
              now: float) -> Plan | None:
        registrar = self.registrar
        user = registrar.target_line(req)
        if cfg.security.open_registration:
            line = user
        else:
            result = self.auth.check(req, src.ip, now, target_line=user)
            if result.line is None:
                self.stats.auth_failures += 1
                self.out.respond(tx, req, 401, "Unauthorized", result.challenge)
                return None
            line = result.line
            if line != user and not may_register_for(cfg, line, user):
                log.warning("sipyard register refused: src=%s line=%s target=%s",
                            src.ip, line, log_safe(user))
                self.out.respond(tx, req, 403, "Forbidden")
                return None
            if user not in cfg.lines:
                self.out.respond(tx, req, 404, "Not Found")
                return None
        edge = self.edge
        if edge is None:
            return registrar.plan(req, line, src, now)
        return registrar.plan(req, line, src, now, edge.for_register(
            Flow(src.transport, src.ip, src.port), src.conn_id, src.local))

    async def _update(self, req: Request, src: Source, tx: ServerTransaction, plan: Plan,
                      now: float) -> None:
        assert plan.fn is not None
        try:
            after = await self.store.update(plan.aor, now, plan.fn)
        except Reject as rej:
            self.out.respond(tx, req, rej.status, rej.reason, rej.headers)
            return
        except StoreError as exc:
            self._store_failed(req, tx, exc)
            return
        self._answer(req, src, tx, plan, now, after)

    async def _fetch(self, req: Request, src: Source, tx: ServerTransaction, plan: Plan,
                     now: float) -> None:
        try:
            after = await self.store.lookup(plan.aor, now)
        except StoreError as exc:
            self._store_failed(req, tx, exc)
            return
        plan.seen.append(len(after))
        self._answer(req, src, tx, plan, now, after)

    def _store_failed(self, req: Request, tx: ServerTransaction, exc: BaseException) -> None:
        log.error("store error on REGISTER for %s: %s", req.get("to"), exc)
        self.out.respond(tx, req, 500, "Server Internal Error", (("Retry-After", "5"),))

    def _answer(self, req: Request, src: Source, tx: ServerTransaction, plan: Plan, now: float,
                after: list[Binding]) -> None:
        reply = plan.reply(after, now)
        headers = list(reply.headers)
        headers.append(("Date", http_date(now)))
        self.out.respond(tx, req, 200, "OK", headers)
        if (reply.before == 0) != (reply.after == 0):
            self._binding_event(reply, src, now)

    def _binding_event(self, reply: Reply, src: Source, now: float) -> None:
        """activate when a line's first binding appears, release when its last goes."""
        event = "activate" if reply.after else "release"
        hooks = self.hooks
        if hooks.find(event) is None:  # the usual case: no record to build for nobody
            return
        line = reply.line
        lc = self.current.config.lines.get(line)
        display = lc.display if lc is not None and lc.display else ""
        if event == "activate":
            b = reply.added[0] if reply.added else None
            hooks.fire("activate", {
                "event": "activate", "line": line, "display": display,
                "contact": b.contact if b else "",
                "source": f"{src.ip}:{src.port}/{src.transport}",
                "user_agent": b.user_agent if b else "",
                "expires": int(b.expires_at - now) if b else 0, "time": iso_time(now)})
        else:
            hooks.fire("release", {"event": "release", "line": line, "display": display,
                                   "reason": "unregistered", "time": iso_time(now)})


class _Done:
    """The commit callback of one fast-lane REGISTER (cheaper than a closure + partial)."""

    __slots__ = ("handler", "req", "src", "tx", "plan", "now")

    def __init__(self, handler: RegisterHandler, req: Request, src: Source,
                 tx: ServerTransaction, plan: Plan, now: float) -> None:
        self.handler = handler
        self.req = req
        self.src = src
        self.tx = tx
        self.plan = plan
        self.now = now

    def __call__(self, after: list[Binding] | None, error: BaseException | None) -> None:
        if after is None:
            self.handler._store_failed(self.req, self.tx, error or StoreError("store failed"))
            return
        self.handler._answer(self.req, self.src, self.tx, self.plan, self.now, after)


def may_register_for(cfg: Config, line: str, user: str) -> bool:
    perms = set(cfg.permissions.get(line, ()))
    cl = cfg.lines.get(line)
    if cl is not None:
        perms.update(cl.permissions)
    return "register-any" in perms or f"register:{user}" in perms


_date_cache: list[object] = [-1, ""]


def http_date(now: float) -> str:
    """The Date header value, formatted once per second (formatdate is slow)."""
    sec = int(now)
    if _date_cache[0] != sec:
        _date_cache[0] = sec
        _date_cache[1] = formatdate(sec, usegmt=True)
    return str(_date_cache[1])
