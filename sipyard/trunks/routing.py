"""Calls through trunks, for the proxy: recognise the provider's requests, send ours to it.

Inbound (:meth:`TrunkRouter.inbound`): a request is the provider's only when it comes
from one of the trunk's resolved addresses (registrar, outbound proxy) — the claim in
its headers is never enough, so anybody else who names our contact user or a DID is an
ordinary unauthenticated caller. Among those, the DID is the Request-URI user when it
is configured, else (the Request-URI names our contact user, as a provider calling a
registered contact does) the To user. The Request-URI is rewritten to
``sip:TARGET@realm`` and the request runs through the redirect chain like any other;
it is not challenged (the provider does not have our credentials).

Outbound (:meth:`TrunkRouter.target` / :meth:`hop`): a contact from a ``trunk:NAME``
rule becomes ``sip:NUMBER@registrar``, sent over the registration's own TCP flow when
there is one (else a new connection, or UDP), with the trunk's From identity (the
caller's tag kept), To ``sip:NUMBER@from_domain``, ``P-Asserted-Identity`` when
configured, the caller's credentials for us removed, and the provider's 401/407
answered once with the trunk's credentials (:meth:`TrunkAuth.retry`: new CSeq, same
Call-ID, RFC 3261 §22.2). The call's :class:`~sipyard.trunks.dialog.TrunkLeg` keeps
what the rest of the dialog needs (:meth:`leg_of`, :meth:`dialog_hop`): the caller's
ACK, BYE and re-INVITE get the trunk identity and the CSeq offset, the provider's
requests and every response the caller's identity back; a provider that challenges an
in-dialog request gets the trunk's credentials too.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

from ..forwarder import Hop
from ..proxy.actions import Target
from ..sip.digest_client import DigestClient
from ..sip.errors import ParseError
from ..sip.message import Request, Response, canonical_name
from ..sip.source import Source
from ..sip.uri import SipUri, parse_uri
from .dialog import TrunkLeg, answer_as

if TYPE_CHECKING:
    from ..config import TrunkConfig
    from ..parts import Parts
    from ..redirect.contacts import Contact

__all__ = ["TrunkRouter", "TrunkTarget", "Inbound", "TrunkAuth", "MAX_LEGS"]

log = logging.getLogger("sipyard.trunks")

#: outgoing trunk calls whose dialog state is kept; past this the oldest go first (a call
#: whose end was never seen must not make the map grow without bound)
MAX_LEGS = 4096


@dataclass(frozen=True, slots=True)
class TrunkTarget:
    """A target's data while the proxy resolves it: which trunk, which number."""

    name: str
    user: str


@dataclass(frozen=True, slots=True)
class Inbound:
    trunk: str
    did: str
    target: str  # line, group or user
    uri: str  # the new Request-URI

    def rewrite(self, req: Request) -> Request:
        return Request(req.method, self.uri, req.version, list(req.headers),
                       [canonical_name(n) for n, _ in req.headers], req.body)


def _user_of(value: str) -> str | None:
    try:
        uri = parse_uri(value)
    except ParseError:
        return None
    return uri.user_unescaped if isinstance(uri, SipUri) else None


class TrunkAuth:
    """The provider's challenge to one forwarded request, answered once.

    The request goes again with the next CSeq, so the call's leg (when there is one)
    moves its offset on: the caller's later requests must count from there."""

    __slots__ = ("client", "used", "leg")

    def __init__(self, client: DigestClient, leg: TrunkLeg | None = None) -> None:
        self.client = client
        self.used = False
        self.leg = leg

    def retry(self, sent: Request, resp: Response, branch: str) -> Request | None:
        if self.used:
            return None
        self.used = True
        name = "www-authenticate" if resp.status == 401 else "proxy-authenticate"
        ch = self.client.pick(resp.get_all(name))
        if ch is None:
            return None
        try:
            seq, method = sent.cseq
            via = sent.get_all("via")[0]
        except (ParseError, IndexError):
            return None
        value = self.client.answer(ch, method, sent.uri)
        header = "Authorization" if resp.status == 401 else "Proxy-Authorization"
        head, sep, rest = via.partition("branch=")
        tail = rest.partition(";")[2]
        new_via = f"{head}{sep}{branch}" + (f";{tail}" if tail else "")
        headers: list[tuple[str, str]] = []
        via_done = False
        for n, v in sent.headers:
            key = canonical_name(n)
            if key == "via" and not via_done:
                headers.append((n, new_via))
                via_done = True
            elif key == "cseq":
                headers.append((n, f"{seq + 1} {method}"))
            else:
                headers.append((n, v))
        headers.append((header, value))
        if self.leg is not None:
            self.leg.offset += 1
        return Request(sent.method, sent.uri, sent.version, headers,
                       [canonical_name(n) for n, _ in headers], sent.body)


