"""RFC 3261 §25 grammar fragments shared by the URI and header parsers.

The full parsers split with ``str.find``/``partition`` and then check each
piece against one of these character sets with ``frozenset.issuperset`` — a
C-level pass, so hostile input costs O(n) and never backtracks. The fast paths
(one precompiled regex per common header shape) build their character classes
from the *same* sets with ``regex_class`` and the IPv4 / host alternation from
``HOST_RE``, so a fast path can only ever accept a subset of what the full
parser accepts. Every place where we accept more than the ABNF says is marked
``LENIENCY`` with the torture vector (RFC 4475 / RFC 5118) or the field
practice that needs it.
"""

from __future__ import annotations

import re

__all__ = [
    "ALPHANUM",
    "UNRESERVED",
    "USER_CHARS",
    "PASSWORD_CHARS",
    "PARAM_CHARS",
    "HEADER_CHARS",
    "TOKEN_CHARS",
    "VALUE_CHARS",
    "DISPLAY_CHARS",
    "HEX",
    "LWS",
    "chars_ok",
    "escapes_ok",
    "is_token",
    "is_scheme",
    "valid_host",
    "valid_ipv4",
    "valid_ipv6",
    "parse_port",
    "regex_class",
    "params_re",
    "split_params",
    "HOST_RE",
    "PORTS",
    "port_miss",
]

_DIGITS = "0123456789"
_ALPHA = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

#: alphanum = ALPHA / DIGIT
ALPHANUM = frozenset(_ALPHA + _DIGITS)
#: HEXDIG, either case (RFC 3261 §25.1 allows lower-case hex in escapes)
HEX = frozenset(_DIGITS + "abcdefABCDEF")
#: unreserved = alphanum / mark; mark = "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
UNRESERVED = ALPHANUM | frozenset("-_.!~*'()")
#: user = 1*( unreserved / escaped / user-unreserved ); user-unreserved = & = + $ , ; ? /
#: LENIENCY: "#" — feature codes such as ``sip:*69#@pbx`` are sent unescaped by most phones.
USER_CHARS = UNRESERVED | frozenset("&=+$,;?/%#")
#: password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
PASSWORD_CHARS = UNRESERVED | frozenset("&=+$,%")
#: paramchar = param-unreserved / unreserved / escaped; param-unreserved = [ ] / : & + $
PARAM_CHARS = UNRESERVED | frozenset("[]/:&+$%")
#: hname / hvalue chars: hnv-unreserved / unreserved / escaped; hnv-unreserved = [ ] / ? : + $
#: LENIENCY: "@" in header values (``?Replaces=call%40host`` is often sent as ``call@host``).
HEADER_CHARS = UNRESERVED | frozenset("[]/?:+$%@")
#: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN_CHARS = ALPHANUM | frozenset("-.!%*_+`'~")
#: gen-value = token / host / quoted-string; host adds ":" "[" "]" (IPv6, RFC 5118 §4.5
#: ``received=2001:db8::9:255`` and ``received=[2001:db8::9:255]``).
#: LENIENCY: "/" "@" "?" "&" "=" — opaque values (base64 padding, paths) seen in the field.
VALUE_CHARS = TOKEN_CHARS | frozenset(":[]/@?&=")
#: display-name = *(token LWS) — tokens with the LWS between them (lwsdisp, intmeth).
DISPLAY_CHARS = TOKEN_CHARS | frozenset(" \t")
#: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
_SCHEME_CHARS = ALPHANUM | frozenset("+-.")
#: hostname chars; LENIENCY: "_" (seen in real host names and SRV-ish labels).
_HOST_CHARS = ALPHANUM | frozenset("-._")
_IPV4_CHARS = frozenset(_DIGITS + ".")
_IPV6_CHARS = HEX | frozenset(":.")
#: linear white space once the message layer has unfolded continuation lines
LWS = " \t\r\n"


def regex_class(chars: frozenset[str] | str) -> str:
    """A regex character class matching exactly ``chars`` (each one escaped).

    Deriving the fast-path regexes from the frozensets above keeps the two
    parsers from drifting apart: adding a LENIENCY to a set widens both.
    """
    return "[" + "".join(re.escape(c) for c in sorted(chars)) + "]"


#: dec-octet with a value of at most 255 (1–3 digits, leading zeros allowed, as
#: ``valid_ipv4`` has it). Every alternative starts with a different digit,
#: so a mismatch costs one character test, never a retry.
_OCTET = "(?:[01][0-9]{0,2}+|2(?:[0-4][0-9]?+|5[0-5]?+|[6-9])?+|[3-9][0-9]?+)"
_HOST_CLASS = regex_class(_HOST_CHARS)
#: ``valid_host`` as a regex, for hostnames and IPv4 (IPv6 references are left to
#: the full parsers). A hostname starting with a letter or "_" is never all
#: digits and dots; a dotted quad must be a valid IPv4address; any other
#: hostname starts with a digit and must hold a non-digit, non-dot character
#: (the lookahead stays inside the host: ``[0-9.]`` and ``[-A-Za-z_]`` are host
#: characters). Possessive runs and an atomic group: each character is looked
#: at a bounded number of times.
HOST_RE = (
    rf"(?>{regex_class(_HOST_CHARS - _IPV4_CHARS - {'-'})}{_HOST_CLASS}*+"
    rf"|{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?!{_HOST_CLASS})"
    rf"|(?=[0-9.]*+{regex_class(_HOST_CHARS - _IPV4_CHARS)})[0-9]{_HOST_CLASS}*+)"
)


