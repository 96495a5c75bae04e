"""Typed parsing of the header values a server reads: Via, name-addr, CSeq, auth.

The message layer keeps every header as text and calls these only for the
fields a handler actually reads (DESIGN §8). Every request needs the top Via,
From and To tags and CSeq, so each of those parsers first tries a *fast path*:
one precompiled regex for the shape real user agents send (``SIP/2.0/UDP
host:port;branch=…;rport``, ``"Name" <sip:…>;tag=…``, ``1 INVITE``) whose
character classes are built from the same ``_abnf`` sets the full parser
checks against, with possessive quantifiers and atomic groups only, so it
cannot backtrack on hostile input. When the fast regex does not match — LWS
in odd places, quoted params, IPv6, escapes — the full parser (a few
``str.find`` / ``partition`` calls plus character-set checks) decides, and it
alone produces errors. The fast path only accepts what the full parser
accepts and returns an equal object (tests/test_headers.py checks both on
generated and torture input). Two bounded caches skip even the regex for
what repeats: the ``[display] <uri>`` head of a From/To (only the tag
changes between requests) and whole CSeq values (immutable tuples); Via
values carry a fresh branch each time and are not cached. Values arrive
unfolded (continuation lines joined with one SP), so LWS here means spaces
and tabs.

Strictness follows ``testdata/torture/INDEX.md``: the RFC 4475 invalid
vectors baddn, quotbal, badaspec, regbadct and badinv01 raise
``ParseError(400, …)``; the valid ones (wsinv's LWS everywhere, lwsdisp's
``caller<sip:…>``, intmeth's odd tokens, RFC 5118's IPv6 forms) parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sipyard.sip._abnf import (
    DISPLAY_CHARS,
    HOST_RE,
    LWS,
    PORTS,
    TOKEN_CHARS,
    VALUE_CHARS,
    is_scheme,
    is_token,
    params_re,
    parse_port,
    port_miss,
    regex_class,
    split_params,
    valid_host,
    valid_ipv6,
)
from sipyard.sip.errors import ParseError
from sipyard.sip.uri import Uri, parse_uri

__all__ = [
    "clear_caches",
    "split_values",
    "parse_params",
    "NameAddr",
    "parse_name_addr",
    "Via",
    "parse_via",
    "parse_cseq",
    "parse_uint",
    "parse_auth",
    "quote",
    "unquote",
]

Params = list[tuple[str, str | None]]

# Single-character classes: a search for one of them is a linear scan.
_LIST_SPECIAL = re.compile(r'[,"<]')
_PARAM_SPECIAL = re.compile(r'[;"]')
# Parameters text without LWS or quotes: the fast path of _params.
_PARAMS_FAST = VALUE_CHARS | frozenset(";")
# What may not appear in a URI written inside <> (badaspec: "< sip:… >").
_URI_FORBIDDEN = re.compile(r'[\x00-\x20\x7f<>"]')

# --- fast-path building blocks (see the module docstring) ---
_TOKEN_RE = regex_class(TOKEN_CHARS)
# ";name[=value]" without LWS or quotes: exactly what _params' own fast branch
# accepts (token names, non-empty VALUE_CHARS values; VALUE_CHARS holds "="
# but not ";", so a value runs to the next ";" as partition("=") splits it).
_VALUE_RE = regex_class(VALUE_CHARS) + "++"
# scheme ":" as _uri_text_ok checks it (the scheme run stops at the first ":")
_SCHEME_RE = r"[A-Za-z][-+.A-Za-z0-9]*+:"


def _skip_quoted(s: str, i: int, reason: str) -> int:
    """Index just past the quoted-string that starts at ``s[i] == '"'``.

    quoted-pair = "\\" (any char but CR/LF), so ``\\"`` does not end the string
    (wsinv's ``"J Rosenberg \\\\\\""``, intmeth's ``\\<NUL>``).
    """
    j = i + 1
    while True:
        q = s.find('"', j)
        if q < 0:
            raise ParseError(400, reason)  # quotbal: unterminated quoted string
        b = s.find("\\", j, q)
        if b < 0:
            return q + 1
        j = b + 2


def _split_lws(s: str) -> tuple[str, str]:
    """``"word  rest…"`` → ``("word", "rest…")``, splitting at the first SP/HTAB only
    (``str.split()`` would also split at NEL, FS and other Unicode spaces)."""
    s = s.strip(LWS)
    sp = s.find(" ")
    tab = s.find("\t")
    if tab >= 0 and (sp < 0 or tab < sp):
        sp = tab
    if sp < 0:
        return s, ""
    return s[:sp], s[sp + 1 :].lstrip(LWS)


def quote(s: str) -> str:
    """Make a quoted-string: wrap in DQUOTEs, backslash-escape ``"`` and ``\\``."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unquote(s: str) -> str:
    """Undo ``quote``; text that is not a quoted-string is returned unchanged."""
    if len(s) < 2 or s[0] != '"' or s[-1] != '"':
        return s
    inner = s[1:-1]
    if "\\" not in inner:
        return inner
    out: list[str] = []
    i = 0
    while True:
        b = inner.find("\\", i)
        if b < 0 or b + 1 >= len(inner):
            out.append(inner[i:])
            return "".join(out)
        out.append(inner[i:b])
        out.append(inner[b + 1])
        i = b + 2


