"""sipyard.sip.message: the split, typed access, serialisation and responses.

Property tests (hypothesis) check the invariants the rest of the server leans
on: a canonical message survives parse → to_bytes byte for byte; no input makes
the parser (or validation, or any typed accessor) raise anything but
ParseError; build_response copies what RFC 3261 §8.2.6.2 says and tags To
once; the fast paths agree with the general parsers in headers.py / uri.py.
"""

from __future__ import annotations

import contextlib
import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sipyard.sip.errors import ParseError
from sipyard.sip.headers import parse_name_addr, parse_via
from sipyard.sip.message import (
    COMPACT_FORMS,
    STAR,
    Limits,
    Request,
    Response,
    _simple_name_addr,
    build_response,
    canonical_name,
    parse_message,
)
from sipyard.sip.uri import parse_uri
from sipyard.sip.validate import validate_request, validate_response

TORTURE = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata" / "torture"
KNOWN = frozenset({"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "MESSAGE"})
#: SIPYARD_FUZZ=N runs every property with N examples (a deeper run by hand).
FUZZ = int(os.environ.get("SIPYARD_FUZZ", "0"))
PROPS = settings(max_examples=FUZZ or 120, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])

OPTIONS = (
    b"OPTIONS sip:127.0.0.1:5070 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bK-12345-1-0\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:ping@127.0.0.1>;tag=12345SIPpTag001\r\n"
    b"To: <sip:127.0.0.1:5070>\r\n"
    b"Call-ID: 1-12345@127.0.0.1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Accept: application/sdp\r\n"
    b"User-Agent: sipp-bench\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def msg(text: str, body: bytes = b"") -> Request | Response:
    """Parse ``text`` written with \\n line ends (CRLF on the wire)."""
    return parse_message(text.replace("\n", "\r\n").encode("utf-8", "surrogateescape") + body)


def req_of(text: str, body: bytes = b"") -> Request:
    m = msg(text, body)
    assert isinstance(m, Request)
    return m


BASIC = """\
INVITE sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776asdhds
Via: SIP/2.0/TCP proxy.example.com:5061;branch=z9hG4bKp1, SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKp2
Max-Forwards: 70
To: Bob <sip:bob@example.com>
From: "Alice, A." <sip:alice@example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.example.com
CSeq: 314159 INVITE
Contact: <sip:alice@pc33.example.com>
Content-Length: 0

"""

# -- strategies -------------------------------------------------------------------

TOKEN_ALPHABET = string.ascii_letters + string.digits + "-.!%*_+`'~"
tokens = st.text(TOKEN_ALPHABET, min_size=1, max_size=12)
#: header names that the test controls itself are left out
header_names = tokens.filter(lambda n: canonical_name(n) != "content-length")
_LINE_BYTES = [b for b in range(256) if b not in (10, 13)]


@st.composite
def line_bytes(draw: st.DrawFn, *, max_size: int = 40, spaces_inside: bool = True) -> bytes:
    """Octets of a header value: anything but CR/LF (NUL, invalid UTF-8 included),
    no SP/HTAB at either end (the parser strips those)."""
    raw = bytes(draw(st.lists(st.sampled_from(_LINE_BYTES), max_size=max_size)))
    if not spaces_inside:
        raw = raw.replace(b" ", b"")
    return raw.strip(b" \t")


def decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


@st.composite
def canonical_messages(draw: st.DrawFn) -> tuple[bytes, str, list[tuple[str, str]], bytes]:
    """A well-framed message written canonically: (wire bytes, start line, headers, body)."""
    if draw(st.booleans()):
        method = draw(tokens)
        uri = decode(draw(line_bytes(spaces_inside=False)).replace(b"\t", b"")) or "sip:x"
        start = f"{method} {uri} SIP/2.0"
    else:
        status = draw(st.integers(100, 699))
        reason = decode(draw(line_bytes()))
        start = f"SIP/2.0 {status} {reason}"
    headers = [(draw(header_names), decode(draw(line_bytes())))
               for _ in range(draw(st.integers(0, 8)))]
    body = draw(st.binary(max_size=64))
    lines = [start] + [f"{n}: {v}" for n, v in headers] + [f"Content-Length: {len(body)}", "", ""]
    wire = "\r\n".join(lines).encode("utf-8", "surrogateescape") + body
    return wire, start, headers + [("Content-Length", str(len(body)))], body


# -- round trips ------------------------------------------------------------------

@PROPS
@given(canonical_messages())
def test_parse_serialise_round_trip(case: tuple[bytes, str, list[tuple[str, str]], bytes]) -> None:
    wire, start, headers, body = case
    m = parse_message(wire)
    assert m.start_line() == start
    assert m.headers == headers
    assert m.body == body
    if isinstance(m, Request):
        method, uri, _ = start.split(" ")
        assert (m.method, m.uri, m.version) == (method, uri, "SIP/2.0")
    else:
        assert m.status == int(start.split(" ")[1])
    assert m.to_bytes() == wire
    again = parse_message(m.to_bytes())
    assert again.headers == m.headers and again.body == m.body


@PROPS
@given(st.lists(st.tuples(header_names, line_bytes(max_size=60)), min_size=1, max_size=6))
def test_surrogateescape_keeps_header_bytes(pairs: list[tuple[str, bytes]]) -> None:
    """Invalid UTF-8 and NULs come back as the same octets."""
    lines = [b"OPTIONS sip:a@b SIP/2.0"] + [n.encode() + b": " + v for n, v in pairs]
    wire = b"\r\n".join(lines) + b"\r\nContent-Length: 0\r\n\r\n"
    m = parse_message(wire)
    assert m.to_bytes() == wire
    assert [v.encode("utf-8", "surrogateescape") for _, v in m.headers[:-1]] == [v for _, v in pairs]


def test_surrogateescape_concrete() -> None:
    wire = (b"MESSAGE sip:a@b SIP/2.0\r\nSubject: caf\xe9 \xff\xfe \x00 \xe5\xa4\r\n"
            b"X-Utf8: \xe5\xa4\xa7\r\nContent-Length: 0\r\n\r\n")
    m = parse_message(wire)
    assert m.get("Subject") == "caf\udce9 \udcff\udcfe \x00 \udce5\udca4"
    assert m.get("X-Utf8") == "大"
    assert m.to_bytes() == wire


# -- nothing but ParseError ---------------------------------------------------------

def _exercise(data: bytes) -> None:
    """Everything a handler might touch: only ParseError may come out."""
    try:
        m = parse_message(data)
    except ParseError as exc:
        assert 400 <= exc.status <= 599
        assert exc.partial is None or isinstance(exc.partial, (Request, Response))
        return
    for name in ("via", "from", "to", "contact", "route", "require", "x-unknown", "call-id"):
        with contextlib.suppress(ParseError):
            m.get_all(name)
    for attr in ("vias", "from_", "to", "call_id", "cseq", "max_forwards", "expires", "contacts"):
        with contextlib.suppress(ParseError):
            getattr(m, attr)
    m.to_bytes()
    if isinstance(m, Response):
        with contextlib.suppress(ParseError):
            validate_response(m)
        return
    with contextlib.suppress(ParseError):
        m.ruri  # noqa: B018
    try:
        validate_request(m, KNOWN)
    except ParseError as exc:
        assert exc.status in (400, 414, 416, 501)
        return
    resp = parse_message(build_response(m, 200, "OK", to_tag="x1"))
    assert isinstance(resp, Response)
    validate_response(resp)
    assert resp.call_id == m.call_id and resp.cseq == m.cseq


@PROPS
@given(st.binary(max_size=400))
@example(b"")
@example(b"\r\n\r\n")
@example(b"SIP/2.0 200")
@example(b"INVITE sip:a SIP/2.0\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n")
@example(b"INVITE sip:a SIP/2.0\r\nContent-Length: \xc2\xb2\r\n\r\n")
@example(b"INVITE sip:a SIP/2.0\r\n To: x\r\n\r\n")
def test_arbitrary_bytes_raise_only_parse_error(data: bytes) -> None:
    _exercise(data)


def _corpus() -> list[bytes]:
    seeds = [OPTIONS, BASIC.replace("\n", "\r\n").encode()]
    seeds += [p.read_bytes() for p in sorted(TORTURE.glob("*.dat"))[:60]]
    return seeds


@settings(max_examples=FUZZ or 250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_corpus()),
       st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255), st.sampled_from("rid")),
                min_size=1, max_size=6))
