"""sipyard.sip.uri: parsing against RFC 4475 / RFC 5118 vectors, §19.1.4 comparison, round trips."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sipyard.sip import _abnf
from sipyard.sip import uri as uri_mod
from sipyard.sip.errors import ParseError
from sipyard.sip.uri import (
    MAX_URI_LENGTH,
    AbsoluteUri,
    SipUri,
    TelUri,
    Uri,
    escape,
    parse_uri,
    unescape,
    uri_equal,
)

TORTURE = Path(
    os.environ.get(
        "SIPYARD_TORTURE", Path(__file__).resolve().parents[2] / "shared/testdata/torture"
    )
)
needs_corpus = pytest.mark.skipif(not TORTURE.is_dir(), reason="torture corpus not present")


def corpus_files() -> list[Path]:
    if not TORTURE.is_dir():
        return []
    return sorted(TORTURE.glob("*.dat")) + sorted(TORTURE.glob("rfc5118/wire/*.dat"))


def request_uri(path: Path) -> str | None:
    """The Request-URI of a torture file (None for a response), as a liberal
    request-line split would hand it over: between the first SP and the last SP."""
    data = path.read_bytes()
    line = data.split(b"\r\n", 1)[0].decode("utf-8", "surrogateescape").rstrip(" ")
    if line.startswith("SIP/"):
        return None
    rest = line.split(" ", 1)[1]
    return rest.rsplit(" ", 1)[0].strip(" ")


def torture_name(path: Path) -> str:
    return path.stem


def sip(uri: Uri) -> SipUri:
    assert isinstance(uri, SipUri), uri
    return uri


# --- every Request-URI in the corpus -----------------------------------------------

# name -> (user, host, port, params, headers) for sip:, or a status for a rejection,
# or ("abs", scheme) for an opaque URI.
RURI: dict[str, object] = {
    "badaspec": ("user", "example.org", None, [], []),
    "badbranch": ("user", "example.com", None, [], []),
    "baddate": ("user", "example.com", None, [], []),
    "baddn": ("t.watson", "example.org", None, [], []),
    "badinv01": ("user", "example.com", None, [], []),
    "badvers": ("t.watson", "example.org", None, [], []),
    "bext01": ("user", "example.com", None, [], []),
    "clerr": ("user", "example.com", None, [], []),
    "cparam01": (None, "example.com", None, [], []),
    "cparam02": (None, "example.com", None, [], []),
    "dblreq": (None, "example.com", None, [], []),
    "esc01": ("sips%3Auser%40example.com", "example.net", None, [], []),
    "esc02": (None, "registrar.example.com", None, [], []),
    "escnull": (None, "example.com", None, [], []),
    # RFC 4475 §3.1.2.11: the headers are parsed; the message layer decides
    "escruri": ("user", "example.com", None, [], [("Route", "%3Csip:example.com%3E")]),
    "insuf": ("user", "example.com", None, [], []),
    "intmeth": (
        "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*",
        "example.com",
        None,
        [],
        [],
    ),
    "inv2543": ("UserB", "example.com", None, [], []),
    "invut": ("user", "example.com", None, [], []),
    "longreq": ("user", "example.com", None, [], []),
    "ltgtruri": 400,
    "lwsdisp": ("user", "example.com", None, [], []),
    "lwsruri": 400,
    "lwsstart": ("user", "example.com", None, [], []),
    "mcl01": ("user", "example.com", None, [], []),
    "mismatch01": ("user", "example.com", None, [], []),
    "mismatch02": ("user", "example.com", None, [], []),
    "mpart01": ("kumiko", "example.org", None, [], []),
    "multi01": ("user", "company.com", None, [], []),
    "ncl": ("user", "example.com", None, [], []),
    "novelsc": ("abs", "soap.beep"),
    "quotbal": ("user", "example.com", None, [], []),
    "regaut01": (None, "example.com", None, [], []),
    "regbadct": (None, "example.com", None, [], []),
    "regescrt": (None, "example.com", None, [], []),
    "scalar02": (None, "example.com", None, [], []),
    "sdp01": ("user", "example.com", None, [], []),
    "semiuri": ("user;par=u%40example.net", "example.com", None, [], []),
    "transports": ("user", "example.com", None, [], []),
    "trws": ("remote-target", "example.com", None, [], []),
    "unkscm": ("abs", "nobodyknowsthisscheme"),
    "unksm2": (None, "example.com", None, [], []),
    "wsinv": ("vivekg", "chair-dnrc.example.com", None, [("unknownparam", None)], []),
    "zeromf": ("user", "example.com", None, [], []),
    # RFC 5118
    "ipv4-mapped-ipv6": ("user", "example.com", None, [], []),
    "ipv6-bad": 400,
    "ipv6-bug-abnf-3-colons": ("user", "[2001:db8:::192.0.2.1]", None, [], []),
    "ipv6-correct-abnf-2-colons": ("user", "[2001:db8::192.0.2.1]", None, [], []),
    "ipv6-good": (None, "[2001:db8::10]", None, [], []),
    "ipv6-in-sdp": ("user", "[2001:db8::10]", None, [], []),
    "mult-ip-in-header": ("user", "host.example.net", None, [], []),
    "mult-ip-in-sdp": ("user", "[2001:db8::10]", None, [], []),
    "port-ambiguous": (None, "[2001:db8::10:5070]", None, [], []),
    "port-unambiguous": (None, "[2001:db8::10]", 5070, [], []),
    "via-received-param-no-delim": (None, "[2001:db8::10]", None, [], []),
    "via-received-param-with-delim": (None, "[2001:db8::10]", None, [], []),
}


@needs_corpus
def test_every_request_file_is_covered() -> None:
    names = {torture_name(p) for p in corpus_files() if request_uri(p) is not None}
    assert names == set(RURI)
    assert len(names) == 44 + 12


@needs_corpus
@pytest.mark.parametrize(
    "path", [p for p in corpus_files() if request_uri(p) is not None], ids=torture_name
)
def test_request_uri_of_torture_message(path: Path) -> None:
    text = request_uri(path)
    assert text is not None
    want = RURI[torture_name(path)]
    if isinstance(want, int):
        with pytest.raises(ParseError) as exc:
            parse_uri(text)
        assert exc.value.status == want
        assert exc.value.reason.startswith("Bad URI")
        return
    uri = parse_uri(text)
    assert str(uri) == text  # byte-faithful
    assert isinstance(want, tuple)
    if want[0] == "abs":
        assert isinstance(uri, AbsoluteUri)
        assert uri.scheme == want[1]
        return
    u = sip(uri)
    assert (u.user, u.host, u.port, u.params, u.headers) == want
    assert u.scheme == "sip"
    assert uri_equal(u, parse_uri(text))


def test_intmeth_password_and_semiuri_user() -> None:
    u = sip(
        parse_uri(
            "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:"
            "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"
        )
    )
    assert u.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    s = sip(parse_uri("sip:user;par=u%40example.net@example.com"))
    assert s.user_unescaped == "user;par=u@example.net"
    assert s.params == [] and s.host == "example.com"


def test_rejection_reasons() -> None:
    for text, fragment in [
        ("sip:user@example.com; lr", "whitespace"),  # lwsruri
        ("<sip:user@example.com>", "<>"),  # ltgtruri
        ("sip:2001:db8::10", "IPv6"),  # RFC 5118 ipv6-bad
    ]:
        with pytest.raises(ParseError) as exc:
            parse_uri(text)
        assert exc.value.status == 400
        assert fragment in exc.value.reason


def test_too_long_is_414() -> None:
    ok = "sip:" + "a" * (MAX_URI_LENGTH - 16) + "@example.com"
    assert len(ok) <= MAX_URI_LENGTH
    assert sip(parse_uri(ok)).host == "example.com"
    with pytest.raises(ParseError) as exc:
        parse_uri("sip:" + "a" * MAX_URI_LENGTH + "@example.com")
    assert (exc.value.status, exc.value.reason) == (414, "Request-URI Too Long")


@pytest.mark.parametrize(
    "text",
    [
        "", ":", "sip", "sip:", "sips:", "1sip:host", "s p:host", "sip:@host", "sip:user@",
        "sip:host:", "sip:host:65536", "sip:host:5o60", "sip:host:-1", "sip:host:+5",
        "sip:[2001:db8::1", "sip:[2001:db8::1]x", "sip:[2001:db8::1]:", "sip:[zz::1]",
        "sip:[2001:db8::1::2]", "sip:[1:2:3:4:5:6:7]", "sip:[::::1]", "sip:[]",
        "sip:host;", "sip:host;;lr", "sip:host;=a", "sip:host;a=b=c", "sip:host?",
        "sip:host?a", "sip:host?=b", "sip:us er@host", "sip:user@ho st", "sip:user@host\t",
        "sip:u%zzser@host", "sip:u%4@host", "sip:user@host;a=%", "sip:user@host?a=%g0",
        "sip:1.2.3", "sip:256.1.1.1", "sip:1.2.3.4.5", "sip:-host", "sip:.host",
        "sip:host_a!", "sip:user@host@other", "sip:u<s>er@host", 'sip:"user"@host',
        "sip:usér@host", "sip:user@hôst", "sip:user:pa ss@host", "sip:user:pa@ss@host",
        "sip:user@host,x", "tel:", "tel:+", "tel:+1 555", "tel:12;;a", "tel:xyz",
        "http:", "foo: bar", "foo:<x>", "isbn:\x00", "mailto:a@b c",
        "sip:user@host\x00", "sip:user\x00@host",
    ],
)
def test_malformed_uris_are_400(text: str) -> None:
    with pytest.raises(ParseError) as exc:
        parse_uri(text)
    assert exc.value.status == 400
    assert exc.value.reason.startswith("Bad URI")


def test_ipv6_forms_rfc5118() -> None:
    amb = sip(parse_uri("sip:[2001:db8::10:5070]"))
    assert (amb.host, amb.port) == ("[2001:db8::10:5070]", None)
    una = sip(parse_uri("sip:[2001:db8::10]:5070"))
    assert (una.host, una.port) == ("[2001:db8::10]", 5070)
    three = sip(parse_uri("sip:user@[2001:db8:::192.0.2.1]"))
    two = sip(parse_uri("sip:user@[2001:db8::192.0.2.1]"))
    assert three.host == "[2001:db8:::192.0.2.1]"  # kept as written
    assert three.host_lower == two.host_lower == "[2001:db8::c000:201]"
    assert uri_equal(three, two)
    mapped = sip(parse_uri("sip:ted@[::ffff:192.0.2.2]"))
    assert mapped.host_lower == "[::ffff:c000:202]"
    assert sip(parse_uri("sip:[2001:DB8:0::0:1]")).host_lower == "[2001:db8::1]"
    assert uri_equal(parse_uri("sip:a@[2001:DB8:0::0:1]"), parse_uri("sip:a@[2001:db8::1]"))
    assert not uri_equal(parse_uri("sip:[2001:db8::10:5070]"), parse_uri("sip:[2001:db8::10]:5070"))


def test_escapes_esc01() -> None:
    ruri = sip(parse_uri("sip:sips%3Auser%40example.com@example.net"))
    assert ruri.user == "sips%3Auser%40example.com"
    assert ruri.user_unescaped == "sips:user@example.com"
    to = sip(parse_uri("sip:%75se%72@example.com"))
    assert to.user_unescaped == "user"
    assert uri_equal(to, parse_uri("sip:user@example.com"))
    contact = sip(parse_uri("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31"))
    assert contact.params == [("%6C%72", None), ("n%61me", "v%61lue%25%34%31")]
    assert contact.has_param("lr") and contact.param("lr") == ""
    assert contact.param("NAME") == "v%61lue%25%34%31"  # value as written
    # no recursive unescaping: value%41 is not valueA
    assert unescape("v%61lue%25%34%31") == "value%41"
    assert uri_equal(contact, parse_uri("sip:caller@host5.example.net;lr;name=value%2541"))
    assert not uri_equal(contact, parse_uri("sip:caller@host5.example.net;lr;name=valueA"))


def test_escaped_nulls_escnull() -> None:
    aor = sip(parse_uri("sip:null-%00-null@example.com"))
    assert aor.user_unescaped == "null-\x00-null"
    one = sip(parse_uri("sip:%00@host5.example.com"))
    two = sip(parse_uri("sip:%00%00@host5.example.com"))
    assert (one.user_unescaped, two.user_unescaped) == ("\x00", "\x00\x00")
    assert not uri_equal(one, two)


def test_escaped_headers_regescrt_and_escruri() -> None:
    u = sip(parse_uri("sip:user@example.com?Route=%3Csip:sip.example.com%3E"))
    assert u.headers == [("Route", "%3Csip:sip.example.com%3E")]
    assert unescape(u.headers[0][1]) == "<sip:sip.example.com>"
    assert str(u) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    assert not uri_equal(u, parse_uri("sip:user@example.com"))


# RFC 3261 §19.1.4, the RFC's own examples
EQUAL = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    (
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
    ),
    (
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
    ),
    ("SIP:alice@example.com", "sip:alice@EXAMPLE.COM"),
    ("sip:alice:pw@example.com", "sip:alice:%70w@example.com"),
    ("sips:a@b.example", "SIPS:a@B.example"),
]
NOT_EQUAL = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
    ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
    ("sip:alice@atlanta.com", "sip:atlanta.com"),
    ("sip:alice:pw@atlanta.com", "sip:alice@atlanta.com"),
    ("sip:alice:pw@atlanta.com", "sip:alice:PW@atlanta.com"),
    ("sip:a@h;user=phone", "sip:a@h"),
    ("sip:a@h;ttl=1", "sip:a@h;ttl=2"),
    ("sip:a@h;maddr=x.example", "sip:a@h"),
    ("sip:a@h;method=INVITE", "sip:a@h"),
    ("sip:a@h?x=1", "sip:a@h?x=1&y=2"),
    ("sip:a@h?x=1", "sip:a@h?x=2"),
    ("sip:a@h", "tel:+1234"),
    ("sip:a@h", "http://h"),
]


@pytest.mark.parametrize(("a", "b"), EQUAL)
def test_rfc3261_equal(a: str, b: str) -> None:
    ua, ub = parse_uri(a), parse_uri(b)
    assert uri_equal(ua, ub) and uri_equal(ub, ua)


@pytest.mark.parametrize(("a", "b"), NOT_EQUAL)
def test_rfc3261_not_equal(a: str, b: str) -> None:
    ua, ub = parse_uri(a), parse_uri(b)
    assert not uri_equal(ua, ub) and not uri_equal(ub, ua)


def test_tel_uri() -> None:
    t = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert isinstance(t, TelUri)
    assert t.number == "+1-201-555-0123"
    assert t.param("Phone-Context") == "example.com"
    assert str(t) == "tel:+1-201-555-0123;phone-context=example.com"
    assert uri_equal(t, parse_uri("TEL:+1(201)5550123;PHONE-CONTEXT=EXAMPLE.COM"))
    assert not uri_equal(t, parse_uri("tel:+1-201-555-0123"))
    assert not uri_equal(t, parse_uri("tel:+1-201-555-0124;phone-context=example.com"))
    local = parse_uri("tel:*69#")
    assert isinstance(local, TelUri) and local.number == "*69#"
    assert TelUri("+123", [("ext", "9")]).raw == "tel:+123;ext=9"


def test_absolute_uris_unksm2_novelsc_unkscm() -> None:
    for text, scheme in [
        ("isbn:2983792873", "isbn"),
        ("http://www.example.com", "http"),
        ("name:John_Smith", "name"),
        ("soap.beep://192.0.2.103:3002", "soap.beep"),
        ("nobodyKnowsThisScheme:totallyopaquecontent", "nobodyknowsthisscheme"),
    ]:
        u = parse_uri(text)
        assert isinstance(u, AbsoluteUri)
        assert (u.scheme, str(u)) == (scheme, text)
    assert uri_equal(parse_uri("HTTP://x/a"), parse_uri("http://x/a"))
    assert not uri_equal(parse_uri("http://x/a"), parse_uri("http://x/A"))


def test_params_lookup_and_flags() -> None:
    u = sip(parse_uri("sip:alice@example.com:5070;Transport=TCP;lr;x="))
    assert u.port == 5070
    assert u.param("transport") == "TCP"
    assert u.param("LR") == ""
    assert u.param("x") == ""  # empty value kept (lenient)
    assert u.params == [("Transport", "TCP"), ("lr", None), ("x", "")]
    assert u.param("maddr") is None and not u.has_param("maddr")
    assert str(u) == "sip:alice@example.com:5070;Transport=TCP;lr;x="


def test_replace_and_build() -> None:
    u = sip(parse_uri("sip:alice@Example.com:5070;transport=tcp?h=v"))
    v = u.replace(port=None, params=[("lr", None)])
    assert str(v) == "sip:alice@Example.com;lr?h=v"
    assert str(u) == "sip:alice@Example.com:5070;transport=tcp?h=v"  # untouched
    w = u.replace()
    assert w.raw == u.raw and w.params is not u.params and w.headers is not u.headers
    w.params.append(("x", "1"))
    assert u.params == [("transport", "tcp")]
    assert str(u.replace(user="bob", password="pw")) == "sip:bob:pw@Example.com:5070;transport=tcp?h=v"
    assert str(u.replace(user=None)) == "sip:Example.com:5070;transport=tcp?h=v"
    with pytest.raises(TypeError):
        u.replace(raw="sip:x")
    built = SipUri("sips", "a%20b", None, "[2001:db8::1]", 5061, [("transport", "tls")])
    assert str(built) == "sips:a%20b@[2001:db8::1]:5061;transport=tls"
    assert parse_uri(str(built)) == built


def test_escape_unescape() -> None:
    assert escape("alice", "") == "alice"
    assert escape("a b@c;d", "") == "a%20b%40c%3Bd"
    assert escape("a b@c;d", ";") == "a%20b%40c;d"
    assert escape("jörg", "") == "j%C3%B6rg"
    assert escape("%", "") == "%25"
    assert unescape("j%C3%B6rg") == "jörg"
    assert unescape("%zz%4") == "%zz%4"  # not escapes: left alone
    assert unescape("%2541") == "%41"
    assert unescape("%ff") != unescape("%fe")  # undecodable octets stay distinct
    assert escape(unescape("%ff"), "") == "%FF"


# --- properties ---------------------------------------------------------------------

_UNRES = "abcxyzABCXYZ0189-_.!~*'()"
_escapes = st.sampled_from(["", "", "%41", "%00", "%fF", "%3B", "%25", "%e2%82%ac"])


def _chars(extra: str, min_size: int) -> st.SearchStrategy[str]:
    """Allowed characters with an escape somewhere in the middle (text() is cheap to draw)."""
    alphabet = _UNRES + extra
    return st.builds(
        lambda a, e, b: a + e + b,
        st.text(alphabet, min_size=min_size, max_size=8),
        _escapes,
        st.text(alphabet, max_size=3),
    )


_alnum = st.text(alphabet="abcxyzABZ0189", min_size=1, max_size=6)
_label = _alnum | st.builds(lambda a, b: f"{a}-{b}", _alnum, _alnum)
_hostname = st.builds(
    lambda labels, first, top: ".".join([*labels, first + top]),
    st.lists(_label, max_size=3),
    st.sampled_from("aZx"),
    st.text(alphabet="abz09-", max_size=5),
)
_host = st.one_of(
    _hostname,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
_params = st.lists(
    st.tuples(_chars("[]/:&+$", 1), st.none() | _chars("[]/:&+$", 0)), max_size=4
)
_headers = st.lists(st.tuples(_chars("[]/?:+$", 1), _chars("[]/?:+$", 0)), max_size=3)


@st.composite
def sip_uris(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    scheme = draw(st.sampled_from(["sip", "sips", "SIP", "Sips"]))
    user = draw(st.none() | _chars("&=+$,;?/", 1))
    password = draw(st.none() | _chars("&=+$,", 0)) if user is not None else None
    host = draw(_host)
    port = draw(st.none() | st.integers(0, 65535))
    params = draw(_params)
    headers = draw(_headers)
    text = f"{scheme}:"
    if user is not None:
        text += user + (f":{password}" if password is not None else "") + "@"
    text += host + (f":{port}" if port is not None else "")
    text += "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)
    if headers:
        text += "?" + "&".join(f"{n}={v}" for n, v in headers)
    parts = dict(user=user, password=password, host=host, port=port, params=params, headers=headers)
    return text, parts


@given(sip_uris())
@example(("sip:a@[2001:db8::1]:0;maddr=[::1]?h=%00", {}))
def test_generated_uris_round_trip(case: tuple[str, dict[str, object]]) -> None:
    text, parts = case
    u = sip(parse_uri(text))
    assert str(u) == text
    for name, value in parts.items():
        assert getattr(u, name) == value
    rebuilt = u.replace()
    assert rebuilt.raw == text.replace(text.split(":", 1)[0], u.scheme, 1)
    again = parse_uri(str(rebuilt))
    assert again == rebuilt
    assert uri_equal(u, again) and uri_equal(again, u)


@settings(max_examples=50)
@given(sip_uris(), st.data())
def test_escaping_user_chars_keeps_equality(case: tuple[str, dict[str, object]], data: st.DataObject) -> None:
    u = sip(parse_uri(case[0]))
    if u.user is None:
        return
    # %-encode one unreserved character (outside existing escapes): still the same URI
    target = data.draw(st.sampled_from(_UNRES))
    out, i, user = [], 0, u.user
    while i < len(user):
        step = 3 if user[i] == "%" else 1
        chunk = user[i : i + step]
        out.append(f"%{ord(target):02x}" if chunk == target else chunk)
        i += step
    new_user = "".join(out)
    escaped = parse_uri(str(u.replace(user=new_user)))
    assert uri_equal(u, escaped) and uri_equal(escaped, u)
    assert escaped.user == new_user
    changed = escaped.raw.split(":", 1)[1] != u.raw.split(":", 1)[1]
    assert changed == (new_user != user)  # different text, same URI


_noise = st.text(
    alphabet=st.sampled_from(list('sipSIPtel:@[];?&=%<>"\\ ,./0123456789abcdefABCDEF\t-_+#*')
                             + ["\x00", "é", "\r", "\n"]),
    max_size=60,
)


@settings(max_examples=400)
@given(st.one_of(_noise, _noise.map(lambda s: "sip:" + s), _noise.map(lambda s: "tel:" + s), st.text(max_size=80)))
def test_arbitrary_text_raises_only_parse_error(text: str) -> None:
    try:
        u = parse_uri(text)
    except ParseError as e:
        assert e.status in (400, 414)
        return
    assert str(u) == text
    # whatever parsed is self-consistent
    assert uri_equal(u, parse_uri(text))
    if isinstance(u, SipUri):
        assert not re.search(r"\s", text)
        rebuilt = u.replace()
        assert parse_uri(rebuilt.raw) == rebuilt


def test_documented_leniencies() -> None:
    feature = sip(parse_uri("sip:*69#@pbx.example.com"))  # feature codes, "#" unescaped
    assert feature.user == "*69#"
    replaces = sip(parse_uri("sip:bob@example.com?Replaces=abc@host%3Bto-tag%3D1"))
    assert replaces.headers == [("Replaces", "abc@host%3Bto-tag%3D1")]
    assert sip(parse_uri("sip:_sip.host_1.example.com")).host == "_sip.host_1.example.com"
    assert sip(parse_uri("sip:h;x=")).params == [("x", "")]


# --- the fast path (one regex) agrees with the full parser -------------------------


def outcome(fn: object, text: str) -> object:
    """A result, or the error as a comparable tuple."""
    try:
        return fn(text)  # type: ignore[operator]
    except ParseError as e:
        return ("ParseError", e.status, e.reason, e.fatal)


def assert_fast_is_full(text: str) -> None:
    """parse_uri (fast path, cold and then from its cache) == the full parser."""
    want = outcome(uri_mod._parse_uri_full, text)
    for _ in range(2):
        got = outcome(parse_uri, text)
        assert type(got) is type(want) and got == want, (text, got, want)
        if isinstance(got, SipUri):
            assert isinstance(want, SipUri)
            assert [type(x) for x in (got.port, got.params, got.headers)] == [
                type(x) for x in (want.port, want.params, want.headers)
            ]


def test_regex_class_is_exactly_the_set() -> None:
    for chars in (_abnf.USER_CHARS, _abnf.PARAM_CHARS, _abnf.TOKEN_CHARS, _abnf.VALUE_CHARS,
                  _abnf.HEADER_CHARS, frozenset("]^-\\[")):
        rx = re.compile(_abnf.regex_class(chars))
        assert {chr(c) for c in range(0x250) if rx.fullmatch(chr(c))} == set(chars)


_host_text = st.one_of(
    st.text(alphabet="0123456789.", max_size=17),
    st.text(alphabet="09a.-_Z", max_size=10),
    st.ip_addresses(v=4).map(str),
    st.sampled_from(["1.2.3.4a", "a1.2.3.4", "1.2.3.4.", "01.02.003.255", "1.2.3.256",
                     "255.255.255.255", "300.1.1.1", "1.2.3", "-a", ".a", "a-", "_", "é.com"]),
)


@settings(max_examples=300)
@given(_host_text)
def test_host_regex_is_valid_host_without_ipv6(host: str) -> None:
    assert (re.fullmatch(_abnf.HOST_RE, host) is not None) == _abnf.valid_host(host)


def test_host_regex_on_every_octet_spelling() -> None:
    host_re = re.compile(_abnf.HOST_RE)
    octets = [f"{n:0{w}d}" for w in (1, 2, 3, 4) for n in range(10**w)]
    for o in octets:
        for host in (f"{o}.0.0.1", f"1.2.3.{o}", f"{o}.{o}.{o}.{o}", f"{o}a.b"):
            assert (host_re.fullmatch(host) is not None) == _abnf.valid_host(host), host


def test_port_cache_is_bounded_and_exact() -> None:
    assert _abnf.port_miss("65536") == -1 and "65536" not in _abnf.PORTS
    assert _abnf.port_miss("05060") == 5060 and _abnf.PORTS["05060"] == 5060
    saved = dict(_abnf.PORTS)
    try:
        for p in range(5000):
            _abnf.port_miss(str(p))
        assert len(_abnf.PORTS) <= 4096
    finally:
        _abnf.PORTS.clear()
        _abnf.PORTS.update(saved)


_COMMON = [
    "sip:127.0.0.1:5080", "sip:ping@127.0.0.1", "sip:alice@192.0.2.4:5060;transport=udp;lr",
    "sip:bob@biloxi.example.com", "sips:+15550100@pbx.example.com;user=phone",
    "sip:*69#@pbx", "sip:service@10.0.0.1:5060;x=;y", "sip:a;b=c@host", "sip:host;maddr=1.2.3.4",
]


@pytest.mark.parametrize("text", _COMMON)
def test_common_shapes_take_the_fast_path(text: str) -> None:
    assert uri_mod._SIP_FAST(text) is not None
    assert_fast_is_full(text)


@needs_corpus
def test_fast_path_on_every_torture_uri() -> None:
    seen = 0
    for path in corpus_files():
        texts = [request_uri(path)]
        head = path.read_bytes().split(b"\r\n\r\n", 1)[0].decode("utf-8", "surrogateescape")
        texts += re.findall(r"<([^<>]*)>", head)  # URIs in name-addrs, bracketed
        texts += re.findall(r"[a-zA-Z]+:[^\s<>\";,]+", head)  # and anything URI-looking
        for text in texts:
            if text is not None:
                assert_fast_is_full(text)
                seen += 1
    assert seen > 200


_noise_chars = st.sampled_from(list(" \t%@:;=?&<>\"[]/,#+$.-_!~*'()") + ["\x00", "é", "\u00a0", "1", "Z"])


_valid_host = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.from_regex(r"[a-z0-9_][a-z0-9_.-]{0,8}[a-z][a-z0-9-]{0,3}", fullmatch=True),
    st.sampled_from(["pbx", "biloxi.example.com", "127.0.0.1", "_sip.x1"]),
)


@st.composite
def common_uris(draw: st.DrawFn, near_miss: bool) -> str:
    """The fast path's shape; with ``near_miss`` now and then a part that must leave it."""

    rnd = draw(st.randoms(use_true_random=False))  # unbiased: one part in ten goes bad

    def maybe(good: st.SearchStrategy[str], bad: st.SearchStrategy[str]) -> str:
        return draw(bad if near_miss and rnd.random() < 0.1 else good)

    text = maybe(st.sampled_from(["sip:", "sips:"]), st.sampled_from(["SIP:", "tel:", "sip;"]))
    if draw(st.booleans()):
        text += maybe(st.text(alphabet="abc019+-.*#;?/&=$,", min_size=1, max_size=8),
                      st.sampled_from(["", "a:b", "a%41", "a%4", "a@b", "a b"])) + "@"
    text += maybe(_valid_host, _host_text)
    if draw(st.booleans()):
        text += ":" + maybe(st.integers(0, 65535).map(str),
                            st.sampled_from(["", "000001", "65536", "99999", "123456", "5060 "]))
    pchars = st.text(alphabet="ab1-.[]/:&+$", min_size=1, max_size=5)
    for _ in range(draw(st.integers(0, 3))):
        text += ";" + maybe(pchars, st.sampled_from(["", "%41", "x\"", "é"]))
        if draw(st.booleans()):
            text += "=" + maybe(st.just("") | pchars, st.sampled_from(["a=b", "%4", "%4A", "a?b"]))
    if near_miss and rnd.random() < 0.2:
        pos = draw(st.integers(0, len(text)))
        text = text[:pos] + draw(_noise_chars) + text[pos:]
    return text


