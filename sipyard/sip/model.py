"""SIP messages: the model. Split once, parse typed values only when read.

A message holds its header list as received (``(name as written, value)``
with a parallel list of canonical lower-case names); nothing is parsed until a
handler reads it (``req.to``, ``req.vias`` …), and each typed value is parsed
once and cached. Values are kept as received (folding joined with one space)
so a message can be re-serialised byte-faithfully apart from line ends, and so
that an unknown header such as ``UnknownHeaderWithUnusualValue: ;;,,;;,;``
(RFC 4475 wsinv) survives.

The usual shapes of From/To are recognised by one linear regex (the "fast
path" below) before the general parser of headers.py runs; the Via has one
parser, ``headers.parse_via``, with its own fast path. Reading bytes is
:mod:`sipyard.sip.reader`; writing responses :mod:`sipyard.sip.writer`.
"""

from __future__ import annotations

import re
from typing import Final

from ._abnf import TOKEN_CHARS, UNRESERVED
from .errors import ParseError
from .headers import NameAddr, Via, parse_cseq, parse_name_addr, parse_uint, parse_via, split_values
from .uri import Uri, parse_uri

__all__ = [
    "COMPACT_FORMS", "Message", "Request", "Response", "STAR", "Limits", "DEFAULT_LIMITS",
    "canonical_name", "NAME_TABLE",
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

#: Header names as phones and sipp usually spell them, so the split can skip
#: ``rstrip``/token check/``lower`` for them: a fixed table, never grown from input.
_USUAL_NAMES: Final = """
    Via From To Call-ID CSeq Contact Max-Forwards Content-Length Content-Type Expires
    Min-Expires User-Agent Server Accept Accept-Encoding Accept-Language Allow Allow-Events
    Supported Require Proxy-Require Unsupported Route Record-Route Path Authorization
    Proxy-Authorization WWW-Authenticate Proxy-Authenticate Authentication-Info Date Timestamp
    Event Subscription-State Subject Organization Priority Reply-To Refer-To Referred-By
    Replaces Content-Disposition Content-Encoding Session-Expires Min-SE P-Asserted-Identity
    P-Preferred-Identity Privacy Reason Warning Retry-After Call-Info Alert-Info Error-Info
    MIME-Version In-Reply-To RSeq RAck SIP-ETag SIP-If-Match Identity Identity-Info
    Accept-Contact Reject-Contact Request-Disposition Join Security-Client Security-Server
    Security-Verify
"""


def _build_name_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for name in _USUAL_NAMES.split():
        key = name.lower()
        for spelling in (name, key, name.upper(), name.title(), key.capitalize()):
            table[spelling] = key
    for letter, key in COMPACT_FORMS.items():
        table[letter] = key
        table[letter.upper()] = key
    return table


NAME_TABLE: Final[dict[str, str]] = _build_name_table()
_NAME_TABLE = NAME_TABLE


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
    key = _NAME_TABLE.get(name)
    if key is not None:
        return key
    key = name.lower()
    return COMPACT_FORMS.get(key, key)


#: Typed values cached per message; writing a header drops its cache.
_CACHED_KEYS: Final = frozenset({"via", "from", "to", "cseq", "call-id", "contact"})


class Message:
    """Start line aside, requests and responses share the header model.

    ``headers`` holds ``(name as written, value)``; ``_keys`` the canonical
    lower-case name of each, kept in step by every mutator below.
    """

    __slots__ = ("headers", "_keys", "body", "version", "_vias", "_top", "_from", "_to", "_cseq",
                 "_call_id", "_contacts", "_split")

    def __init__(self, headers: list[tuple[str, str]], keys: list[str], body: bytes,
                 version: str = "SIP/2.0") -> None:
        self.headers = headers
        self._keys = keys
        self.body = body
        self.version = version
        self._vias: list[Via] | None = None
        self._top: Via | None = None  # the top Via alone (a response needs no other)
        self._from: NameAddr | None = None
        self._to: NameAddr | None = None
        self._cseq: tuple[int, str] | None = None
        self._call_id: str | None = None
        self._contacts: list[NameAddr] | str | None = None
        #: get_all's comma-split lists by key (a proxy asks for Route half a dozen times)
        self._split: dict[str, list[str]] | None = None

    # -- raw access ---------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        """The canonical name of each header, in step with ``headers`` (read, do not edit)."""
        return self._keys

    def get(self, name: str) -> str | None:
        """The first value of a header (the whole line for list headers)."""
        key = canonical_name(name)
        keys = self._keys
        if key not in keys:
            return None
        return self.headers[keys.index(key)][1]

    def get_lines(self, name: str) -> list[str]:
        """Every occurrence of a header, each as one unsplit line."""
        return self._lines(canonical_name(name))

    def _lines(self, key: str) -> list[str]:
        keys = self._keys
        n = keys.count(key)
        if n == 0:
            return []
        if n == 1:
            return [self.headers[keys.index(key)][1]]
        hdrs = self.headers
        return [hdrs[i][1] for i, k in enumerate(keys) if k == key]

    def get_all(self, name: str) -> list[str]:
        """Every value of every occurrence, comma-split for list headers.

        Commas inside quoted-strings and ``<…>`` do not split; an unterminated
        quote raises ``ParseError(400)``.
        """
        key = canonical_name(name)
        lines = self._lines(key)
        if key in _SINGLE_ITEM or not lines:
            return lines
        split = self._split
        if split is None:
            split = self._split = {}
        else:
            hit = split.get(key)
            if hit is not None:
                return list(hit)  # a copy: callers may edit what they get
        out: list[str] = []
        for line in lines:
            out.extend(split_values(line))
        split[key] = out
        return list(out)

    def count(self, name: str) -> int:
        """Number of header lines with that name (compact forms count too)."""
        return self._keys.count(canonical_name(name))

    def has(self, name: str) -> bool:
        return canonical_name(name) in self._keys

    def _invalidate(self, key: str) -> None:
        if self._split is not None:
            self._split.pop(key, None)
        if key in _CACHED_KEYS:
            self._vias = None
            self._top = None
            self._from = None
            self._to = None
            self._cseq = None
            self._call_id = None
            self._contacts = None

    def set_header(self, name: str, value: str) -> None:
        """Drop every occurrence and append one ``name: value``."""
        key = canonical_name(name)
        self.remove_header(name)
        self.headers.append((name, value))
        self._keys.append(key)
        self._invalidate(key)

    def add_header(self, name: str, value: str, *, first: bool = False) -> None:
        key = canonical_name(name)
        if first:
            self.headers.insert(0, (name, value))
            self._keys.insert(0, key)
        else:
            self.headers.append((name, value))
            self._keys.append(key)
        self._invalidate(key)

    def remove_header(self, name: str) -> None:
        key = canonical_name(name)
        if key not in self._keys:
            return
        keep = [i for i, k in enumerate(self._keys) if k != key]
        self.headers = [self.headers[i] for i in keep]
        self._keys = [self._keys[i] for i in keep]
        self._invalidate(key)

    def replace_top_via(self, value: str) -> None:
        """Rewrite the topmost via-parm (for received/rport) keeping the others."""
        keys = self._keys
        if "via" not in keys:
            return
        i = keys.index("via")
        name, line = self.headers[i]
        if "," in line:
            parts = split_values(line)
            parts[0] = value
            line = ", ".join(parts)
        else:
            line = value
        self.headers[i] = (name, line)
        self._vias = None
        self._top = None
        if self._split is not None:
            self._split.pop("via", None)

    # -- typed access ---------------------------------------------------------
    def _single(self, key: str, label: str) -> str:
        """The value of a header that must appear exactly once (insuf, multi01)."""
        keys = self._keys
        n = keys.count(key)
        if n != 1:
            raise ParseError(400, f"Missing {label} header" if n == 0 else f"Multiple {label} headers")
        return self.headers[keys.index(key)][1]

    @property
    def call_id(self) -> str:
        value = self._call_id
        if value is None:
            value = self._single("call-id", "Call-ID")
            # callid = word ["@" word]: no LWS, no comma (two Call-IDs joined on one line)
            if not value or " " in value or "\t" in value or "," in value:
                raise ParseError(400, "Bad Call-ID header")
            self._call_id = value
        return value

    @property
    def cseq(self) -> tuple[int, str]:
        cseq = self._cseq
        if cseq is None:
            value = self._single("cseq", "CSeq")
            # fast path for the usual "1 OPTIONS"; anything else goes to parse_cseq
            num, sp, method = value.partition(" ")
            if (sp and 0 < len(num) <= 9 and num.isdigit() and num.isascii() and method
                    and TOKEN_CHARS.issuperset(method)):
                cseq = (int(num), method)
            else:
                try:
                    cseq = parse_cseq(value)
                except ParseError:
                    raise ParseError(400, "Bad CSeq header") from None
            self._cseq = cseq
        return cseq

    @property
    def from_(self) -> NameAddr:
        na = self._from
        if na is None:
            na = self._from = _name_addr(self._single("from", "From"), "From")
        return na

    @property
    def to(self) -> NameAddr:
        na = self._to
        if na is None:
            na = self._to = _name_addr(self._single("to", "To"), "To")
        return na

    def check_from_to(self) -> None:
        """Validate From and To without building NameAddr objects when they are simple.

        ``<sip:…>`` optionally followed by ``;tag=token`` is the shape nearly every
        request has; anything else is parsed fully (and cached), so the torture
        vectors baddn, quotbal and badaspec are still refused with 400.
        """
        if self._from is None and not _simple_name_addr(self._single("from", "From")):
            self.from_  # noqa: B018 - full parse; raises on a bad value
        if self._to is None and not _simple_name_addr(self._single("to", "To")):
            self.to  # noqa: B018

    @property
    def vias(self) -> list[Via]:
        vias = self._vias
        if vias is None:
            lines = self._lines("via")
            if not lines:
                raise ParseError(400, "Missing Via header")
            try:
                if len(lines) == 1 and "," not in lines[0]:
                    top = self._top  # top_via parsed this very line already
                    vias = [top if top is not None else parse_via(lines[0])]
                else:
                    vias = [parse_via(v) for line in lines for v in split_values(line)]
            except ParseError:
                raise ParseError(400, "Bad Via header") from None
            if not vias:
                raise ParseError(400, "Bad Via header")
            self._vias = vias
        return vias

    @property
    def top_via(self) -> Via:
        """The topmost via-parm, parsed without the others (they may never be needed)."""
        vias = self._vias
        if vias is not None:
            return vias[0]
        top = self._top
        if top is None:
            keys = self._keys
            if "via" not in keys:
                raise ParseError(400, "Missing Via header")
            line = self.headers[keys.index("via")][1]
            try:
                if "," in line:
                    values = split_values(line)
                    if not values:
                        raise ParseError(400, "Bad Via header")
                    line = values[0]
                top = self._top = parse_via(line)
            except ParseError:
                raise ParseError(400, "Bad Via header") from None
        return top

    @property
    def max_forwards(self) -> int | None:
        return self._uint("max-forwards", "Max-Forwards", 255)

    @property
    def expires(self) -> int | None:
        return self._uint("expires", "Expires", 2**32 - 1)

    def _uint(self, key: str, label: str, limit: int) -> int | None:
        keys = self._keys
        n = keys.count(key)
        if n == 0:
            return None
        if n > 1:
            raise ParseError(400, f"Multiple {label} headers")
        value = self.headers[keys.index(key)][1]
        if 0 < len(value) <= 3 and value.isdigit() and value.isascii():
            number = int(value)
            if number <= limit:
                return number
        try:
            return parse_uint(value, limit)
        except ParseError:
            raise ParseError(400, f"Bad {label} header") from None

    @property
    def contacts(self) -> list[NameAddr] | str:
        """The Contact values, or ``STAR`` for ``Contact: *`` (alone)."""
        contacts = self._contacts
        if contacts is None:
            values = self.get_all("contact")
            if len(values) == 1 and values[0] == "*":
                contacts = STAR
            elif "*" in values:
                raise ParseError(400, "Bad Contact header: * mixed with contacts")
            else:
                contacts = [_name_addr(v, "Contact") for v in values]
            self._contacts = contacts
        return contacts

    def to_bytes(self) -> bytes:
        """Serialise as ``Name: value`` lines; header bytes come back as received."""
        parts = [self.start_line()]
        parts.extend([f"{n}: {v}" for n, v in self.headers])
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


# -- fast paths ----------------------------------------------------------------
#
# Nearly every request a registrar sees has the same simple shapes: ``SIP/2.0/UDP
# 192.0.2.1:5060;branch=z9hG4bK…``, ``<sip:alice@example.com>;tag=…``,
# ``sip:host:port``. One ``re.fullmatch`` recognises those (each pattern is a
# chain of character classes separated by delimiters the classes exclude, so
# matching is linear: no backtracking on attacker input) and builds the same
# object the general parser in headers.py / uri.py would. Anything else —
# LWS, quotes, escapes, IPv6, odd characters — returns None and goes to the
# general parser, so a fast path can only ever accept a subset of what the
# general parser accepts (tests/test_message.py checks both agree).

def _cls(chars: frozenset[str]) -> str:
    return "[" + "".join(re.escape(c) for c in sorted(chars)) + "]"


_TOKEN = _cls(TOKEN_CHARS)
# dotted quad, each octet <= 255 (leading zeros allowed, as _abnf.valid_ipv4 does)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9]?[0-9])"
# a hostname that is not all digits and dots (those must be an IPv4 address)
_HOST = (rf"(?:{_OCTET}(?:\.{_OCTET}){{3}}"
         r"|(?=[0-9.]*+[A-Za-z_-])[A-Za-z0-9_][A-Za-z0-9._-]*+)")
# Possessive quantifiers (++, *+): every class stops at a delimiter it does not
# contain, so giving back characters could never help a match.
_SIMPLE_NAME_ADDR: Final = re.compile(
    rf"<sip:{_cls(UNRESERVED | frozenset('&=+$,;:@[]/%'))}++>(?:;tag={_TOKEN}++)?"
).fullmatch


def _simple_name_addr(value: str) -> bool:
    """True when ``value`` is ``<sip:…>`` or ``<sip:…>;tag=token``.

    Only says yes to shapes that ``parse_name_addr`` accepts; a no means
    "parse it fully", never "reject".
    """
    return _SIMPLE_NAME_ADDR(value) is not None


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
        ruri = self._ruri
        if ruri is None:
            ruri = self._ruri = parse_uri(self.uri)  # cached: the same R-URI repeats
        return ruri

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