def test_mutated_messages_raise_only_parse_error(seed: bytes, edits: list[tuple[int, int, str]]) -> None:
    data = bytearray(seed)
    for pos, byte, op in edits:
        pos %= len(data) + 1
        if op == "r" and pos < len(data):
            data[pos] = byte
        elif op == "i":
            data[pos:pos] = bytes([byte])
        elif op == "d":
            del data[pos:pos + 1 + byte % 8]
    _exercise(bytes(data))


# -- start line, framing within a datagram -------------------------------------------

def test_basic_request() -> None:
    r = req_of(BASIC)
    assert (r.method, r.uri, r.version) == ("INVITE", "sip:bob@example.com", "SIP/2.0")
    assert [v.branch for v in r.vias] == ["z9hG4bK776asdhds", "z9hG4bKp1", "z9hG4bKp2"]
    assert r.top_via.host == "pc33.example.com"
    assert r.from_.display == '"Alice, A."' and r.from_.tag == "1928301774"
    assert r.to.display == "Bob" and r.to.tag is None
    assert r.call_id == "a84b4c76e66710@pc33.example.com"
    assert r.cseq == (314159, "INVITE")
    assert r.max_forwards == 70 and r.expires is None
    assert repr(r) == "<Request INVITE sip:bob@example.com>"


