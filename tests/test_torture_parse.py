"""RFC 4475 / RFC 5118 torture messages through parse_message + validate_request.

Every file of ``shared/testdata/torture`` is first checked against its
directory's ``SHA256SUMS`` (the data must be the RFCs' bytes, see INDEX.md),
then run through the same stateless pipeline the app runs on a datagram:
``parse_message`` → ``validate_request`` (or ``validate_response``) →
``unsupported_requires``. ``EXPECT`` is the one table of outcomes, each
decided from the "what a conforming element does" column of INDEX.md:

* ``VALID`` — parses and passes every stateless check (what happens next is
  the application's business: 501 for an unknown method, 415, 483 …);
* ``(status, reason substring)`` — answered statelessly with that status;
  for parser-level errors the partial message must still carry a Via so the
  answer can be addressed;
* ``DROP`` — a bad response (or unreadable message): never answered.

The valid messages then get concrete checks of what was parsed.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from pathlib import Path

import pytest

from sipyard.sip.errors import ParseError
from sipyard.sip.message import STAR, Request, Response, build_response, parse_message
from sipyard.sip.uri import AbsoluteUri, SipUri
from sipyard.sip.validate import unsupported_requires, validate_request, validate_response

TORTURE = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata" / "torture"

#: RFC 3261 and extension methods the server knows (sipyard.app.KNOWN_METHODS).
KNOWN_METHODS = frozenset({
    "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "SUBSCRIBE", "NOTIFY",
    "MESSAGE", "REFER", "INFO", "UPDATE", "PRACK", "PUBLISH",
})
SUPPORTED = frozenset({"path", "outbound"})

VALID = "valid"
DROP = "drop"
Outcome = str | tuple[int, str]

_RFC5118_VALID = [
    "ipv6-good", "port-ambiguous", "port-unambiguous", "via-received-param-with-delim",
    "via-received-param-no-delim", "ipv6-in-sdp", "mult-ip-in-header", "mult-ip-in-sdp",
    "ipv4-mapped-ipv6", "ipv6-bug-abnf-3-colons", "ipv6-correct-abnf-2-colons",
]

EXPECT: dict[str, Outcome] = {
    # RFC 4475 §3.1.1: valid messages
    "wsinv.dat": VALID,
    "intmeth.dat": VALID,            # unknown method: validation passes, the app answers 501
    "esc01.dat": VALID,
    "escnull.dat": VALID,
    "esc02.dat": VALID,              # RE%47IST%45R is not REGISTER: 501 from the app
    "lwsdisp.dat": VALID,
    "longreq.dat": VALID,
    "dblreq.dat": VALID,
    "semiuri.dat": VALID,
    "transports.dat": VALID,
    "mpart01.dat": VALID,
    "unreason.dat": VALID,           # response
    "noreason.dat": VALID,           # response
    # RFC 4475 §3.1.2: invalid messages
    "badinv01.dat": (400, "Via"),
    "clerr.dat": (400, "Content-Length larger"),   # datagram: 400 (stream: waits)
    "ncl.dat": (400, "Content-Length"),
    "scalar02.dat": (400, "CSeq"),
    "scalarlg.dat": DROP,            # response with CSeq > 2**32-1: discard
    "quotbal.dat": (400, "To"),
    "ltgtruri.dat": (400, "URI"),
    "lwsruri.dat": (400, "Request-Line"),
    "lwsstart.dat": (400, "Request-Line"),
    "trws.dat": (400, "Request-Line"),
    "escruri.dat": (400, "escaped headers"),
    "baddate.dat": VALID,            # "shouldn't reject unless Date matters": it doesn't here
    "regbadct.dat": (400, "Contact"),
    "badaspec.dat": (400, "To"),
    "baddn.dat": (400, "From"),
    "badvers.dat": (505, "Version Not Supported"),
    "mismatch01.dat": (400, "CSeq method"),
    "mismatch02.dat": (501, "Not Implemented"),
    "bigcode.dat": DROP,             # status 4294967301
    # RFC 4475 §3.2: transaction layer
    "badbranch.dat": VALID,          # branch "z9hG4bK" alone: RFC 2543 matching applies
    # RFC 4475 §3.3: application layer
    "insuf.dat": (400, "Missing"),
    "unkscm.dat": (416, "Unsupported URI Scheme"),
    "novelsc.dat": (416, "Unsupported URI Scheme"),
    "unksm2.dat": VALID,             # parser must not fail; the registrar answers 400 (To)
    "bext01.dat": (420, "nothingSupportsThis, nothingSupportsThisEither"),
    "invut.dat": VALID,              # 415 is the application's answer
    "regaut01.dat": VALID,
    "multi01.dat": (400, "Multiple"),
    "mcl01.dat": (400, "Multiple Content-Length"),
    "bcast.dat": VALID,              # response; parses, dropped later as unmatched
    "zeromf.dat": VALID,
    "cparam01.dat": VALID,
    "cparam02.dat": VALID,
    "regescrt.dat": VALID,
    "sdp01.dat": VALID,              # 406 is the application's answer
    # RFC 4475 §3.4: backward compatibility
    "inv2543.dat": VALID,
    # extra/test.dat: outside RFC 4475; no SIP version on the Request-Line and
    # "Foobar roobar" has no colon (400), but there is no Via to send the 400 to
    "extra/test.dat": DROP,
    # RFC 5118, the on-the-wire form
    **{f"rfc5118/wire/{name}.dat": VALID for name in _RFC5118_VALID},
    "rfc5118/wire/ipv6-bad.dat": (400, "IPv6"),
    # RFC 5118, the archive form (bare LF); two files carry a too-large Content-Length
    **{f"rfc5118/archive/{name}.dat": VALID for name in _RFC5118_VALID},
    "rfc5118/archive/ipv6-bad.dat": (400, "IPv6"),
    "rfc5118/archive/ipv6-in-sdp.dat": (400, "Content-Length larger"),
    "rfc5118/archive/mult-ip-in-sdp.dat": (400, "Content-Length larger"),
}


@cache
def _sums() -> dict[str, str]:
    """name (relative to TORTURE) -> SHA-256, from every SHA256SUMS file."""
    sums: dict[str, str] = {}
    for sums_file in sorted(TORTURE.rglob("SHA256SUMS")):
        rel = sums_file.parent.relative_to(TORTURE)
        for line in sums_file.read_text().splitlines():
            digest, name = line.split(maxsplit=1)
            key = str(rel / name.lstrip("*")) if str(rel) != "." else name.lstrip("*")
            sums[key] = digest
    return sums


@cache
def load(name: str) -> bytes:
    """The file's bytes, after checking them against SHA256SUMS."""
    data = (TORTURE / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == _sums()[name], f"{name} is not the RFC's bytes"
    return data


def outcome(data: bytes) -> Outcome:
    """What the stateless pipeline does with one datagram."""
    try:
        msg = parse_message(data)
    except ParseError as exc:
        if isinstance(exc.partial, Request) and exc.partial.has("via"):
            return (exc.status, exc.reason)
        return DROP
    if isinstance(msg, Response):
        try:
            validate_response(msg)
        except ParseError:
            return DROP
        return VALID
    try:
        validate_request(msg, KNOWN_METHODS)
    except ParseError as exc:
        return (exc.status, exc.reason)
    bad = unsupported_requires(msg, SUPPORTED)
    if bad:
        return (420, "Bad Extension: " + ", ".join(bad))
    return VALID


def parsed(name: str) -> Request | Response:
    return parse_message(load(name))


def request(name: str) -> Request:
    msg = parsed(name)
    assert isinstance(msg, Request)
    validate_request(msg, KNOWN_METHODS)
    return msg


# -- the corpus itself ----------------------------------------------------------

def test_every_file_matches_its_sha256sum() -> None:
    assert len(_sums()) == 49 + 1 + 12 + 12
    for name in _sums():
        load(name)


def test_sizes_match_index() -> None:
    """Byte counts in INDEX.md's tables (the second check that the data is the RFCs')."""
    index = (TORTURE / "INDEX.md").read_text()
    rfc4475 = dict(re.findall(r"^\| `([\w-]+\.dat)` \| [\d.]+ \| .*? \| (\d+) \|", index, re.M))
    assert len(rfc4475) == 49
    for name, size in rfc4475.items():
        assert len(load(name)) == int(size), name
    rfc5118 = re.findall(r"^\| `([\w-]+)` \| [\d.]+ \| .*? \| (\d+) \| (\d+) \|", index, re.M)
    assert len(rfc5118) == 12
    for name, archive, wire in rfc5118:
        assert len(load(f"rfc5118/archive/{name}.dat")) == int(archive), name
        assert len(load(f"rfc5118/wire/{name}.dat")) == int(wire), name


def test_table_covers_every_file() -> None:
    on_disk = {str(p.relative_to(TORTURE)) for p in TORTURE.rglob("*.dat")}
    assert on_disk == set(EXPECT)
    assert set(_sums()) == on_disk


# -- the outcome table -----------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EXPECT))
def test_outcome(name: str) -> None:
    expected = EXPECT[name]
    got = outcome(load(name))
    if isinstance(expected, str):
        assert got == expected, f"{name}: {got}"
    else:
        assert isinstance(got, tuple), f"{name}: {got}"
        assert got[0] == expected[0], f"{name}: {got}"
        assert expected[1] in got[1], f"{name}: {got}"


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECT.items() if e == VALID))
def test_valid_requests_get_a_well_formed_response(name: str) -> None:
    """build_response copies Via/From/Call-ID/CSeq and adds one To tag; the result parses."""
    msg = parsed(name)
    if isinstance(msg, Response):
        return
    validate_request(msg, KNOWN_METHODS)
    data = build_response(msg, 404, "Not Found", to_tag="t0rture")
    resp = parse_message(data)
    assert isinstance(resp, Response)
    assert (resp.status, resp.reason) == (404, "Not Found")
    validate_response(resp)
    assert resp.get_lines("via") == msg.get_lines("via")
    assert [v.branch for v in resp.vias] == [v.branch for v in msg.vias]
    assert resp.call_id == msg.call_id
    assert resp.cseq == msg.cseq
    assert resp.from_.raw == msg.from_.raw
    assert resp.to.tag == (msg.to.tag or "t0rture")
    assert sum(1 for n, _ in resp.to.params if n.lower() == "tag") == 1
    assert resp.body == b""


