"""Proxy mode (``[server] mode = "proxy"``): requests are forked to their targets, not redirected.

Why one handler over the same chain: the redirect server stays what decides
*where* a call goes (auth, SUSPEND, CANCEL and sequence numbers exactly as in
redirect mode, :mod:`sipyard.handlers.redirect`); this handler takes the
contact set of a 302 outcome and forks to it through
:class:`~sipyard.forwarder.Forwarder` (RFC 3261 §16). Any other outcome is
answered as in redirect mode (404/480/4xx/5xx), a challenge as 407.

Paths through :meth:`ProxyHandler.handle`:

* Max-Forwards 0 → 483 (an OPTIONS to us is answered instead); our Route
  values are popped (§16.4); a loop → 482.
* A request with a To tag is in a dialog: routed by its Route set /
  Request-URI (an ``alias`` naming a NAT flow is resolved) without the chain.
  It must have come through us (a Route of ours) or carry our alias, or come
  from a trusted network: no open relay.
* Out of dialog: the caller is authenticated with 407 (§22.3) unless
  ``[security] trusted``; a Request-URI outside our domains, or a Route to
  somebody else, is relayed only for an authenticated line or a trusted
  source (else 403); the rest runs the chain and forks.
* INVITE: 100 Trying at once; a call record; ``max_calls`` of caller and
  callee line (486 + a ``busy`` CDR).

Targets: a contact from a registered binding is reached at its flow when the
binding is behind NAT (:func:`sipyard.nat.behind_nat`), else at its Contact;
a contact naming one of our lines (a group member) is expanded to that line's
bindings; anything else goes to its URI (host names resolved here, once).
The Contact of a caller behind NAT gets an alias before the INVITE leaves.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..eager import resume_started
from ..flowtoken import EdgePath, FlowToken
from ..forwarder import Fork, Forwarder, Hop, Observer, contact_aliased, flow_dest, uri_dest
from ..nat import Flow, behind_nat, split_alias
from ..proxy.actions import Target
from ..proxy.checks import (
    MAX_ROUTE_VALUES,
    MaxForwardsVerdict,
    check_max_forwards,
    route_set_too_large,
)
from ..proxy.routing import DIALOG_CREATING, forward_request, preprocess_routes, route_uri
from ..redirect.pipeline import line_aor
from ..redirect.redirectors._rules import trunk_of
from ..sip.errors import ParseError
from ..sip.message import Request, Response, canonical_name
from ..sip.source import Source
from ..sip.transaction import ServerTransaction, TransactionLayer
from ..sip.uri import SipUri, parse_uri
from ..store.binding import Binding
from ..trunks.routing import TrunkRouter, TrunkTarget
from .calls import CallKeeper
from .chat import ChatHandler
from .redirect import NotifyHandler, answer_cancel, trusted

if TYPE_CHECKING:
    from ..messaging import Sender
    from ..parts import Parts
    from ..services import RedirectServices
    from .base import Responder

__all__ = ["ProxyHandler", "ProxyCancelHandler"]

log = logging.getLogger("sipyard.proxy")

_IN_DIALOG_OK = frozenset({"BYE", "INVITE", "UPDATE", "INFO", "REFER", "NOTIFY", "PRACK",
                           "MESSAGE", "SUBSCRIBE", "OPTIONS"})


class ProxyHandler:
    """Out-of-dialog requests through the chain and a fork; in-dialog requests by Route."""

    def __init__(self, parts: Parts, out: Responder, forwarder: Forwarder, chat: ChatHandler,
                 notify: NotifyHandler, services: RedirectServices, sender: Sender,
                 keeper: CallKeeper) -> None:
        self.parts = parts
        self.current = parts.current
        self.guard = parts.guard
        self.auth = parts.auth
        self.stats = parts.stats
        self.out = out
        self.fw = forwarder
        self.chat = chat
        self.notify = notify
        self.services = services
        self.sender = sender
        self.keeper = keeper
        self.needs_task = parts.store.needs_task
        #: INVITEs CANCELed while their targets were being looked up (by server tx key)
        self.cancelled: set[object] = set()
        #: the line of a trusted, unauthenticated caller (its From), for calls and limits
        self.identity: dict[object, str | None] = {}
        #: provider trunks (issue #13; set by the app): inbound recognition, outbound hops
        self.trunks: TrunkRouter | None = None
        #: the trunk an INVITE came in through (by server tx key), for its call record
        self.trunk_of: dict[object, str] = {}
        #: DNS for the forwarder's targets named by a host (a callee's 3xx contact)
        self._lookups: set[asyncio.Task[Source | None]] = set()
        #: ACKs waiting for a TCP connection to their next hop
        self._acks: set[asyncio.Task[None]] = set()
        forwarder.resolver = self._resolve_soon
        #: this host as edge proxy (Path + flow token, set by the app): which Path values
        #: are ours, and the flows our tokens name
        self.edge: EdgePath | None = None

    # -- entry ----------------------------------------------------------------------
    def own_options(self, req: Request, src: Source) -> bool:
        """Whether :meth:`handle` would answer this OPTIONS itself (``out.options``): one
        for us (no Route, no user, our address or domain) from a source not banned."""
        uri = req.ruri
        return (isinstance(uri, SipUri) and not uri.user and not req.has("route")
                and not self.guard.banned(src.ip, self.out.now())
                and (self.fw.local.is_our_uri(uri)
                     or self.current.config.is_our_domain(uri.host_lower)))

    def handle(self, req: Request, src: Source, tx: ServerTransaction) -> Awaitable[None] | None:
        out = self.out
        if self.guard.banned(src.ip, out.now()):
            self.stats.dropped += 1
            out.drop(tx)
            return None
        try:
            uri = req.ruri
            ours = self.fw.local
            routes = req.get_all("route")
            has_route = bool(routes)
            # a Path of ours on top: another host of the cluster routes to a flow of ours
            token = self.edge.own(routes[0])[1] if has_route and self.edge is not None else None
            to_us = (not has_route and isinstance(uri, SipUri) and not uri.user
                     and (ours.is_our_uri(uri) or self.current.config.is_our_domain(
                         uri.host_lower)))
            verdict = check_max_forwards(req, addressed_to_us=to_us)
            if verdict is MaxForwardsVerdict.ANSWER_HERE or (
                    to_us and req.method == "OPTIONS"):
                out.options(tx, req)
                return None
            if verdict is MaxForwardsVerdict.TOO_MANY_HOPS:
                out.respond(tx, req, 483, "Too Many Hops")
                return None
            if route_set_too_large(req):
                out.respond(tx, req, 400, f"More Than {MAX_ROUTE_VALUES} Route Values")
                return None
            received = preprocess_routes(req, ours)
            popped = len(received.get_all("route")) < len(req.get_all("route"))
            if self.fw.loops.is_loop(received):
                out.respond(tx, req, 482, "Loop Detected")
                return None
            to_tag = req.to.tag
        except ParseError as exc:
            out.respond(tx, req, exc.status, exc.reason)
            return None
        if to_tag is not None:
            return self._in_dialog(req, received, src, tx, popped)
        if token is not None:
            return self._to_flow(req, received, src, tx, token)
        return self._new(req, received, src, tx, popped)

    async def _to_flow(self, req: Request, received: Request, src: Source,
                       tx: ServerTransaction, token: FlowToken) -> None:
        """Down the flow our token names (RFC 5626 §5.3): the host that sent it has done
        the caller's authentication, the chain and the call record; we are a hop."""
        if req.method == "INVITE":
            self.out.respond(tx, req, 100, "Trying")
        hop = await self._flow_hop(token.flow, token.conn_id, token.fallback, received.uri, ())
        if tx.key in self.cancelled:
            self.cancelled.discard(tx.key)
            self.out.respond(tx, req, 487, "Request Terminated")
            return
        if hop is None:
            self.out.respond(tx, req, 430, "Flow Failed")
            return
        self.fw.fork(req, received, src, tx, [Target(received.uri, data=hop)],
                     record_route=req.method in DIALOG_CREATING)

    # -- in-dialog ----------------------------------------------------------------------
    def _in_dialog(self, req: Request, received: Request, src: Source, tx: ServerTransaction,
                   popped: bool) -> Awaitable[None] | None:
        out = self.out
        method = req.method
        # an alias is ours only when no Route is left (else the next host's: a cluster)
        target, flow = ((received.uri, None) if received.get_all("route")
                        else split_alias(received.uri))
        cfg = self.current.config
        if not (popped or flow is not None or trusted(cfg, src.ip)):
            if method == "NOTIFY":
                return self.notify.handle(req, src, tx)  # our own pick-up subscriptions
            out.respond(tx, req, 481 if method in _IN_DIALOG_OK else 403,
                        "Call/Transaction Does Not Exist" if method in _IN_DIALOG_OK
                        else "Forbidden")
            return None
        if (flow is not None and flow.transport == "tcp"
                and not self.sender.transports.has_peer(flow.ip, flow.port)):
            # the phone behind NAT is only reachable on the connection it opened (RFC 5626)
            out.respond(tx, req, 430, "Flow Failed")
            if method == "BYE":
                self.keeper.bye(req)
            return None
        # an outgoing trunk call: the provider's leg has its own identity and CSeq numbers
        leg = self.trunks.leg_of(req) if self.trunks is not None else None
        if method == "BYE":
            self.keeper.bye(req)
        received = _aliased_contact(received, src)
        hop = self.trunks.dialog_hop(leg, req) if leg is not None and self.trunks else Hop(None)
        dest = self._next_dest(received, target, flow)
        if dest is not None and self._needs_connection(dest):
            return self._connect_and_fork(req, received, src, tx, hop, dest)
        self.fw.fork(req, received, src, tx, [Target(received.uri, data=hop)],
                     record_route=False)
        return None

    def _next_dest(self, received: Request, target: str, flow: Flow | None) -> Source | None:
        """Where an in-dialog request or ACK goes: its top Route, its flow, its target."""
        routes = received.get_all("route")
        udp_local = self.sender_udp_local
        if routes:
            return uri_dest(route_uri(routes[0]), udp_local)
        if flow is not None:
            return flow_dest(flow, udp_local)
        return uri_dest(target, udp_local)

    def _needs_connection(self, dest: Source) -> bool:
        """A TCP next hop we hold no connection with (a Record-Route naming a peer's listening
        port, e.g. an office whose registration came from another port): connect first."""
        return (dest.transport == "tcp" and dest.conn_id is None
                and not self.sender.transports.has_peer(dest.ip, dest.port))

    async def _connect_and_fork(self, req: Request, received: Request, src: Source,
                                tx: ServerTransaction, hop: Hop, dest: Source) -> None:
        try:
            dest = await self.sender.transports.connect_tcp(dest.ip, dest.port)
        except (OSError, TimeoutError) as exc:
            log.info("proxy: cannot connect to %s:%d for an in-dialog %s: %s", dest.ip,
                     dest.port, req.method, exc)  # the fork then fails it: 503 -> 500
        else:
            hop = hop._replace(dest=dest)
        if tx.key in self.cancelled:  # a re-INVITE CANCELed while we connected
            self.cancelled.discard(tx.key)
            self.out.respond(tx, req, 487, "Request Terminated")
            return
        self.fw.fork(req, received, src, tx, [Target(received.uri, data=hop)],
                     record_route=False)

    def on_ack(self, req: Request, src: Source) -> None:
        """An ACK no transaction of ours absorbed: the ACK of a 2xx, end to end (§16.6)."""
        try:
            if (req.max_forwards or 1) <= 0:
                return
            received = preprocess_routes(req, self.fw.local)
            routes = received.get_all("route")
            popped = len(routes) < len(req.get_all("route"))
            # with a Route left, the alias is the next host's to resolve: keep it
            target, flow = (received.uri, None) if routes else split_alias(received.uri)
            if not (popped or flow is not None or trusted(self.current.config, src.ip)):
                return
            dest = self._next_dest(received, target, flow)
            if dest is None:
                return
            leg = self.trunks.leg_of(req) if self.trunks is not None else None
            if leg is not None:  # an outgoing trunk call: the ACK must match the provider's leg
                received = leg.to_provider(received) if leg.from_caller(req) else (
                    leg.to_caller(received))
            iface = self.fw.interface(dest.transport, src)
            h = self.fw.loops.request_hash(received)
            fwd = forward_request(received, target=target, via=iface.via(f"z9hG4bK{h}.ack"),
                                  max_forwards=(req.max_forwards or 70) - 1)
            if self._needs_connection(dest):
                task = asyncio.ensure_future(self._connect_and_send(fwd.request, dest))
                self._acks.add(task)
                task.add_done_callback(self._acks.discard)
                return
            self.fw.send_stateless(fwd.request, dest)
        except (ParseError, ValueError) as exc:
            log.debug("ACK not forwarded: %s", exc)

    async def _connect_and_send(self, ack: Request, dest: Source) -> None:
        try:
            dest = await self.sender.transports.connect_tcp(dest.ip, dest.port)
        except (OSError, TimeoutError) as exc:
            log.info("proxy: ACK not forwarded: cannot connect to %s:%d: %s", dest.ip,
                     dest.port, exc)
            return
        self.fw.send_stateless(ack, dest)

    def sender_udp_local(self, ip: str) -> tuple[str, int]:
        return self.sender.transports.udp_local(ip)

    # -- out of dialog ------------------------------------------------------------------
    def _new(self, req: Request, received: Request, src: Source, tx: ServerTransaction,
             popped: bool) -> Awaitable[None] | None:
        out = self.out
        method = req.method
        cfg = self.current.config
        uri = req.ruri
        if (method == "MESSAGE" and isinstance(uri, SipUri)
                and uri.user_unescaped == cfg.server.system and cfg.is_our_domain(uri.host_lower)):
            return self.chat.handle(req, src, tx)
        is_trusted = trusted(cfg, src.ip)
        inbound = self.trunks.inbound(req, src) if self.trunks is not None else None
        if inbound is not None:  # the provider: from its address, to one of its DIDs
            req, received = inbound.rewrite(req), inbound.rewrite(received)
            uri = req.ruri
            is_trusted = True
            self.trunk_of[tx.key] = inbound.trunk
        required = cfg.redirect.require_auth and not is_trusted
        answered, caller = self._authenticate(req, src, tx, required)
        if answered:
            return None
        rest = received.get_all("route")
        foreign = bool(rest) or not (isinstance(uri, SipUri) and cfg.is_our_domain(uri.host_lower))
        if foreign:
            if caller is None and not is_trusted:
                out.respond(tx, req, 403, "Forbidden", (("Warning", '399 - "Relaying denied"'),))
                return None
            if method == "INVITE":
                out.respond(tx, req, 100, "Trying")
            targets = [Target(received.uri)]
            return self._resolve_and_fork(req, received, src, tx, targets, caller, None)
        if method == "INVITE":
            out.respond(tx, req, 100, "Trying")  # at once: the chain or the phones may take a while
            if caller is None and is_trusted:  # a trusted source's From is believed
                self.identity[tx.key] = _line_of(self.services, req.from_.uri)
            if self.keeper.at_limit(caller or self.identity.get(tx.key)):
                self._busy(req, tx, self.identity.pop(tx.key, caller), None)
                return None
        server = self.current.redirect
        if server is None:
            out.respond(tx, req, 503, "Service Unavailable", (("Retry-After", "5"),))
            return None
        run = server.redirect(req, caller, key=tx)
        if self.needs_task:
            return self._chain(req, received, src, tx, caller, run, None)
        try:
            pending = run.send(None)
        except StopIteration as stop:
            return self._routed(req, received, src, tx, caller, stop.value)
        return self._chain(req, received, src, tx, caller, run, pending)

    def _authenticate(self, req: Request, src: Source, tx: ServerTransaction,
                      required: bool) -> tuple[bool, str | None]:
        if not required and not req.has("proxy-authorization"):
            return False, None
        try:
            result = self.auth.check(req, src.ip, self.out.now(), proxy=True)
        except ParseError as exc:
            self.out.respond(tx, req, exc.status, exc.reason)
            return True, None
        if result.line is not None:
            return False, result.line
        if required:
            self.stats.auth_failures += 1
            self.out.respond(tx, req, 407, "Proxy Authentication Required", result.challenge)
            return True, None
        return False, None

    def _busy(self, req: Request, tx: ServerTransaction, caller: str | None,
              callee: str | None) -> None:
        self.out.respond(tx, req, 486, "Busy Here")
        self.keeper.refused(req, caller, callee, 486, "Busy Here")

    async def _chain(self, req: Request, received: Request, src: Source, tx: ServerTransaction,
                     caller: str | None, run: Any, pending: object) -> None:
        outcome = await (run if pending is None else resume_started(run, pending))
        result = self._routed(req, received, src, tx, caller, outcome)
        if result is not None:
            await result

    def _routed(self, req: Request, received: Request, src: Source, tx: ServerTransaction,
                caller: str | None, outcome: Any) -> Awaitable[None] | None:
        out = self.out
        if outcome.needs_auth:
            try:
                result = self.auth.check(req, src.ip, out.now(), proxy=True)
            except ParseError as exc:
                out.respond(tx, req, exc.status, exc.reason)
                return None
            out.respond(tx, req, 407, "Proxy Authentication Required", result.challenge)
            return None
        uri = req.ruri
        callee = self.services.line_for_uri(uri) if isinstance(uri, SipUri) else None
        caller = caller or self.identity.pop(tx.key, None)
        trunk = self.trunk_of.pop(tx.key, None)
        if outcome.status != 302:
            out.respond(tx, req, outcome.status, outcome.reason, outcome.headers)
            if req.method == "INVITE":
                self.keeper.refused(req, caller, callee, outcome.status, outcome.reason)
            return None
        if req.method == "INVITE" and callee != caller and self.keeper.at_limit(callee):
            self._busy(req, tx, caller, callee)
            return None
        targets: list[Target] = []
        lines: list[str] = []
        for c in outcome.contacts:
            if c.binding is not None:
                targets.append(Target(c.binding.contact, c.sort_q, data=c.binding))
                continue
            name = trunk_of(c) if self.trunks is not None else None
            if name is not None and self.trunks is not None:
                t = self.trunks.target(name, c)
                if t is not None:
                    targets.append(t)
                continue
            line = _line_of(self.services, c.uri)
            if line is not None:
                lines.append(line)
            else:
                targets.append(Target(c.uri, c.sort_q))
        if trunk is not None:
            self.trunk_of[tx.key] = trunk
        return self._resolve_and_fork(req, received, src, tx, targets, caller, callee, lines)

    async def _resolve_and_fork(self, req: Request, received: Request, src: Source,
                                tx: ServerTransaction, targets: list[Target], caller: str | None,
                                callee: str | None, lines: list[str] | None = None) -> None:
        """Find every target's transport address (may wait: store, DNS, TCP), then fork."""
        now = self.out.now()
        if lines:
            cfg = self.current.config
            for line in dict.fromkeys(lines):
                for b in await self.parts.store.lookup(line_aor(cfg, line), now):
                    targets.append(Target(b.contact, b.q if b.q is not None else 1.0, data=b))
        ready: list[Target] = []
        flow_failed = False
        for t in targets:
            hop = await self._hop(t, received)
            if hop is None:
                flow_failed = flow_failed or t.data is not None
                continue
            ready.append(Target(t.uri, t.q, t.depth, hop))
        key = tx.key
        trunk = self.trunk_of.pop(key, None)
        if key in self.cancelled:
            self.cancelled.discard(key)
            self.out.respond(tx, req, 487, "Request Terminated")
            if req.method == "INVITE":
                self.keeper.refused(req, caller, callee, 487, "Request Terminated")
            return
        if not ready:
            status, reason = (430, "Flow Failed") if flow_failed else (
                480, "Temporarily Unavailable")
            self.out.respond(tx, req, status, reason)
            if req.method == "INVITE":
                self.keeper.refused(req, caller, callee, status, reason)
            return
        received = _aliased_contact(received, src)
        observer: Observer | None = None
        if req.method == "INVITE":
            call = self.keeper.start(req, caller)
            call.callee_line = callee or self._one_line(targets)
            call.trunk = trunk or next(
                (t.data.name for t in targets if isinstance(t.data, TrunkTarget)), None)
            keeper = self.keeper

            def observer(fork: Fork, status: int, reason: str, resp: Response | None) -> None:
                keeper.upstream(call, status, reason, resp, fork.ctx.cancelled)
                if status >= 200:
                    call.cancel = None  # nothing rings any more

            fw = self.fw
            call.cancel = lambda: fw.cancel(tx)  # max_call_seconds on a ringing call

        self.fw.fork(req, received, src, tx, ready, observer=observer,
                     record_route=req.method in DIALOG_CREATING)

    def _one_line(self, targets: list[Target]) -> str | None:
        """The line rung when every target is a binding of that one line (an alias, a DID
        the provider maps to its customer's account): the CDR's callee_line."""
        if not targets or not all(isinstance(t.data, Binding) for t in targets):
            return None
        lines = {_line_of(self.services, t.data.aor) for t in targets
                 if isinstance(t.data, Binding)}
        return lines.pop() if len(lines) == 1 else None

    async def _hop(self, t: Target, req: Request) -> Hop | None:
        """A target's :class:`~sipyard.forwarder.Hop`, or None when it cannot be reached."""
        if isinstance(t.data, TrunkTarget):
            return await self.trunks.hop(t.data, req) if self.trunks is not None else None
        b: Binding | None = t.data  # type: ignore[assignment]
        udp_local = self.sender_udp_local
        tr = self.sender.transports
        if b is not None and b.path and self.edge is not None:
            if not self.edge.own(b.path[0])[0]:
                return Hop(None, b.path)  # the flow lives on another host: through it
            # our own Path: the binding's flow is here (the stored record is ours to trust)
            outbound = b.reg_id is not None and b.instance is not None
            cid = int(b.conn_id) if b.conn_id and b.conn_id.isdigit() else None
            return await self._flow_hop(
                Flow(b.transport, b.source_ip, b.source_port), cid,
                not behind_nat(b.contact, b.source_ip, outbound=outbound), t.uri, b.path[1:])
        if b is not None:
            outbound = b.reg_id is not None and b.instance is not None
            if behind_nat(b.contact, b.source_ip, outbound=outbound):
                if b.transport == "udp":
                    return Hop(flow_dest(Flow("udp", b.source_ip, b.source_port), udp_local),
                               b.path)
                cid = int(b.conn_id) if b.conn_id and b.conn_id.isdigit() else None
                if cid is None or not tr.has_connection(cid):
                    return None  # RFC 5626: the flow is gone (430 when nothing else is left)
                return Hop(Source(b.transport, b.source_ip, b.source_port, cid, ("", 0)), b.path)
            if b.path:
                return Hop(None, b.path)
        uri = t.uri
        dest = uri_dest(uri, udp_local)
        if dest is None:
            dest = await self._resolve(uri)
        if dest is not None and dest.transport == "tcp" and dest.conn_id is None:
            try:
                dest = await tr.connect_tcp(dest.ip, dest.port)
            except (OSError, TimeoutError):
                return None
        return Hop(dest, b.path if b is not None else ())

    async def _flow_hop(self, flow: Flow, conn_id: int | None, fallback: bool, uri: str,
                        rest: tuple[str, ...]) -> Hop | None:
        """A hop down one of our flows; a TCP flow that is gone is replaced by a connection
        to the Contact when ``fallback`` (reachable directly), else None (430, RFC 5626)."""
        tr = self.sender.transports
        if flow.transport == "udp":
            return Hop(flow_dest(flow, self.sender_udp_local), rest)
        if conn_id is not None and tr.has_connection(conn_id):
            return Hop(Source(flow.transport, flow.ip, flow.port, conn_id, ("", 0)), rest)
        if not fallback:
            return None
        dest = uri_dest(uri, self.sender_udp_local) or await self._resolve(uri)
        if dest is not None and dest.transport == "tcp" and dest.conn_id is None:
            try:
                dest = await tr.connect_tcp(dest.ip, dest.port)
            except (OSError, TimeoutError):
                return None
        return Hop(dest, rest) if dest is not None else None

    def _resolve_soon(self, uri: str, done: Callable[[Source | None], None]) -> None:
        """The forwarder's resolver: look ``uri`` up (and connect, for TCP) in a task."""
        async def work() -> Source | None:
            dest = await self._resolve(uri)
            if dest is not None and dest.transport == "tcp" and dest.conn_id is None:
                try:
                    dest = await self.sender.transports.connect_tcp(dest.ip, dest.port)
                except (OSError, TimeoutError):
                    return None
            return dest

        def finished(task: asyncio.Task[Source | None]) -> None:
            self._lookups.discard(task)
            failed = task.cancelled() or task.exception() is not None
            done(None if failed else task.result())

        task = asyncio.ensure_future(work())
        self._lookups.add(task)
        task.add_done_callback(finished)

    async def _resolve(self, uri: str) -> Source | None:
        """A host name's first address (A/AAAA; no SRV/NAPTR in sipyard)."""
        try:
            parsed = parse_uri(split_alias(uri)[0])
        except ParseError:
            return None
        if not isinstance(parsed, SipUri):
            return None
        transport = (parsed.param("transport") or "udp").lower()
        if transport not in ("udp", "tcp"):
            return None
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(parsed.host.strip("[]"), parsed.port or 5060,
                                           type=socket.SOCK_DGRAM)
        except OSError:
            return None
        if not infos:
            return None
        # an address of a family we have a socket for (``localhost`` may give ::1 first)
        families = {":" in b.host for b in self.sender.transports.bound
                    if b.transport == transport}
        info = next((i for i in infos if (i[0] == socket.AF_INET6) in families), infos[0])
        ip = str(info[4][0])
        port = int(info[4][1])
        if transport == "udp":
            return Source("udp", ip, port, None, self.sender_udp_local(ip))
        return Source("tcp", ip, port, None, ("", 0))