def test_leading_crlfs_and_bare_lf() -> None:
    r = parse_message(b"\r\n\r\n" + OPTIONS)
    assert isinstance(r, Request) and r.method == "OPTIONS"
    bare = parse_message(OPTIONS.replace(b"\r\n", b"\n"))
    assert isinstance(bare, Request) and bare.headers == r.headers
    # no blank line at all: the datagram's end closes the header section
    cut = parse_message(OPTIONS[:-2])
    assert cut.headers == r.headers and cut.body == b""


def test_content_length_rules() -> None:
    head = b"MESSAGE sip:a@b SIP/2.0\r\nCall-ID: x\r\n"
    assert parse_message(head + b"l: 3\r\n\r\nabcdef").body == b"abc"          # dblreq
    assert parse_message(head + b"\r\nabcdef").body == b"abcdef"               # inv2543
    assert parse_message(head + b"Content-Length: 3, 3\r\n\r\nabc").body == b"abc"
    assert parse_message(head + b"Content-Length: 0000000000003\r\n\r\nabc").body == b"abc"
    for bad, reason in [(b"Content-Length: -1", "Bad Content-Length"),
                        (b"Content-Length: five", "Bad Content-Length"),
                        (b"Content-Length:", "Bad Content-Length"),
                        (b"Content-Length: \xd9\xa3", "Bad Content-Length"),   # Arabic-Indic 3
                        (b"Content-Length: 3\r\nl: 4", "Multiple Content-Length"),
                        (b"Content-Length: 7", "larger than message"),
                        (b"Content-Length: " + b"9" * 5000, "larger than message")]:
        with pytest.raises(ParseError) as info:
            parse_message(head + bad + b"\r\n\r\nabc")
        assert info.value.status == 400 and reason in info.value.reason, bad
        assert isinstance(info.value.partial, Request) and info.value.partial.call_id == "x"


