"""Request checks that come before any transaction (RFC 3261 §8.2.1–§8.2.2).

These answer statelessly: a request that fails here never reaches a handler.
The order matters and follows the RFC (and RFC 4475's expectations): framing
and start line first (done by the parser), then the mandatory headers, then
the Request-URI scheme, then extensions.
"""

from __future__ import annotations

from collections.abc import Collection

from .errors import ParseError
from .message import Request
from .uri import AbsoluteUri

__all__ = ["validate_request", "unsupported_requires", "KNOWN_SCHEMES"]

KNOWN_SCHEMES = frozenset({"sip", "sips", "tel"})


def validate_request(req: Request, known_methods: Collection[str]) -> None:
    """Raise ParseError(status, reason) when ``req`` must be rejected statelessly.

    Unknown methods are not rejected here (a redirect server may route them, RFC
    4475 intmeth); only a CSeq method that disagrees with an unknown method gives
    501 (mismatch02), a disagreeing known one 400 (mismatch01).
    """
    # Mandatory headers, each exactly once (insuf, multi01); typed values parse.
    req.vias  # noqa: B018 - parses and raises on a bad Via
    req.from_  # noqa: B018
    req.to  # noqa: B018
    req.call_id  # noqa: B018
    num, method = req.cseq
    if method != req.method:
        if req.method in known_methods:
            raise ParseError(400, "CSeq method does not match Request-Line")
        raise ParseError(501, "Not Implemented")
    req.max_forwards  # noqa: B018 - 400 on a non-numeric or > 255 value
    uri = req.ruri
    if isinstance(uri, AbsoluteUri):
        raise ParseError(416, "Unsupported URI Scheme")
    if getattr(uri, "headers", None):
        # RFC 4475 escruri: headers have no meaning in a Request-URI.
        raise ParseError(400, "Bad Request-URI: escaped headers")
    if req.method == "INVITE" and req.has("expires"):
        req.expires  # noqa: B018 - scalar02-style overflow


def unsupported_requires(req: Request, supported: Collection[str]) -> list[str]:
    """Option tags of Require that we do not support (RFC 3261 §8.2.2.3 → 420)."""
    if req.method in ("ACK", "CANCEL"):
        return []
    out = []
    for tag in req.get_all("require"):
        if tag.lower() not in supported:
            out.append(tag)
    return out