def split_values(value: str) -> list[str]:
    """Split a header value at commas outside quoted-strings and ``<…>``.

    Each piece is stripped; empty pieces are dropped (wsinv's ``;;,,;;,;``
    gives three opaque pieces, not an error). An unterminated quote raises
    ``ParseError(400)`` (quotbal). An unclosed ``<`` keeps the rest as one
    piece, which ``parse_name_addr`` then refuses.
    """
    if '"' not in value and "<" not in value:
        if "," not in value:
            v = value.strip(LWS)
            return [v] if v else []
        return [p for p in (x.strip(LWS) for x in value.split(",")) if p]
    out: list[str] = []
    start = pos = 0
    while True:
        m = _LIST_SPECIAL.search(value, pos)
        if m is None:
            break
        i = m.start()
        c = value[i]
        if c == ",":
            piece = value[start:i].strip(LWS)
            if piece:
                out.append(piece)
            start = pos = i + 1
        elif c == '"':
            pos = _skip_quoted(value, i, "Unterminated quoted string")
        else:
            gt = value.find(">", i + 1)
            if gt < 0:
                break
            pos = gt + 1
    piece = value[start:].strip(LWS)
    if piece:
        out.append(piece)
    return out


def _split_params(text: str, reason: str) -> list[str]:
    """Split at ``;`` outside quoted-strings (``+sip.instance="<urn:…;x>"``)."""
    if '"' not in text:
        return text.split(";")
    out: list[str] = []
    start = pos = 0
    while True:
        m = _PARAM_SPECIAL.search(text, pos)
        if m is None:
            break
        i = m.start()
        if text[i] == ";":
            out.append(text[start:i])
            start = pos = i + 1
        else:
            pos = _skip_quoted(text, i, reason)
    out.append(text[start:])
    return out


def _params(text: str, reason: str) -> Params:
    t = text.strip(LWS)
    if not t:
        return []
    if t[0] == ";":
        t = t[1:]
    out: Params = []
    if _PARAMS_FAST.issuperset(t):
        # no LWS, no quotes: the usual ";branch=z9hG4bK…;rport" needs no stripping
        for item in t.split(";"):
            name, eq, value = item.partition("=")
            if not name or not TOKEN_CHARS.issuperset(name) or (eq and not value):
                raise ParseError(400, reason)
            out.append((name, value if eq else None))
        return out
    for item in _split_params(t, reason):
        name, eq, value = item.partition("=")
        name = name.strip(LWS)
        if not is_token(name):
            raise ParseError(400, reason)  # badinv01: ";;" has an empty name
        if not eq:
            out.append((name, None))
            continue
        value = value.strip(LWS)
        if not value:
            raise ParseError(400, reason)
        if value[0] == '"':
            if _skip_quoted(value, 0, reason) != len(value):
                raise ParseError(400, reason)
        elif not VALUE_CHARS.issuperset(value):
            raise ParseError(400, reason)
        out.append((name, value))
    return out


def parse_params(text: str) -> Params:
    """Parse ``;a=b ; c ; d="x;y"`` into ``[("a", "b"), ("c", None), ("d", '"x;y"')]``.

    LWS is allowed around ``;`` and ``=`` (wsinv); the leading ``;`` is
    optional; names are kept as written, quoted values keep their quotes.
    An empty parameter (``;;``) or a malformed value raises ``ParseError(400)``.
    """
    return _params(text, "Bad parameter")