@pytest.mark.parametrize(("line", "status", "reason"), [
    ("INVITE  sip:a@b SIP/2.0", 400, "Malformed Request-Line"),
    ("INVITE sip:a@b SIP/2.0 ", 400, "Malformed Request-Line"),
    ("INVITE sip:a@b", 400, "Malformed Request-Line"),
    ("IN<VITE sip:a@b SIP/2.0", 400, "Bad method"),
    ("INVITE sip:a@b SIP/3.0", 505, "Version Not Supported"),
    ("INVITE sip:a@b HTTP/1.1", 400, "Bad SIP version"),
    ("SIP/2.0 099 Odd", 400, "Bad status code"),
    ("SIP/2.0 700 Odd", 400, "Bad status code"),
    ("SIP/2.0 4294967301 better not break the receiver", 400, "Bad status code"),
    ("SIP/2.0 2x0 OK", 400, "Bad status code"),
    ("SIP/3.0 200 OK", 505, "Version Not Supported"),
])
def test_bad_start_lines(line: str, status: int, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        msg(f"{line}\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nContent-Length: 0\n\n")
    assert (info.value.status, info.value.reason) == (status, reason)
    if not line.startswith("SIP/"):
        partial = info.value.partial
        assert isinstance(partial, Request) and partial.get("via") is not None


def test_start_line_leniency() -> None:
    r = req_of("INVITE sip:a@b sip/2.0\nContent-Length: 0\n\n")
    assert r.version == "SIP/2.0"
    resp = msg("SIP/2.0 180\nContent-Length: 0\n\n")
    assert isinstance(resp, Response) and (resp.status, resp.reason) == (180, "")
    resp = msg("SIP/2.0 200 OK fine  really\nContent-Length: 0\n\n")
    assert isinstance(resp, Response) and resp.reason == "OK fine  really"
    assert repr(resp) == "<Response 200 OK fine  really>"


# -- header model -----------------------------------------------------------------

def test_compact_forms() -> None:
    pairs = {"v": "SIP/2.0/UDP h;branch=z9hG4bK1", "f": "<sip:a@b>;tag=1", "t": "<sip:c@d>",
             "i": "cid", "m": "<sip:a@h>", "l": "0", "c": "text/plain", "k": "path",
             "s": "hello", "e": "gzip", "o": "presence", "r": "<sip:x@y>", "b": "<sip:z@y>",
             "u": "presence", "x": "1800", "a": "*;audio", "j": "*;video", "d": "proxy",
             "y": "abc", "n": "<https://x>"}
    text = "MESSAGE sip:a@b SIP/2.0\n" + "".join(f"{k.upper() if i % 2 else k}: {v}\n"
                                                  for i, (k, v) in enumerate(pairs.items())) + "\n"
    r = req_of(text)
    assert set(pairs) == set(COMPACT_FORMS)
    for letter, value in pairs.items():
        long = COMPACT_FORMS[letter]
        assert r.get(long) == value, long
        assert r.get(long.upper()) == value
        assert r.get(letter) == value and r.get(letter.upper()) == value
        assert r.count(long) == 1 and r.has(long)
    assert r.call_id == "cid" and r.to.uri == "sip:c@d" and r.from_.tag == "1"
    # names are kept as written for re-serialisation
    assert [n for n, _ in r.headers][:3] == ["v", "F", "t"]


def test_lookup_is_case_insensitive_and_counts_lines() -> None:
    r = req_of("OPTIONS sip:a@b SIP/2.0\nvIA: SIP/2.0/UDP a\nVIA: SIP/2.0/UDP b, SIP/2.0/UDP c\n"
               "X-Custom : one\nx-custom: two\n\n")
    assert r.count("Via") == 2 and len(r.vias) == 3
    assert r.get("X-CUSTOM") == "one"
    assert r.get_lines("x-custom") == ["one", "two"]
    assert r.get_all("x-custom") == ["one", "two"]
    assert r.get("missing") is None and r.get_all("missing") == [] and r.count("missing") == 0
    assert not r.has("missing")


def test_folding() -> None:
    r = req_of("OPTIONS sip:a@b SIP/2.0\nSubject: one\n two\n\tthree \n    \nTo:\n <sip:a@b>\n"
               "Route: <sip:p1>,\n  <sip:p2>\n\n")
    assert r.get("Subject") == "one two three"
    assert r.to.uri == "sip:a@b"
    assert r.get_all("Route") == ["<sip:p1>", "<sip:p2>"]
    with pytest.raises(ParseError) as info:
        msg("OPTIONS sip:a@b SIP/2.0\n folded: first\nTo: x\n\n")
    assert info.value.reason == "Malformed header folding"
    assert isinstance(info.value.partial, Request) and info.value.partial.get("to") == "x"


def test_malformed_header_lines_keep_the_rest_for_the_answer() -> None:
    for bad in ("NoColonHere", "Bad Name: x", "Via", "<x>: y", ": empty name"):
        with pytest.raises(ParseError) as info:
            msg(f"OPTIONS sip:a@b SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\n{bad}\nCall-ID: c\n\n")
        assert info.value.status == 400 and "Malformed header" in info.value.reason, bad
        partial = info.value.partial
        assert isinstance(partial, Request)
        assert partial.top_via.host == "h" and partial.call_id == "c"


@pytest.mark.parametrize(("value", "expected"), [
    ('"Doe, John" <sip:j@d>, <sip:x@y;a=1,2>, sip:z@w', ['"Doe, John" <sip:j@d>', "<sip:x@y;a=1,2>", "sip:z@w"]),
    ('"a \\" , b" <sip:q@r>;p="x,y", <sip:s@t>', ['"a \\" , b" <sip:q@r>;p="x,y"', "<sip:s@t>"]),
    (" , ,<sip:a@b>,, ", ["<sip:a@b>"]),
    (";;,,;;,;", [";;", ";;", ";"]),
])
def test_get_all_splits_outside_quotes_and_brackets(value: str, expected: list[str]) -> None:
    r = req_of(f"OPTIONS sip:a@b SIP/2.0\nContact: {value}\n\n")
    assert r.get_all("contact") == expected
    assert r.get("contact") == value.strip(" \t")


def test_get_all_keeps_single_item_headers_whole() -> None:
    r = req_of("OPTIONS sip:a@b SIP/2.0\nDate: Sat, 13 Nov 2010 23:29:00 GMT\n"
               'WWW-Authenticate: Digest realm="a", nonce="b"\nCall-ID: a,b\n\n')
    assert r.get_all("date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]
    assert r.get_all("www-authenticate") == ['Digest realm="a", nonce="b"']
    with pytest.raises(ParseError) as info:
        r.call_id  # noqa: B018
    assert info.value.reason == "Bad Call-ID header"


def test_get_all_unterminated_quote() -> None:
    r = req_of('OPTIONS sip:a@b SIP/2.0\nContact: "unterminated <sip:a@b>\n\n')
    with pytest.raises(ParseError):
        r.get_all("contact")
    with pytest.raises(ParseError) as info:
        r.contacts  # noqa: B018
    assert info.value.status == 400


def test_header_caps() -> None:
    """Caps give a 400 naming the fault, with the headers before it kept for the answer."""
    limits = Limits(max_headers=10, max_line=200, max_uri=50)
    top = "OPTIONS sip:a@b SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nCall-ID: c\n"

    def refused(text: str) -> ParseError:
        with pytest.raises(ParseError) as info:
            parse_message(text.replace("\n", "\r\n").encode(), limits)
        partial = info.value.partial
        assert isinstance(partial, Request) and partial.top_via.host == "h"
        assert partial.call_id == "c" and len(partial.headers) <= 10
        return info.value

    ok = top + "".join(f"X-{i}: v\n" for i in range(8)) + "\n"
    assert len(parse_message(ok.replace("\n", "\r\n").encode(), limits).headers) == 10
    for n in (9, 5000):  # one over, and far over (only the first lines are looked at)
        exc = refused(top + "".join(f"X-{i}: v\n" for i in range(n)) + "\n")
        assert (exc.status, exc.reason) == (400, "Too Many Header Fields")
    for line in ("Subject: " + "x" * 300, "X" * 300 + ": v", "Subject: " + "x" * 150 + "\n " + "y" * 150):
        exc = refused(top + line + "\n\n")
        assert (exc.status, exc.reason) == (400, "Header Line Too Long")
    with pytest.raises(ParseError) as info:
        parse_message(b"OPTIONS sip:" + b"a" * 60 + b"@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n", limits)
    assert (info.value.status, info.value.reason) == (414, "Request-URI Too Long")
    assert isinstance(info.value.partial, Request)
    # the defaults are generous enough for RFC 4475 longreq and the OPTIONS above
    assert len(parse_message(OPTIONS).headers) == 9


# -- typed access -------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "attr", "reason"), [
    ("", "call_id", "Missing Call-ID header"),
    ("Call-ID: a\ni: b\n", "call_id", "Multiple Call-ID headers"),
    ("Call-ID: a b\n", "call_id", "Bad Call-ID header"),
    ("CSeq: 1\n", "cseq", "Bad CSeq header"),
    ("CSeq: 4294967296 INVITE\n", "cseq", "Bad CSeq header"),
    ("CSeq: -1 INVITE\n", "cseq", "Bad CSeq header"),
    ("CSeq: 1 INVITE\nCSeq: 2 INVITE\n", "cseq", "Multiple CSeq headers"),
    ("Max-Forwards: 256\n", "max_forwards", "Bad Max-Forwards header"),
    ("Max-Forwards: ten\n", "max_forwards", "Bad Max-Forwards header"),
    ("Max-Forwards: 1\nMax-Forwards: 2\n", "max_forwards", "Multiple Max-Forwards headers"),
    ("Expires: 4294967296\n", "expires", "Bad Expires header"),
    ("From: Bell, Alexander <sip:a@b>\n", "from_", "Bad From header"),
    ("To: <sip:a@b> junk\n", "to", "Bad To header"),
    ("", "vias", "Missing Via header"),
    ("Via: SIP/2.0/UDP h;;\n", "vias", "Bad Via header"),
    ("Via: ,\n", "vias", "Bad Via header"),
    ("Contact: *, <sip:a@b>\n", "contacts", "Bad Contact header: * mixed with contacts"),
])
def test_typed_access_errors(extra: str, attr: str, reason: str) -> None:
    r = req_of(f"OPTIONS sip:a@b SIP/2.0\n{extra}\n")
    with pytest.raises(ParseError) as info:
        getattr(r, attr)
    assert (info.value.status, info.value.reason) == (400, reason)