# -- concrete values of the valid messages ---------------------------------------

def test_wsinv() -> None:
    req = request("wsinv.dat")
    assert (req.method, req.uri) == ("INVITE", "sip:vivekg@chair-dnrc.example.com;unknownparam")
    assert req.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert b"\r\nUnknownHeaderWithUnusualValue: ;;,,;;,;\r\n" in req.to_bytes()
    assert req.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert req.get("Subject") == "" and req.get("s") == ""
    assert req.to.uri == "sip:vivekg@chair-dnrc.example.com" and req.to.tag == "1918181833n"
    assert req.from_.display == '"J Rosenberg \\\\\\""' and req.from_.tag == "98asjd8"
    assert req.from_.uri == "sip:jdrosen@example.com"
    assert req.max_forwards == 68
    assert req.cseq == (9, "INVITE")
    assert req.call_id == "wsinv.ndaksdj@192.0.2.1"
    vias = req.vias
    assert len(vias) == 3
    assert [(v.protocol, v.transport, v.host, v.branch) for v in vias] == [
        ("SIP/2.0", "UDP", "192.0.2.2", "390skdjuw"),
        ("SIP/2.0", "TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("SIP/2.0", "UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert req.count("via") == 2  # "Via" and the compact "v" line
    contacts = req.contacts
    assert isinstance(contacts, list) and len(contacts) == 1
    assert contacts[0].display == '"Quoted string \\"\\""'
    assert contacts[0].params == [("newparam", "newvalue"), ("secondparam", None), ("q", "0.33")]
    assert req.get_all("Route") == ["<sip:services.example.com;lr;unknownwith=value;unknown-no-value>"]
    assert req.get("Content-Type") == "application/sdp"
    assert len(req.body) == 150 and req.body.startswith(b"v=0\r\n")
    assert req.body.endswith(b"a=rtpmap:31 LPC\r\n")
    ruri = req.ruri
    assert isinstance(ruri, SipUri) and ruri.params == [("unknownparam", None)]


def test_intmeth() -> None:
    req = request("intmeth.dat")
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert req.method == method
    assert req.cseq == (139122385, method)
    assert method not in KNOWN_METHODS
    ruri = req.ruri
    assert isinstance(ruri, SipUri)
    assert ruri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert ruri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert ruri.host == "example.com"
    assert req.to.display == '"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f"'
    assert req.from_.tag == "_token~1'+`*%!-."
    assert req.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert req.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert req.max_forwards == 255
    assert req.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    # the NUL and the UTF-8 survive a round trip byte for byte (only "name:value"
    # comes back as "name: value")
    data = load("intmeth.dat").replace(b"~:\xef", b"~: \xef")
    assert req.to_bytes() == data
    assert b"NUL:\\\x00" in req.to_bytes()


def test_esc01() -> None:
    req = request("esc01.dat")
    ruri = req.ruri
    assert isinstance(ruri, SipUri)
    assert ruri.user == "sips%3Auser%40example.com" and ruri.host == "example.net"
    assert ruri.user_unescaped == "sips:user@example.com"
    assert req.call_id == "esc01.239409asdfakjkn23onasd0-3234"  # compact "i"
    assert req.get("Content-Type") == "application/sdp"  # compact "C", upper case
    contacts = req.contacts
    assert isinstance(contacts, list) and len(contacts) == 1
    uri = contacts[0].parsed_uri()
    assert isinstance(uri, SipUri)
    assert uri.user == "cal%6Cer" and uri.user_unescaped == "caller"
    assert uri.param("lr") == ""
    assert uri.params[1] == ("n%61me", "v%61lue%25%34%31")  # no recursive unescaping
    assert len(req.body) == 150


def test_escnull() -> None:
    req = request("escnull.dat")
    to_uri = req.to.parsed_uri()
    assert isinstance(to_uri, SipUri)
    assert to_uri.user == "null-%00-null" and to_uri.user_unescaped == "null-\x00-null"
    contacts = req.contacts
    assert isinstance(contacts, list)
    assert [c.uri for c in contacts] == ["sip:%00@host5.example.com", "sip:%00%00@host5.example.com"]
    unescaped = []
    for c in contacts:
        uri = c.parsed_uri()
        assert isinstance(uri, SipUri)
        unescaped.append(uri.user_unescaped)
    assert unescaped == ["\x00", "\x00\x00"]


def test_esc02() -> None:
    req = request("esc02.dat")
    assert req.method == "RE%47IST%45R" and req.method != "REGISTER"
    assert req.cseq == (29344, "RE%47IST%45R")
    assert req.to.display == '"%Z%45"' and req.from_.display == '"%Z%45"'
    contacts = req.contacts
    assert isinstance(contacts, list)
    assert [c.uri for c in contacts] == ["sip:alias1@host1.example.com", "sip:alias3@host3.example.com"]
    assert req.count("contact") == 2
    assert req.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert req.top_via.branch == "z9hG4bK209%fzsnel234"


def test_lwsdisp() -> None:
    req = request("lwsdisp.dat")
    assert req.from_.display == "caller" and req.from_.uri == "sip:caller@example.com"
    assert req.from_.tag == "323"


def test_longreq() -> None:
    req = request("longreq.dat")
    assert len(load("longreq.dat")) == 3515
    assert [v.host for v in req.vias] == [f"sip{n}.example.com" for n in range(33, 0, -1)] + [
        "host.example.com"]
    assert req.vias[-1].received == "192.0.2.5"
    assert len(req.call_id) == 141
    assert req.from_.tag is not None and len(req.from_.tag) > 100
    assert req.to.display is not None and "extremeextreme" in req.to.display
    name = "Unknown-LongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLong-Name"
    assert req.has(name) and req.count(name) == 1
    assert len(req.body) == 150


def test_dblreq() -> None:
    req = request("dblreq.dat")
    assert req.method == "REGISTER"
    assert req.body == b""
    assert req.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"  # compact "I"
    # the trailing INVITE is gone: neither in the body nor in a re-serialisation
    assert b"INVITE" not in req.to_bytes()
    assert b"INVITE sip:joe@example.com" in load("dblreq.dat")


def test_semiuri() -> None:
    req = request("semiuri.dat")
    ruri = req.ruri
    assert isinstance(ruri, SipUri)
    assert ruri.user == "user;par=u%40example.net" and ruri.host == "example.com"
    assert ruri.params == []
    assert req.get_all("Accept") == [
        "application/sdp", "application/pkcs7-mime", "multipart/mixed", "multipart/signed",
        "message/sip", "message/sipfrag"]


def test_transports() -> None:
    req = request("transports.dat")
    assert [v.transport for v in req.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert [v.host for v in req.vias] == [f"t{n}.example.com" for n in range(1, 6)]
    assert req.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_mpart01() -> None:
    req = request("mpart01.dat")
    assert req.method == "MESSAGE"
    body = req.body
    assert len(body) == 553
    assert body.count(b"\x00") == 2
    assert body.count(b"\n") - body.count(b"\r\n") == 3  # bare LFs stay bare
    assert load("mpart01.dat").endswith(body)
    assert req.get("Content-Type") == "multipart/mixed;boundary=7a9cbec02ceef655"


def test_unreason_and_noreason() -> None:
    resp = parsed("unreason.dat")
    assert isinstance(resp, Response)
    assert resp.status == 200
    assert resp.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    assert len(resp.body) == 154
    assert resp.to.tag == "2229"
    resp = parsed("noreason.dat")
    assert isinstance(resp, Response)
    assert (resp.status, resp.reason) == (100, "")
    assert resp.to_bytes().startswith(b"SIP/2.0 100 \r\n")


def test_inv2543() -> None:
    req = request("inv2543.dat")
    assert len(req.body) == 105
    assert load("inv2543.dat").endswith(req.body) and req.body.startswith(b"v=0")
    assert req.top_via.branch is None
    assert req.from_.tag is None
    assert req.max_forwards is None
    assert not req.has("content-length")


def test_semantic_requests_parse_normally() -> None:
    assert request("badbranch.dat").top_via.branch == "z9hG4bK"
    assert request("baddate.dat").get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"
    assert request("zeromf.dat").max_forwards == 0
    assert request("regaut01.dat").get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"
    assert request("invut.dat").get("Content-Type") == "application/unknownformat"
    assert request("sdp01.dat").get("Accept") == "text/nobodyKnowsThis"
    unksm2 = request("unksm2.dat")
    assert isinstance(unksm2.to.parsed_uri(), AbsoluteUri)
    assert unksm2.to.uri == "isbn:2983792873"
    assert unksm2.from_.uri == "http://www.example.com"
    bcast = parsed("bcast.dat")
    assert isinstance(bcast, Response) and bcast.vias[1].host == "255.255.255.255"


def test_contact_params_vs_uri_params() -> None:
    c1 = request("cparam01.dat").contacts
    assert isinstance(c1, list)
    assert c1[0].uri == "sip:+19725552222@gw1.example.net"
    assert c1[0].params == [("unknownparam", None)]
    u1 = c1[0].parsed_uri()
    assert isinstance(u1, SipUri) and u1.params == []
    c2 = request("cparam02.dat").contacts
    assert isinstance(c2, list)
    assert c2[0].uri == "sip:+19725552222@gw1.example.net;unknownparam" and c2[0].params == []
    u2 = c2[0].parsed_uri()
    assert isinstance(u2, SipUri) and u2.params == [("unknownparam", None)]
    c3 = request("regescrt.dat").contacts  # compact "M"
    assert isinstance(c3, list)
    assert c3[0].uri == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    u3 = c3[0].parsed_uri()
    assert isinstance(u3, SipUri) and u3.headers == [("Route", "%3Csip:sip.example.com%3E")]
    assert c3 != STAR


def test_bext01_lists_require_not_proxy_require() -> None:
    req = request("bext01.dat")
    assert unsupported_requires(req, SUPPORTED) == ["nothingSupportsThis", "nothingSupportsThisEither"]


def test_extra_test_dat_is_unanswerable() -> None:
    with pytest.raises(ParseError) as info:
        parse_message(load("extra/test.dat"))
    assert (info.value.status, info.value.reason) == (400, "Malformed Request-Line")
    partial = info.value.partial
    assert isinstance(partial, Request) and partial.method == ""
    assert partial.get("Meaning") == "foo bar spam" and not partial.has("via")


def test_error_partials_are_addressable() -> None:
    """Parser-level 400/505s keep the headers so the answer reaches the sender."""
    for name in ("clerr.dat", "ncl.dat", "mcl01.dat", "lwsruri.dat", "badvers.dat"):
        with pytest.raises(ParseError) as info:
            parse_message(load(name))
        partial = info.value.partial
        assert isinstance(partial, Request), name
        assert partial.top_via.host, name
        assert partial.call_id, name
    with pytest.raises(ParseError) as info:
        parse_message(load("badvers.dat"))
    assert isinstance(info.value.partial, Request)
    assert info.value.partial.method == "OPTIONS"


@pytest.mark.parametrize("name", _RFC5118_VALID)
def test_rfc5118_archive_and_wire_agree(name: str) -> None:
    """Bare-LF archive and CRLF wire forms give the same headers (bodies may differ)."""
    try:
        archive = parsed(f"rfc5118/archive/{name}.dat")
    except ParseError as exc:  # the two Content-Length quirks
        assert name in ("ipv6-in-sdp", "mult-ip-in-sdp")
        partial = exc.partial
        assert isinstance(partial, Request)
        archive = partial
    wire = parsed(f"rfc5118/wire/{name}.dat")
    # wire/ recomputed Content-Length from its CRLF body; nothing else differs
    assert [h for h in archive.headers if h[0] != "Content-Length"] == \
        [h for h in wire.headers if h[0] != "Content-Length"]
    assert archive.start_line() == wire.start_line()


def test_rfc5118_values() -> None:
    good = request("rfc5118/wire/ipv6-good.dat")
    ruri = good.ruri
    assert isinstance(ruri, SipUri) and ruri.host == "[2001:db8::10]" and ruri.port is None
    assert good.top_via.host == "[2001:db8::9:1]"
    amb = request("rfc5118/wire/port-ambiguous.dat").ruri
    assert isinstance(amb, SipUri) and (amb.host, amb.port) == ("[2001:db8::10:5070]", None)
    unamb = request("rfc5118/wire/port-unambiguous.dat").ruri
    assert isinstance(unamb, SipUri) and (unamb.host, unamb.port) == ("[2001:db8::10]", 5070)
    assert request("rfc5118/wire/via-received-param-with-delim.dat").top_via.received == \
        "[2001:db8::9:255]"
    assert request("rfc5118/wire/via-received-param-no-delim.dat").top_via.received == \
        "2001:db8::9:255"
    mult = request("rfc5118/wire/mult-ip-in-header.dat")
    assert [(v.host, v.port) for v in mult.vias] == [
        ("[2001:db8::9:1]", 6050), ("192.0.2.1", None), ("[2001:db8::9:255]", None)]
    mapped = request("rfc5118/wire/ipv4-mapped-ipv6.dat")
    assert (mapped.top_via.host, mapped.top_via.port) == ("[::ffff:192.0.2.10]", 19823)
    three = request("rfc5118/wire/ipv6-bug-abnf-3-colons.dat").ruri
    assert isinstance(three, SipUri) and three.host == "[2001:db8:::192.0.2.1]"
    sdp = request("rfc5118/wire/ipv6-in-sdp.dat")
    assert b"c=IN IP6 2001:db8::20" in sdp.body
    assert len(sdp.body) == int(sdp.get("Content-Length") or "-1")