def _find_param(params: Params, name: str) -> str | None:
    want = name.lower()
    for n, v in params:
        if n.lower() == want:
            return "" if v is None else v
    return None


@dataclass(slots=True, init=False)
class NameAddr:
    """A From / To / Contact / Route / Record-Route / Path / Refer-To value.

    ``uri`` is the URI text without ``<>``, byte-faithful; it is parsed only
    when someone asks (``parsed_uri()``). ``params`` are the *header* params:
    for an addr-spec without ``<>`` everything after the first ``;`` belongs
    to the header, not the URI (RFC 3261 §20; cparam01 vs cparam02).
    """

    display: str | None
    uri: str
    params: Params
    bracketed: bool
    raw: str
    _parsed: Uri | None = field(default=None, init=False, repr=False, compare=False)

    def __init__(self, display: str | None, uri: str, params: Params, bracketed: bool,
                 raw: str) -> None:
        self.display = display
        self.uri = uri
        self.params = params
        self.bracketed = bracketed
        self.raw = raw
        self._parsed = None

    def __str__(self) -> str:
        return self.raw

    def param(self, name: str) -> str | None:
        """First header param ``name`` (case-insensitive); ``""`` for a flag."""
        return _find_param(self.params, name)

    @property
    def tag(self) -> str | None:
        return _find_param(self.params, "tag")

    def parsed_uri(self) -> Uri:
        """``parse_uri(self.uri)``, cached; raises ParseError like parse_uri."""
        parsed = self._parsed
        if parsed is None:
            parsed = self._parsed = parse_uri(self.uri)
        return parsed


_BAD_NAME_ADDR = "Bad name-addr"


def _uri_text_ok(uri: str) -> bool:
    """Cheap shape check of a URI inside a name-addr; full parsing is lazy."""
    if _URI_FORBIDDEN.search(uri) is not None:
        return False
    if uri.startswith("sip:"):
        return True
    colon = uri.find(":")
    return colon > 0 and is_scheme(uri[:colon])


def _display_ok(display: str) -> bool:
    """display-name = *(token LWS): tokens separated by LWS, no quotes, no commas (baddn).

    LENIENCY: non-ASCII letters are allowed in an unquoted display name (the
    grammar wants them quoted, but phones send ``Jörg <sip:…>``).
    """
    if DISPLAY_CHARS.issuperset(display):
        return True
    return DISPLAY_CHARS.issuperset(c for c in display if c < "\x80")


# name-addr fast path: an addr-spec scheme:uri-chars;params, or
# ["quoted" | tokens] <scheme:uri-chars>;params (the two cannot both match:
# only the second holds a "<"; the addr-spec goes first because its scheme run
# fails at once on the other shapes). The display alternatives cannot start
# with "<", so the possessive "?+" loses no match; the URI class is the
# complement of _URI_FORBIDDEN (plus ";?," outside <>, as _parse_addr_spec
# requires), so it ends exactly at the full parser's find(">") / find(";").
_NAME_ADDR_FAST = re.compile(
    rf'({_SCHEME_RE}[^\x00-\x20\x7f<>";?,]*+){params_re(_TOKEN_RE, _VALUE_RE, 1)}'
    rf'|(?:("[^"\\]*+")[ \t]*+|({_TOKEN_RE}++(?:[ \t]++{_TOKEN_RE}++)*+)[ \t]*+)?+'
    rf'<({_SCHEME_RE}[^\x00-\x20\x7f<>"]*+)>{params_re(_TOKEN_RE, _VALUE_RE, 1)}'
).fullmatch
_URI_GROUP = 7  # m.end(_URI_GROUP) is where the bracketed URI's ">" is


#: ``[display] <uri>`` or addr-spec text → (display, uri, bracketed), for
#: heads the fast regex has accepted. A UA writes the same From/To heads on
#: every request and only the tag changes, so a hit leaves just the tag to
#: check. Keys never contain ";tag=", so ``text.partition(";tag=")`` slices
#: exactly a key off any text that is a known head plus nothing or
#: ";tag=…". The values are immutable; bounded like the other caches.
_HEADS: dict[str, tuple[str | None, str, bool]] = {}
_HEADS_SIZE = 1024
_HEAD_KEY_MAX = 256