def test_typed_values() -> None:
    r = req_of("REGISTER sip:b SIP/2.0\nCSeq: 0009   REGISTER\nMax-Forwards: 0068\nExpires: 0\n"
               "Contact: *\n\n")
    assert r.cseq == (9, "REGISTER") and r.max_forwards == 68 and r.expires == 0
    assert r.contacts == STAR
    r = req_of("REGISTER sip:b SIP/2.0\nCSeq: 4294967295 REGISTER\nMax-Forwards: 255\n\n")
    assert r.cseq == (4294967295, "REGISTER") and r.max_forwards == 255
    r = req_of("REGISTER sip:b SIP/2.0\nm: <sip:a@h>;expires=60, sip:b@h;q=0.5\n\n")
    contacts = r.contacts
    assert isinstance(contacts, list)
    assert [(c.uri, c.param("expires"), c.param("q")) for c in contacts] == [
        ("sip:a@h", "60", None), ("sip:b@h", None, "0.5")]
    assert r.contacts is contacts  # cached


def test_mutators_keep_keys_and_caches_in_step() -> None:
    r = req_of(BASIC)
    assert len(r.vias) == 3
    r.add_header("Via", "SIP/2.0/UDP first.example.com;branch=z9hG4bKnew", first=True)
    assert r.top_via.host == "first.example.com" and len(r.vias) == 4
    r.remove_header("v")
    assert not r.has("via") and r.count("Via") == 0
    with pytest.raises(ParseError):
        r.vias  # noqa: B018
    r.set_header("t", "<sip:carol@example.com>;tag=9")
    assert r.to.uri == "sip:carol@example.com" and r.to.tag == "9"
    assert r.headers[-1] == ("t", "<sip:carol@example.com>;tag=9")
    assert r.contacts != STAR
    r.set_header("Contact", "*")
    assert r.contacts == STAR
    r.remove_header("x-not-there")
    assert r.count("contact") == 1


