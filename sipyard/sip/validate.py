"""Request checks that come before any transaction (RFC 3261 §8.2.1–§8.2.2).

These answer statelessly: a request that fails here never reaches a handler.
The order matters and follows the RFC (and RFC 4475's expectations): framing
and start line first (done by the parser), then the mandatory headers, then
the Request-URI scheme, then extensions.

Every check reads through the message's cached typed accessors, so a handler
that reads ``req.top_via`` or ``req.contacts`` afterwards pays nothing twice.
"""

from __future__ import annotations

from collections.abc import Collection

from .errors import ParseError
from .message import Request, Response
from .uri import AbsoluteUri, SipUri

__all__ = ["validate_request", "validate_response", "unsupported_requires", "KNOWN_SCHEMES"]

KNOWN_SCHEMES = frozenset({"sip", "sips", "tel"})


def validate_request(req: Request, known_methods: Collection[str]) -> None:
    """Raise ParseError(status, reason) when ``req`` must be rejected statelessly.

    Unknown methods are not rejected here (a redirect server may route them, RFC
    4475 intmeth); only a CSeq method that disagrees with an unknown method gives
    501 (mismatch02), a disagreeing known one 400 (mismatch01).
    """
    # Mandatory headers, each exactly once (insuf, multi01); typed values parse.
    req.vias  # noqa: B018 - parses and raises on a bad Via (badinv01)
    req.check_from_to()  # baddn, quotbal, badaspec
    req.call_id  # noqa: B018
    method = req.cseq[1]  # scalar02: CSeq above 2**32-1
    if method != req.method:
        if req.method in known_methods:
            raise ParseError(400, "CSeq method does not match Request-Line")
        raise ParseError(501, "Not Implemented")
    req.max_forwards  # noqa: B018 - 400 on a non-numeric or > 255 value
    uri = req.ruri  # ltgtruri, RFC 5118 ipv6-bad: 400
    if isinstance(uri, AbsoluteUri):
        raise ParseError(416, "Unsupported URI Scheme")  # unkscm, novelsc
    if isinstance(uri, SipUri) and uri.headers:
        # RFC 4475 escruri: headers have no meaning in a Request-URI.
        raise ParseError(400, "Bad Request-URI: escaped headers")
    if req.method == "INVITE" and req.has("expires"):
        req.expires  # noqa: B018 - scalar02-style overflow
    elif req.method == "REGISTER" and req.has("contact"):
        # regbadct: an addr-spec with "?" needed <>; the registrar reads the
        # cached result, so this costs a REGISTER nothing extra.
        req.contacts  # noqa: B018


def validate_response(resp: Response) -> None:
    """Raise ParseError when a received response must be dropped (never answered).

    A response is matched to its client transaction by the top Via branch and
    the CSeq method, so those, and the other mandatory headers, must parse
    (RFC 4475 scalarlg: CSeq above 2**32-1 → discard).
    """
    resp.top_via  # noqa: B018 - the rest are the next hop's (a proxy passes them on as is)
    resp.check_from_to()
    resp.call_id  # noqa: B018
    resp.cseq  # noqa: B018


def unsupported_requires(req: Request, supported: Collection[str]) -> list[str]:
    """Option tags of Require that we do not support (RFC 3261 §8.2.2.3 → 420)."""
    if req.method == "ACK" or req.method == "CANCEL" or not req.has("require"):
        return []
    return [tag for tag in req.get_all("require") if tag.lower() not in supported]