def clear_caches() -> int:
    """Empty the name-addr, CSeq and port caches; the number of entries they held.

    Called by the server's housekeeping (see :func:`sipyard.sip.uri.clear_cache`):
    entries left from a flood of distinct From/To/CSeq values, or of Vias from
    many source ports, would keep the memory the flood used from being returned
    (issue #16).
    """
    n = len(_HEADS) + len(_CSEQ_CACHE) + len(PORTS)
    _HEADS.clear()
    _CSEQ_CACHE.clear()
    PORTS.clear()
    return n


def _remember_head(key: str, display: str | None, uri: str, bracketed: bool) -> None:
    if len(key) <= _HEAD_KEY_MAX and ";tag=" not in key:
        if len(_HEADS) >= _HEADS_SIZE:
            _HEADS.clear()
        _HEADS[key] = (display, uri, bracketed)


def parse_name_addr(text: str) -> NameAddr:
    """Parse ``[display] <uri> *(;param)`` or an addr-spec ``uri *(;param)``.

    Raises ``ParseError(400, "Bad name-addr")`` on: non-token display names
    (baddn), an unterminated quote (quotbal), spaces in the addr-spec
    (badaspec), an unbracketed URI with ``?`` or ``,`` (regbadct) and stray
    ``;`` (badinv01).
    """
    key, sep, tag = text.partition(";tag=")
    head = _HEADS.get(key)
    if head is not None:
        if not sep:
            return NameAddr(head[0], head[1], [], head[2], text)
        if tag and (tag.isalnum() and tag.isascii() or TOKEN_CHARS.issuperset(tag)):
            return NameAddr(head[0], head[1], [("tag", tag)], head[2], text)
    m = _NAME_ADDR_FAST(text)
    if m is None:
        return _parse_name_addr_full(text)
    spec, sn1, sv1, spec_rest, quoted, tokens, uri, n1, v1, rest = m.groups()
    params: Params
    if uri is None:
        _remember_head(spec, None, spec, False)
        if sn1 is None:
            params = []
        else:
            params = [(sn1, sv1)]
            if spec_rest:
                params += split_params(spec_rest)
        return NameAddr(None, spec, params, False, text)
    display = quoted if tokens is None else tokens
    _remember_head(text[: m.end(_URI_GROUP) + 1], display, uri, True)  # through the ">"
    if n1 is None:
        params = []
    else:
        params = [(n1, v1)]
        if rest:
            params += split_params(rest)
    return NameAddr(display, uri, params, True, text)


def _parse_name_addr_full(text: str) -> NameAddr:
    """The general name-addr parser: any LWS, quoted params, every error."""
    s = text.strip(LWS)
    if not s:
        raise ParseError(400, _BAD_NAME_ADDR)
    first = s[0]
    display: str | None
    if first == "<":
        display = None
        lt = 0
    elif first == '"':
        end = _skip_quoted(s, 0, _BAD_NAME_ADDR)
        display = s[:end]
        lt = end
        n = len(s)
        while lt < n and s[lt] in LWS:
            lt += 1
        if lt >= n or s[lt] != "<":
            raise ParseError(400, _BAD_NAME_ADDR)
    else:
        lt = s.find("<")
        if lt < 0:
            return _parse_addr_spec(s)
        # lwsdisp: "caller<sip:…>" — a token display name directly before "<"
        display = s[:lt].rstrip(LWS)
        if not _display_ok(display):
            raise ParseError(400, _BAD_NAME_ADDR)
    gt = s.find(">", lt + 1)
    if gt < 0:
        raise ParseError(400, _BAD_NAME_ADDR)
    uri = s[lt + 1 : gt]
    if not _uri_text_ok(uri):
        raise ParseError(400, _BAD_NAME_ADDR)
    params: Params = []
    if gt + 1 < len(s):
        rest = s[gt + 1 :].lstrip(LWS)
        if rest[0] != ";":
            raise ParseError(400, _BAD_NAME_ADDR)
        params = _params(rest, _BAD_NAME_ADDR)
    return NameAddr(display, uri, params, True, s)


def _parse_addr_spec(s: str) -> NameAddr:
    # RFC 3261 §20: without <>, ";" starts the header params, and a URI with
    # ",", "?" or ";" of its own must have been bracketed (regbadct).
    semi = s.find(";")
    uri = s[:semi].rstrip(LWS) if semi >= 0 else s
    if "?" in uri or "," in uri or not _uri_text_ok(uri):
        raise ParseError(400, _BAD_NAME_ADDR)
    params = _params(s[semi:], _BAD_NAME_ADDR) if semi >= 0 else []
    return NameAddr(None, uri, params, False, s)