def test_replace_top_via() -> None:
    r = req_of(BASIC)
    r.vias  # noqa: B018
    r.replace_top_via("SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776asdhds;received=192.0.2.4")
    assert r.top_via.received == "192.0.2.4"
    assert [v.branch for v in r.vias] == ["z9hG4bK776asdhds", "z9hG4bKp1", "z9hG4bKp2"]
    r2 = req_of(BASIC.replace("Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776asdhds\n", ""))
    r2.replace_top_via("SIP/2.0/TCP proxy.example.com:5061;branch=z9hG4bKp1;rport=1")
    assert r2.get("via") == "SIP/2.0/TCP proxy.example.com:5061;branch=z9hG4bKp1;rport=1, " \
                            "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKp2"
    assert r2.top_via.rport == "1" and len(r2.vias) == 2


# -- build_response ---------------------------------------------------------------------

def test_build_response_copies_and_tags() -> None:
    r = req_of(BASIC.replace("To: Bob", "t: Bob").replace("Call-ID", "i").replace("From", "f"))
    data = build_response(r, 302, "Moved Temporarily", to_tag="abc",
                          headers=[("Contact", "<sip:bob@192.0.2.4>")], body=b"hi",
                          server="sipyard")
    assert data.startswith(b"SIP/2.0 302 Moved Temporarily\r\n")
    resp = parse_message(data)
    assert isinstance(resp, Response)
    assert resp.get_lines("via") == r.get_lines("via")
    assert [n for n, _ in resp.headers] == ["Via", "Via", "To", "From", "Call-ID", "CSeq", "Contact",
                                            "Server", "Content-Length"]
    assert resp.to.raw == "Bob <sip:bob@example.com>;tag=abc"
    assert resp.from_.raw == r.from_.raw and resp.call_id == r.call_id and resp.cseq == r.cseq
    assert resp.get("Server") == "sipyard" and resp.body == b"hi"
    assert resp.get("Content-Length") == "2"
    assert resp.get("Contact") == "<sip:bob@192.0.2.4>"
    assert not resp.has("max-forwards")


@pytest.mark.parametrize(("to", "status", "expected"), [
    ("<sip:b@c>", 200, "<sip:b@c>;tag=T"),
    ("<sip:b@c>;tag=old", 200, "<sip:b@c>;tag=old"),
    ("<sip:b@c>;TAG=old", 486, "<sip:b@c>;TAG=old"),
    ("sip:b@c ;\ttag = old", 200, "sip:b@c ;\ttag = old"),
    ("<sip:b@c;tag=inuri>", 200, "<sip:b@c;tag=inuri>;tag=T"),
    ("<sip:b@c>", 100, "<sip:b@c>"),
])
def test_build_response_adds_the_tag_once(to: str, status: int, expected: str) -> None:
    r = req_of(f"INVITE sip:b@c SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nTo: {to}\n"
               "From: <sip:a@c>;tag=f\nCall-ID: c\nCSeq: 1 INVITE\n\n")
    for validated in (False, True):
        if validated:
            validate_request(r, KNOWN)
        resp = parse_message(build_response(r, status, "X", to_tag="T"))
        assert resp.get("to") == expected
        tags = sum(1 for n, _ in resp.to.params if n.lower() == "tag")
        assert tags == (0 if status == 100 and r.to.tag is None else 1)


