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
* Expiry precedence per contact: its ``expires`` param, else the Expires
  header, else ``default_expires``; 0 < value < ``min_expires`` answers 423
  with Min-Expires; larger values (also past 2**32-1) are clamped to
  ``max_expires``. Anything but digits is a 400 naming the header.
* ``q`` must be an RFC 3261 qvalue; ``reg-id`` counts only beside
  ``+sip.instance``, and at most one contact may carry one (RFC 5626 §6).
* Path (RFC 3327) is stored and echoed only when the REGISTER says
  ``Supported: path``; otherwise it is ignored rather than refused with 420,
  which some phones never recover from. In proxy mode this server is also the
  phone's edge proxy: ``edge`` (:class:`sipyard.flowtoken.EdgePath`) may put
  its own Path value, naming the phone's flow, on top of what is stored for a
  Contact; that value is not echoed (the phone did not ask for it and must not
  route by it).
* ``Contact: *`` needs ``Expires: 0`` and no other contact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .sip.errors import ParseError
from .sip.headers import NameAddr, parse_uint
from .sip.message import STAR, Request
from .sip.source import Source
from .sip.uri import SipUri, parse_uri
from .store.base import Binding, LocationStore

__all__ = ["Registrar", "Reply", "Reject", "Plan"]


# Records made per request: ``Final`` fields and a written-out ``__init__``
# rather than ``frozen=True``, whose generated ``__init__`` is interpreted
# Python (object.__setattr__ per field) even in a compiled module.


@dataclass(slots=True, init=False, unsafe_hash=True)
class Reply:
    status: Final[int]
    reason: Final[str]
    headers: Final[tuple[tuple[str, str], ...]]
    #: bindings of the AOR before and after (for activate/release events)
    before: Final[int]
    after: Final[int]
    aor: Final[str]
    line: Final[str]
    added: Final[tuple[Binding, ...]]

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = (),
                 before: int = 0, after: int = 0, aor: str = "", line: str = "",
                 added: tuple[Binding, ...] = ()) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.before = before
        self.after = after
        self.aor = aor
        self.line = line
        self.added = added


class Reject(Exception):
    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers


@dataclass(slots=True, init=False, unsafe_hash=True)
class _Want:
    """One Contact of the request, parsed: what the client asks for."""

    uri: Final[str]
    params: Final[str]
    q: Final[float | None]
    expires: Final[int]
    instance: Final[str | None]
    reg_id: Final[int | None]
    binding_id: Final[str]

    def __init__(self, uri: str, params: str, q: float | None, expires: int,
                 instance: str | None, reg_id: int | None, binding_id: str) -> None:
        self.uri = uri
        self.params = params
        self.q = q
        self.expires = expires
        self.instance = instance
        self.reg_id = reg_id
        self.binding_id = binding_id


