"""Reading SIP messages from bytes (datagram framing rules, RFC 3261 §18.3).

A datagram is split into start line, header list and body in one pass: one
``find`` for the end of the head, one ``split`` into lines, and per line one
``partition`` and a lookup of the name in a fixed table of usual spellings
(before anything is lower-cased). Folding and bare-LF handling only run when
the datagram contains them. The header section is decoded with
``surrogateescape``: invalid UTF-8 round-trips to the same bytes instead of
raising, and raw NULs (intmeth) are kept.
"""

from __future__ import annotations

from ._abnf import TOKEN_CHARS
from .errors import ParseError
from .headers import parse_via
from .model import COMPACT_FORMS, DEFAULT_LIMITS, NAME_TABLE, Limits, Message, Request, Response
from .transaction import MAGIC_COOKIE, TxKey, make_key

__all__ = ["parse_message", "ack_key"]

_NAME_TABLE = NAME_TABLE


def _split_lines(data: bytes) -> tuple[list[str], int]:
    """The header section as decoded lines (start line first), and the body offset.

    The common case is one ``find`` and one ``split``: a head without bare LFs
    has exactly one ``\\n`` per line break, which the count proves.
    """
    i = data.find(b"\r\n\r\n")
    if i >= 0:
        text = data[:i].decode("utf-8", "surrogateescape")
        lines = text.split("\r\n")
        if text.count("\n") == len(lines) - 1:
            return lines, i + 4
    # Bare-LF messages (RFC 5118's archive form) are tolerated; a bare-LF blank
    # line ends the head if it comes before the first CRLF one.
    j = data.find(b"\n\n", 0, i) if i >= 0 else data.find(b"\n\n")
    if j >= 0:
        head = data[:j]
        body_at = j + 2
    elif i >= 0:
        head = data[:i]
        body_at = i + 4
    else:
        # No empty line at all (RFC 4475 baddn as archived): a datagram's end closes it.
        head = data.rstrip(b"\r\n")
        body_at = len(data)
    text = head.decode("utf-8", "surrogateescape").replace("\r\n", "\n")
    if text.endswith("\r"):
        text = text[:-1]  # "…\r\n\n": a CRLF line end, then a bare-LF blank line
    return text.split("\n"), body_at


def _parse_headers(lines: list[str], limits: Limits
                   ) -> tuple[list[tuple[str, str]], list[str], ParseError | None]:
    """Split header lines (start line excluded) into (headers, canonical keys, fault).

    A malformed or over-long line is skipped and reported as ``fault`` (the
    first one), as is a header count above the cap (the rest are dropped), so
    the caller can still answer the sender with the headers that did parse.
    """
    max_line = limits.max_line
    headers: list[tuple[str, str]] = []
    keys: list[str] = []
    add_header = headers.append
    add_key = keys.append
    table = _NAME_TABLE
    fault: ParseError | None = None
    for line in lines:
        name, sep, value = line.partition(":")
        key = table.get(name)
        if key is None:
            if len(line) > max_line:
                fault = fault or ParseError(400, "Header Line Too Long")
                continue
            if line[:1] in (" ", "\t"):
                if not headers:
                    fault = fault or ParseError(400, "Malformed header folding")
                    continue
                prev_name, prev = headers[-1]
                cont = line.strip(" \t")
                if cont:
                    prev = f"{prev} {cont}" if prev else cont
                    if len(prev) > max_line:
                        fault = fault or ParseError(400, "Header Line Too Long")
                        continue
                    headers[-1] = (prev_name, prev)
                continue
            if not sep:
                if line:
                    fault = fault or ParseError(400, "Malformed header line")
                continue
            name = name.rstrip(" \t")
            if not name or not TOKEN_CHARS.issuperset(name):
                fault = fault or ParseError(400, "Malformed header name")
                continue
            key = name.lower()
            key = COMPACT_FORMS.get(key, key)
        elif not sep:
            fault = fault or ParseError(400, "Malformed header line")  # "Via" alone on a line
            continue
        elif len(line) > max_line:
            fault = fault or ParseError(400, "Header Line Too Long")
            continue
        add_key(key)
        add_header((name, value.strip(" \t")))
    if len(headers) > limits.max_headers:
        del headers[limits.max_headers:]
        del keys[limits.max_headers:]
        fault = ParseError(400, "Too Many Header Fields")
    return headers, keys, fault


def _content_length(headers: list[tuple[str, str]], keys: list[str]) -> int:
    """The one Content-Length value; 400 on a bad or disagreeing one (ncl, mcl01)."""
    if keys.count("content-length") == 1:
        text = headers[keys.index("content-length")][1]
        if 0 < len(text) <= 9 and text.isdigit() and text.isascii():
            return int(text)  # the usual single plain number
    value = -1
    for line in [headers[i][1] for i, k in enumerate(keys) if k == "content-length"]:
        for part in line.split(","):
            part = part.strip(" \t")
            if not part.isdigit() or not part.isascii():
                raise ParseError(400, "Bad Content-Length header")
            if len(part) > 10:
                part = part.lstrip("0") or "0"
                if len(part) > 10:
                    # no datagram is that long; and int() of a huge string is slow
                    raise ParseError(400, "Content-Length larger than message")
            n = int(part)
            if value >= 0 and n != value:
                raise ParseError(400, "Multiple Content-Length values")
            value = n
    return value