@PROPS
@given(st.sampled_from(["<sip:bob@b.example>", "Bob <sip:bob@b.example>;tag=x1",
                        '"B, ob" <sip:bob@b.example;transport=tcp>', "sip:bob@b.example;tag=zz"]),
       st.integers(100, 699), tokens, st.booleans())
def test_build_response_property(to: str, status: int, tag: str, validated: bool) -> None:
    r = req_of(f"INVITE sip:bob@b.example SIP/2.0\nv: SIP/2.0/UDP h1;branch=z9hG4bK1\n"
               f"Via: SIP/2.0/TCP h2:5061;branch=z9hG4bK2\nTo: {to}\nFrom: <sip:a@c>;tag=f\n"
               "Call-ID: c@h\nCSeq: 7 INVITE\nMax-Forwards: 70\n\n")
    if validated:
        validate_request(r, KNOWN)
    resp = parse_message(build_response(r, status, "Reason", to_tag=tag))
    assert isinstance(resp, Response) and resp.status == status
    assert [v.raw for v in resp.vias] == [v.raw for v in r.vias]
    assert resp.from_.raw == r.from_.raw and resp.call_id == r.call_id and resp.cseq == r.cseq
    had_tag = parse_name_addr(to).tag
    if had_tag is not None or status == 100:
        assert resp.to.raw == to
    else:
        assert resp.to.tag == tag and resp.to.raw == f"{to};tag={tag}"
    assert resp.body == b"" and resp.get("content-length") == "0"


# -- fast paths agree with the general parsers ------------------------------------------

_HOSTS = ["127.0.0.1", "192.0.2.255", "255.255.255.255", "256.0.0.1", "01.002.3.4", "1.2.3",
          "1.2.3.4.5", "example.com", "a-b.example", "_sip.x", "-bad", ".bad", "host.",
          "sip1", "1host", "[2001:db8::1]", "2001:db8::1", "ho st", "hö", "h%41"]
_PORTS = ["", ":5060", ":0", ":65535", ":65536", ":99999", ":", ":5x", ": 5060"]
_PIECE = st.text(alphabet=string.ascii_letters + string.digits + "-._~!%*+`'=;:@[]/?&$,\" \t<>\x00é",
                 max_size=8)


@st.composite
def via_texts(draw: st.DrawFn) -> str:
    proto = draw(st.sampled_from(["SIP/2.0/", "SIP/2.0/", "sip/2.0/", "SIP/2.1/", "SIP /2.0/"]))
    transport = draw(st.sampled_from(["UDP", "tcp", "TLS", "SCTP", "WSS", "X-1", ""]))
    sep = draw(st.sampled_from([" ", " ", "  ", "\t"]))
    host = draw(st.sampled_from(_HOSTS) | _PIECE)
    port = draw(st.sampled_from(_PORTS))
    params = "".join(draw(st.lists(
        st.sampled_from([";branch=z9hG4bK-1", ";rport", ";received=192.0.2.1", ";x=a=b", ";;",
                         ";=v", ";n=", ";q=\"x\"", " ;lr"]) | _PIECE.map(lambda p: ";" + p),
        max_size=4)))
    return f"{proto}{transport}{sep}{host}{port}{params}"


@PROPS
@given(via_texts())
@example("SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bK-12345-1-0")
def test_via_fast_path_agrees_with_the_full_parser(text: str) -> None:
    """One Via parser: parse_via's fast path may only ever give what the full grammar gives."""
    from sipyard.sip.headers import _parse_via_full

    try:
        full = _parse_via_full(text)
    except ParseError:
        with pytest.raises(ParseError):
            parse_via(text)
        return
    assert parse_via(text) == full, text