class TrunkRouter:
    """The proxy's side of the trunks (reads the board and the config; never registers)."""

    def __init__(self, parts: Parts, connect: Callable[[str, int], Awaitable[Source]],
                 has_connection: Callable[[int | None], bool],
                 udp_local: Callable[[str], tuple[str, int]]) -> None:
        self.parts = parts
        self.current = parts.current
        self.board = parts.trunks
        self.connect = connect
        self.has_connection = has_connection
        self.udp_local = udp_local
        #: outgoing trunk calls by Call-ID (dropped by :meth:`forget` when the call ends)
        self.legs: dict[str, TrunkLeg] = {}

    # -- inbound ----------------------------------------------------------------------------
    def inbound(self, req: Request, src: Source) -> Inbound | None:
        states = self.board.from_address(src.ip)
        if not states:
            return None
        cfg = self.current.config
        try:
            ruser = _user_of(req.uri)
            tuser = _user_of(req.to.uri)
        except ParseError:
            return None
        for st in states:
            tc = cfg.trunks.get(st.name)
            if tc is None:
                continue
            did = None
            if ruser is not None and ruser in tc.dids:
                did = ruser
            elif tuser is not None and tuser in tc.dids:
                did = tuser  # the provider called our contact (user = contact_user)
            if did is None:
                continue
            target = tc.dids[did]
            return Inbound(tc.name, did, target, f"sip:{target}@{cfg.server.realm}")
        return None

    # -- outbound ---------------------------------------------------------------------------
    def target(self, name: str, contact: Contact) -> Target | None:
        tc = self.current.config.trunks.get(name)
        user = _user_of(contact.uri)
        if tc is None or not user:
            return None
        hp = f"[{tc.host}]" if ":" in tc.host else tc.host
        uri = f"sip:{contact.uri[4:].split('@', 1)[0]}@{hp}" + (f":{tc.port}" if tc.port else "")
        return Target(uri, contact.sort_q, data=TrunkTarget(name, user))

    async def hop(self, t: TrunkTarget, req: Request) -> Hop | None:
        """The hop of ``req`` (the caller's INVITE or other request) to trunk ``t``."""
        tc = self.current.config.trunks.get(t.name)
        st = self.board.get(t.name)
        if tc is None:
            return None
        dest = await self._dest(tc, st.flow if st is not None else None,
                                st.transport if st is not None else None)
        if dest is None:
            log.warning("trunk %s: provider unreachable for an outgoing call", t.name)
            return None
        try:
            leg = TrunkLeg.for_call(tc.name, req, f"<sip:{tc.from_user}@{tc.from_domain}>",
                                    f"<sip:{t.user}@{tc.from_domain}>", tc.pai)
        except ParseError:
            return None
        routes = (f"<{tc.outbound_proxy};lr>",) if tc.outbound_proxy else ()

        def edit(copy: Request) -> Request:
            self._keep(leg)  # the copy leaves: its call's dialog now runs through this trunk
            return leg.to_provider(copy)

        return Hop(dest, routes, edit=edit, auth=TrunkAuth(self._client(tc), leg).retry,
                   restore=answer_as)

    # -- the rest of an outgoing call's dialog ----------------------------------------------
    def leg_of(self, req: Request) -> TrunkLeg | None:
        """The leg of an in-dialog request of an outgoing trunk call, if it is one."""
        try:
            leg = self.legs.get(req.call_id)
        except ParseError:
            return None
        if leg is None or leg.from_caller(req) is None:
            return None
        return leg

    def dialog_hop(self, leg: TrunkLeg, req: Request) -> Hop:
        """How an in-dialog request of ``leg`` is forwarded (its address by its Route)."""
        if leg.from_caller(req):
            tc = self.current.config.trunks.get(leg.trunk)
            auth = TrunkAuth(self._client(tc), leg).retry if tc is not None else None
            return Hop(None, edit=leg.to_provider, auth=auth, restore=answer_as)
        return Hop(None, edit=leg.to_caller, restore=answer_as)

    def forget(self, call_id: str) -> None:
        """The call ended: its dialog state goes."""
        self.legs.pop(call_id, None)

    def _keep(self, leg: TrunkLeg) -> None:
        legs = self.legs
        legs.pop(leg.call_id, None)  # a later branch of the same call (failover) wins
        legs[leg.call_id] = leg
        if len(legs) > MAX_LEGS:
            for old in list(islice(legs, len(legs) - MAX_LEGS)):
                del legs[old]

    @staticmethod
    def _client(tc: TrunkConfig) -> DigestClient:
        return DigestClient(tc.username, tc.secret, tc.ha1, tc.realm)

    async def _dest(self, tc: TrunkConfig, flow: Source | None,
                    registered: str | None) -> Source | None:
        if flow is not None and self.has_connection(flow.conn_id):
            return flow
        host = tc.proxy_host or tc.host
        port = (tc.proxy_port if tc.outbound_proxy else tc.port) or 5060
        transport = (tc.proxy_transport if tc.outbound_proxy else tc.transport) or registered
        st = self.board.get(tc.name)
        ips = sorted(st.addresses) if st is not None and st.addresses else [host]
        ip = ips[0]
        if transport == "udp":
            return Source("udp", ip, port, None, self.udp_local(ip))
        try:
            return await self.connect(ip, port)
        except (OSError, TimeoutError, ConnectionError):
            if transport is None:
                return Source("udp", ip, port, None, self.udp_local(ip))
            return None