@dataclass(slots=True, init=False)
class Via:
    """One via-parm: ``SIP/2.0/UDP host:port;branch=…;received=…;rport``.

    Every request builds at least one, so the ``__init__`` is written out: the
    one a dataclass generates is interpreted Python even in a compiled module,
    this one a few native stores. Treat it as read-only.
    """

    protocol: str
    transport: str
    host: str
    port: int | None
    params: Params
    raw: str

    def __init__(self, protocol: str, transport: str, host: str, port: int | None,
                 params: Params, raw: str) -> None:
        self.protocol = protocol
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params
        self.raw = raw

    def __str__(self) -> str:
        return self.raw

    def param(self, name: str) -> str | None:
        """First Via param ``name`` (case-insensitive); ``""`` for a flag."""
        return _find_param(self.params, name)

    @property
    def branch(self) -> str | None:
        return _find_param(self.params, "branch")

    @property
    def received(self) -> str | None:
        return _find_param(self.params, "received")

    @property
    def rport(self) -> str | None:
        """``""`` when the client asked for rport (RFC 3581) without a value."""
        return _find_param(self.params, "rport")

    @property
    def sent_by(self) -> str:
        """``host[:port]`` as it would be written back."""
        return self.host if self.port is None else f"{self.host}:{self.port}"


_BAD_VIA = "Bad Via"
_SIP_2_0 = "SIP/2.0"


# via-parm fast path: "SIP/2.0/" transport SP host [":" port] params, with a
# hostname or IPv4 host (HOST_RE is valid_host without IPv6).
_VIA_FAST = re.compile(
    rf"SIP/2\.0/([A-Za-z]++) ({HOST_RE})(?::([0-9]{{1,5}}))?+"
    + params_re(_TOKEN_RE, _VALUE_RE, 2)
).fullmatch


def parse_via(text: str) -> Via:
    """Parse one via-parm (already split by ``split_values``).

    LWS is allowed around ``/``, ``:``, ``;`` and ``=`` (wsinv: ``SIP  /   2.0 /UDP
    192.0.2.2;branch=…``). The sent-by host may be an IPv6 reference with or
    without a port; ``received`` may hold IPv6 with or without brackets
    (RFC 5118 §4.5). Stray separators (badinv01) raise ``ParseError(400, "Bad Via")``.
    """
    m = _VIA_FAST(text)
    if m is None:
        return _parse_via_full(text)
    transport, host, port_text, n1, v1, n2, v2, rest = m.groups()
    port: int | None = None
    if port_text is not None:
        port = PORTS.get(port_text)
        if port is None:
            port = port_miss(port_text)
            if port < 0:
                return _parse_via_full(text)
    params: Params
    if n1 is None:
        params = []
    elif n2 is None:
        params = [(n1, v1)]
    else:
        params = [(n1, v1), (n2, v2)]
        if rest:
            params += split_params(rest)
    if not transport.isupper():
        transport = transport.upper()
    return Via(_SIP_2_0, transport, host, port, params, text)


def _parse_via_full(text: str) -> Via:
    """The general via-parm parser: LWS anywhere, IPv6, quoted params, every error."""
    s = text.strip(LWS)
    s1 = s.find("/")
    s2 = s.find("/", s1 + 1) if s1 >= 0 else -1
    if s2 < 0:
        raise ParseError(400, _BAD_VIA)
    if s2 == 7 and s.startswith(_SIP_2_0):
        protocol = _SIP_2_0
    else:
        name = s[:s1].strip(LWS)
        version = s[s1 + 1 : s2].strip(LWS)
        if not is_token(name) or not is_token(version):
            raise ParseError(400, _BAD_VIA)
        protocol = f"{name.upper()}/{version}"
    word, rest = _split_lws(s[s2 + 1 :])
    if not rest or not is_token(word):
        raise ParseError(400, _BAD_VIA)
    transport = word.upper()
    semi = rest.find(";")
    sent_by = rest[:semi].rstrip(LWS) if semi >= 0 else rest.rstrip(LWS)
    port: int | None = None
    if sent_by.startswith("["):
        close = sent_by.find("]")
        if close < 0 or not valid_ipv6(sent_by[1:close]):
            raise ParseError(400, _BAD_VIA)
        host = sent_by[: close + 1]
        after = sent_by[close + 1 :].lstrip(LWS)
        if after:
            if after[0] != ":":
                raise ParseError(400, _BAD_VIA)
            port = parse_port(after[1:].lstrip(LWS))
    else:
        host, colon, port_text = sent_by.partition(":")
        if colon:
            host = host.rstrip(LWS)
            port = parse_port(port_text.lstrip(LWS))
        if not valid_host(host):
            raise ParseError(400, _BAD_VIA)
    if port is not None and port < 0:
        raise ParseError(400, _BAD_VIA)
    params = _params(rest[semi:], _BAD_VIA) if semi >= 0 else []
    return Via(protocol, transport, host, port, params, s)