@st.composite
def uri_texts(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["sip:", "sip:", "sips:", "SIP:", "tel:"]))
    user = draw(st.sampled_from(["", "alice@", "a.b-c_d!~*'()&=+$,@", "a;b@", "a%41@", "a:pw@",
                                 "@", "a b@"]) | _PIECE.map(lambda p: p + "@"))
    host = draw(st.sampled_from(_HOSTS) | _PIECE)
    port = draw(st.sampled_from(_PORTS))
    params = "".join(draw(st.lists(
        st.sampled_from([";transport=tcp", ";lr", ";x=", ";maddr=[::1]", ";a=b=c", ";%6C%72", ";;",
                         "?h=v", ";user=phone"]) | _PIECE.map(lambda p: ";" + p),
        max_size=4)))
    return f"{scheme}{user}{host}{port}{params}"


@PROPS
@given(uri_texts())
@example("sip:127.0.0.1:5070")
def test_parse_uri_fast_path_and_cache_agree_with_the_full_parser(text: str) -> None:
    """Request.ruri relies on parse_uri's fast path and cache: both must give what the
    full RFC 3261 parser gives, and a cached answer must be a fresh object."""
    from sipyard.sip.uri import _parse_uri_full

    try:
        full = _parse_uri_full(text)
    except ParseError:
        with pytest.raises(ParseError):
            parse_uri(text)
        return
    first, again = parse_uri(text), parse_uri(text)
    assert first == full and again == full and again is not first, text


@PROPS
@given(st.builds(lambda a, b, c: a + b + c,
                 st.sampled_from(["<sip:", "<sips:", "<sip:", "sip:", "\"x\" <sip:", "<"]),
                 _PIECE,
                 st.sampled_from([">", ">;tag=abc", ">;tag=", ">;tag=a b", "> ;tag=1", ">;tag=1;x",
                                  ">;TAG=x", ""])))
def test_simple_name_addr_only_accepts_what_parse_name_addr_accepts(text: str) -> None:
    if _simple_name_addr(text):
        parse_name_addr(text)  # must not raise


@pytest.mark.parametrize("text", [
    "SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bK-12345-1-0",
    "SIP/2.0/TCP host.example.com;branch=z9hG4bKx;rport",
    "SIP/2.0/UDP 192.0.2.1:5060;received=10.0.0.1;rport=5060;branch=z9hG4bK1",
])
def test_via_fast_path_takes_the_usual_shapes(text: str) -> None:
    from sipyard.sip.headers import _VIA_FAST, _parse_via_full

    assert _VIA_FAST(text) is not None
    assert parse_via(text) == _parse_via_full(text)


def test_fast_paths_take_the_usual_shapes() -> None:
    for uri in ("sip:127.0.0.1:5070", "sip:alice@example.com", "sip:bob@192.0.2.4:5062;transport=tcp"):
        req = parse_message(f"OPTIONS {uri} SIP/2.0\r\n\r\n".encode())
        assert isinstance(req, Request)
        first, again = req.ruri, parse_uri(uri)  # the second comes from parse_uri's cache
        assert first == again and first is not again  # equal, but never a shared object
    for value in ("<sip:ping@127.0.0.1>;tag=12345SIPpTag001", "<sip:127.0.0.1:5070>"):
        assert _simple_name_addr(value)
    r = parse_message(OPTIONS)
    assert isinstance(r, Request)
    r.check_from_to()
    assert r._from is None and r._to is None  # no NameAddr was built
    assert r.from_.tag == "12345SIPpTag001"


def test_get_all_is_cached_per_message_and_follows_every_edit() -> None:
    msg = parse_message(
        b"BYE sip:u@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKa\r\n"
        b"Route: <sip:p1;lr>, <sip:p2;lr>\r\nRoute: <sip:p3;lr>\r\nFrom: <sip:a@x>;tag=1\r\n"
        b"To: <sip:u@x>;tag=2\r\nCall-ID: c\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n")
    first = msg.get_all("route")
    assert first == ["<sip:p1;lr>", "<sip:p2;lr>", "<sip:p3;lr>"]
    first.pop(0)  # a caller's edit of its list is its own
    assert msg.get_all("Route") == ["<sip:p1;lr>", "<sip:p2;lr>", "<sip:p3;lr>"]
    msg.add_header("Route", "<sip:p0;lr>", first=True)
    assert msg.get_all("route")[0] == "<sip:p0;lr>"
    msg.remove_header("route")
    assert msg.get_all("route") == []
    msg.set_header("Route", "<sip:q;lr>")
    assert msg.get_all("route") == ["<sip:q;lr>"]
    assert msg.get_all("via") == ["SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKa"]
    msg.replace_top_via("SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKa;received=10.0.0.1")
    assert msg.get_all("via") == ["SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKa;received=10.0.0.1"]