def parse_message(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Request | Response:
    """Parse one message with datagram framing rules (RFC 3261 §18.3).

    On a framing or start-line error a ParseError is raised; when the headers
    themselves could be read, ``exc.partial`` holds the message so the caller
    can still address a 400 to its sender. Octets after Content-Length are
    ignored (dblreq); without Content-Length the body is the rest of the
    datagram (inv2543).
    """
    if data[:1] in (b"\r", b"\n"):
        # RFC 3261 §7.5: ignore CRLFs before the start line
        data = data.lstrip(b"\r\n")
    lines, body_at = _split_lines(data)
    first = lines[0]
    if len(lines) > limits.max_headers * 2 + 1:
        del lines[limits.max_headers + 1:]  # no work on lines beyond the cap
        headers, keys, fault = _parse_headers(lines[1:], limits)
        fault = ParseError(400, "Too Many Header Fields")
    else:
        del lines[0]
        headers, keys, fault = _parse_headers(lines, limits)
    msg: Request | Response
    if first.startswith("SIP/"):
        msg = _response(first, headers, keys)
    else:
        msg = _request(first, headers, keys, limits)
    if fault is not None:
        fault.partial = msg
        raise fault
    if "content-length" not in keys:
        msg.body = data[body_at:]
        return msg
    try:
        length = _content_length(headers, keys)
    except ParseError as exc:
        exc.partial = msg
        raise
    if length > len(data) - body_at:
        raise _with_partial(400, "Content-Length larger than message", msg)  # clerr
    msg.body = data[body_at:body_at + length] if length else b""
    return msg


def _response(first: str, headers: list[tuple[str, str]], keys: list[str]) -> Response:
    version, _, rest = first.partition(" ")
    code, _, reason = rest.partition(" ")
    # Status-Code = 3DIGIT, 100-699 (bigcode: 4294967301 is dropped)
    if len(code) != 3 or not code.isdigit() or not code.isascii() or not "1" <= code[0] <= "6":
        raise ParseError(400, "Bad status code")
    if version.upper() != "SIP/2.0":
        raise ParseError(505, "Version Not Supported")
    return Response(int(code), reason, "SIP/2.0", headers, keys, b"")


def _request(first: str, headers: list[tuple[str, str]], keys: list[str], limits: Limits) -> Request:
    parts = first.split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2]:
        # lwsstart, trws, lwsruri: exactly one SP between the three elements
        raise _with_partial(400, "Malformed Request-Line", Request("", "", "SIP/2.0", headers, keys, b""))
    method, uri, version = parts
    req = Request(method, uri, version, headers, keys, b"")
    if not TOKEN_CHARS.issuperset(method):
        raise _with_partial(400, "Bad method", req)
    if len(uri) > limits.max_uri:
        raise _with_partial(414, "Request-URI Too Long", req)
    if version != "SIP/2.0":
        up = version.upper()
        if up != "SIP/2.0":
            if up.startswith("SIP/"):
                raise _with_partial(505, "Version Not Supported", req)  # badvers
            raise _with_partial(400, "Bad SIP version", req)
        req.version = "SIP/2.0"
    return req


def _with_partial(status: int, reason: str, partial: Message) -> ParseError:
    exc = ParseError(status, reason)
    exc.partial = partial
    return exc


def ack_key(data: bytes) -> TxKey | None:
    """The transaction key of an ACK read from its first header line alone, or None.

    Why: the ACK of a 3xx–6xx final needs nothing but its key (RFC 3261 §17.2.3:
    branch, sent-by, method), and parsing the whole message cost more than the rest
    of its handling. Only the usual shape is read here: ``Via:`` spelt so as the first
    header line, not folded, one via-parm with an RFC 3261 branch. None for anything
    else; the caller then parses the message as usual.
    """
    if data[:4] != b"ACK ":
        return None
    start = data.find(b"\r\n") + 2
    if start < 2 or data[start:start + 5] != b"Via: ":
        return None
    end = data.find(b"\r\n", start)
    if end < 0 or data[end + 2:end + 3] in (b" ", b"\t") or b"," in data[start:end]:
        return None
    try:
        via = parse_via(data[start + 5:end].decode("utf-8", "surrogateescape").strip(" \t"))
    except ParseError:
        return None
    branch = via.branch
    if branch is None or len(branch) <= len(MAGIC_COOKIE) or not branch.startswith(MAGIC_COOKIE):
        return None
    port = via.port  # sent-by spelt as App._on_request spells it
    return make_key(branch, f"{via.host}:{port}" if port is not None else via.host + ":", "ACK")
