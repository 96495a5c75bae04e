"""The in-dialog side of an outgoing trunk call: what the trunk hop rewrites, both ways.

Why a proxy has to keep state here at all: towards the provider an outgoing call is
not the caller's request any more. Its From (and To) carry the trunk's identity, and
when the provider challenged the INVITE the proxy sent it again with a new CSeq
(RFC 3261 §22.2), which the caller never saw. From then on the two legs disagree:

* the caller's ACK for the 2xx carries the CSeq of *its* INVITE, the provider wants
  the one of the INVITE it answered (§17.1.1.3, §13.2.2.4); the caller's BYE or
  re-INVITE would look to the provider like an old or repeated request (§12.2.2);
* the responses going back carry the trunk's From, not the caller's, and the
  provider's own requests (its BYE) name the trunk identity in their To.

So a :class:`TrunkLeg` per call keeps the caller's From/To, the trunk's From/To and
the CSeq offset (provider number = caller number + offset; it grows by one each time
a request is sent again with credentials, in-dialog ones too). Requests from the caller
get the trunk identity and the offset (:meth:`TrunkLeg.to_provider`), requests from
the provider get the caller's identity back (:meth:`TrunkLeg.to_caller`), and every
response relayed on such a hop is made to match the request it answers again
(:func:`answer_as`: From, To and CSeq of the request as received, the responder's To
tag kept). The ``RAck`` of the caller's PRACK (RFC 3262 §7.2) moves with the offset (it
names the caller's INVITE); the provider's requests keep their CSeq (its own numbers). The legs live in the trunk
router, one per Call-ID, and go when the call record ends (a bounded map: a call
whose end was never seen cannot make it grow).

No I/O and no clock: plain functions over :class:`~sipyard.sip.message.Request`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..sip.errors import ParseError
from ..sip.headers import NameAddr
from ..sip.message import Request, Response, canonical_name

__all__ = ["TrunkLeg", "answer_as", "without_tag", "DROP_TOWARDS_PROVIDER"]

#: the caller's credentials for us and its identity assertions never go to the provider
DROP_TOWARDS_PROVIDER = frozenset({"proxy-authorization", "authorization",
                                   "p-asserted-identity", "p-preferred-identity"})


def without_tag(na: NameAddr) -> str:
    """A From/To value without its ``tag`` parameter (display name and other params kept)."""
    display = f"{na.display} " if na.display else ""
    params = "".join(f";{n}" + ("" if v is None else f"={v}") for n, v in na.params
                     if n.lower() != "tag")
    return f"{display}<{na.uri}>{params}"


def _tagged(value: str, tag: str | None) -> str:
    return value + (f";tag={tag}" if tag else "")


def _replace(msg: Request | Response, values: dict[str, str]) -> list[tuple[str, str]]:
    return [(n, values.get(canonical_name(n), v)) for n, v in msg.headers]


def answer_as(req: Request, resp: Response) -> Response:
    """``resp`` made to answer ``req`` as received: its From, To and CSeq, the To tag of
    ``resp`` (a response must match its request, RFC 3261 §8.2.6.2; the hop rewrote the
    request on its way out)."""
    try:
        to_value = req.get("to") or ""
        if req.to.tag is None:  # the request started a dialog: the responder's tag
            to_value = _tagged(to_value, resp.to.tag)
        values = {"from": req.get("from") or "", "cseq": req.get("cseq") or "",
                  "to": to_value}
    except ParseError:
        return resp
    headers = _replace(resp, values)
    return Response(resp.status, resp.reason, resp.version, headers,
                    [canonical_name(n) for n, _ in headers], resp.body)


@dataclass(slots=True, eq=False)
class TrunkLeg:
    """One outgoing call through a trunk: the two identities and the CSeq offset."""

    trunk: str
    call_id: str
    caller_tag: str
    caller_from: str  # the caller's From, without tag
    caller_to: str  # the caller's To (the dialled number at our domain), without tag
    trunk_from: str  # our identity at the provider, without tag
    trunk_to: str  # the number at the provider's domain, without tag
    pai: str | None = None  # P-Asserted-Identity towards the provider
    offset: int = 0

    @classmethod
    def for_call(cls, trunk: str, req: Request, trunk_from: str, trunk_to: str,
                 pai: str | None) -> TrunkLeg:
        """The leg of the caller's INVITE ``req`` (raises ParseError on a bad From/To)."""
        frm, to = req.from_, req.to
        return cls(trunk, req.call_id, frm.tag or "", without_tag(frm), without_tag(to),
                   trunk_from, trunk_to, pai)

    def from_caller(self, req: Request) -> bool | None:
        """True for the caller's request, False for the provider's, None for neither."""
        try:
            if req.from_.tag == self.caller_tag:
                return True
            if req.to.tag == self.caller_tag:
                return False
        except ParseError:
            return None
        return None

    def to_provider(self, req: Request) -> Request:
        """The caller's request as the provider must see it (identity, CSeq + offset)."""
        values = {"from": _tagged(self.trunk_from, self.caller_tag)}
        to_tag = req.to.tag
        values["to"] = _tagged(self.trunk_to, to_tag)
        if self.offset:
            seq, method = req.cseq
            values["cseq"] = f"{seq + self.offset} {method}"
            rack = req.get("rack")
            if req.method == "PRACK" and rack is not None:
                values["rack"] = _shift_rack(rack, self.offset)
        headers = [(n, v) for n, v in _replace(req, values)
                   if canonical_name(n) not in DROP_TOWARDS_PROVIDER]
        if self.pai:
            headers.append(("P-Asserted-Identity", self.pai))
        return Request(req.method, req.uri, req.version, headers,
                       [canonical_name(n) for n, _ in headers], req.body)

    def to_caller(self, req: Request) -> Request:
        """The provider's request as the caller must see it (the caller's identity back)."""
        values = {"from": _tagged(self.caller_to, req.from_.tag),
                  "to": _tagged(self.caller_from, self.caller_tag)}
        headers = _replace(req, values)
        return Request(req.method, req.uri, req.version, headers,
                       [canonical_name(n) for n, _ in headers], req.body)


def _shift_rack(value: str, offset: int) -> str:
    """``RAck: 1 314159 INVITE`` with its CSeq number moved (RFC 3262 §7.2)."""
    parts = value.split()
    if len(parts) != 3 or not parts[1].isdigit():
        return value
    return f"{parts[0]} {max(int(parts[1]) + offset, 0)} {parts[2]}"