@given(common_uris(near_miss=False))
def test_fast_path_takes_every_common_shape(text: str) -> None:
    assert uri_mod._SIP_FAST(text) is not None, text
    assert_fast_is_full(text)


@settings(max_examples=400)
@given(common_uris(near_miss=True))
def test_fast_path_agrees_with_full_parser_on_near_misses(text: str) -> None:
    assert_fast_is_full(text)


def test_uri_cache_hands_out_fresh_objects_and_stays_bounded() -> None:
    text = "sip:alice@192.0.2.4:5060;transport=udp;lr"
    a, b = sip(parse_uri(text)), sip(parse_uri(text))
    assert a == b and a is not b and a.params is not b.params and a.headers is not b.headers
    a.params.append(("x", None))
    a.headers.append(("h", "v"))
    c = sip(parse_uri(text))
    assert c.params == [("transport", "udp"), ("lr", None)] and c.headers == []
    for n in range(uri_mod._CACHE_SIZE + 10):
        parse_uri(f"sip:u{n}@example.com")
    assert len(uri_mod._CACHE) <= uri_mod._CACHE_SIZE
    long = "sip:" + "a" * 300 + ".example.com"
    assert sip(parse_uri(long)).host == long[4:] and long not in uri_mod._CACHE
    with pytest.raises(ParseError) as exc:
        parse_uri("sip:" + "a" * MAX_URI_LENGTH)
    assert exc.value.status == 414