def parse_uint(text: str, limit: int = 2**32 - 1) -> int:
    """Digits only (leading zeros fine: wsinv's ``0068``), at most ``limit``.

    Anything else — sign, blank, over the limit (scalar02) — raises
    ``ParseError(400)``. Huge digit strings are refused before ``int()``.
    """
    t = text.strip(LWS)
    if not t or not t.isascii() or not t.isdigit():
        raise ParseError(400, "Bad number")
    if len(t) > 20:
        t = t.lstrip("0") or "0"
        if len(t) > 20:
            raise ParseError(400, "Number too large")
    value = int(t)
    if value > limit:
        raise ParseError(400, "Number too large")
    return value


_CSEQ_FAST = re.compile(rf"([0-9]{{1,10}}) ({_TOKEN_RE}++)").fullmatch
#: CSeq text → result. Tuples are immutable, so hits can be shared; "1 INVITE",
#: "2 REGISTER", "1 OPTIONS" make up most traffic. Short values only, emptied
#: at 4096 entries, so hostile traffic cannot grow it.
_CSEQ_CACHE: dict[str, tuple[int, str]] = {}
_CSEQ_CACHE_SIZE = 4096
_CSEQ_KEY_MAX = 32


def parse_cseq(text: str) -> tuple[int, str]:
    """``"0009 INVITE"`` → ``(9, "INVITE")``; ``ParseError(400, "Bad CSeq")`` otherwise."""
    hit = _CSEQ_CACHE.get(text)
    if hit is not None:
        return hit
    m = _CSEQ_FAST(text)
    if m is None:
        return _parse_cseq_full(text)
    digits, method = m.groups()
    number = int(digits)
    if number > 0xFFFFFFFF:
        return _parse_cseq_full(text)
    result = (number, method)
    if len(text) <= _CSEQ_KEY_MAX:
        if len(_CSEQ_CACHE) >= _CSEQ_CACHE_SIZE:
            _CSEQ_CACHE.clear()
        _CSEQ_CACHE[text] = result
    return result


def _parse_cseq_full(text: str) -> tuple[int, str]:
    """The general CSeq parser: any LWS, leading zeros, every error."""
    digits, method = _split_lws(text)
    if not is_token(method):
        raise ParseError(400, "Bad CSeq")
    try:
        number = parse_uint(digits)
    except ParseError:
        raise ParseError(400, "Bad CSeq") from None
    return number, method


_BAD_AUTH = "Bad Authorization"


def parse_auth(text: str) -> tuple[str, dict[str, str]]:
    """``Digest a=b, c="d"`` → ``("Digest", {"a": "b", "c": "d"})``.

    Works for any scheme written as auth-params, so an unknown one
    (regaut01's ``NoOneKnowsThisScheme opaque-data=here``) parses and the
    application can answer with a challenge it knows. Keys are lower-cased,
    values unquoted. token68 credentials (``Basic dXNlcg==``), duplicate keys
    and malformed pairs raise ``ParseError(400, "Bad Authorization")``.
    """
    scheme, rest = _split_lws(text)
    if not is_token(scheme):
        raise ParseError(400, _BAD_AUTH)
    params: dict[str, str] = {}
    if rest:
        try:
            items = split_values(rest)
        except ParseError:
            raise ParseError(400, _BAD_AUTH) from None
        for item in items:
            name, eq, value = item.partition("=")
            name = name.rstrip(LWS).lower()
            value = value.lstrip(LWS)
            if not eq or not is_token(name) or not value or name in params:
                raise ParseError(400, _BAD_AUTH)
            if value[0] == '"':
                if _skip_quoted(value, 0, _BAD_AUTH) != len(value):
                    raise ParseError(400, _BAD_AUTH)
                value = unquote(value)
            elif not VALUE_CHARS.issuperset(value):
                raise ParseError(400, _BAD_AUTH)
            params[name] = value
    return scheme, params
