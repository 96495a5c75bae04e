"""SIP, SIPS and tel URIs: parse, byte-faithful ``str()``, RFC 3261 §19.1.4 comparison.

A proxy or registrar must hand back exactly what it received (RFC 4475
regescrt: "later retrievals must include the escaped Route header"), so a
parsed URI keeps its text in ``raw`` and every part *as written* — still
%-escaped. Decoding happens only where meaning is needed: ``user_unescaped``,
``param()`` name lookup and ``uri_equal``.

``parse_uri`` runs for every Request-URI. The common shape —
``sip[s]:[user@]host[:port][;params]`` with a hostname or IPv4 host and no
password, escapes or headers — is recognised by one precompiled regex built
from the ``_abnf`` character sets (possessive runs, no backtracking); anything
else goes to the full parser (a handful of ``str.find`` calls plus one
character-set check per part). The fast path accepts only what the full
parser accepts and builds an equal ``SipUri`` (tests/test_uri.py checks both
on generated and torture input). Fast-path results are also kept in a small
bounded cache keyed by the text, since a server sees the same targets over
and over; every call still returns a new object.

Strictness follows ``testdata/torture/INDEX.md``: LWS inside the URI
(lwsruri), ``<…>`` around it (ltgtruri), an unbracketed IPv6 host (RFC 5118
ipv6-bad) and malformed hosts or ports raise ``ParseError(400, "Bad URI: …")``.
Escaped headers in a Request-URI (escruri) parse into ``headers``; the
message layer decides what to do with them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import unquote

from sipyard.sip._abnf import (
    HEADER_CHARS,
    HOST_RE,
    LWS,
    PARAM_CHARS,
    PASSWORD_CHARS,
    PORTS,
    UNRESERVED,
    USER_CHARS,
    chars_ok,
    is_scheme,
    params_re,
    parse_port,
    port_miss,
    regex_class,
    split_params,
    valid_host,
    valid_ipv6,
)
from sipyard.sip.errors import ParseError

__all__ = [
    "MAX_URI_LENGTH",
    "clear_cache",
    "SipUri",
    "TelUri",
    "AbsoluteUri",
    "Uri",
    "parse_uri",
    "uri_equal",
    "escape",
    "unescape",
]

#: Longer URIs are refused with 414 before any work is done on them.
MAX_URI_LENGTH = 4096

Params: TypeAlias = "list[tuple[str, str | None]]"

# §19.1.4: these URI parameters must match if present in *either* URI.
_MUST_MATCH = ("user", "ttl", "method", "maddr", "transport")
_MISSING = object()
# global-number-digits / local-number-digits of RFC 3966 (phonedigit-hex, "*", "#",
# visual separators "-" "." "(" ")"; "+" only as the first character).
_TEL_CHARS = frozenset("0123456789abcdefABCDEF*#-.()")
_TEL_SEPARATORS = str.maketrans("", "", "-.()")
_PARAMS_CHARS = PARAM_CHARS | frozenset(";=")


def unescape(text: str) -> str:
    """Decode ``%HH`` escapes once (``%2541`` → ``%41``, never ``A``: RFC 4475 esc01).

    Octets that are not UTF-8 come back as surrogate escapes, so two different
    byte strings never decode to the same text; ``%00`` stays a NUL and does
    not truncate anything (escnull).
    """
    if "%" not in text:
        return text
    return unquote(text, errors="surrogateescape")


def escape(text: str, safe: str) -> str:
    """%-encode every character that is neither ``unreserved`` nor in ``safe``.

    The inverse of ``unescape`` for building URIs from decoded parts (for
    example a user name typed by an administrator).
    """
    allowed = UNRESERVED.union(safe) if safe else UNRESERVED
    if allowed.issuperset(text):
        return text
    out: list[str] = []
    for ch in text:
        if ch in allowed:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape"))
    return "".join(out)


def _param(params: Params, name: str) -> str | None:
    """Case-insensitive lookup; escaped names match too (esc01's ``;%6C%72`` is ``lr``)."""
    want = name.lower()
    for n, v in params:
        if n.lower() == want or ("%" in n and unescape(n).lower() == want):
            return "" if v is None else v
    return None


def _params_text(params: Params) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


@dataclass(slots=True, init=False)
class SipUri:
    """A ``sip:`` or ``sips:`` URI with its parts as written.

    Treat instances as values: change one with ``replace()``, which rebuilds
    ``raw``; assigning to a field would leave ``raw`` stale. The ``__init__``
    is written out because a dataclass's generated one stays interpreted
    Python in a compiled module, and every request parses a URI or two.
    """

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: Params
    headers: list[tuple[str, str]]
    raw: str

    def __init__(self, scheme: str, user: str | None, password: str | None, host: str,
                 port: int | None = None, params: Params | None = None,
                 headers: list[tuple[str, str]] | None = None, raw: str = "") -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = [] if params is None else params
        self.headers = [] if headers is None else headers
        self.raw = raw if raw else self._build()

    def __str__(self) -> str:
        return self.raw

    def _build(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts += (":", self.password)
            parts.append("@")
        parts.append(self.host)
        if self.port is not None:
            parts += (":", str(self.port))
        if self.params:
            parts.append(_params_text(self.params))
        if self.headers:
            parts += ("?", "&".join(f"{n}={v}" for n, v in self.headers))
        return "".join(parts)

    def param(self, name: str) -> str | None:
        """Value of the first URI parameter ``name`` (as written); ``""`` for a flag."""
        return _param(self.params, name)

    def has_param(self, name: str) -> bool:
        return _param(self.params, name) is not None

    @property
    def user_unescaped(self) -> str | None:
        """The user part with ``%HH`` decoded once (for AOR keys and comparisons)."""
        return None if self.user is None else unescape(self.user)

    @property
    def host_lower(self) -> str:
        """Lower-cased host; IPv6 in canonical form, still in brackets.

        ``[2001:DB8::0:1]`` and ``[2001:db8::1]`` are the same host; the
        tolerated three-colon form (RFC 5118 §4.10) canonicalises as ``::``.
        """
        host = self.host
        if host.startswith("["):
            try:
                addr = ipaddress.IPv6Address(host[1:-1].replace(":::", "::"))
            except ValueError:
                return host.lower()
            return f"[{addr.compressed}]"
        return host.lower()

    def replace(self, **changes: Any) -> SipUri:
        """A new URI with some parts changed and ``raw`` rebuilt from the parts.

        The lists are copied, so the new URI shares no mutable state with this one.
        """
        if "raw" in changes:
            raise TypeError("SipUri.replace(): raw is rebuilt from the parts")
        changes.setdefault("params", list(self.params))
        changes.setdefault("headers", list(self.headers))
        return dataclasses.replace(self, raw="", **changes)


@dataclass(slots=True)
class TelUri:
    """A ``tel:`` URI (RFC 3966): the number as written plus its parameters."""

    number: str
    params: Params = field(default_factory=list)
    raw: str = ""

    def __post_init__(self) -> None:
        if not self.raw:
            self.raw = f"tel:{self.number}{_params_text(self.params)}"

    def __str__(self) -> str:
        return self.raw

    def param(self, name: str) -> str | None:
        return _param(self.params, name)


@dataclass(slots=True)
class AbsoluteUri:
    """Any other scheme (``http:``, ``isbn:``, ``soap.beep:`` …), kept opaque.

    Parsers must accept these (RFC 4475 unkscm, novelsc, unksm2); whether a
    server may use one is the application's call (416, 400 …).
    """

    scheme: str
    raw: str

    def __str__(self) -> str:
        return self.raw


Uri: TypeAlias = SipUri | TelUri | AbsoluteUri


def _bad(text: str, what: str) -> ParseError:
    """Build the 400 for ``text``; spends time on the reason only once we have failed."""
    if any(c in LWS for c in text):
        what = "embedded whitespace"  # lwsruri
    elif text.startswith("<"):
        what = "enclosed in <>"  # ltgtruri
    return ParseError(400, f"Bad URI: {what}")


# The fast path's shape. Escapes ("%") are left out of every class so no
# escape check is needed; passwords (":" before "@"), headers ("?" after the
# host) and IPv6 references fall through to the full parser. USER_CHARS and
# the param classes contain neither "@" nor ":", so the possessive user run
# stops exactly where the full parser's ``find("@")`` does. An empty pvalue
# (";x=") is allowed, as in ``_parse_uri_params``.
_PCHAR_RE = regex_class(PARAM_CHARS - {"%"})
_SIP_FAST = re.compile(
    rf"(sips?):(?:({regex_class(USER_CHARS - {'%'})}++)@)?+"
    rf"({HOST_RE})(?::([0-9]{{1,5}}))?+"
    + params_re(_PCHAR_RE, _PCHAR_RE + "*+", 1)
).fullmatch

#: Request-URI text → the parts of its ``SipUri``, for targets that come back
#: again and again (OPTIONS pings, REGISTER to the domain, one PBX number).
#: Each hit still builds a new ``SipUri`` with its own lists, so no caller can
#: change another's URI. Only fast-path URIs of at most ``_CACHE_KEY_MAX``
#: characters go in, and the dict is emptied when it reaches
#: ``_CACHE_SIZE`` entries: hostile traffic can only churn it, never grow it.
_CACHE: dict[str, tuple[str, str | None, str, int | None, tuple[tuple[str, str | None], ...]]] = {}
_CACHE_SIZE = 1024
_CACHE_KEY_MAX = 256


def clear_cache() -> int:
    """Empty the Request-URI cache; the number of entries it held.

    The server calls this on its housekeeping sweep: entries made during a
    flood of distinct URIs would otherwise stay, scattered over the memory
    the flood used, and keep it from being returned (issue #16).
    """
    n = len(_CACHE)
    _CACHE.clear()
    return n


def parse_uri(text: str) -> Uri:
    """Parse a URI; ``ParseError(400, "Bad URI: …")`` when it is malformed.

    ``text`` is the URI alone — no ``<>``, no surrounding LWS. Longer than
    ``MAX_URI_LENGTH`` → ``ParseError(414, "Request-URI Too Long")``.
    """
    params: Params
    hit = _CACHE.get(text)
    if hit is not None:
        scheme, user, host, port, cached = hit
        params = list(cached)
    else:
        m = _SIP_FAST(text) if len(text) <= MAX_URI_LENGTH else None
        if m is None:
            return _parse_uri_full(text)
        scheme, user, host, port_text, n1, v1, rest = m.groups()
        port = None
        if port_text is not None:
            port = PORTS.get(port_text)
            if port is None:
                port = port_miss(port_text)
                if port < 0:
                    return _parse_uri_full(text)
        if n1 is None:
            params = []
        else:
            params = [(n1, v1)]
            if rest:
                params += split_params(rest)
        if len(text) <= _CACHE_KEY_MAX:
            if len(_CACHE) >= _CACHE_SIZE:
                _CACHE.clear()
            _CACHE[text] = (scheme, user, host, port, tuple(params))
    # The plain constructor: mypyc compiles SipUri to a native class, which
    # object.__new__ cannot build, and compiled construction is cheap anyway.
    return SipUri(scheme, user, None, host, port, params, [], text)


def _parse_uri_full(text: str) -> Uri:
    """The general parser: every scheme, escapes, passwords, headers, IPv6."""
    if len(text) > MAX_URI_LENGTH:
        raise ParseError(414, "Request-URI Too Long")
    if text.startswith("sip:"):  # the common case skips the scheme checks
        return _parse_sip(text, "sip", 4)
    colon = text.find(":")
    if colon <= 0 or not is_scheme(text[:colon]):
        raise _bad(text, "no scheme")
    scheme = text[:colon]
    if not scheme.islower():
        scheme = scheme.lower()
    if scheme == "sip" or scheme == "sips":
        return _parse_sip(text, scheme, colon + 1)
    if scheme == "tel":
        return _parse_tel(text, colon + 1)
    rest = text[colon + 1 :]
    # absoluteURI: anything visible except the delimiters that would end it in a header
    if not rest or not rest.isascii() or not rest.isprintable() or any(c in rest for c in ' <>"'):
        raise _bad(text, f"malformed {scheme} URI")
    return AbsoluteUri(scheme, text)


def _parse_sip(text: str, scheme: str, pos: int) -> SipUri:
    user: str | None = None
    password: str | None = None
    # userinfo ends at the first "@": user and password cannot contain one
    # unescaped. semiuri: "sip:user;par=u%40example.net@example.com" → user
    # "user;par=u%40example.net"; intmeth: ";", "?", "," belong to the user.
    at = text.find("@", pos)
    if at >= 0:
        colon = text.find(":", pos, at)
        if colon >= 0:
            user = text[pos:colon]
            password = text[colon + 1 : at]
            if not chars_ok(password, PASSWORD_CHARS):
                raise _bad(text, "password")
        else:
            user = text[pos:at]
        if not user or not chars_ok(user, USER_CHARS):
            raise _bad(text, "user")
        pos = at + 1
    end = len(text)
    qmark = text.find("?", pos)
    if qmark >= 0:
        end = qmark
    semi = text.find(";", pos, end)
    hp_end = semi if semi >= 0 else end

    port: int | None = None
    if text.startswith("[", pos):
        # RFC 5118 §4.3: "[2001:db8::10:5070]" is one address; a port goes after "]"
        close = text.find("]", pos, hp_end)
        if close < 0:
            raise _bad(text, "host")
        host = text[pos : close + 1]
        if not valid_ipv6(host[1:-1]):
            raise _bad(text, "host")
        if close + 1 < hp_end:
            if text[close + 1] != ":":
                raise _bad(text, "host")
            port = parse_port(text[close + 2 : hp_end])
            if port < 0:
                raise _bad(text, "port")
    else:
        # an unbracketed IPv6 address (RFC 5118 ipv6-bad) ends up here as a
        # host plus a "port" full of colons, and fails the port check
        colon = text.find(":", pos, hp_end)
        if colon >= 0:
            host = text[pos:colon]
            port = parse_port(text[colon + 1 : hp_end])
            if port < 0:
                ipv6 = text.find(":", colon + 1, hp_end) >= 0
                raise _bad(text, "IPv6 host without brackets" if ipv6 else "port")
        else:
            host = text[pos:hp_end]
        if not valid_host(host):
            raise _bad(text, "host")

    params = _parse_uri_params(text, semi + 1, end) if semi >= 0 else []
    headers: list[tuple[str, str]] = []
    if qmark >= 0:
        for item in text[qmark + 1 :].split("&"):
            name, eq, value = item.partition("=")
            if (
                not eq
                or not name
                or not chars_ok(name, HEADER_CHARS)
                or not chars_ok(value, HEADER_CHARS)
            ):
                raise _bad(text, "header")
            headers.append((name, value))
    return SipUri(scheme, user, password, host, port, params, headers, text)


def _parse_uri_params(text: str, start: int, end: int) -> Params:
    """uri-parameters = *( ";" pname [ "=" pvalue ] ), as written."""
    seg = text[start:end]
    # one pass over the whole segment; then only the structure per item
    if not chars_ok(seg, _PARAMS_CHARS):
        raise _bad(text, "parameter")
    out: Params = []
    for item in seg.split(";"):
        name, eq, value = item.partition("=")
        # LENIENCY: an empty pvalue (";x=") is kept as "" rather than refused.
        if not name or "=" in value:
            raise _bad(text, "parameter")
        out.append((name, value if eq else None))
    return out


def _parse_tel(text: str, pos: int) -> TelUri:
    semi = text.find(";", pos)
    number = text[pos:semi] if semi >= 0 else text[pos:]
    digits = number[1:] if number.startswith("+") else number
    if not digits or not _TEL_CHARS.issuperset(digits):
        raise _bad(text, "telephone number")
    params = _parse_uri_params(text, semi + 1, len(text)) if semi >= 0 else []
    return TelUri(number, params, text)


# --- comparison (RFC 3261 §19.1.4) -------------------------------------------------


def _norm_params(params: Params) -> dict[str, str | None]:
    """Names and values decoded and lower-cased; the first of duplicate names wins."""
    out: dict[str, str | None] = {}
    for n, v in params:
        key = unescape(n).lower()
        if key not in out:
            out[key] = None if v is None else unescape(v).lower()
    return out


def _sip_equal(a: SipUri, b: SipUri) -> bool:
    if a.scheme != b.scheme or a.port != b.port:
        return False
    # userinfo is case-sensitive, but an escaped character equals its literal
    if (a.user is None) != (b.user is None) or (a.password is None) != (b.password is None):
        return False
    if a.user != b.user and unescape(a.user or "") != unescape(b.user or ""):
        return False
    if a.password != b.password and unescape(a.password or "") != unescape(b.password or ""):
        return False
    if a.host != b.host and a.host_lower != b.host_lower:
        return False
    if a.params or b.params:
        pa = _norm_params(a.params)
        pb = _norm_params(b.params)
        for key in _MUST_MATCH:
            if pa.get(key, _MISSING) != pb.get(key, _MISSING):
                return False
        for key, value in pa.items():
            if key in pb and pb[key] != value:
                return False
    if a.headers or b.headers:
        # never ignored: every header must be in both and match (order is free)
        ha = sorted((unescape(n).lower(), unescape(v)) for n, v in a.headers)
        hb = sorted((unescape(n).lower(), unescape(v)) for n, v in b.headers)
        if ha != hb:
            return False
    return True


def _tel_equal(a: TelUri, b: TelUri) -> bool:
    """RFC 3966 §4: digits without visual separators, hex case-insensitive, same params."""
    na = a.number.translate(_TEL_SEPARATORS).lower()
    nb = b.number.translate(_TEL_SEPARATORS).lower()
    return na == nb and _norm_params(a.params) == _norm_params(b.params)


def uri_equal(a: Uri, b: Uri) -> bool:
    """RFC 3261 §19.1.4 equivalence (not transitive, by the RFC's own design).

    Scheme and host compare case-insensitively, the user part case-sensitively,
    ``%HH`` equals the character it encodes; ``user``, ``ttl``, ``method``,
    ``maddr`` and ``transport`` must match when either URI has them, other
    parameters only when both do; headers must all match. URIs of different
    kinds are never equal; other schemes compare by scheme plus exact text.
    """
    if isinstance(a, SipUri):
        return isinstance(b, SipUri) and _sip_equal(a, b)
    if isinstance(a, TelUri):
        return isinstance(b, TelUri) and _tel_equal(a, b)
    return (
        isinstance(b, AbsoluteUri)
        and a.scheme == b.scheme
        and a.raw[len(a.scheme) :] == b.raw[len(b.scheme) :]
    )