class ProxyCancelHandler:
    """CANCEL in proxy mode: 200 at once; the forked branches are CANCELed, the caller gets 487."""

    __slots__ = ("current", "txl", "out", "fw", "proxy")

    def __init__(self, parts: Parts, txl: TransactionLayer, out: Responder, fw: Forwarder,
                 proxy: ProxyHandler) -> None:
        self.current = parts.current
        self.txl = txl
        self.out = out
        self.fw = fw
        self.proxy = proxy

    def handle(self, req: Request, src: Source, tx: ServerTransaction) -> Awaitable[None] | None:
        invite = answer_cancel(self.txl, self.out, req, tx)
        if invite is None:
            return None
        reason = req.get("reason")
        if self.fw.cancel(invite, reason):
            return None
        server = self.current.redirect
        if server is None or not server.cancel_request(invite, "cancel"):
            self.proxy.cancelled.add(invite.key)  # between the chain and the fork
        return None


def _line_of(services: RedirectServices, uri: str) -> str | None:
    try:
        parsed = parse_uri(uri)
    except ParseError:
        return None
    if not isinstance(parsed, SipUri) or "?" in uri:
        return None
    return services.line_for_uri(parsed)


def _aliased_contact(req: Request, src: Source) -> Request:
    """``req`` with its Contact made routable when the sender is behind NAT (see sipyard.nat)."""
    if req.method not in ("INVITE", "SUBSCRIBE", "REFER", "NOTIFY", "UPDATE"):
        return req
    if len(req.vias) > 1:  # it came through a proxy: the Contact is that proxy's to alias
        return req
    value = contact_aliased(req, Flow(src.transport, src.ip, src.port))
    if value is None:
        return req
    headers: list[tuple[str, str]] = []
    for n, v in req.headers:
        headers.append((n, value) if canonical_name(n) == "contact" else (n, v))
    return Request(req.method, req.uri, req.version, headers,
                   [canonical_name(n) for n, _ in headers], req.body)
