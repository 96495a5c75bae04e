"""Structure-aware fuzzing of the parser and the stream framer (issue #16).

Seeds: every RFC 4475 / RFC 5118 torture vector and a few valid messages the
server sees every day. Mutations work on the message's structure (lines,
header names and values, Content-Length, line ends, the body) as well as on
bytes, so most inputs get past the first line and reach the header parsers.

Properties:

* ``parse_message`` and everything the request path reads afterwards (Via,
  From/To, Call-ID, CSeq, Contact, Expires, Request-URI, the stateless checks,
  building an answer) either work or raise :class:`ParseError`, which the
  server turns into a stateless answer or a drop. Anything else is a crash:
  the datagram would kill its handler.
* The stream framer's output does not depend on how the bytes were cut, and
  it raises nothing but ``ParseError``.
* Nothing is slow: each example has a deadline (a hang or backtracking regex
  fails it), and the suite's timeout catches a true hang.

Budget: ``SIPYARD_FUZZ_EXAMPLES`` examples per property (default 200, about
10 s in all in ``make test``); ``make fuzz`` runs many more with a random seed.
Every input that ever failed is pinned in ``REGRESSIONS`` and replayed first.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from datetime import timedelta
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipyard.sip.errors import ParseError
from sipyard.sip.framing import PING, StreamFramer
from sipyard.sip.message import Limits, Request, Response, build_response, parse_message
from sipyard.sip.validate import unsupported_requires, validate_request, validate_response

TORTURE = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata" / "torture"
KNOWN_METHODS = frozenset({
    "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "SUBSCRIBE", "NOTIFY",
    "MESSAGE", "REFER", "INFO", "UPDATE", "PRACK", "PUBLISH",
})
EXAMPLES = int(os.environ.get("SIPYARD_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=2), derandomize=EXAMPLES <= 1000,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                database=None)

#: Inputs the fuzzer once broke things with; replayed by every run.
REGRESSIONS: list[bytes] = []


def _valid() -> list[bytes]:
    branch = "z9hG4bK" + uuid.uuid4().hex[:12]
    sdp = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    head = ("Via: SIP/2.0/UDP 127.0.0.1:5062;branch={b};rport\r\n"
            "Max-Forwards: 70\r\nFrom: \"Ten\" <sip:10@example.test>;tag=abc\r\n"
            "To: <sip:11@example.test>\r\nCall-ID: {c}@127.0.0.1\r\n")
    reg = ("REGISTER sip:example.test SIP/2.0\r\n" + head.format(b=branch, c="r1")
           + "CSeq: 2 REGISTER\r\nContact: <sip:10@127.0.0.1:5062>;expires=300;q=0.5;"
           "+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-000000000001>\";reg-id=1\r\n"
           "Authorization: Digest username=\"10\", realm=\"example.test\", nonce=\"abc\", "
           "uri=\"sip:example.test\", response=\"0123456789abcdef0123456789abcdef\", "
           "algorithm=MD5, qop=auth, nc=00000001, cnonce=\"x\"\r\n"
           "Supported: path, outbound\r\nPath: <sip:proxy.test;lr>\r\nExpires: 600\r\n"
           "Content-Length: 0\r\n\r\n").encode()
    inv = (("INVITE sip:11@example.test;user=phone SIP/2.0\r\n" + head.format(b=branch, c="i1")
            + "CSeq: 1 INVITE\r\nContact: <sip:10@127.0.0.1:5062;transport=tcp>\r\n"
            "Route: <sip:proxy.test;lr>\r\nRequire: 100rel\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(sdp)}\r\n\r\n").encode() + sdp)
    opt = ("OPTIONS sip:example.test SIP/2.0\r\n" + head.format(b=branch, c="o1")
           + "CSeq: 7 OPTIONS\r\nAccept: application/sdp\r\nl: 0\r\n\r\n").encode()
    resp = ("SIP/2.0 200 OK\r\n" + head.format(b=branch, c="o1")
            + "CSeq: 7 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
    return [reg, inv, opt, resp]


@cache
def seeds() -> tuple[bytes, ...]:
    files = sorted(TORTURE.glob("*.dat")) + sorted(TORTURE.glob("extra/*.dat")) + sorted(
        TORTURE.glob("rfc5118/wire/*"))
    out = [p.read_bytes() for p in files if p.is_file()]
    return tuple(out + _valid())


INTERESTING = [
    "", " ", "\t", ";", ",", "<", ">", "<>", "\"", "\\", "@", ":", "[", "]", "[::1]", "%",
    "%00", "%zz", "=", "==", ";tag=", ";branch=", ";branch=z9hG4bK", ";rport", ";received=",
    ";expires=", ";q=", ";q=2", ";q=-1", ";lr", "*", "0", "-1", "4294967296",
    "99999999999999999999999999", "1e9", "0x10", "sip:", "sips:", "tel:", "sip:@", "sip:a@b:0",
    "sip:a@b:65536", "sip:[::1]:5060", "sip:[fe80::1%eth0]", "<sip:a@b>;", "\"a\" <sip:a@b>",
    "Digest", "Digest username=", "Digest username=\"", "SIP/2.0", "SIP/2.0/UDP", "SIP/2.0/UDP ",
    "SIP/2.0/UDP h:5060;branch=z9hG4bK1", "INVITE", "REGISTER", "\u00e9", "\ud800", "\x00",
    "\r", "\n", "\r\n ", "\r\n\t", "A" * 300, "A" * 5000, "<" * 500, ";a" * 500, ",", ", , ,",
]
HEADERS = ["Via", "v", "From", "f", "To", "t", "Call-ID", "i", "CSeq", "Contact", "m",
           "Content-Length", "l", "Expires", "Max-Forwards", "Route", "Record-Route", "Require",
           "Proxy-Require", "Supported", "Authorization", "Proxy-Authorization", "Path",
           "Content-Type", "c", "Allow", "Event", "Subscription-State", "Refer-To", "X-Junk"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed with a few structural and byte-level mutations."""
    data = draw(st.sampled_from(seeds()))
    for _ in range(draw(st.integers(1, 4))):
        head, sep, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        op = draw(st.integers(0, 11))
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        j = draw(st.integers(0, max(len(lines) - 1, 0)))
        if op == 0 and len(lines) > 1:  # drop a line
            del lines[i]
        elif op == 1:  # duplicate a line
            lines.insert(j, lines[i])
        elif op == 2:  # swap two lines (maybe the start line)
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3:  # replace a header's value
            name = lines[i].partition(b":")[0]
            value = draw(st.sampled_from(INTERESTING)).encode("utf-8", "surrogatepass")
            lines[i] = name + b": " + value
        elif op == 4:  # append to a header's value
            lines[i] += draw(st.sampled_from(INTERESTING)).encode("utf-8", "surrogatepass")
        elif op == 5:  # a new header
            hname = draw(st.sampled_from(HEADERS))
            text = draw(st.one_of(st.sampled_from(INTERESTING), st.text(max_size=40)))
            lines.insert(j, f"{hname}: {text}".encode("utf-8", "surrogatepass"))
        elif op == 6:  # Content-Length that lies
            n = draw(st.one_of(st.integers(-5, 2000), st.just(10**20)))
            lines.append(f"Content-Length: {n}".encode())
        elif op == 7:  # start line surgery: one of its three parts replaced
            parts = lines[0].split(b" ", 2)
            k = draw(st.integers(0, len(parts) - 1))
            parts[k] = draw(st.sampled_from(INTERESTING)).encode("utf-8", "surrogatepass")
            lines[0] = b" ".join(parts)
        elif op == 8:  # line ends: bare LF, CR, folding
            lines[i] = lines[i].replace(b" ", draw(st.sampled_from([b"\r\n ", b"\n", b"\r",
                                                                      b"\t", b"  "])), 1)
        elif op == 9:  # flip, insert or delete bytes anywhere
            raw = bytearray(b"\r\n".join(lines))
            if raw:
                k = draw(st.integers(0, len(raw) - 1))
                what = draw(st.integers(0, 2))
                if what == 0:
                    raw[k] = draw(st.integers(0, 255))
                elif what == 1:
                    raw[k:k] = draw(st.binary(min_size=1, max_size=8))
                else:
                    del raw[k:k + draw(st.integers(1, 16))]
            lines = bytes(raw).split(b"\r\n")
        elif op == 10:  # the body: cut, grown, or replaced
            body = draw(st.one_of(st.just(b""), st.binary(max_size=64), st.just(body * 3),
                                  st.just(body[: len(body) // 2])))
        else:  # truncate the message
            joined = b"\r\n".join(lines) + sep + body
            data = joined[: draw(st.integers(0, len(joined)))]
            continue
        data = b"\r\n".join(lines) + sep + body
    return data


def _exercise(data: bytes) -> None:
    """What the server does with a datagram; only ParseError may come out."""
    try:
        msg = parse_message(data, Limits())
    except ParseError as exc:
        partial = exc.partial
        if isinstance(partial, Request) and partial.get("via"):
            with contextlib.suppress(ParseError):
                _ = partial.top_via
                build_response(partial, exc.status, exc.reason, to_tag="t")
        return
    if isinstance(msg, Response):
        with contextlib.suppress(ParseError):
            validate_response(msg)
            _ = msg.top_via, msg.cseq
        return
    for read in (lambda: msg.top_via, lambda: msg.vias, lambda: msg.from_, lambda: msg.to,
                 lambda: msg.call_id, lambda: msg.cseq, lambda: msg.ruri,
                 lambda: msg.max_forwards, lambda: msg.expires, lambda: msg.contacts,
                 lambda: validate_request(msg, KNOWN_METHODS),
                 lambda: unsupported_requires(msg, frozenset({"path", "outbound"})),
                 lambda: build_response(msg, 400, "Bad Request", to_tag="t",
                                        headers=[("Allow", "INVITE")]),
                 msg.to_bytes):
        with contextlib.suppress(ParseError):
            read()


def _frame(data: bytes, cuts: list[int]) -> tuple[list[bytes], int | None]:
    framer = StreamFramer(max_header=4096, max_body=4096)
    out: list[bytes] = []
    status: int | None = None
    pieces = []
    last = 0
    for c in sorted(set(cuts)):
        if 0 < c < len(data):
            pieces.append(data[last:c])
            last = c
    pieces.append(data[last:])
    for piece in pieces:
        try:
            out.extend(bytes(m) if m is not PING else PING for m in framer.feed(piece))
        except ParseError as exc:
            status = exc.status
            break
    else:
        if framer.error is not None:
            status = framer.error.status
    return out, status


@pytest.mark.parametrize("data", REGRESSIONS or [b""], ids=lambda d: f"{len(d)}B")
def test_regressions_parse(data: bytes) -> None:
    _exercise(data)
    _frame(data, [len(data) // 2])


def test_every_seed_survives_the_request_path() -> None:
    assert len(seeds()) >= 50
    for data in seeds():
        _exercise(data)


@FUZZ
@given(mutated())
def test_parser_raises_only_parse_errors(data: bytes) -> None:
    _exercise(data)


@FUZZ
@given(st.lists(mutated(), min_size=1, max_size=3), st.lists(st.integers(0, 20_000), max_size=8),
       st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]))
def test_framing_does_not_depend_on_the_cuts(msgs: list[bytes], cuts: list[int],
                                             sep: bytes) -> None:
    stream = sep.join(msgs)
    whole = _frame(stream, [])
    assert _frame(stream, cuts) == whole
    for m in whole[0]:
        if m is not PING and m != PING:
            _exercise(m)
