"""sipyard.sip.validate: the stateless checks before a transaction exists."""

from __future__ import annotations

import pytest

from sipyard.sip.errors import ParseError
from sipyard.sip.message import Request, Response, parse_message
from sipyard.sip.validate import (
    KNOWN_SCHEMES,
    unsupported_requires,
    validate_request,
    validate_response,
)

KNOWN = frozenset({"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "MESSAGE"})

HEADERS = {
    "Via": "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9",
    "From": "<sip:alice@example.com>;tag=9fxced76sl",
    "To": "<sip:bob@example.com>",
    "Call-ID": "3848276298220188511@atlanta.example.com",
    "CSeq": "2 {method}",
    "Max-Forwards": "70",
}


def request(method: str = "OPTIONS", uri: str = "sip:bob@example.com", *,
            drop: tuple[str, ...] = (), extra: tuple[tuple[str, str], ...] = (),
            **override: str) -> Request:
    lines = [f"{method} {uri} SIP/2.0"]
    for name, value in HEADERS.items():
        key = name.replace("-", "_")
        if name in drop:
            continue
        lines.append(f"{name}: {override.get(key, value).format(method=method)}")
    lines += [f"{n}: {v}" for n, v in extra]
    lines += ["Content-Length: 0", "", ""]
    m = parse_message("\r\n".join(lines).encode())
    assert isinstance(m, Request)
    return m


def rejected(req: Request) -> tuple[int, str]:
    with pytest.raises(ParseError) as info:
        validate_request(req, KNOWN)
    return info.value.status, info.value.reason


def test_a_good_request_passes_and_leaves_cached_values() -> None:
    req = request("REGISTER", "sip:example.com", extra=(("Contact", "<sip:alice@192.0.2.1>;expires=60"),))
    validate_request(req, KNOWN)
    assert req.top_via.branch == "z9hG4bK74bf9"
    contacts = req.contacts
    assert isinstance(contacts, list) and contacts[0].param("expires") == "60"
    assert req.contacts is contacts  # parsed once, by validation
    assert {"sip", "sips", "tel"} == KNOWN_SCHEMES


@pytest.mark.parametrize("missing", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_mandatory_headers(missing: str) -> None:  # RFC 4475 insuf
    status, reason = rejected(request(drop=(missing,)))
    assert status == 400 and "Missing" in reason and missing in reason


def test_max_forwards_is_optional() -> None:  # RFC 4475 inv2543
    validate_request(request(drop=("Max-Forwards",)), KNOWN)


@pytest.mark.parametrize(("name", "value"), [
    ("From", "<sip:carol@example.com>;tag=2"),
    ("To", "<sip:dave@example.com>"),
    ("Call-ID", "other@example.com"),
    ("CSeq", "3 OPTIONS"),
])
def test_duplicated_single_headers(name: str, value: str) -> None:  # RFC 4475 multi01
    status, reason = rejected(request(extra=((name, value),)))
    assert status == 400 and "Multiple" in reason


@pytest.mark.parametrize(("override", "reason"), [
    ({"Via": "SIP/2.0/UDP 192.0.2.1;;,;,,"}, "Bad Via header"),          # badinv01
    ({"From": "Bell, Alexander <sip:a.g.bell@bell-tel.com>;tag=43"}, "Bad From header"),  # baddn
    ({"To": '"Mr. J. User <sip:j.user@example.com>'}, "Bad To header"),  # quotbal
    ({"To": "sip:user@example.com?Route=%3Csip:x%3E"}, "Bad To header"),
    ({"To": "< sip:user@example.com >"}, "Bad To header"),              # badaspec
    ({"Call_ID": "a b"}, "Bad Call-ID header"),
    ({"CSeq": "4294967296 {method}"}, "Bad CSeq header"),                # scalar02
    ({"CSeq": "two {method}"}, "Bad CSeq header"),
    ({"Max_Forwards": "300"}, "Bad Max-Forwards header"),
    ({"Max_Forwards": "-1"}, "Bad Max-Forwards header"),
])
def test_malformed_mandatory_headers(override: dict[str, str], reason: str) -> None:
    assert rejected(request(**override)) == (400, reason)


def test_cseq_method_mismatch() -> None:
    # mismatch01: a known method → 400; mismatch02: an unknown one → 501
    assert rejected(request("OPTIONS", CSeq="8 INVITE")) == \
        (400, "CSeq method does not match Request-Line")
    assert rejected(request("NEWMETHOD", CSeq="8 INVITE")) == (501, "Not Implemented")
    # methods are case-sensitive
    assert rejected(request("OPTIONS", CSeq="8 options"))[0] == 400


def test_unknown_methods_pass() -> None:  # intmeth, esc02: the application answers 501
    validate_request(request("RE%47IST%45R"), KNOWN)
    validate_request(request("!interesting-Method0123456789_*+`.%indeed'~"), KNOWN)


@pytest.mark.parametrize(("uri", "expected"), [
    ("sip:bob@example.com", None),
    ("sips:bob@example.com:5061;transport=tcp", None),
    ("sip:[2001:db8::10]:5070", None),
    ("tel:+1-201-555-0123", None),
    ("unknownscheme:unknownResource", (416, "Unsupported URI Scheme")),   # unkscm
    ("soap.beep://192.0.2.103:3002", (416, "Unsupported URI Scheme")),    # novelsc
    ("http://example.com/", (416, "Unsupported URI Scheme")),
    ("<sip:user@example.com>", (400, "Bad URI: enclosed in <>")),         # ltgtruri
    ("sip:user@2001:db8::10", (400, "Bad URI: IPv6 host without brackets")),  # RFC 5118 ipv6-bad
    ("sip:user@example.com?Route=%3Csip:example.com%3E", (400, "Bad Request-URI: escaped headers")),
])
def test_request_uri(uri: str, expected: tuple[int, str] | None) -> None:
    req = request(uri=uri)
    if expected is None:
        validate_request(req, KNOWN)
    else:
        assert rejected(req) == expected


def test_check_order_follows_the_rfc() -> None:
    """Headers before the Request-URI scheme; CSeq method before Max-Forwards."""
    assert rejected(request(uri="foo:bar", drop=("To",)))[1] == "Missing To header"
    assert rejected(request("OPTIONS", CSeq="1 INVITE", Max_Forwards="x"))[1] == \
        "CSeq method does not match Request-Line"
    assert rejected(request(uri="foo:bar", Max_Forwards="x"))[1] == "Bad Max-Forwards header"


def test_invite_expires_overflow() -> None:  # scalar02
    assert rejected(request("INVITE", extra=(("Expires", "4294967296"),))) == \
        (400, "Bad Expires header")
    validate_request(request("INVITE", extra=(("Expires", "4294967295"),)), KNOWN)
    # on other methods Expires is the application's business (REGISTER: default it)
    validate_request(request("OPTIONS", extra=(("Expires", "99999999999"),)), KNOWN)


def test_register_contacts_are_checked() -> None:  # regbadct
    bad = request("REGISTER", "sip:example.com",
                  extra=(("Contact", "sip:user@example.com?Route=%3Csip:sip.example.com%3E"),))
    assert rejected(bad) == (400, "Bad Contact header")
    assert rejected(request("REGISTER", extra=(("Contact", "*, <sip:a@b>"),)))[0] == 400
    validate_request(request("REGISTER", extra=(("Contact", "*"),), CSeq="1 REGISTER"), KNOWN)
    # unknown schemes in Contact are not the parser's concern (unksm2)
    validate_request(request("REGISTER", extra=(("Contact", "<name:John_Smith>"),)), KNOWN)
    # other methods: Contact is not read here
    validate_request(request("MESSAGE", extra=(("Contact", "bad <<"),)), KNOWN)


def test_unusual_but_valid_from_to_take_the_full_parser() -> None:
    req = request(From='"J Rosenberg \\\\\\"" <sip:jdrosen@example.com> ; tag = 98asjd8',
                  To="sip:vivekg@example.com ;   tag    = 1918181833n")
    validate_request(req, KNOWN)
    assert req.from_.tag == "98asjd8" and req.to.tag == "1918181833n"


def test_unsupported_requires() -> None:  # bext01
    req = request(extra=(("Require", "nothingSupportsThis, PATH"), ("Require", "outbound"),
                         ("Proxy-Require", "noProxiesSupportThis")))
    assert unsupported_requires(req, {"path", "outbound"}) == ["nothingSupportsThis"]
    assert unsupported_requires(request(), {"path"}) == []
    for method in ("ACK", "CANCEL"):
        ack = request(method, extra=(("Require", "nothingSupportsThis"),))
        assert unsupported_requires(ack, set()) == []


def response(cseq: str = "1 INVITE", drop: str = "") -> Response:
    lines = ["SIP/2.0 200 OK", "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1",
             "From: <sip:a@b>;tag=1", "To: <sip:c@d>;tag=2", "Call-ID: x@y", f"CSeq: {cseq}",
             "Content-Length: 0", "", ""]
    m = parse_message("\r\n".join(line for line in lines if not drop or not line.startswith(drop))
                      .encode())
    assert isinstance(m, Response)
    return m


def test_validate_response() -> None:
    validate_response(response())
    for bad in (response(cseq="9292394834772304023312 OPTIONS"),   # scalarlg
                response(drop="Via"), response(drop="Call-ID"), response(drop="To")):
        with pytest.raises(ParseError):
            validate_response(bad)
