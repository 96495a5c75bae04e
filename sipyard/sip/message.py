"""SIP messages: split once, parse typed values only when read.

A datagram is split into start line, header list and body in one pass; nothing
else is parsed until a handler reads it (``req.to``, ``req.vias`` …). Header
values are kept as received (folding joined with one space) so a message can be
re-serialised byte-faithfully apart from line ends, and so that an unknown header
such as ``UnknownHeaderWithUnusualValue: ;;,,;;,;`` (RFC 4475 wsinv) survives.

The header section is decoded with ``surrogateescape``: invalid UTF-8 round-trips
to the same bytes instead of raising, and raw NULs (intmeth) are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from .errors import ParseError
from .headers import NameAddr, Via, parse_cseq, parse_name_addr, parse_uint, parse_via, split_values
from .uri import AbsoluteUri, SipUri, TelUri, Uri, parse_uri

__all__ = [
    "COMPACT_FORMS",
    "Message",
    "Request",
    "Response",
    "STAR",
    "Limits",
    "parse_message",
    "build_response",
    "canonical_name",
]

#: RFC 3261 §7.3.3 and later RFCs' compact forms -> canonical lower-case name.
COMPACT_FORMS: Final[dict[str, str]] = {
    "a": "accept-contact", "b": "referred-by", "c": "content-type", "d": "request-disposition",
    "e": "content-encoding", "f": "from", "i": "call-id", "j": "reject-contact", "k": "supported",
    "l": "content-length", "m": "contact", "n": "identity-info", "o": "event", "r": "refer-to",
    "s": "subject", "t": "to", "u": "allow-events", "v": "via", "x": "session-expires",
    "y": "identity",
}

#: Headers whose value is one item even though it may contain commas.
_SINGLE_ITEM: Final = frozenset({
    "call-id", "cseq", "content-length", "max-forwards", "expires", "min-expires", "date",
    "content-type", "retry-after", "subject", "user-agent", "server", "timestamp",
    "www-authenticate", "authorization", "proxy-authenticate", "proxy-authorization",
    "organization", "priority", "reply-to", "mime-version", "in-reply-to", "content-disposition",
    "event", "subscription-state", "refer-to", "referred-by", "replaces", "join",
})

#: Marker for ``Contact: *``.
STAR: Final = "*"

_TOKEN_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)


class Limits:
    """Caps on attacker-controlled sizes; every cap maps to a clear status."""

    __slots__ = ("max_headers", "max_line", "max_uri")

    def __init__(self, max_headers: int = 256, max_line: int = 8192, max_uri: int = 4096) -> None:
        self.max_headers = max_headers
        self.max_line = max_line
        self.max_uri = max_uri


DEFAULT_LIMITS: Final = Limits()


def canonical_name(name: str) -> str:
    """Lower-case a header name and expand its compact form."""
    key = name.lower()
    return COMPACT_FORMS.get(key, key)


class Message:
    """Start line aside, requests and responses share the header model."""

    __slots__ = ("headers", "_keys", "body", "version", "_vias", "_from", "_to", "_cseq")

    def __init__(self, headers: list[tuple[str, str]], keys: list[str], body: bytes,
                 version: str = "SIP/2.0") -> None:
        self.headers = headers
        self._keys = keys
        self.body = body
        self.version = version
        self._vias: list[Via] | None = None
        self._from: NameAddr | None = None
        self._to: NameAddr | None = None
        self._cseq: tuple[int, str] | None = None

    # -- raw access ---------------------------------------------------------
    def get(self, name: str) -> str | None:
        """The first value of a header (the whole line for list headers)."""
        key = canonical_name(name)
        keys = self._keys
        for i in range(len(keys)):
            if keys[i] == key:
                return self.headers[i][1]
        return None

    def get_lines(self, name: str) -> list[str]:
        """Every occurrence of a header, each as one unsplit line."""
        key = canonical_name(name)
        return [self.headers[i][1] for i, k in enumerate(self._keys) if k == key]

    def get_all(self, name: str) -> list[str]:
        """Every value of every occurrence, comma-split for list headers."""
        key = canonical_name(name)
        lines = [self.headers[i][1] for i, k in enumerate(self._keys) if k == key]
        if key in _SINGLE_ITEM:
            return lines
        out: list[str] = []
        for line in lines:
            out.extend(split_values(line))
        return out

    def count(self, name: str) -> int:
        return self._keys.count(canonical_name(name))

    def has(self, name: str) -> bool:
        return canonical_name(name) in self._keys

    def set_header(self, name: str, value: str) -> None:
        """Replace the first occurrence (or append) and drop the others."""
        key = canonical_name(name)
        self.remove_header(name)
        self.headers.append((name, value))
        self._keys.append(key)

    def add_header(self, name: str, value: str, *, first: bool = False) -> None:
        if first:
            self.headers.insert(0, (name, value))
            self._keys.insert(0, canonical_name(name))
        else:
            self.headers.append((name, value))
            self._keys.append(canonical_name(name))

    def remove_header(self, name: str) -> None:
        key = canonical_name(name)
        keep = [i for i, k in enumerate(self._keys) if k != key]
        self.headers = [self.headers[i] for i in keep]
        self._keys = [self._keys[i] for i in keep]

    def replace_top_via(self, value: str) -> None:
        """Rewrite the topmost via-parm (for received/rport) keeping the others."""
        for i, k in enumerate(self._keys):
            if k == "via":
                name, line = self.headers[i]
                parts = split_values(line)
                parts[0] = value
                self.headers[i] = (name, ", ".join(parts))
                self._vias = None
                return

    # -- typed access ---------------------------------------------------------
    def _single(self, key: str, label: str) -> str:
        value: str | None = None
        for i, k in enumerate(self._keys):
            if k == key:
                if value is not None:
                    raise ParseError(400, f"Multiple {label} headers")
                value = self.headers[i][1]
        if value is None:
            raise ParseError(400, f"Missing {label} header")
        return value

    @property
    def call_id(self) -> str:
        value = self._single("call-id", "Call-ID")
        if not value or " " in value or "," in value:
            raise ParseError(400, "Bad Call-ID header")
        return value

    @property
    def cseq(self) -> tuple[int, str]:
        if self._cseq is None:
            try:
                self._cseq = parse_cseq(self._single("cseq", "CSeq"))
            except ParseError as exc:
                raise ParseError(400, exc.reason if "CSeq" in exc.reason else "Bad CSeq header") from None
        return self._cseq

    @property
    def from_(self) -> NameAddr:
        if self._from is None:
            self._from = _name_addr(self._single("from", "From"), "From")
        return self._from

    @property
    def to(self) -> NameAddr:
        if self._to is None:
            self._to = _name_addr(self._single("to", "To"), "To")
        return self._to

    @property
    def vias(self) -> list[Via]:
        if self._vias is None:
            values = self.get_all("via")
            if not values:
                raise ParseError(400, "Missing Via header")
            try:
                self._vias = [parse_via(v) for v in values]
            except ParseError:
                raise ParseError(400, "Bad Via header") from None
        return self._vias

    @property
    def top_via(self) -> Via:
        return self.vias[0]

    @property
    def max_forwards(self) -> int | None:
        lines = self.get_lines("max-forwards")
        if not lines:
            return None
        if len(lines) > 1:
            raise ParseError(400, "Multiple Max-Forwards headers")
        try:
            return parse_uint(lines[0], 255)
        except ParseError:
            raise ParseError(400, "Bad Max-Forwards header") from None

    @property
    def expires(self) -> int | None:
        lines = self.get_lines("expires")
        if not lines:
            return None
        if len(lines) > 1:
            raise ParseError(400, "Multiple Expires headers")
        try:
            return parse_uint(lines[0])
        except ParseError:
            raise ParseError(400, "Bad Expires header") from None

    @property
    def contacts(self) -> list[NameAddr] | str:
        values = self.get_all("contact")
        if len(values) == 1 and values[0] == "*":
            return STAR
        if "*" in values:
            raise ParseError(400, "Bad Contact header: * mixed with contacts")
        return [_name_addr(v, "Contact") for v in values]

    def to_bytes(self) -> bytes:
        parts = [self.start_line()]
        parts.extend(f"{n}: {v}" for n, v in self.headers)
        parts.append("")
        parts.append("")
        return "\r\n".join(parts).encode("utf-8", "surrogateescape") + self.body

    def start_line(self) -> str:
        raise NotImplementedError


def _name_addr(value: str, label: str) -> NameAddr:
    try:
        return parse_name_addr(value)
    except ParseError:
        raise ParseError(400, f"Bad {label} header") from None


class Request(Message):
    __slots__ = ("method", "uri", "_ruri")

    def __init__(self, method: str, uri: str, version: str, headers: list[tuple[str, str]],
                 keys: list[str], body: bytes) -> None:
        super().__init__(headers, keys, body, version)
        self.method = method
        self.uri = uri
        self._ruri: Uri | None = None

    @property
    def ruri(self) -> Uri:
        if self._ruri is None:
            self._ruri = parse_uri(self.uri)
        return self._ruri

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    __slots__ = ("status", "reason")

    def __init__(self, status: int, reason: str, version: str, headers: list[tuple[str, str]],
                 keys: list[str], body: bytes) -> None:
        super().__init__(headers, keys, body, version)
        self.status = status
        self.reason = reason

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# -- parsing -------------------------------------------------------------------

def _split_head(data: bytes) -> tuple[bytes, int]:
    """Find the end of the header section: (head, offset of the body)."""
    i = data.find(b"\r\n\r\n")
    j = data.find(b"\n\n")
    if i >= 0 and (j < 0 or i < j):
        return data[:i], i + 4
    if j >= 0:
        # Bare-LF messages (RFC 5118's archive form): tolerated.
        return data[:j], j + 2
    # No empty line at all (RFC 4475 baddn as archived): a datagram's end closes it.
    return data.rstrip(b"\r\n"), len(data)


def _parse_headers(lines: list[str], limits: Limits) -> tuple[list[tuple[str, str]], list[str]]:
    headers: list[tuple[str, str]] = []
    keys: list[str] = []
    compact = COMPACT_FORMS
    max_line = limits.max_line
    for line in lines:
        if len(line) > max_line:
            raise ParseError(400, "Header Line Too Long")
        if line[:1] in (" ", "\t"):
            if not headers:
                raise ParseError(400, "Malformed header folding")
            name, value = headers[-1]
            cont = line.strip()
            headers[-1] = (name, f"{value} {cont}" if value else cont)
            continue
        name, sep, value = line.partition(":")
        if not sep:
            if not line:
                continue
            raise ParseError(400, "Malformed header line")
        name = name.rstrip(" \t")
        if not name or not _is_token(name):
            raise ParseError(400, "Malformed header name")
        key = name.lower()
        keys.append(compact.get(key, key))
        headers.append((name, value.strip(" \t")))
    if len(headers) > limits.max_headers:
        raise ParseError(400, "Too Many Header Fields")
    return headers, keys


def _is_token(text: str) -> bool:
    tc = _TOKEN_CHARS
    for ch in text:
        if ch not in tc:
            return False
    return True


def _content_length(msg: Message) -> int | None:
    lines = msg.get_lines("content-length")
    if not lines:
        return None
    values = set()
    for line in lines:
        for part in line.split(","):
            part = part.strip()
            if not part.isdigit() or not part.isascii():
                raise ParseError(400, "Bad Content-Length header")
            values.add(int(part))
    if len(values) > 1:
        raise ParseError(400, "Multiple Content-Length values")
    return values.pop()


def parse_message(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Request | Response:
    """Parse one message with datagram framing rules (RFC 3261 §18.3).

    On a framing or start-line error a ParseError is raised; when the headers
    themselves could be read, ``exc.partial`` holds the message so the caller
    can still address a 400 to its sender.
    """
    start = 0
    n = len(data)
    while start < n and data[start] in b"\r\n":
        start += 1  # RFC 3261 §7.5: ignore CRLFs before the start line
    if start:
        data = data[start:]
    head, body_at = _split_head(data)
    text = head.decode("utf-8", "surrogateescape")
    if "\n" in text:
        lines = text.replace("\r\n", "\n").split("\n")
    else:
        lines = [text]
    first = lines[0]
    headers, keys = _parse_headers(lines[1:], limits)
    msg: Request | Response
    if first.startswith("SIP/"):
        msg = _response(first, headers, keys)
    else:
        msg = _request(first, headers, keys, limits)
    try:
        length = _content_length(msg)
        avail = len(data) - body_at
        if length is None:
            msg.body = data[body_at:]
        elif length > avail:
            raise ParseError(400, "Content-Length larger than message")
        else:
            msg.body = data[body_at:body_at + length]
    except ParseError as exc:
        exc.partial = msg
        raise
    return msg


def _response(first: str, headers: list[tuple[str, str]], keys: list[str]) -> Response:
    version, _, rest = first.partition(" ")
    code, sp, reason = rest.partition(" ")
    if len(code) != 3 or not code.isdigit() or not code.isascii() or code[0] == "0":
        raise ParseError(400, "Bad status code")
    if version.upper() != "SIP/2.0":
        raise ParseError(505, "Version Not Supported")
    return Response(int(code), reason, "SIP/2.0", headers, keys, b"")


def _request(first: str, headers: list[tuple[str, str]], keys: list[str], limits: Limits) -> Request:
    parts = first.split(" ")
    if len(parts) != 3 or not all(parts):
        req = Request("", "", "SIP/2.0", headers, keys, b"")
        exc = ParseError(400, "Malformed Request-Line")
        exc.partial = req
        raise exc
    method, uri, version = parts
    req = Request(method, uri, version, headers, keys, b"")
    if not _is_token(method):
        exc = ParseError(400, "Bad method")
        exc.partial = req
        raise exc
    if len(uri) > limits.max_uri:
        exc = ParseError(414, "Request-URI Too Long")
        exc.partial = req
        raise exc
    up = version.upper()
    if up != "SIP/2.0":
        status = 505 if up.startswith("SIP/") else 400
        exc = ParseError(status, "Version Not Supported" if status == 505 else "Bad SIP version")
        exc.partial = req
        raise exc
    req.version = "SIP/2.0"
    return req


# -- responses -------------------------------------------------------------------

def build_response(req: Request, status: int, reason: str, *, to_tag: str | None = None,
                   headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
                   server: str | None = None) -> bytes:
    """Serialise a response to ``req`` (RFC 3261 §8.2.6.2).

    Via, From, Call-ID and CSeq are copied as received; To gets ``to_tag`` if it
    has none and the status is above 100.
    """
    out = [f"SIP/2.0 {status} {reason}"]
    keys = req._keys
    hdrs = req.headers
    to_done = False
    for i, key in enumerate(keys):
        if key == "via":
            out.append(f"Via: {hdrs[i][1]}")
        elif key == "from":
            out.append(f"From: {hdrs[i][1]}")
        elif key == "to" and not to_done:
            value = hdrs[i][1]
            if to_tag is not None and status > 100 and not _has_tag(value):
                value = f"{value};tag={to_tag}"
            out.append(f"To: {value}")
            to_done = True
        elif key == "call-id":
            out.append(f"Call-ID: {hdrs[i][1]}")
        elif key == "cseq":
            out.append(f"CSeq: {hdrs[i][1]}")
    for name, value in headers:
        out.append(f"{name}: {value}")
    if server:
        out.append(f"Server: {server}")
    out.append(f"Content-Length: {len(body)}")
    out.append("")
    out.append("")
    return "\r\n".join(out).encode("utf-8", "surrogateescape") + body


def _has_tag(to_value: str) -> bool:
    """Cheap check for a tag param outside the URI (the common case)."""
    if ";tag=" not in to_value.lower().replace(" ", ""):
        return False
    try:
        return parse_name_addr(to_value).tag is not None
    except ParseError:
        return True


def is_sip_uri(uri: Uri) -> bool:
    return isinstance(uri, SipUri)


__all__ += ["is_sip_uri", "SipUri", "TelUri", "AbsoluteUri", "DEFAULT_LIMITS"]
