"""Writing responses: the request's own lines copied, our tail appended.

A response copies Via (every line, in order), From, Call-ID and CSeq exactly
as received (RFC 3261 §8.2.6.2) and the To with our tag: copying the lines is
cheaper than rebuilding them from parsed values, and keeps whatever a peer
wrote (parameters, case) intact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from .errors import ParseError
from .headers import parse_name_addr
from .model import Request

__all__ = ["build_response"]

#: Headers a response copies from its request (RFC 3261 §8.2.6.2), canonical spelling.
_COPIED: Final[dict[str, str]] = {
    "via": "Via: ", "from": "From: ", "call-id": "Call-ID: ", "cseq": "CSeq: ",
}


def build_response(req: Request, status: int, reason: str, *, to_tag: str | None = None,
                   headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
                   server: str | None = None) -> bytes:
    """Serialise a response to ``req`` (RFC 3261 §8.2.6.2).

    Via (every line, in order), From, Call-ID and CSeq are copied as received;
    To gets ``to_tag`` if it has none and the status is above 100. Compact
    names come out in their long form.
    """
    out = [f"SIP/2.0 {status} {reason}"]
    hdrs = req.headers
    copied = _COPIED
    to_done = False
    for i, key in enumerate(req._keys):
        prefix = copied.get(key)
        if prefix is not None:
            out.append(prefix + hdrs[i][1])
        elif key == "to" and not to_done:
            value = hdrs[i][1]
            if to_tag is not None and status > 100 and not _has_tag(req, value):
                value = f"{value};tag={to_tag}"
            out.append("To: " + value)
            to_done = True
    for name, value in headers:
        out.append(f"{name}: {value}")
    if server:
        out.append("Server: " + server)
    out.append(f"Content-Length: {len(body)}\r\n\r\n")
    data = "\r\n".join(out).encode("utf-8", "surrogateescape")
    return data + body if body else data


def _has_tag(req: Request, to_value: str) -> bool:
    """Whether the To already carries a tag (a header param, not a URI param)."""
    if req._to is not None:
        return req._to.tag is not None
    if "tag" not in to_value.lower():
        return False
    try:
        return parse_name_addr(to_value).tag is not None
    except ParseError:
        return True  # unparseable: leave it as it is rather than add a second tag