class Plan:
    """A checked REGISTER: the store update to run and how to answer once it ran."""

    __slots__ = ("aor", "line", "fn", "wants", "path", "seen")

    def __init__(self, aor: str, line: str, fn: Fn | None, wants: list[_Want],
                 path: tuple[str, ...], seen: list[int]) -> None:
        self.aor = aor
        self.line = line
        #: the update for ``store.update``; None for a fetch (no Contact)
        self.fn = fn
        self.wants = wants
        self.path = path
        #: filled by ``fn`` when it runs: how many bindings the AOR had before
        self.seen = seen

    def reply(self, after: list[Binding], now: float) -> Reply:
        """The 200's headers (every binding with its expiry) from the committed bindings."""
        path = self.path
        granted = {w.binding_id: w.expires for w in self.wants if w.expires > 0}
        headers: list[tuple[str, str]] = []
        ordered = after if len(after) < 2 else sorted(
            after, key=lambda b: -(b.q if b.q is not None else 1.0))
        for b in ordered:
            exp = granted.get(b.binding_id)
            if exp is None:
                exp = max(0, math.ceil(b.expires_at - now))
            if b.q is not None:
                headers.append(("Contact", f"<{b.contact}>{b.params};q={_fmt_q(b.q)};expires={exp}"))
            else:
                headers.append(("Contact", f"<{b.contact}>{b.params};expires={exp}"))
        for p in path if after else ():
            headers.append(("Path", p))
        if path:
            headers.append(("Supported", "path"))
        added = tuple(b for b in after if b.binding_id in granted)
        seen = self.seen
        before = seen[0] if seen else 0
        return Reply(200, "OK", tuple(headers), before, len(after), self.aor, self.line, added)


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
        """Apply a REGISTER for ``line`` (already authenticated) and build the 200.

        Raises :class:`Reject` for a request to refuse (the reason names the
        header at fault) and lets :class:`StoreError` through (the caller
        answers 500): a 200 is only built from what the store committed.
        """
        plan = self.plan(req, line, src, now)
        if plan.fn is None:
            after = await self.store.lookup(plan.aor, now)  # a fetch
            plan.seen.append(len(after))
        else:
            after = await self.store.update(plan.aor, now, plan.fn)
        return plan.reply(after, now)

    def plan(self, req: Request, line: str, src: Source, now: float,
             edge: Edge | None = None) -> Plan:
        """Everything a REGISTER asks, checked, as an update for the store.

        Split from :meth:`register` so a caller can hand ``plan.fn`` to the
        store without a coroutine (``LocationStore.update_soon``) and build
        the 200 with :meth:`Plan.reply` once the write committed. ``edge(contact,
        outbound)``: our own Path value for that Contact's binding, or None.
        """
        cfg = self.config
        srv = cfg.server
        header_exp = _header_expires(req)
        try:
            contacts = req.contacts
        except ParseError as exc:
            raise Reject(400, _contact_reason(exc)) from None
        call_id = req.call_id
        cseq = req.cseq[0]
        aor = self.aor_for(line)
        line_cfg = cfg.lines.get(line)
        max_contacts = line_cfg.max_contacts if line_cfg is not None else 10
        overflow = line_cfg.overflow if line_cfg is not None else "replace"
        path: tuple[str, ...] = ()
        if req.has("path") and "path" in {s.lower() for s in req.get_all("supported")}:
            path = tuple(req.get_all("path"))
        ua = req.get("user-agent") or ""
        if len(ua) > 200:
            ua = ua[:200]
        seen: list[int] = []  # bindings the update saw: for activate/release
        fn: Fn | None
        if contacts == STAR:
            if header_exp != 0:
                raise Reject(400, "Bad Contact header: * requires Expires: 0")
            wants: list[_Want] = []
            fn = _remove_all(call_id, cseq, seen)
        else:
            assert not isinstance(contacts, str)
            wants = [self._want(c, header_exp, srv) for c in contacts]
            if len(wants) > 1 and sum(1 for w in wants if w.reg_id is not None) > 1:
                # RFC 5626 §6: one flow per REGISTER.
                raise Reject(400, "Bad Contact header: more than one reg-id")
            fn = _apply(wants, call_id, cseq, now, src, path, ua, aor, max_contacts, overflow,
                        seen, edge) if wants else None
        return Plan(aor, line, fn, wants, path, seen)

    def _want(self, c: NameAddr, header_exp: int | None, srv: Any) -> _Want:
        uri = c.uri
        try:
            parse_uri(uri)
        except ParseError:
            raise Reject(400, "Bad Contact header: bad URI") from None
        # Any scheme is a valid contact (RFC 3261 §10.2.1: tel:, mailto:, …); it is
        # stored as written and handed back as written.
        exp_text = c.param("expires")
        if exp_text is not None:
            expires = _parse_expires(exp_text.strip(), srv.max_expires)
            if expires is None:
                raise Reject(400, "Bad Contact header: expires")
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
            q = _parse_q(qtext)
            if q is None:
                raise Reject(400, "Bad Contact header: q")
        instance = c.param("+sip.instance")
        if instance is not None and not instance:
            raise Reject(400, "Bad Contact header: +sip.instance")
        reg_id: int | None = None
        rid = c.param("reg-id")
        if rid is not None and instance is not None:  # reg-id alone means nothing (RFC 5626 §6)
            try:
                reg_id = parse_uint(rid, 2**31 - 1)
            except ParseError:
                raise Reject(400, "Bad Contact header: reg-id") from None
            if reg_id == 0:
                raise Reject(400, "Bad Contact header: reg-id")
        params = "".join(
            f";{k}" if v is None else f";{k}={v}"
            for k, v in c.params if k.lower() not in ("q", "expires"))
        if instance is not None:
            bid = f"i:{instance}:{reg_id if reg_id is not None else ''}"
        else:
            bid = f"c:{uri}"
        return _Want(uri, params, q, expires, instance, reg_id, bid)


def _contact_reason(exc: ParseError) -> str:
    reason = exc.reason
    return reason if reason.startswith("Bad Contact header") else "Bad Contact header"


def _header_expires(req: Request) -> int | None:
    """The Expires header: None when absent, 400 when malformed.

    A value past 2**32-1 is taken as 2**32-1 (RFC 3261 §20.19, RFC 4475
    scalar02) and so clamped to ``max_expires`` later; anything but digits is
    an error, not silently the default, so a broken client hears about it.
    """
    lines = req.get_lines("expires")
    if not lines:
        return None
    if len(lines) > 1:
        raise Reject(400, "Bad Expires header: more than one")
    value = _parse_expires(lines[0].strip(), 2**32 - 1)
    if value is None:
        raise Reject(400, "Bad Expires header")
    return value


