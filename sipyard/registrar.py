"""The registrar: RFC 3261 §10.3 over a LocationStore.

Protocol rules live here; storage lives behind :class:`LocationStore` (the
registrar never imports a backend, as Kamailio's registrar/usrloc split). The
whole update of one AOR is a pure function handed to ``store.update`` so the
backend can run it atomically (an in-process lock for sqlite, WATCH/MULTI for
redis): Call-ID/CSeq ordering and the contact limit are decided on the bindings
as they are at commit time, never on a stale read.

Choices where the RFC leaves room (documented in the README):

* A binding is identified by ``+sip.instance``/``reg-id`` when the UA sends
  them (RFC 5626), else by the exact contact URI text. Phones refresh with the
  same text; comparing text keeps RFC 4475 escnull's two contacts distinct.
* An out-of-order CSeq for the same Call-ID answers 400 "Out of Order CSeq".
* A full AOR (``max_contacts``) replaces its oldest binding by default;
  ``overflow = "reject"`` answers 503 with Retry-After (never 403: clients
  retry 403 in a loop).
* The granted expiry of a contact is echoed exactly; other bindings show their
  remaining time rounded up, so a refresh never sees its expiry shrink by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .sip.errors import ParseError
from .sip.headers import NameAddr, parse_uint
from .sip.message import STAR, Request
from .sip.uri import SipUri, parse_uri
from .store.base import Binding, LocationStore
from .transport import Source

__all__ = ["Registrar", "Reply", "Reject"]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()
    #: bindings of the AOR before and after (for activate/release events)
    before: int = 0
    after: int = 0
    aor: str = ""
    line: str = ""
    added: tuple[Binding, ...] = ()


class Reject(Exception):
    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers


@dataclass(frozen=True, slots=True)
class _Want:
    """One Contact of the request, parsed: what the client asks for."""

    uri: str
    params: str
    q: float | None
    expires: int
    instance: str | None
    reg_id: int | None
    binding_id: str


class Registrar:
    def __init__(self, config: Any, store: LocationStore) -> None:
        self.config = config
        self.store = store

    def aor_for(self, line: str) -> str:
        return f"sip:{line}@{self.config.server.realm}"

    def target_line(self, req: Request) -> str:
        """The line number named by To (the AOR), or Reject."""
        to = req.to
        try:
            uri = to.parsed_uri()
        except ParseError:
            raise Reject(400, "Bad To header") from None
        if not isinstance(uri, SipUri):
            raise Reject(400, "Bad To header: not a SIP URI")
        if not self.config.is_our_domain(uri.host_lower):
            raise Reject(404, "Not Found")
        user = uri.user_unescaped or ""
        if not user:
            raise Reject(400, "Bad To header: no user")
        return user

    async def register(self, req: Request, line: str, src: Source, now: float) -> Reply:
        """Apply a REGISTER for ``line`` (already authenticated) and build the 200."""
        cfg = self.config
        srv = cfg.server
        try:
            header_exp = req.expires
        except ParseError:
            raise Reject(400, "Bad Expires header") from None
        try:
            contacts = req.contacts
        except ParseError:
            raise Reject(400, "Bad Contact header") from None
        call_id = req.call_id
        cseq = req.cseq[0]
        aor = self.aor_for(line)
        line_cfg = cfg.lines.get(line)
        max_contacts = line_cfg.max_contacts if line_cfg is not None else 10
        overflow = line_cfg.overflow if line_cfg is not None else "replace"
        path: tuple[str, ...] = ()
        if req.has("path") and "path" in {s.lower() for s in req.get_all("supported")}:
            path = tuple(req.get_all("path"))
        ua = (req.get("user-agent") or "")[:200]

        if contacts == STAR:
            if header_exp != 0:
                raise Reject(400, "Bad Contact header: * requires Expires: 0")
            fn = _remove_all(call_id, cseq)
            wants: list[_Want] = []
        else:
            assert not isinstance(contacts, str)
            wants = [self._want(c, header_exp, srv) for c in contacts]
            fn = _apply(wants, call_id, cseq, now, src, path, ua, aor, max_contacts, overflow)
        before_list = await self.store.lookup(aor, now)
        if not wants and contacts != STAR:
            after = before_list  # a fetch
        else:
            after = await self.store.update(aor, now, fn)
        granted = {w.binding_id: w.expires for w in wants if w.expires > 0}
        headers: list[tuple[str, str]] = []
        for b in sorted(after, key=lambda b: -(b.q if b.q is not None else 1.0)):
            exp = granted.get(b.binding_id)
            if exp is None:
                exp = max(0, math.ceil(b.expires_at - now))
            q = f";q={_fmt_q(b.q)}" if b.q is not None else ""
            headers.append(("Contact", f"<{b.contact}>{b.params}{q};expires={exp}"))
        for p in path if after else ():
            headers.append(("Path", p))
        if path:
            headers.append(("Supported", "path"))
        added = tuple(b for b in after if b.binding_id in granted)
        return Reply(200, "OK", tuple(headers), len(before_list), len(after), aor, line, added)

    def _want(self, c: NameAddr, header_exp: int | None, srv: Any) -> _Want:
        uri = c.uri
        try:
            parsed = parse_uri(uri)
        except ParseError:
            raise Reject(400, "Bad Contact header") from None
        if not isinstance(parsed, SipUri) and not uri.lower().startswith("tel:"):
            # Other schemes (RFC 3261 allows any URI) are stored as given.
            pass
        exp_text = c.param("expires")
        if exp_text is not None:
            try:
                expires = parse_uint(exp_text, 2**32 - 1)
            except ParseError:
                if exp_text.isdigit():
                    expires = srv.max_expires  # overlarge: clamp (RFC 4475 scalar02)
                else:
                    raise Reject(400, "Bad Contact header: expires") from None
        elif header_exp is not None:
            expires = header_exp
        else:
            expires = srv.default_expires
        if 0 < expires < srv.min_expires:
            raise Reject(423, "Interval Too Brief", (("Min-Expires", str(srv.min_expires)),))
        expires = min(expires, srv.max_expires)
        q: float | None = None
        qtext = c.param("q")
        if qtext is not None:
            try:
                q = float(qtext)
            except ValueError:
                raise Reject(400, "Bad Contact header: q") from None
            if not 0.0 <= q <= 1.0 or not math.isfinite(q):
                raise Reject(400, "Bad Contact header: q")
        instance = c.param("+sip.instance")
        reg_id: int | None = None
        rid = c.param("reg-id")
        if rid is not None:
            try:
                reg_id = parse_uint(rid, 2**31 - 1)
            except ParseError:
                raise Reject(400, "Bad Contact header: reg-id") from None
        params = "".join(
            f";{k}" if v is None else f";{k}={v}"
            for k, v in c.params if k.lower() not in ("q", "expires"))
        if instance is not None:
            bid = f"i:{instance}:{reg_id if reg_id is not None else ''}"
        else:
            bid = f"c:{uri}"
        return _Want(uri, params, q, expires, instance, reg_id, bid)


def _fmt_q(q: float) -> str:
    text = f"{q:.3f}".rstrip("0").rstrip(".")
    return text if "." in text else f"{text}.0" if text in ("0", "1") else text


Fn = Callable[[list[Binding]], tuple[list[Binding], list[str]]]


def _check_order(existing: Binding, call_id: str, cseq: int) -> None:
    if existing.call_id == call_id and cseq <= existing.cseq:
        raise Reject(400, "Out of Order CSeq")


def _remove_all(call_id: str, cseq: int) -> Fn:
    def fn(current: list[Binding]) -> tuple[list[Binding], list[str]]:
        for b in current:
            _check_order(b, call_id, cseq)
        return [], [b.binding_id for b in current]
    return fn


def _apply(wants: list[_Want], call_id: str, cseq: int, now: float, src: Source,
           path: tuple[str, ...], ua: str, aor: str, max_contacts: int, overflow: str) -> Fn:
    def fn(current: list[Binding]) -> tuple[list[Binding], list[str]]:
        by_id = {b.binding_id: b for b in current}
        put: list[Binding] = []
        remove: list[str] = []
        for w in wants:
            old = by_id.get(w.binding_id)
            if old is not None:
                _check_order(old, call_id, cseq)
            if w.expires == 0:
                if old is not None:
                    remove.append(w.binding_id)
                continue
            put.append(Binding(
                aor=aor, binding_id=w.binding_id, contact=w.uri, params=w.params, q=w.q,
                expires_at=now + w.expires,
                registered_at=old.registered_at if old is not None else now,
                call_id=call_id, cseq=cseq, source_ip=src.ip, source_port=src.port,
                transport=src.transport, conn_id=str(src.conn_id) if src.conn_id else None,
                path=path, user_agent=ua, instance=w.instance, reg_id=w.reg_id))
        put_ids = {b.binding_id for b in put}
        keep = [b for b in current if b.binding_id not in put_ids and b.binding_id not in remove]
        excess = len(keep) + len(put) - max_contacts
        if excess > 0:
            if overflow == "reject":
                raise Reject(503, "Service Unavailable: too many contacts",
                             (("Retry-After", "60"),))
            # Replace the oldest bindings: stale contacts must never lock a user out.
            keep.sort(key=lambda b: (b.registered_at, b.expires_at))
            for b in keep[:excess]:
                remove.append(b.binding_id)
            if excess > len(keep):
                put = put[: max_contacts]
        return put, remove
    return fn
