"""sipyard.sip.headers against every RFC 4475 / RFC 5118 torture message, plus properties."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipyard.sip import headers as hdr
from sipyard.sip.errors import ParseError
from sipyard.sip.headers import (
    NameAddr,
    Via,
    parse_auth,
    parse_cseq,
    parse_name_addr,
    parse_params,
    parse_uint,
    parse_via,
    quote,
    split_values,
    unquote,
)
from sipyard.sip.uri import AbsoluteUri, SipUri, parse_uri

TORTURE = Path(
    os.environ.get(
        "SIPYARD_TORTURE", Path(__file__).resolve().parents[2] / "shared/testdata/torture"
    )
)
needs_corpus = pytest.mark.skipif(not TORTURE.is_dir(), reason="torture corpus not present")
COMPACT = {"v": "via", "f": "from", "t": "to", "m": "contact", "i": "call-id", "l": "content-length"}


def corpus_files() -> list[Path]:
    if not TORTURE.is_dir():
        return []
    return sorted(TORTURE.glob("*.dat")) + sorted(TORTURE.glob("rfc5118/wire/*.dat"))


def corpus_names() -> list[str]:
    return [p.stem for p in corpus_files()]


def torture_headers(name: str) -> list[tuple[str, str]]:
    """(lower-case long name, value) of each header line: unfold "CRLF WSP" into one SP,
    split at the first ":" (baddn.dat has no empty line: the whole file is headers)."""
    path = TORTURE / f"{name}.dat"
    if not path.exists():
        path = TORTURE / "rfc5118" / "wire" / f"{name}.dat"
    head = path.read_bytes().split(b"\r\n\r\n", 1)[0].decode("utf-8", "surrogateescape")
    head = re.sub(r"\r\n[ \t]+", " ", head)
    out = []
    for line in head.split("\r\n")[1:]:
        if not line:
            continue
        hname, _, value = line.partition(":")
        key = hname.strip(" \t").lower()
        out.append((COMPACT.get(key, key), value.strip(" \t")))
    return out


def values(name: str, header: str) -> list[str]:
    return [v for k, v in torture_headers(name) if k == header]


def sip(na: NameAddr) -> SipUri:
    u = na.parsed_uri()
    assert isinstance(u, SipUri)
    return u


def rejects(fn: object, text: str) -> ParseError:
    with pytest.raises(ParseError) as exc:
        fn(text)  # type: ignore[operator]
    assert exc.value.status == 400
    return exc.value


# --- Via -----------------------------------------------------------------------------

VIAS: dict[str, list[tuple[str, str, int | None, str | None]] | int] = {
    "badaspec": [("UDP", "host4.example.com", 5060, "z9hG4bKkdju43234")],
    "badbranch": [("UDP", "192.0.2.1", None, "z9hG4bK")],
    "baddate": [("UDP", "host.example.com", None, "z9hG4bKkdjuw")],
    "baddn": [("UDP", "c.example.com", 5060, "z9hG4bKkdjuw")],
    "badinv01": 400,
    "badvers": [("UDP", "c.example.com", None, "z9hG4bKkdjuw")],
    "bcast": [
        ("UDP", "192.0.2.198", None, "z9hG4bK1324923"),
        ("UDP", "255.255.255.255", None, "z9hG4bK1saber23"),
    ],
    "bext01": [("TLS", "fold-and-staple.example.com", None, "z9hG4bKkdjuw")],
    "bigcode": [("UDP", "192.0.2.105", None, "z9hG4bK2398ndaoe")],
    "clerr": [("UDP", "host5.example.com", None, "z9hG4bK-39234-23523")],
    "cparam01": [("UDP", "saturn.example.com", 5060, "z9hG4bKkdjuw")],
    "cparam02": [("UDP", "saturn.example.com", 5060, "z9hG4bKkdjuw")],
    "dblreq": [("UDP", "192.0.2.125", None, "z9hG4bKkdjuw23492")],
    "esc01": [("UDP", "host5.example.net", None, "z9hG4bKkdjuw")],
    "esc02": [("TCP", "host.example.com", None, "z9hG4bK209%fzsnel234")],
    "escnull": [("UDP", "host5.example.com", None, "z9hG4bKkdjuw")],
    "escruri": [("UDP", "host-of-the-hour.example.com", None, "z9hG4bKkdjuw")],
    "insuf": [("UDP", "192.0.2.95", None, "z9hG4bKkdj.insuf")],
    "intmeth": [("TCP", "host1.example.com", None, "z9hG4bK-.!%66*_+`'~")],
    "inv2543": [("UDP", "iftgw.example.com", None, None)],
    "invut": [("UDP", "somehost.example.com", None, "z9hG4bKkdjuw")],
    "longreq": [("TCP", f"sip{n}.example.com", None, None) for n in range(33, 0, -1)]
    + [("TCP", "host.example.com", None, "very" + "long" * 50 + "branchvalue")],
    "ltgtruri": [("UDP", "192.0.2.5", None, None)],
    "lwsdisp": [("UDP", "funky.example.com", None, "z9hG4bKkdjuw")],
    "lwsruri": [("UDP", "192.0.2.1", 5060, "z9hG4bKkdjuw2395")],
    "lwsstart": [("UDP", "host1.example.com", None, "z9hG4bKkdjuw3923")],
    "mcl01": [("UDP", "host5.example.net", None, "z9hG4bK293423")],
    "mismatch01": [("UDP", "host.example.com", None, "z9hG4bKkdjuw")],
    "mismatch02": [("UDP", "host.example.net", None, "z9hG4bKkdjuw")],
    "mpart01": [("UDP", "127.0.0.1", 5070, "z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-")],
    "multi01": [("UDP", "192.0.2.25", None, "z9hG4bKkdjuw")],
    "ncl": [("UDP", "192.0.2.53", None, "z9hG4bKkdjuw")],
    "noreason": [("UDP", "192.0.2.105", None, "z9hG4bK2398ndaoe")],
    "novelsc": [("TCP", "host9.example.com", None, "z9hG4bKkdjuw39234")],
    "quotbal": [("UDP", "192.0.2.59", 5050, "z9hG4bKkdjuw39234")],
    "regaut01": [("TCP", "192.0.2.253", None, "z9hG4bKkdjuw")],
    "regbadct": [("UDP", "135.180.130.133", 5060, "z9hG4bKkdjuw")],
    "regescrt": [("UDP", "host5.example.com", None, "z9hG4bKkdjuw")],
    "scalar02": [("TCP", "host129.example.com", None, "z9hG4bK342sdfoi3")],
    "scalarlg": [("TCP", "host129.example.com", None, "z9hG4bKzzxdiwo34sw")],
    "sdp01": [("UDP", "192.0.2.15", None, "z9hG4bKkdjuw")],
    "semiuri": [("UDP", "192.0.2.1", None, "z9hG4bKkdjuw")],
    "transports": [
        ("UDP", "t1.example.com", None, "z9hG4bKkdjuw"),
        ("SCTP", "t2.example.com", None, "z9hG4bKklasjdhf"),
        ("TLS", "t3.example.com", None, "z9hG4bK2980unddj"),
        ("UNKNOWN", "t4.example.com", None, "z9hG4bKasd0f3en"),
        ("TCP", "t5.example.com", None, "z9hG4bK0a9idfnee"),
    ],
    "trws": [("TCP", "host1.examle.com", None, "z9hG4bK299342093")],
    "unkscm": [("TCP", "host9.example.com", None, "z9hG4bKkdjuw39234")],
    "unksm2": [("UDP", "192.0.2.21", 5060, "z9hG4bKkdjuw")],
    "unreason": [("UDP", "192.0.2.198", None, "z9hG4bK1324923")],
    "wsinv": [
        ("UDP", "192.0.2.2", None, "390skdjuw"),
        ("TCP", "spindle.example.com", None, "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", None, "z9hG4bK30239"),
    ],
    "zeromf": [("UDP", "host1.example.com", None, "z9hG4bKkdjuw2349i")],
    "ipv4-mapped-ipv6": [
        ("UDP", "[::ffff:192.0.2.10]", 19823, "z9hG4bKbh19"),
        ("UDP", "[::ffff:192.0.2.2]", None, "z9hG4bKas3-111"),
    ],
    "ipv6-bad": [("UDP", "[2001:db8::9:1]", None, "z9hG4bKas3-111")],
    "ipv6-bug-abnf-3-colons": [("UDP", "lab1.east.example.com", None, "z9hG4bKas3-111")],
    "ipv6-correct-abnf-2-colons": [("UDP", "lab1.east.example.com", None, "z9hG4bKas3-111")],
    "ipv6-good": [("UDP", "[2001:db8::9:1]", None, "z9hG4bKas3-111")],
    "ipv6-in-sdp": [("UDP", "[2001:db8::20]", None, "z9hG4bKas3-111")],
    "mult-ip-in-header": [
        ("UDP", "[2001:db8::9:1]", 6050, "z9hG4bKas3-111"),
        ("UDP", "192.0.2.1", None, "z9hG4bKjhja8781hjuaij65144"),
        ("TCP", "[2001:db8::9:255]", None, "z9hG4bK451jj"),
    ],
    "mult-ip-in-sdp": [("UDP", "[2001:db8::9:1]", None, "z9hG4bKas3-111")],
    "port-ambiguous": [("UDP", "[2001:db8::9:1]", None, "z9hG4bKas3-111")],
    "port-unambiguous": [("UDP", "[2001:db8::9:1]", None, "z9hG4bKas3-111")],
    "via-received-param-no-delim": [("UDP", "[2001:db8::9:1]", None, "z9hG4bKas3")],
    "via-received-param-with-delim": [("UDP", "[2001:db8::9:1]", None, "z9hG4bKas3-111")],
}


@needs_corpus
def test_via_table_covers_the_corpus() -> None:
    assert set(VIAS) == set(corpus_names())


@needs_corpus
@pytest.mark.parametrize("name", corpus_names())
def test_vias_of_torture_message(name: str) -> None:
    pieces = [p for line in values(name, "via") for p in split_values(line)]
    want = VIAS[name]
    if isinstance(want, int):
        assert any(_fails(parse_via, p) for p in pieces)
        return
    vias = [parse_via(p) for p in pieces]
    assert [(v.transport, v.host, v.port, v.branch) for v in vias] == want
    for v in vias:
        assert v.protocol == ("SIP/7.0" if name == "badvers" else "SIP/2.0")
        assert v.raw == v.raw.strip()


def _fails(fn: object, text: str) -> bool:
    try:
        fn(text)  # type: ignore[operator]
    except ParseError as e:
        assert e.status == 400
        return True
    return False


def test_wsinv_via_lws_everywhere() -> None:
    v = parse_via("SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw")
    assert (v.protocol, v.transport, v.host, v.branch) == ("SIP/2.0", "UDP", "192.0.2.2", "390skdjuw")
    line = (
        "SIP  / 2.0  / TCP     spindle.example.com   ;   branch  =   z9hG4bK9ikj8  ,"
        " SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239"
    )
    a, b = (parse_via(p) for p in split_values(line))
    assert a.params == [("branch", "z9hG4bK9ikj8")] and a.sent_by == "spindle.example.com"
    assert b.params == [("branch", "z9hG4bK30239")] and b.transport == "UDP"
    spaced = parse_via("sip/2.0/udp  host.example.com : 5070 ; rport ; received = 192.0.2.1")
    assert (spaced.protocol, spaced.transport, spaced.port) == ("SIP/2.0", "UDP", 5070)
    assert (spaced.rport, spaced.received) == ("", "192.0.2.1")
    tab = parse_via("SIP/2.0/TCP\thost.example.com\t;\tbranch=z9hG4bKx")
    assert (tab.transport, tab.host, tab.branch) == ("TCP", "host.example.com", "z9hG4bKx")
    assert parse_cseq("7\t\tACK") == (7, "ACK")


def test_via_params_and_ipv6_rfc5118() -> None:
    with_delim = parse_via(values("via-received-param-with-delim", "via")[0]) if TORTURE.is_dir() else None
    v = parse_via("SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3-111")
    assert v.received == "[2001:db8::9:255]" and v.host == "[2001:db8::9:1]"
    if with_delim is not None:
        assert with_delim == v
    nd = parse_via("SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3")
    assert nd.received == "2001:db8::9:255" and nd.branch == "z9hG4bKas3"
    p = parse_via("SIP/2.0/UDP [::ffff:192.0.2.10]:19823;branch=z9hG4bKbh19")
    assert (p.host, p.port, p.sent_by) == ("[::ffff:192.0.2.10]", 19823, "[::ffff:192.0.2.10]:19823")
    m = parse_via("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-;rport")  # mpart01
    assert (m.rport, m.param("RPORT"), m.received) == ("", "", None)
    assert parse_via("SIP/2.0/UDP h;rport=5061").rport == "5061"
    lr = parse_via(values("longreq", "via")[-1]) if TORTURE.is_dir() else None
    if lr is not None:
        assert lr.received == "192.0.2.5" and len(lr.branch or "") == 4 + 4 * 50 + 11


@pytest.mark.parametrize(
    "text",
    [
        "", "SIP/2.0/UDP", "SIP/2.0/UDP ", "SIP/2.0 UDP host", "SIP/2.0/UDP host;;",  # badinv01
        ";", "SIP/2.0/UDP 192.0.2.15;;", "SIP/2.0/UDP host;branch=", "SIP/2.0/UDP host;=x",
        "SIP/2.0/UDP host:", "SIP/2.0/UDP host:99999", "SIP/2.0/UDP host:5o6",
        "SIP/2.0/UDP 2001:db8::1", "SIP/2.0/UDP [2001:db8::1", "SIP/2.0/UDP [2001:db8::1]x",
        "SIP/2.0/UDP [xyz]", "SIP/2.0/UDP ho st", "SIP/2.0/UDP host extra",
        "SIP/2.0/UDP host;branch=a b", "SIP/2.0/UDP host;br anch=a", "SI P/2.0/UDP host",
        "SIP/2.0/U,DP host", "SIP/2.0/UDP host;branch=\"unterminated", "SIP/2.0/UDP 1.2.3",
        "SIP/2.0/UDP 192.0.2.300", "SIP/2.0/UDP host;a=\"x\"y", "SIP/2.0/UDP\x85host",
    ],
)
def test_malformed_vias(text: str) -> None:
    err = rejects(parse_via, text)
    assert err.reason == "Bad Via"


def test_badinv01_via_and_contact() -> None:
    pieces = split_values("SIP/2.0/UDP 192.0.2.15;;,;,,")
    assert pieces == ["SIP/2.0/UDP 192.0.2.15;;", ";"]
    for p in pieces:
        rejects(parse_via, p)
    assert rejects(parse_name_addr, '"Joe" <sip:joe@example.org>;;;;').reason == "Bad name-addr"


# --- name-addr ---------------------------------------------------------------------

FROM_TAGS: dict[str, list[str | None] | int] = {
    "badaspec": ["433423"], "badbranch": ["33242"], "baddate": ["2234923"], "baddn": 400,
    "badinv01": ["134161461246"], "badvers": ["qweoiqpe"], "bcast": ["11141343"],
    "bext01": ["242etr"], "bigcode": ["39ansfi3"], "clerr": ["93942939o2"],
    "cparam01": ["DkfVgjkrtMwaerKKpe"], "cparam02": ["838293"], "dblreq": ["43251j3j324"],
    "esc01": ["938"], "esc02": ["f232jadfj23"], "escnull": ["839923423"], "escruri": ["341518"],
    "insuf": [], "intmeth": ["_token~1'+`*%!-."], "inv2543": [None], "invut": ["8392034"],
    "longreq": ["1" + "298" * 50 + "2424"], "ltgtruri": ["39291"], "lwsdisp": ["323"],
    "lwsruri": ["231413434"], "lwsstart": ["8814"], "mcl01": ["3923942"],
    "mismatch01": ["34525"], "mismatch02": ["34525"], "mpart01": ["2fb0dcc9"],
    "multi01": ["3413415", "2923420123"], "ncl": ["32394234"], "noreason": ["39ansfi3"],
    "novelsc": ["384"], "quotbal": ["93334"], "regaut01": ["87321hj23128"],
    "regbadct": ["998332"], "regescrt": ["8"], "scalar02": ["239232jh3"],
    "scalarlg": ["2easdjfejw"], "sdp01": ["234"], "semiuri": ["33242"], "transports": ["323"],
    "trws": ["329429089"], "unkscm": ["384"], "unksm2": ["3234233"], "unreason": ["11141343"],
    "wsinv": ["98asjd8"], "zeromf": ["3ghsd41"],
    "ipv4-mapped-ipv6": ["81x2"], "ipv6-bad": ["81x2"], "ipv6-bug-abnf-3-colons": ["810x2"],
    "ipv6-correct-abnf-2-colons": ["810x2"], "ipv6-good": ["81x2"], "ipv6-in-sdp": ["81x2"],
    "mult-ip-in-header": ["81x2"], "mult-ip-in-sdp": ["81x2"], "port-ambiguous": ["81x2"],
    "port-unambiguous": ["81x2"], "via-received-param-no-delim": ["81x2"],
    "via-received-param-with-delim": ["81x2"],
}

_C = "sip:caller@"
CONTACTS: dict[str, list[tuple[str | None, str, list[tuple[str, str | None]]]] | int] = {
    "baddate": [(None, _C + "host5.example.net", [])],
    "badinv01": 400,
    "bcast": [(None, "sip:user@host28.example.com", [])],
    "bigcode": [(None, "sip:user@host105.example.com", [])],
    "clerr": [(None, _C + "hungry.example.net", [])],
    # RFC 4475 §3.3.12/13: the param is a contact-param without <>, a URI param with them
    "cparam01": [(None, "sip:+19725552222@gw1.example.net", [("unknownparam", None)])],
    "cparam02": [(None, "sip:+19725552222@gw1.example.net;unknownparam", [])],
    "dblreq": [(None, "sip:j.user@host.example.com", [])],
    "esc01": [(None, "sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31", [])],
    # esc02: C%6Fntact is an unknown header, not a third Contact
    "esc02": [(None, "sip:alias1@host1.example.com", []), (None, "sip:alias3@host3.example.com", [])],
    "escnull": [(None, "sip:%00@host5.example.com", []), (None, "sip:%00%00@host5.example.com", [])],
    "escruri": [(None, _C + "host39923.example.net", [])],
    "invut": [(None, _C + "host5.example.net", [])],
    "longreq": [(None, "sip:" + "amazinglylongcallername" * 5 + "@host5.example.net", [])],
    "ltgtruri": [(None, _C + "host5.example.net", [])],
    "lwsruri": [(None, _C + "host1.example.net", [])],
    "lwsstart": [(None, _C + "host1.example.net", [])],
    "mismatch02": [(None, _C + "host.example.net", [])],
    "mpart01": [(None, "sip:fluffy@127.0.0.1:5070", [])],
    "multi01": [(None, _C + "host25.example.net", []), (None, _C + "host36.example.net", [])],
    "ncl": [(None, _C + "example53.example.net", [])],
    "noreason": [(None, "sip:user@host105.example.com", [])],
    "quotbal": [(None, _C + "host59.example.net", [])],
    "regbadct": 400,
    "regescrt": [(None, "sip:user@example.com?Route=%3Csip:sip.example.com%3E", [])],
    "scalar02": [(None, "sip:user@host129.example.com", [("expires", "280297596632815")])],
    "sdp01": [(None, _C + "host15.example.net", [])],
    "unksm2": [(None, "name:John_Smith", [])],
    "unreason": [(None, "sip:user@host198.example.com", [])],
    "wsinv": [
        (
            '"Quoted string \\"\\""',
            "sip:jdrosen@example.com",
            [("newparam", "newvalue"), ("secondparam", None), ("q", "0.33")],
        )
    ],
    "ipv4-mapped-ipv6": [('"T. desk phone"', "sip:ted@[::ffff:192.0.2.2]", [])],
    "ipv6-bad": [('"Caller"', _C + "[2001:db8::1]", [])],
    "ipv6-good": [('"Caller"', _C + "[2001:db8::1]", [])],
    "ipv6-in-sdp": [('"Caller"', _C + "[2001:db8::20]", [])],
    "mult-ip-in-sdp": [('"Caller"', _C + "[2001:db8::9:1]", [])],
    "port-ambiguous": [('"Caller"', _C + "[2001:db8::1]", [])],
    "port-unambiguous": [('"Caller"', _C + "[2001:db8::1]", [])],
    "via-received-param-no-delim": [('"Caller"', _C + "[2001:db8::9:1]", [])],
}


def _parse_all(name: str, header: str) -> list[NameAddr]:
    return [parse_name_addr(p) for line in values(name, header) for p in split_values(line)]


@needs_corpus
def test_from_table_covers_the_corpus() -> None:
    assert set(FROM_TAGS) == set(corpus_names())


@needs_corpus
@pytest.mark.parametrize("name", corpus_names())
def test_from_tags_of_torture_message(name: str) -> None:
    want = FROM_TAGS[name]
    if isinstance(want, int):
        for line in values(name, "from"):
            assert _fails(parse_name_addr, line)
            assert any(_fails(parse_name_addr, p) for p in split_values(line))
        return
    got = _parse_all(name, "from")
    assert [na.tag for na in got] == want
    for na in got:
        na.parsed_uri()  # every From URI in the corpus is parseable


@needs_corpus
@pytest.mark.parametrize("name", corpus_names())
def test_contacts_of_torture_message(name: str) -> None:
    want = CONTACTS.get(name, [])
    if isinstance(want, int):
        assert any(
            _fails(parse_name_addr, p) for line in values(name, "contact") for p in split_values(line)
        )
        return
    got = _parse_all(name, "contact")
    assert [(na.display, na.uri, na.params) for na in got] == want
    for na in got:
        assert str(na.parsed_uri()) == na.uri


TO_REJECTED = {"baddn", "badaspec", "quotbal"}


@needs_corpus
@pytest.mark.parametrize("name", corpus_names())
def test_to_and_routes_of_torture_message(name: str) -> None:
    """Every To / Route / Record-Route parses (but for the three bad To vectors), and the
    URI is exactly what sits between <> or before the first ';'."""
    for header in ("to", "route", "record-route"):
        for line in values(name, header):
            if header == "to" and name in TO_REJECTED:
                with pytest.raises(ParseError) as exc:
                    for p in split_values(line):
                        parse_name_addr(p)
                assert exc.value.status == 400
                continue
            for piece in split_values(line):
                na = parse_name_addr(piece)
                if "<" in piece:
                    assert na.bracketed and na.uri == piece[piece.index("<") + 1 : piece.index(">")]
                else:
                    assert not na.bracketed and na.uri == piece.split(";")[0].strip()
                assert str(na.parsed_uri()) == na.uri


def test_wsinv_name_addrs() -> None:
    to = parse_name_addr("sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n")
    assert (to.display, to.uri, to.tag, to.bracketed) == (
        None, "sip:vivekg@chair-dnrc.example.com", "1918181833n", False,
    )
    fr = parse_name_addr('"J Rosenberg \\\\\\""       <sip:jdrosen@example.com> ; tag = 98asjd8')
    assert fr.display == '"J Rosenberg \\\\\\""'
    assert unquote(fr.display) == 'J Rosenberg \\"'
    assert fr.tag == "98asjd8" and fr.uri == "sip:jdrosen@example.com"
    route = parse_name_addr("<sip:services.example.com;lr;unknownwith=value;unknown-no-value>")
    r = sip(route)
    assert r.params == [("lr", None), ("unknownwith", "value"), ("unknown-no-value", None)]
    assert route.params == [] and r.has_param("lr")
    c = parse_name_addr('"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam = newvalue ;'
                        " secondparam ; q = 0.33")
    assert c.param("Q") == "0.33" and c.param("secondparam") == "" and c.param("x") is None
    assert unquote(c.display or "") == 'Quoted string ""'


def test_display_names() -> None:
    lws = parse_name_addr("caller<sip:caller@example.com>;tag=323")  # lwsdisp
    assert (lws.display, lws.uri, lws.tag) == ("caller", "sip:caller@example.com", "323")
    im = parse_name_addr(
        "token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="
        '"работающий";tag=_token~1\'+`*%!-.'
    )
    assert im.display == "token1~` token2'+_ token3*%!.-"
    assert im.params == [("fromParam''~+*_!.-%", '"работающий"'), ("tag", "_token~1'+`*%!-.")]
    to = parse_name_addr(
        '"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn\'t+it$/crazy?,/;;*@example.com>'
    )
    assert unquote(to.display or "") == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert sip(to).user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    # intmeth's To URI has a comma inside <>: still one value
    assert len(split_values(
        '"x" <sip:1_unusual.URI~(to-be!sure)&isn\'t+it$/crazy?,/;;*@example.com>'
    )) == 1
    esc = parse_name_addr('"%Z%45" <sip:resource@example.com>;tag=f232jadfj23')  # esc02
    assert esc.display == '"%Z%45"'  # never unescaped
    bell = parse_name_addr('"Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423')
    assert bell.display == '"Bell, Alexander"' and bell.tag == "433423"
    assert parse_name_addr("A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe").display == "A. Bell"
    assert parse_name_addr("Jörg <sip:j@example.com>").display == "Jörg"  # lenient
    long_to = values("longreq", "to")[0] if TORTURE.is_dir() else None
    if long_to is not None:
        lt = parse_name_addr(long_to)
        assert lt.display is not None and "proportion" in lt.display
        u = sip(lt)
        assert (u.host, u.port, len(u.params)) == ("example.com", 6000, 3)


def test_unbracketed_addr_spec_params_belong_to_the_header() -> None:
    # inv2543 To: user=phone is a header param here, a URI param inside <>
    to = parse_name_addr("sip:+16505552222@ss1.example.net;user=phone")
    assert to.params == [("user", "phone")] and sip(to).params == []
    fr = parse_name_addr("<sip:+13035551111@ift.client.example.net;user=phone>")
    assert fr.params == [] and sip(fr).param("user") == "phone"
    rr = parse_name_addr("<sip:UserB@example.com;maddr=ss1.example.com>")
    assert sip(rr).param("maddr") == "ss1.example.com"
    tel = parse_name_addr("tel:+1-555-0100;tag=abc")
    assert tel.uri == "tel:+1-555-0100" and tel.tag == "abc"


def test_unknown_schemes_unksm2() -> None:
    to = parse_name_addr("isbn:2983792873")
    fr = parse_name_addr("<http://www.example.com>;tag=3234233")
    ct = parse_name_addr("<name:John_Smith>")
    for na, scheme in ((to, "isbn"), (fr, "http"), (ct, "name")):
        u = na.parsed_uri()
        assert isinstance(u, AbsoluteUri) and u.scheme == scheme
    assert fr.tag == "3234233"


def test_parsed_uri_is_cached_and_errors_are_lazy() -> None:
    na = parse_name_addr("<sip:alice@example.com>")
    assert na.parsed_uri() is na.parsed_uri()
    bad = parse_name_addr("<sip:alice@exa_mple!.com>")  # shape is fine, the host is not
    with pytest.raises(ParseError):
        bad.parsed_uri()


@pytest.mark.parametrize(
    "text",
    [
        "", "   ", "Bell", "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",  # baddn
        "Watson, Thomas <sip:t.watson@example.org>",
        '"Mr. J. User <sip:j.user@example.com>',  # quotbal
        '"Watson, Thomas" < sip:t.watson@example.org >',  # badaspec
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",  # regbadct
        '"Joe" <sip:joe@example.org>;;;;',  # badinv01
        "<sip:a@b", "<>", "<sip:a@b>x", "<sip:a@b>;", "<sip:a@b>;tag=",
        '"x" sip:a@b', '"x"', "<a@b>", "<sip:a b@c>", "sip:a b@c", "sip:a@b, sip:c@d",
        "<<sip:a@b>>", '<sip:a"b@c>', "x <sip:a@b> <sip:c@d>", "<sip:a@b>;tag=a b",
        "<sip:a@b>;t@g=1", "a<b <sip:a@b>", ";tag=1",
    ],
)
def test_malformed_name_addrs(text: str) -> None:
    assert rejects(parse_name_addr, text).reason == "Bad name-addr"


# --- lists, params, quoting --------------------------------------------------------


def test_split_values() -> None:
    assert split_values("") == [] and split_values(" , ,") == []
    assert split_values("INVITE, ACK ,BYE") == ["INVITE", "ACK", "BYE"]
    assert split_values(';;,,;;,;') == [";;", ";;", ";"]  # wsinv's UnknownHeaderWithUnusualValue
    assert split_values('"a, \\"b, c" <sip:x@y>;q=1, <sip:z,w@y>') == [
        '"a, \\"b, c" <sip:x@y>;q=1', "<sip:z,w@y>",
    ]
    assert split_values('"Bell, Alexander" <sip:a@b>;tag=1') == ['"Bell, Alexander" <sip:a@b>;tag=1']
    assert split_values("Bell, Alexander <sip:a@b>") == ["Bell", "Alexander <sip:a@b>"]  # baddn
    assert split_values("<sip:a@b, c") == ["<sip:a@b, c"]  # unclosed: one piece, refused later
    assert split_values('a;p="x,y", b') == ['a;p="x,y"', "b"]
    assert split_values('"\\\\", x') == ['"\\\\"', "x"]
    for bad in ('"Mr. J. User <sip:j.user@example.com>', 'a, "b', '"\\"'):
        rejects(split_values, bad)


@needs_corpus
def test_split_values_on_corpus_lists() -> None:
    accept = values("semiuri", "accept")[0]
    assert split_values(accept) == [
        "application/sdp", "application/pkcs7-mime", "multipart/mixed", "multipart/signed",
        "message/sip", "message/sipfrag",
    ]
    assert split_values(values("bext01", "require")[0]) == [
        "nothingSupportsThis", "nothingSupportsThisEither",
    ]
    assert split_values(values("wsinv", "unknownheaderwithunusualvalue")[0]) == [";;", ";;", ";"]


def test_parse_params() -> None:
    assert parse_params("") == [] and parse_params("  ") == []
    assert parse_params(";a=b ; c") == [("a", "b"), ("c", None)]
    assert parse_params("a=b;C") == [("a", "b"), ("C", None)]
    assert parse_params(' ;  tag = 98asjd8 ; x="a;b = c" ; y') == [
        ("tag", "98asjd8"), ("x", '"a;b = c"'), ("y", None),
    ]
    assert parse_params(';+sip.instance="<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>";reg-id=1') == [
        ("+sip.instance", '"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"'), ("reg-id", "1"),
    ]
    assert parse_params(";received=[2001:db8::9:255];maddr=2001:db8::1") == [
        ("received", "[2001:db8::9:255]"), ("maddr", "2001:db8::1"),
    ]
    for bad in (";", ";;", ";a;;b", ";a=", ";=b", ";a b", ";a=b c", ';a="b', ';a="b"c', ";a=<b>",
                ";a=b,c", ";a\x00=b"):
        assert rejects(parse_params, bad).reason == "Bad parameter"


def test_quote_unquote() -> None:
    assert quote('J Rosenberg \\"') == '"J Rosenberg \\\\\\""'
    assert unquote('"J Rosenberg \\\\\\""') == 'J Rosenberg \\"'
    assert unquote("token") == "token" and unquote('"') == '"' and unquote('""') == ""
    assert unquote('"a\\bc"') == "abc"


@given(st.text(max_size=40))
def test_quote_round_trips(s: str) -> None:
    q = quote(s)
    assert unquote(q) == s
    assert split_values(q + ", x") == [q, "x"]


# --- scalars and auth --------------------------------------------------------------


@needs_corpus
def test_cseq_of_torture_messages() -> None:
    assert parse_cseq(values("wsinv", "cseq")[0]) == (9, "INVITE")  # "0009\r\n  INVITE"
    assert parse_cseq(values("intmeth", "cseq")[0]) == (
        139122385, "!interesting-Method0123456789_*+`.%indeed'~",
    )
    assert parse_cseq(values("esc02", "cseq")[0]) == (29344, "RE%47IST%45R")
    assert parse_cseq(values("ncl", "cseq")[0]) == (0, "INVITE")
    assert [parse_cseq(v) for v in values("multi01", "cseq")] == [(5, "INVITE"), (59, "INVITE")]
    for name in ("scalar02", "scalarlg"):  # > 2**32-1
        assert rejects(parse_cseq, values(name, "cseq")[0]).reason == "Bad CSeq"
    for name in corpus_names():
        if name not in ("scalar02", "scalarlg"):
            for v in values(name, "cseq"):
                number, method = parse_cseq(v)
                assert 0 <= number < 2**32 and method == v.split()[-1]


def test_cseq_and_uint() -> None:
    assert parse_cseq("4294967295 REGISTER") == (2**32 - 1, "REGISTER")
    for bad in ("4294967296 INVITE", "INVITE", "1", "-1 INVITE", "1 IN VITE", "x INVITE",
                "1 INV;ITE", "", "١ INVITE", "1\x85INVITE", "1 INVITE\x85"):
        assert rejects(parse_cseq, bad).reason == "Bad CSeq"
    assert parse_uint("0068", 255) == 68  # wsinv Max-Forwards
    assert parse_uint("255", 255) == 255
    assert parse_uint(" 0 ") == 0
    assert parse_uint("0" * 50 + "7") == 7
    for bad, limit in (("300", 255), ("-999", 2**32 - 1), ("five", 2**32 - 1), ("", 10),
                       ("1" * 103, 2**32 - 1), ("280297596632815", 2**32 - 1), ("+1", 10),
                       ("1.5", 10), ("²", 10)):
        rejects(lambda t, lim=limit: parse_uint(t, lim), bad)


@needs_corpus
def test_scalar_limits_of_scalar02() -> None:
    rejects(lambda t: parse_uint(t, 255), values("scalar02", "max-forwards")[0])
    rejects(parse_uint, values("scalar02", "expires")[0])
    contact = parse_name_addr(values("scalar02", "contact")[0])
    rejects(parse_uint, contact.param("expires") or "")
    rejects(parse_uint, values("scalarlg", "retry-after")[0])
    rejects(parse_uint, values("ncl", "content-length")[0])


@needs_corpus
def test_auth_regaut01() -> None:
    assert parse_auth(values("regaut01", "authorization")[0]) == (
        "NoOneKnowsThisScheme", {"opaque-data": "here"},
    )


def test_parse_auth_digest() -> None:
    scheme, p = parse_auth(
        'Digest username="bob", realm="biloxi.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",'
        ' uri="sip:bob@biloxi.com", qop=auth, nc=00000001, cnonce="0a4f113b",'
        ' response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41",'
        ' Algorithm=MD5'
    )
    assert scheme == "Digest"
    assert p == {
        "username": "bob", "realm": "biloxi.com", "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "uri": "sip:bob@biloxi.com", "qop": "auth", "nc": "00000001", "cnonce": "0a4f113b",
        "response": "6629fae49393a05397450978507c4ef1",
        "opaque": "5ccc069c403ebaf9f0171e9517f40e41", "algorithm": "MD5",
    }
    assert parse_auth('Digest realm = "a, b \\"c\\"" , stale=TRUE') == (
        "Digest", {"realm": 'a, b "c"', "stale": "TRUE"},
    )
    assert parse_auth("Digest") == ("Digest", {})
    for bad in ("", "Digest a", 'Digest a="b', "Digest a=b, a=c", "Digest a=b c",
                "Basic dXNlcjpwYXNz", "Digest =b", 'Digest a="b"c', "Dig,est a=b", "Digest a=,"):
        assert rejects(parse_auth, bad).reason == "Bad Authorization"


# --- properties: arbitrary text only ever raises ParseError ------------------------

_noise = st.text(
    alphabet=st.sampled_from(list('SIP/2.0UDsip:@[];?&=%<>"\\ ,.0123456789abcf\t-_+x~')
                             + ["\x00", "é", "\r", "\n"]),
    max_size=60,
)
_anything = st.one_of(_noise, st.text(max_size=60), _noise.map(lambda s: "SIP/2.0/UDP " + s),
                      _noise.map(lambda s: '"x" <sip:' + s))


@settings(max_examples=300)
@given(_anything)
def test_arbitrary_text_only_raises_parse_error(text: str) -> None:
    for fn in (parse_via, parse_name_addr, split_values, parse_params, parse_auth, parse_cseq,
               parse_uint):
        try:
            result = fn(text)  # type: ignore[operator]
        except ParseError as e:
            assert e.status == 400
            continue
        if isinstance(result, NameAddr):
            with contextlib.suppress(ParseError):
                result.parsed_uri()
            assert not result.bracketed or "<" in text
        elif isinstance(result, Via):
            assert result.protocol.count("/") == 1


_tok = st.text(alphabet="abcXYZ019-.!%*_+`'~", min_size=1, max_size=8)
_val = _tok | _tok.map(lambda s: f"[2001:db8::{len(s)}]") | st.text(max_size=8).map(quote)


@given(
    st.none() | _tok.map(lambda s: f"{s} {s}") | st.text(max_size=10).map(quote),
    st.sampled_from(["sip:alice@example.com", "sips:[2001:db8::1]:5061;transport=tls",
                     "tel:+1-555-0100", "urn:uuid:1234"]),
    st.lists(st.tuples(_tok, st.none() | _val), max_size=4),
    st.sampled_from(["", " ", "  "]),
)
def test_generated_name_addrs_round_trip(
    display: str | None, uri: str, params: list[tuple[str, str | None]], sp: str
) -> None:
    text = (f"{display} " if display is not None else "") + f"<{uri}>"
    text += "".join(f"{sp};{sp}{n}" if v is None else f"{sp};{n}{sp}={sp}{v}" for n, v in params)
    na = parse_name_addr(text)
    assert (na.display, na.uri, na.params, na.bracketed, na.raw) == (display, uri, params, True, text)
    assert str(na.parsed_uri()) == uri
    assert split_values(f"{text}, <sip:b@c>") == [text, "<sip:b@c>"]


@given(
    st.sampled_from(["UDP", "tcp", "TLS", "SCTP", "WS", "x-unknown"]),
    st.one_of(st.sampled_from(["host.example.com", "192.0.2.1", "[2001:db8::1]", "[::ffff:192.0.2.2]"])),
    st.none() | st.integers(0, 65535),
    st.lists(st.tuples(_tok, st.none() | _val), max_size=3),
)
def test_generated_vias_round_trip(
    transport: str, host: str, port: int | None, params: list[tuple[str, str | None]]
) -> None:
    text = f"SIP/2.0/{transport} {host}" + (f":{port}" if port is not None else "")
    text += "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)
    v = parse_via(text)
    assert (v.protocol, v.transport, v.host, v.port, v.params, v.raw) == (
        "SIP/2.0", transport.upper(), host, port, params, text,
    )
    assert parse_uri(f"sip:{v.sent_by}").host == host  # type: ignore[union-attr]


# --- the fast paths (one regex each, plus caches) agree with the full parsers -------

_FULL = {parse_via: hdr._parse_via_full, parse_name_addr: hdr._parse_name_addr_full,
         parse_cseq: hdr._parse_cseq_full}


def outcome(fn: object, text: str) -> object:
    """A result, or the error as a comparable tuple."""
    try:
        return fn(text)  # type: ignore[operator]
    except ParseError as e:
        return ("ParseError", e.status, e.reason, e.fatal)


def assert_fast_is_full(fn: object, text: str) -> None:
    """Cold and then (possibly) cached: equal objects of the same type, or equal errors."""
    want = outcome(_FULL[fn], text)  # type: ignore[index]
    for _ in range(2):
        got = outcome(fn, text)
        assert type(got) is type(want) and got == want, (text, got, want)
        if isinstance(got, Via):
            assert type(got.port) is type(want.port)  # type: ignore[attr-defined]


# what sipp, sipsak, baresip/pjsip, Kamailio and Linphone send
_COMMON_VIAS = [
    "SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bK-1234-1-0",
    "SIP/2.0/UDP 192.168.1.20:5060;rport;branch=z9hG4bKPj3b2c1a0f-9e8d-4c7b.x",
    "SIP/2.0/TCP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
    "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK.abc;rport=5060;received=10.0.0.2",
    "SIP/2.0/TLS host_1.example.com:5061;branch=z9hG4bK1;alias",
    "SIP/2.0/udp 127.0.0.1:5070;branch=z9hG4bKx;rport",
]
_COMMON_NAME_ADDRS = [
    "<sip:ping@127.0.0.1>;tag=1234SIPpTag001",
    "<sip:ping@127.0.0.1>",
    '"Alice Liddell" <sip:alice@atlanta.example.com:5060;transport=udp>;tag=1928301774',
    '"sipp"<sip:sipp@127.0.0.1:5061>;tag=1',
    "Bob <sip:bob@biloxi.example.com>;tag=a6c85cf",
    "sip:sipsak@10.0.0.1:40123;tag=6b8b4567",
    "<sip:alice@pc33.atlanta.example.com;transport=tcp>;expires=3600;+sip.instance=x",
    "<tel:+15550100>;tag=c1b1a0e6-5e7f-4e5b",
]


_COMMON_CSEQS = ["1 OPTIONS", "314159 INVITE", "0009 REGISTER", "4294967295 ACK"]


@pytest.mark.parametrize(
    ("fn", "fast", "text"),
    [(parse_via, hdr._VIA_FAST, t) for t in _COMMON_VIAS]
    + [(parse_name_addr, hdr._NAME_ADDR_FAST, t) for t in _COMMON_NAME_ADDRS]
    + [(parse_cseq, hdr._CSEQ_FAST, t) for t in _COMMON_CSEQS],
)
def test_common_shapes_take_the_fast_path(fn: object, fast: object, text: str) -> None:
    assert fast(text) is not None  # type: ignore[operator]
    assert_fast_is_full(fn, text)


@needs_corpus
@pytest.mark.parametrize("name", corpus_names())
def test_fast_paths_on_every_torture_header(name: str) -> None:
    for _, value in torture_headers(name):
        pieces = [value]
        with contextlib.suppress(ParseError):
            pieces += split_values(value)
        for text in pieces:
            for fn in _FULL:
                assert_fast_is_full(fn, text)


_noise_chars = st.sampled_from(list(' \t%@:;=?&<>"[],/#+$.-_!~*\'()\\') + ["\x00", "é", "\xa0"])
_hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.from_regex(r"[a-z0-9_][a-z0-9_.-]{0,8}[a-z][a-z0-9-]{0,3}", fullmatch=True),
)
_bad_hosts = st.sampled_from(["1.2.3.256", "1.2.3", "1.2.3.4.", "-a", ".a", "[::1]", "a b", "é"])
_ptok = st.text(alphabet="abcXYZ019-.!%*_+`'~", min_size=1, max_size=8)
_pval = st.text(alphabet="abcXYZ019-.!%*_+`'~:[]/@?&=", min_size=1, max_size=8)
_bad_pvals = st.sampled_from(["", '"q"', "a b", "a;", "é", "<x>", "a,b"])


@st.composite
def common_headers(draw: st.DrawFn, near_miss: bool) -> tuple[str, str, str]:
    """(via, name-addr, cseq) in the fast paths' shapes; with ``near_miss``, one
    part in ten (and sometimes one inserted character) that must leave them."""
    rnd = draw(st.randoms(use_true_random=False))

    def maybe(good: st.SearchStrategy[str], bad: st.SearchStrategy[str]) -> str:
        return draw(bad if near_miss and rnd.random() < 0.1 else good)

    def params() -> str:
        out = ""
        for _ in range(draw(st.integers(0, 4))):
            out += ";" + maybe(_ptok, st.sampled_from(["", "a=", "é", " a"]))
            if draw(st.booleans()):
                out += "=" + maybe(_pval, _bad_pvals)
        return out

    def port() -> str:
        if not draw(st.booleans()):
            return ""
        return ":" + maybe(st.integers(0, 65535).map(str),
                           st.sampled_from(["", "65536", "99999", "000001", " 5060"]))

    via = maybe(st.just("SIP/2.0/"), st.sampled_from(["SIP/2.1/", "sip/2.0/", "SIP / 2.0/"]))
    via += maybe(st.sampled_from(["UDP", "TCP", "TLS", "udp", "Ws", "SCTP"]),
                 st.sampled_from(["", "X-1", "U DP"]))
    via += maybe(st.just(" "), st.sampled_from(["", "  ", "\t"]))
    via += maybe(_hosts, _bad_hosts) + port() + params()

    uri = maybe(st.sampled_from(["sip:", "sips:", "tel:", "urn:x:"]),
                st.sampled_from(["", "1x:", "sip :", "é:"]))
    uri += maybe(_hosts, _bad_hosts) + port()
    if draw(st.booleans()):
        na = uri + params()  # addr-spec
    else:
        uri += params()
        display = maybe(
            st.sampled_from(["", "Alice ", "Alice  Bob\t", "Bob", '"" ', '"Ali ce" ', '"x>y"']),
            st.sampled_from(['"a\\"b" ', 'a"b ', "a,b ", '"open ']),
        )
        na = display + "<" + uri + ">" + params()
    cseq = maybe(st.integers(0, 2**32 - 1).map(str), st.sampled_from(["", "-1", "4294967296", "00000000001"]))
    cseq += maybe(st.just(" "), st.sampled_from(["", "  ", "\t"]))
    cseq += maybe(st.sampled_from(["INVITE", "OPTIONS", "REGISTER", "ACK", "BYE", "x.y-z!"]),
                  st.sampled_from(["", "IN VITE", "é", "A;B"]))
    out = [via, na, cseq]
    if near_miss and rnd.random() < 0.2:
        i = draw(st.integers(0, 2))
        pos = draw(st.integers(0, len(out[i])))
        out[i] = out[i][:pos] + draw(_noise_chars) + out[i][pos:]
    return out[0], out[1], out[2]


@given(common_headers(near_miss=False))
def test_fast_paths_take_every_common_shape(case: tuple[str, str, str]) -> None:
    via, na, cseq = case
    assert hdr._VIA_FAST(via) is not None and hdr._CSEQ_FAST(cseq) is not None, case
    assert hdr._NAME_ADDR_FAST(na) is not None, case
    for fn, text in zip(_FULL, case, strict=True):
        assert_fast_is_full(fn, text)


@settings(max_examples=300)
@given(common_headers(near_miss=True), _pval | _bad_pvals | _noise_chars)
def test_fast_paths_agree_with_full_parsers_on_near_misses(
    case: tuple[str, str, str], tag: str
) -> None:
    for fn, text in zip(_FULL, case, strict=True):
        assert_fast_is_full(fn, text)
    # a cached name-addr head followed by another tag (the head cache's own check)
    for head in (case[1][: case[1].find(">") + 1], case[1].partition(";tag=")[0],
                 case[1].partition(";")[0]):
        assert_fast_is_full(parse_name_addr, head)
        assert_fast_is_full(parse_name_addr, head + ";tag=" + tag)
        assert_fast_is_full(parse_name_addr, head + ";tag=" + tag + ";tag=x")


def test_caches_are_bounded_and_results_unshared() -> None:
    a = parse_name_addr("<sip:ping@127.0.0.1>;tag=1")
    b = parse_name_addr("<sip:ping@127.0.0.1>;tag=1")
    assert a == b and a.params is not b.params
    assert "<sip:ping@127.0.0.1>" in hdr._HEADS
    assert parse_name_addr("<sip:ping@127.0.0.1>;tag=x-y.z").tag == "x-y.z"
    for bad in ("", "a b", "é", "\u0661", "a;", "a,b", '"x'):  # U+0661: isalnum() but not ASCII
        rejects(parse_name_addr, "<sip:ping@127.0.0.1>;tag=" + bad)
    # ";tag=" inside the head (display or URI) is never a key: partition would cut it
    for text in ('"a;tag=b" <sip:x@y>;tag=1', "<sip:x@y;tag=2>;tag=1", "<sip:x@y;tag=2>"):
        assert_fast_is_full(parse_name_addr, text)
        assert text.partition(";tag=")[0] not in hdr._HEADS
    assert parse_name_addr("sip:sipsak@10.0.0.1:5060;tag=1").tag == "1"  # addr-spec heads too
    assert hdr._HEADS["sip:sipsak@10.0.0.1:5060"] == (None, "sip:sipsak@10.0.0.1:5060", False)
    assert parse_name_addr("sip:sipsak@10.0.0.1:5060") == NameAddr(
        None, "sip:sipsak@10.0.0.1:5060", [], False, "sip:sipsak@10.0.0.1:5060")
    q = parse_name_addr('"a>b" <sip:x@y>;tag=1')
    assert (q.display, q.uri, q.tag) == ('"a>b"', "sip:x@y", "1")
    assert parse_name_addr('"a>b" <sip:x@y>;tag=2').tag == "2"
    for n in range(hdr._HEADS_SIZE + 10):
        parse_name_addr(f"<sip:u{n}@example.com>;tag={n}")
    assert len(hdr._HEADS) <= hdr._HEADS_SIZE
    for n in range(hdr._CSEQ_CACHE_SIZE + 10):
        assert parse_cseq(f"{n} INVITE") == (n, "INVITE")
    assert len(hdr._CSEQ_CACHE) <= hdr._CSEQ_CACHE_SIZE
    assert parse_cseq("1 OPTIONS") == parse_cseq("1 OPTIONS")  # cached (shared when not compiled)
    long = "1 " + "X" * 40
    assert parse_cseq(long) == (1, "X" * 40) and long not in hdr._CSEQ_CACHE