def _parse_expires(text: str, cap: int) -> int | None:
    """delta-seconds (1*DIGIT); overlarge values give ``cap``; None when malformed."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    if len(text) > 12:
        return cap
    return min(int(text), cap, 2**32 - 1)


def _parse_q(text: str) -> float | None:
    """RFC 3261 qvalue: ``0[.ddd]`` or ``1[.000]``; None for anything else.

    Strict on purpose: ``float()`` would take "nan", "1e-1", "0_5" or " .5".
    """
    if not text or len(text) > 5 or not text.isascii():
        return None
    head, _, frac = text.partition(".")
    if head not in ("0", "1") or len(frac) > 3 or (frac and not frac.isdigit()):
        return None
    if head == "1" and frac.strip("0"):
        return None
    return float(f"{head}.{frac or '0'}")


def _fmt_q(q: float) -> str:
    text = f"{q:.3f}".rstrip("0").rstrip(".")
    return text if "." in text else f"{text}.0" if text in ("0", "1") else text


Fn = Callable[[list[Binding]], tuple[list[Binding], list[str]]]
#: (contact URI, asks for outbound) -> this server's Path value for that binding, or None
Edge = Callable[[str, bool], str | None]


def _check_order(existing: Binding, call_id: str, cseq: int) -> None:
    if existing.call_id == call_id and cseq <= existing.cseq:
        raise Reject(400, "Out of Order CSeq")


#: how long a client retransmits a non-INVITE request (RFC 3261 timer F, 64 × T1)
_RETRANSMIT_WINDOW = 32.0


def _is_replay(old: Binding, w: _Want, call_id: str, cseq: int, now: float) -> bool:
    """``old`` was written by this very request, whose transaction is gone.

    A REGISTER committed just before its worker was killed or the server
    restarted is retransmitted by the phone (same Call-ID, same CSeq, within
    timer F): §10.3 step 7 would refuse it as "not higher", and the phone
    would take its stored registration for failed. A UA never reuses a
    CSeq for a different request, so the same contact asking for the
    expiry the binding got then is answered as the lost 200 would have been.
    """
    return (old.call_id == call_id and old.cseq == cseq and old.contact == w.uri
            and old.params == w.params
            and 0.0 <= w.expires - (old.expires_at - now) <= _RETRANSMIT_WINDOW)


def _remove_all(call_id: str, cseq: int, seen: list[int]) -> Fn:
    def fn(current: list[Binding]) -> tuple[list[Binding], list[str]]:
        seen[:] = [len(current)]
        for b in current:
            _check_order(b, call_id, cseq)
        return [], [b.binding_id for b in current]
    return fn


def _apply(wants: list[_Want], call_id: str, cseq: int, now: float, src: Source,
           path: tuple[str, ...], ua: str, aor: str, max_contacts: int, overflow: str,
           seen: list[int], edge: Edge | None = None) -> Fn:
    """The update of one AOR for a REGISTER's contacts (RFC 3261 §10.3 steps 6-7).

    Runs inside the store's atomic update, on the bindings as they are at
    commit time; ``seen`` receives how many there were (for activate hooks).
    """
    paths: dict[str, tuple[str, ...]] = {}
    for w in wants:
        own = edge(w.uri, w.reg_id is not None) if edge is not None else None
        paths[w.binding_id] = (own, *path) if own is not None else path

    def fn(current: list[Binding]) -> tuple[list[Binding], list[str]]:
        seen[:] = [len(current)]
        by_id = {b.binding_id: b for b in current}
        puts: dict[str, Binding] = {}  # a contact listed twice counts once (the last wins)
        remove: list[str] = []
        for w in wants:
            old = by_id.get(w.binding_id)
            if old is not None:
                if _is_replay(old, w, call_id, cseq, now):
                    return [], []  # stored already: answer with the bindings as they are
                _check_order(old, call_id, cseq)
            if w.expires == 0:
                puts.pop(w.binding_id, None)
                if old is not None:
                    remove.append(w.binding_id)
                continue
            puts[w.binding_id] = (Binding(
                aor=aor, binding_id=w.binding_id, contact=w.uri, params=w.params, q=w.q,
                expires_at=now + w.expires,
                registered_at=old.registered_at if old is not None else now,
                call_id=call_id, cseq=cseq, source_ip=src.ip, source_port=src.port,
                transport=src.transport,
                conn_id=str(src.conn_id) if src.conn_id is not None else None,
                path=paths[w.binding_id], user_agent=ua, instance=w.instance, reg_id=w.reg_id))
        put = list(puts.values())
        gone = set(remove)
        keep = [b for b in current if b.binding_id not in puts and b.binding_id not in gone]
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
