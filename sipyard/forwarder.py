"""The proxy's engine: runs client transactions and response contexts for the app.

Why apart from the proxy handler: the handler decides *where* a request goes
(auth, the redirect chain, bindings, NAT) and may wait for that; this part
only carries the decision out, synchronously, the way
``tests/test_proxy_core.py::test_driver_loop_end_to_end`` drives the sans-IO
core — :class:`~sipyard.sip.client_transaction.ClientTransactionLayer` for
each forwarded copy, one :class:`~sipyard.proxy.context.ResponseContext` per
proxied request — with the I/O done through the small :class:`Wire` the app
hands in (send bytes, answer or relay on a server transaction, arm the timer).
It knows neither the app nor asyncio: its clock is the app's loop time and
its timer is folded into the app's (``next_deadline`` / ``handle_timer``).

Choices: a response that matches no client transaction is dropped and
counted (a proxy could relay it by its Via, §16.7 says "statelessly", but a
stray response is far more often a scanner or a late retransmission than a
forking proxy downstream); a target whose transport address is unknown
(a 3xx contact with a host name) is handed to :attr:`Forwarder.resolver`
(set by the proxy handler: ``loop.getaddrinfo``, never blocking) and the
branch starts when the answer comes — or fails as a transport error
(→ 503 → 500) when there is none, no resolver, or the name does not resolve. The Contact of a 1xx/2xx from a phone
behind NAT gets its ``alias`` here (:mod:`sipyard.nat`), before the context
sees it, so the caller's in-dialog requests find the callee's flow.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import logging
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .nat import Flow, alias_contact_value, is_ip, split_alias
from .proxy.actions import (
    AbandonBranch,
    CancelBranch,
    ForwardResponse,
    GiveUp,
    ProxyAction,
    SendFinal,
    StartBranch,
    Target,
)
from .proxy.addresses import Interface, LocalAddresses
from .proxy.checks import next_max_forwards
from .proxy.context import ResponseContext
from .proxy.loop import LoopDetector
from .proxy.routing import forward_request, record_route_values, route_uri
from .sip.client_transaction import (
    Action,
    ClientTransaction,
    ClientTransactionLayer,
    CtxState,
    PassResponse,
    Send,
    Timeout,
    TransportFailure,
    Unmatched,
    build_cancel,
)
from .sip.errors import ParseError
from .sip.message import Message, Request, Response, canonical_name
from .sip.source import Listen, Source, bare_host
from .sip.transaction import ServerTransaction
from .sip.uri import SipUri, parse_uri

__all__ = ["Wire", "Hop", "Fork", "Forwarder", "Observer", "Resolver", "uri_dest"]

log = logging.getLogger("sipyard.proxy")

#: called with (fork, status, reason, response or None for our own answer) for each answer
#: that goes upstream
Observer = Callable[["Fork", int, str, Response | None], None]
#: resolve(uri, done): find the transport address of a URI whose host is a name, later;
#: ``done(Source or None)`` is called once (from the event loop)
Resolver = Callable[[str, Callable[[Source | None], None]], None]


@dataclass(frozen=True, slots=True)
class Wire:
    """What the engine asks of the app (plain callables: it never sees the app)."""

    send: Callable[[Source, bytes], bool]
    relay: Callable[[ServerTransaction, Request, Response], None]
    respond: Callable[[ServerTransaction, Request, int, str, Sequence[tuple[str, str]]], None]
    drop: Callable[[ServerTransaction], None]
    clock: Callable[[], float]
    arm: Callable[[], None]
    udp_local: Callable[[str], tuple[str, int]]


class Hop(NamedTuple):
    """A target's ``data``: where its copy goes, and a route set in front (a binding's Path).

    ``edit`` rewrites the copy for this target (a trunk's From identity); ``auth`` answers
    a 401/407 from the target once (a trunk's credentials): it returns the request to
    send again (new CSeq, the given branch) or None to let the challenge go upstream;
    ``restore`` makes a response of this target answer the request as received again
    (the edit changed its From, To or CSeq) before it goes upstream.
    """

    dest: Source | None
    route_set: tuple[str, ...] = ()
    edit: Callable[[Request], Request] | None = None
    auth: Callable[[Request, Response, str], Request | None] | None = None
    restore: Callable[[Request, Response], Response] | None = None


class Fork:
    """One proxied request: the server transaction, its context and its branches."""

    __slots__ = ("req", "received", "src", "tx", "ctx", "hash", "branches", "observer",
                 "record_route", "armed", "auth", "restore")

    def __init__(self, req: Request, received: Request, src: Source, tx: ServerTransaction,
                 ctx: ResponseContext, request_hash: str, observer: Observer | None,
                 record_route: bool) -> None:
        self.req = req  # as received: our answers are built from it
        self.received = received  # after §16.4: the copies are made from it
        self.src = src
        self.tx = tx
        self.ctx = ctx
        self.hash = request_hash
        self.branches: dict[int, ClientTransaction] = {}
        self.observer = observer
        self.record_route = record_route
        self.armed: float | None = None
        #: branches whose target answers its own challenges (Hop.auth)
        self.auth: dict[int, Callable[[Request, Response, str], Request | None]] = {}
        #: branches whose responses must be made to match the request again (Hop.restore)
        self.restore: dict[int, Callable[[Request, Response], Response]] = {}


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(bare_host(host))
    except ValueError:
        return None


def uri_dest(uri: str, udp_local: Callable[[str], tuple[str, int]]) -> Source | None:
    """Where a request to ``uri`` goes when its host is an IP literal (else None).

    An ``alias`` parameter (ours, :mod:`sipyard.nat`) wins over host and port.
    """
    stripped, flow = split_alias(uri)
    if flow is not None:
        return flow_dest(flow, udp_local)
    try:
        parsed = parse_uri(uri)
    except ParseError:
        return None
    if not isinstance(parsed, SipUri):
        return None
    host = parsed.host.strip("[]")
    if not is_ip(host):
        return None
    transport = (parsed.param("transport") or "udp").lower()
    if parsed.scheme.lower() == "sips" or transport not in ("udp", "tcp"):
        return None  # no TLS transport in sipyard
    port = parsed.port or 5060
    if transport == "udp":
        return Source("udp", host, port, None, udp_local(host))
    return Source("tcp", host, port, None, ("", 0))


def flow_dest(flow: Flow, udp_local: Callable[[str], tuple[str, int]]) -> Source:
    if flow.transport == "udp":
        return Source("udp", flow.ip, flow.port, None, udp_local(flow.ip))
    return Source("tcp", flow.ip, flow.port, None, ("", 0))


def _with_contact(msg: Response, value: str) -> Response:
    headers: list[tuple[str, str]] = []
    done = False
    for n, v in msg.headers:
        if canonical_name(n) == "contact":
            if not done:
                headers.append((n, value))
                done = True
            continue
        headers.append((n, v))
    return Response(msg.status, msg.reason, msg.version, headers,
                    [canonical_name(n) for n, _ in headers], msg.body)


def contact_aliased(msg: Message, flow: Flow) -> str | None:
    """The message's single Contact value with an alias added, or None when not needed."""
    lines = msg.get_lines("contact")
    if len(lines) != 1:
        return None
    return alias_contact_value(lines[0], flow)


class Forwarder:
    """All proxied requests of one server, and their timers."""

    def __init__(self, wire: Wire, *, timer_c: float = 181.0, group_timeout: float | None = 20.0,
                 max_branches: int = 16) -> None:
        self.wire = wire
        self.ctl = ClientTransactionLayer()
        self.local = LocalAddresses(())
        self.loops = LoopDetector(self.local, secrets.token_bytes(16))
        self.timer_c = timer_c
        self.group_timeout = group_timeout
        self.max_branches = max_branches
        self._interfaces: dict[str, Interface] = {}
        self._forks: dict[object, Fork] = {}
        #: timer C / fork-group deadlines by the fork's key: an entry that outlives its fork
        #: (timer C is > 3 min) must not keep the fork alive
        self._heap: list[tuple[float, int, object]] = []
        self._seq = itertools.count()
        self.unmatched = 0
        #: DNS for targets named by a host name (3xx contacts); None = such targets fail
        self.resolver: Resolver | None = None

    # -- set-up ------------------------------------------------------------------
    def configure(self, timer_c: float, group_timeout: float | None, max_branches: int) -> None:
        self.timer_c, self.group_timeout, self.max_branches = timer_c, group_timeout, max_branches

    def set_addresses(self, bound: Iterable[Listen], aliases: Iterable[str]) -> None:
        """Our listening sockets (after binding) and the names that mean us.

        An alias that is an IP address counts only when we could be listening on it
        (we are bound to it or to a wildcard): the domains of a cluster name every
        host's address, and another host's ``IP:port`` must never be taken for us
        (its Record-Route popped here, its Path taken for our own).
        """
        interfaces = []
        bound_ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address | None] = set()
        for b in bound:
            host = f"[{b.host}]" if ":" in b.host else b.host
            iface = Interface(host, b.port, b.transport)
            interfaces.append(iface)
            self._interfaces.setdefault(b.transport, iface)
            bound_ips.add(_ip(b.host))
        wildcard = any(ip is not None and ip.is_unspecified for ip in bound_ips)
        names = [a for a in aliases if wildcard or _ip(a) is None or _ip(a) in bound_ips]
        self.local = LocalAddresses(interfaces, names)
        self.loops = LoopDetector(self.local, self.loops._key)

    def interface(self, transport: str, near: Source | None = None) -> Interface:
        """Our address for ``transport``; a wildcard bind uses the address ``near`` came to."""
        iface = self._interfaces.get(transport) or Interface("127.0.0.1", 5060, transport)
        if iface.host in ("0.0.0.0", "[::]") and near is not None and near.local[0]:
            local = near.local[0]
            iface = Interface(f"[{local}]" if ":" in local else local, iface.port, transport)
        return iface

    def reach_interface(self, local: tuple[str, int]) -> Interface:
        """Where another host of ours reaches us (a Path we store): UDP when we listen
        on it, else TCP, at the address a flow came to when we are bound to a wildcard."""
        transport = "udp" if "udp" in self._interfaces else "tcp"
        return self.interface(transport, Source(transport, "", 0, None, local))

    @property
    def active(self) -> int:
        return len(self._forks)

    # -- starting ------------------------------------------------------------------
    def fork(self, req: Request, received: Request, src: Source, tx: ServerTransaction,
             targets: Sequence[Target], *, observer: Observer | None = None,
             record_route: bool = True) -> Fork:
        """Proxy ``received`` to ``targets`` and answer on ``tx`` (§16.5-16.10)."""
        invite = req.method == "INVITE"
        ctx = ResponseContext(targets, invite=invite, timer_c=self.timer_c,
                              group_timeout=self.group_timeout or None,
                              max_branches=self.max_branches)
        fork = Fork(req, received, src, tx, ctx, self.loops.request_hash(received), observer,
                    record_route)
        self._forks[tx.key] = fork
        now = self.wire.clock()
        self._run(fork, ctx.start(now), now)
        return fork

    def cancel(self, tx: ServerTransaction, reason: str | None = None) -> bool:
        """The caller CANCELed the INVITE of ``tx``; False when it is not being proxied."""
        fork = self._forks.get(tx.key)
        if fork is None:
            return False
        now = self.wire.clock()
        self._run(fork, fork.ctx.on_cancel(now, reason), now)
        return True

    def send_stateless(self, fwd: Request, dest: Source) -> bool:
        """Send an already-forwarded copy (an ACK for a 2xx: end to end, no transaction)."""
        return self.wire.send(dest, fwd.to_bytes())

    # -- responses and timers ----------------------------------------------------------
    def _from_the_ua(self, resp: Response) -> bool:
        """Whether ``resp`` came straight from the UA (no proxy record-routed below us).

        Only then is its Contact ours to alias: a proxy nearer the phone (an office
        behind a trunk, the host holding the flow in a cluster) makes its own Contact
        routable, and an alias we added would be resolved by it, wrongly. Proxies put
        their Record-Route on top, so the top entry is ours unless one came after us.
        """
        try:
            rr = resp.get_all("record-route")
        except ParseError:
            return False
        if not rr:
            return True
        try:
            return self.local.is_our_uri(route_uri(rr[0]))
        except (ParseError, ValueError):
            return False

    def on_response(self, resp: Response, src: Source) -> bool:
        """A response from downstream; False when no client transaction of ours matches."""
        if 100 < resp.status < 300:
            try:
                method = resp.cseq[1]
            except ParseError:
                method = ""
            if method in ("INVITE", "SUBSCRIBE", "REFER") and self._from_the_ua(resp):
                value = contact_aliased(resp, Flow(src.transport, src.ip, src.port))
                if value is not None:
                    resp = _with_contact(resp, value)
        now = self.wire.clock()
        actions = self.ctl.receive_response(resp, now)
        if len(actions) == 1 and isinstance(actions[0], Unmatched):
            self.unmatched += 1
            return False
        self._tx_actions(actions, now)
        return True

    def next_deadline(self) -> float | None:
        best = self.ctl.next_deadline()
        heap = self._heap
        forks = self._forks
        while heap:
            fork = forks.get(heap[0][2])
            if fork is not None and fork.armed == heap[0][0]:
                break
            heapq.heappop(heap)  # stale: the fork re-armed or ended
        if heap and (best is None or heap[0][0] < best):
            best = heap[0][0]
        return best

    def handle_timer(self, now: float) -> None:
        self._tx_actions(self.ctl.handle_timer(now), now)
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _seq, key = heapq.heappop(heap)
            fork = self._forks.get(key)
            if fork is None or fork.armed != deadline:
                continue
            fork.armed = None
            self._run(fork, fork.ctx.handle_timer(now), now)

    # -- the driver loop ------------------------------------------------------------------
    def _tx_actions(self, actions: list[Action], now: float) -> None:
        for t in actions:
            if isinstance(t, Send):
                if not self.wire.send(t.dest, t.data):  # type: ignore[arg-type]
                    self._tx_actions(self.ctl.transport_error(t.tx, now), now)
                continue
            user = t.tx.user if isinstance(t, PassResponse | Timeout | TransportFailure) else None
            if not isinstance(user, tuple):
                continue  # a CANCEL's transaction: its 200 means nothing to us
            fork, bid = user
            ctx = fork.ctx
            if isinstance(t, PassResponse):
                tx = t.tx
                if t.response.status in (401, 407) and bid in fork.auth and self._reauth(
                        fork, bid, tx, t.response, now):
                    continue
                self._run(fork, ctx.on_response(bid, t.response, now), now)
                # a finished branch waits in timer queues (up to 64*T1): it must not keep
                # the fork and the forwarded request alive all that time (GC and memory)
                state = tx.state
                if state is CtxState.ACCEPTED:
                    tx.request = None  # 2xx retransmissions still go up: keep user
                elif state is CtxState.TERMINATED or (state is CtxState.COMPLETED
                                                      and not tx.invite):
                    tx.user = None
                    tx.request = None
            elif isinstance(t, Timeout | TransportFailure):
                if isinstance(t, Timeout):
                    self._run(fork, ctx.on_timeout(bid, now), now)
                else:
                    self._run(fork, ctx.on_transport_error(bid, now), now)
                t.tx.user = None  # the transaction has ended
                t.tx.request = None

    def _run(self, fork: Fork, actions: list[ProxyAction], now: float) -> None:
        wire = self.wire
        for a in actions:
            if isinstance(a, StartBranch):
                self._start_branch(fork, a, now)
            elif isinstance(a, CancelBranch):
                branch = fork.branches.get(a.branch_id)
                if branch is not None and branch.request is not None:
                    cancel = build_cancel(branch.request, a.reason)
                    try:
                        _tx, sends = self.ctl.start(cancel, branch.dest, branch.reliable, now)
                    except ValueError:
                        continue  # a CANCEL for this branch is already under way
                    self._tx_actions(sends, now)
            elif isinstance(a, AbandonBranch):
                branch = fork.branches.get(a.branch_id)
                if branch is not None:
                    self.ctl.terminate(branch)
            elif isinstance(a, ForwardResponse):
                resp = a.response
                restore = fork.restore.get(a.branch_id)
                if restore is not None:
                    resp = restore(fork.req, resp)
                wire.relay(fork.tx, fork.req, resp)
                if fork.observer is not None:
                    fork.observer(fork, resp.status, resp.reason, resp)
            elif isinstance(a, SendFinal):
                wire.respond(fork.tx, fork.req, a.status, a.reason, a.headers)
                if fork.observer is not None:
                    fork.observer(fork, a.status, a.reason, None)
            elif isinstance(a, GiveUp):
                wire.drop(fork.tx)
        if fork.ctx.done:
            if self._forks.get(fork.tx.key) is fork:
                del self._forks[fork.tx.key]
            fork.armed = None
            fork.received = fork.req  # no more branches: the edited copy can go
        else:
            deadline = fork.ctx.next_deadline()
            if deadline is not None and (fork.armed is None or deadline < fork.armed):
                fork.armed = deadline
                heapq.heappush(self._heap, (deadline, next(self._seq), fork.tx.key))
        wire.arm()

    def _reauth(self, fork: Fork, bid: int, tx: ClientTransaction, resp: Response,
                now: float) -> bool:
        """Send the branch again with credentials (RFC 3261 §22.2); False: pass it up."""
        answer = fork.auth.pop(bid)
        if tx.request is None:
            return False
        again = answer(tx.request, resp, f"{tx.branch}a")
        if again is None:
            return False
        new, sends = self.ctl.start(again, tx.dest, tx.reliable, now)
        new.user = (fork, bid)
        fork.branches[bid] = new
        self._tx_actions(sends, now)
        return True

    def _start_branch(self, fork: Fork, a: StartBranch, now: float) -> None:
        target = a.target
        hop = target.data if isinstance(target.data, Hop) else Hop(None)
        dest = hop.dest
        received = fork.received if hop.edit is None else hop.edit(fork.received)
        routes = list(hop.route_set) or received.get_all("route")
        # An alias is resolved by the last hop only: with a Route left it belongs to the
        # host that Route leads to (the other host of a cluster, where the flow lives).
        uri, flow = (target.uri, None) if routes else split_alias(target.uri)
        if dest is None:
            if routes:
                dest = uri_dest(route_uri(routes[0]), self.wire.udp_local)
            elif flow is not None:
                dest = flow_dest(flow, self.wire.udp_local)
            else:
                dest = uri_dest(uri, self.wire.udp_local)
        if dest is None and self.resolver is not None and hop.dest is None and (
                not hop.route_set and not received.get_all("route")):
            self.resolver(uri, lambda found: self._resolved(fork, a, uri, found))
            return
        self._send_branch(fork, a, uri, dest, now)

    def _resolved(self, fork: Fork, a: StartBranch, uri: str, dest: Source | None) -> None:
        """The resolver's answer for a branch that was waiting for it."""
        now = self.wire.clock()
        b = fork.ctx.branches.get(a.branch_id)
        if b is None or not b.live:
            return
        if fork.ctx.cancelled or b.cancel_wanted:
            dest = None  # CANCELed while resolving: never send it (§9.1: nothing to cancel)
        self._send_branch(fork, a, uri, dest, now)

    def _send_branch(self, fork: Fork, a: StartBranch, uri: str, dest: Source | None,
                     now: float) -> None:
        target = a.target
        hop = target.data if isinstance(target.data, Hop) else Hop(None)
        # the copy for this target: a trunk's hop rewrites it (From identity, PAI)
        received = fork.received if hop.edit is None else hop.edit(fork.received)
        if dest is None:
            log.info("proxy: no address for %s; branch %d fails", target.uri, a.branch_id)
            self._run(fork, fork.ctx.on_transport_error(a.branch_id, now), now)
            return
        out = self.interface(dest.transport, fork.src)
        inbound = self.interface(fork.src.transport, fork.src)
        rr = record_route_values(inbound, out) if fork.record_route else ()
        fwd = forward_request(received, target=uri,
                              via=out.via(LoopDetector.branch(fork.hash, a.branch_id)),
                              max_forwards=next_max_forwards(received), record_route=rr,
                              route_set=hop.route_set)
        tx, sends = self.ctl.start(fwd.request, dest, dest.transport != "udp", now)
        tx.user = (fork, a.branch_id)
        fork.branches[a.branch_id] = tx
        if hop.auth is not None:
            fork.auth[a.branch_id] = hop.auth
        if hop.restore is not None:
            fork.restore[a.branch_id] = hop.restore
        self._tx_actions(sends, now)