def params_re(name: str, value: str, lead: int) -> str:
    """Regex text for ``*( ";" name [ "=" value ] )`` without LWS or quotes.

    The first ``lead`` parameters are captured as (name, value) group pairs —
    value ``None`` when there is no ``=`` — so the usual one or two parameters
    (``;tag=…``, ``;rport;branch=…``) need no splitting in Python; the rest is
    captured as one segment for ``split_params``. ``name`` must be a class
    without ";" and "=" and ``value`` a quantified class without ";", so every
    run is possessive and ends at a fixed delimiter: no backtracking.
    """
    one = f";({name}++)(?:=({value}))?+"
    return f"(?:{one})?+" * lead + f"((?:;{name}++(?:={value})?+)*+)"


def split_params(seg: str) -> list[tuple[str, str | None]]:
    """Split a segment already matched by ``params_re`` into (name, value) pairs."""
    out: list[tuple[str, str | None]] = []
    for item in seg[1:].split(";"):
        name, eq, value = item.partition("=")
        out.append((name, value if eq else None))
    return out


#: Port text → number for the fast paths: ``int()`` on a str costs more than the
#: rest of a port's handling, and a server sees the same few ports over and
#: over. Bounded (``port_miss`` stops adding at 4096 entries), so hostile
#: traffic cannot grow it.
PORTS: dict[str, int] = {}


def port_miss(s: str) -> int:
    """``int(s)`` for 1–5 ASCII digits not yet in ``PORTS``; -1 above 65535."""
    port = int(s)
    if port > 65535:
        return -1
    if len(PORTS) < 4096:
        PORTS[s] = port
    return port


def escapes_ok(s: str) -> bool:
    """Every ``%`` starts a ``%HH`` escape (escaped = "%" HEXDIG HEXDIG)."""
    i = s.find("%")
    while i >= 0:
        pair = s[i + 1 : i + 3]
        if len(pair) != 2 or pair[0] not in HEX or pair[1] not in HEX:
            return False
        i = s.find("%", i + 3)
    return True


def chars_ok(s: str, allowed: frozenset[str]) -> bool:
    """``s`` uses only ``allowed`` characters and its escapes are well formed."""
    return allowed.issuperset(s) and ("%" not in s or escapes_ok(s))


def is_token(s: str) -> bool:
    """token = 1*(token chars)."""
    return bool(s) and TOKEN_CHARS.issuperset(s)


def is_scheme(s: str) -> bool:
    """scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )."""
    return bool(s) and s[0] in _ALPHA and _SCHEME_CHARS.issuperset(s)


def valid_ipv4(s: str) -> bool:
    """IPv4address = 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT (each ≤ 255)."""
    parts = s.split(".")
    if len(parts) != 4 or not s.isascii():
        return False
    for p in parts:
        n = len(p)
        # three ASCII digits compare as strings exactly as they do as numbers
        if n == 0 or n > 3 or not p.isdigit() or (n == 3 and p > "255"):
            return False
    return True


def valid_ipv6(s: str) -> bool:
    """The inside of an IPv6reference, checked by shape rather than by ``ipaddress``.

    ``ipaddress`` costs microseconds and rejects RFC 3261's own ABNF output:
    LENIENCY (RFC 5118 §4.10, ipv6-bug-abnf-3-colons): ``2001:db8:::192.0.2.1``
    — a ``:::`` run is tolerated and read as ``::``.
    """
    if len(s) < 2 or len(s) > 64 or not _IPV6_CHARS.issuperset(s) or s.count(":") < 2:
        return False
    if "::::" in s or s.count("::") > 1:
        return False
    groups = s.split(":")
    if len(groups) > 10:
        return False
    width = len(groups)
    last = groups[-1]
    if "." in last:
        if not valid_ipv4(last):
            return False
        groups.pop()
        width += 1  # the dotted quad fills two 16-bit groups
    for g in groups:
        if len(g) > 4 or "." in g:
            return False
    # without "::" the address must spell out all eight groups
    return "::" in s or width == 8


def valid_host(host: str) -> bool:
    """host = hostname / IPv4address / IPv6reference (brackets kept)."""
    if not host:
        return False
    if host[0] == "[":
        return host[-1] == "]" and valid_ipv6(host[1:-1])
    if not _HOST_CHARS.issuperset(host) or host[0] in ".-":
        return False
    if _IPV4_CHARS.issuperset(host):
        # all digits and dots: an IPv4 address or nothing (a toplabel starts with ALPHA)
        return valid_ipv4(host)
    return True


def parse_port(s: str) -> int:
    """port = 1*DIGIT, 0…65535; -1 when malformed (callers raise their own ParseError)."""
    if not s or len(s) > 5 or not s.isascii() or not s.isdigit():
        return -1
    port = int(s)
    return port if port <= 65535 else -1
