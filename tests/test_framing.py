"""sipyard.sip.framing: cutting a TCP byte stream into messages.

The central property: what comes out depends on the bytes only, never on how
the network cut them into ``feed`` calls — checked for random cut points,
byte-by-byte, and for streams that end in a framing error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sipyard.sip.errors import ParseError
from sipyard.sip.framing import PING, PONG, StreamFramer
from sipyard.sip.message import Request, parse_message

TORTURE = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata" / "torture"
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sip(method: str, n: int, body: bytes = b"", *, cl_name: str = "Content-Length") -> bytes:
    head = (f"{method} sip:u@example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK{n}\r\n"
            f"Call-ID: c{n}@h\r\nCSeq: {n} {method}\r\n"
            f"{cl_name}: {len(body)}\r\n\r\n")
    return head.encode() + body


#: A body that looks like the end of a header section and like a ping.
TRICKY_BODY = b"v=0\r\n\r\n\r\n\r\nINVITE sip:x SIP/2.0\r\n\x00\xff\n\n"

MESSAGES = [
    sip("REGISTER", 1),
    sip("MESSAGE", 2, b"hello"),
    sip("INVITE", 3, TRICKY_BODY, cl_name="l"),
    sip("OPTIONS", 4),
]
#: Keep-alives: a CRLF between messages, a CRLFCRLF ping, a ping before the first.
STREAM = (PING + MESSAGES[0] + b"\r\n" + MESSAGES[1] + PING + PING + MESSAGES[2] + b"\r\n\r\n"
          + b"\r\n" + MESSAGES[3])
EXPECTED = [PING, MESSAGES[0], MESSAGES[1], PING, PING, MESSAGES[2], PING, MESSAGES[3]]


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def run(data: bytes, cuts: list[int] | None = None, **kw: int
        ) -> tuple[list[bytes], tuple[int, str, bool] | None, int]:
    """Frame ``data`` cut at ``cuts``: (output, error as (status, reason, fatal), bytes left)."""
    framer = StreamFramer(**kw)
    out: list[bytes] = []
    error = None
    pieces = chunks(data, cuts) if cuts is not None else [data]
    try:
        for piece in pieces:
            out += framer.feed(piece)
        out += framer.feed(b"")
    except ParseError as exc:
        error = (exc.status, exc.reason, exc.fatal)
        assert framer.error is exc
    return out, error, framer.buffered


def test_whole_stream() -> None:
    out, error, left = run(STREAM)
    assert out == EXPECTED and error is None and left == 0
    for raw, original in zip([m for m in out if m != PING], MESSAGES, strict=True):
        assert raw == original
        m = parse_message(raw)
        assert isinstance(m, Request)
    assert parse_message(out[5]).body == TRICKY_BODY


@PROPS
@given(st.lists(st.integers(0, len(STREAM)), max_size=25))
@example([])
@example(list(range(len(STREAM))))
def test_any_cut_points_frame_the_same(cuts: list[int]) -> None:
    assert run(STREAM, cuts) == (EXPECTED, None, 0)


def test_byte_by_byte() -> None:
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(len(STREAM)):
        out += framer.feed(STREAM[i:i + 1])
    assert out == EXPECTED and framer.buffered == 0


@PROPS
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", PING, b"\r\n\r", b"\n\r\n"]), max_size=10),
       st.lists(st.integers(0, 60), max_size=8))
def test_keepalive_noise_is_cut_independent(noise: list[bytes], cuts: list[int]) -> None:
    """Any run of CR/LF before a message frames the same however it is cut."""
    data = b"".join(noise) + MESSAGES[1]
    whole = run(data)
    assert whole[0][-1] == MESSAGES[1] and whole[1] is None
    assert all(m == PING for m in whole[0][:-1])
    assert run(data, cuts) == whole


def test_lone_crlf_waits_for_a_possible_ping() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == [] and framer.buffered == 2
    assert framer.feed(b"\r") == [] and framer.buffered == 3
    assert framer.feed(b"\n") == [PING] and framer.buffered == 0
    assert framer.feed(b"\r\n") == []
    assert framer.feed(MESSAGES[0]) == [MESSAGES[0]]  # a CRLF keep-alive, then a message
    assert PONG == b"\r\n"


# -- Content-Length over a stream ---------------------------------------------------

def test_clerr_waits_for_the_body() -> None:
    data = (TORTURE / "clerr.dat").read_bytes()  # Content-Length 9999, 154 octets sent
    framer = StreamFramer(max_body=10000)
    assert framer.feed(data) == []
    assert framer.buffered == len(data)
    head_end = data.index(b"\r\n\r\n") + 4
    missing = 9999 - (len(data) - head_end)
    assert framer.feed(b"x" * (missing - 1)) == []
    out = framer.feed(b"x" + MESSAGES[0])
    assert len(out) == 2 and len(out[0]) == head_end + 9999 and out[1] == MESSAGES[0]


@pytest.mark.parametrize(("name", "reason"), [
    ("ncl.dat", "Bad Content-Length header"),
    ("mcl01.dat", "Multiple Content-Length values"),
])
def test_torture_framing_errors_are_fatal(name: str, reason: str) -> None:
    data = (TORTURE / name).read_bytes()
    for cuts in (None, [len(data) // 2], list(range(len(data)))):
        out, error, _ = run(data, cuts)
        assert out == [] and error == (400, reason, True)


@pytest.mark.parametrize("value", [b"-999", b"five", b"", b"1 2", b"+5", b"5, 6", b"0x10"])
def test_bad_content_length_values(value: bytes) -> None:
    data = b"OPTIONS sip:a SIP/2.0\r\nContent-Length: " + value + b"\r\n\r\n"
    out, error, _ = run(data)
    assert out == [] and error is not None and error[0] == 400 and error[2]


def test_content_length_forms() -> None:
    """Compact, folded, repeated-equal and zero-padded values frame like parse_message reads them."""
    for head in (b"l: 5", b"Content-Length:\r\n 5", b"Content-Length: 5, 5\r\nl: 5",
                 b"CONTENT-LENGTH  :  005", b"Content-Length: 000000000000000000005"):
        data = b"MESSAGE sip:a SIP/2.0\r\nCall-ID: x\r\n" + head + b"\r\n\r\nhelloREST"
        framer = StreamFramer()
        out = framer.feed(data)
        assert out == [data[:-4]], head
        assert parse_message(out[0]).body == b"hello"
        assert framer.buffered == 4
    # no Content-Length over a stream: an empty body (RFC 3261 §18.3 requires one)
    assert StreamFramer().feed(b"ACK sip:a SIP/2.0\r\nCall-ID: x\r\n\r\nACK") == \
        [b"ACK sip:a SIP/2.0\r\nCall-ID: x\r\n\r\n"]


def test_huge_content_length_digits() -> None:
    data = b"MESSAGE sip:a SIP/2.0\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"
    assert run(data)[1] == (513, "Message Too Large", True)


def test_dblreq_over_a_stream_is_two_messages() -> None:
    """INDEX.md: over a stream, dblreq's trailing octets are the next message.

    That INVITE's body is 3 octets longer than its Content-Length (150), so over
    a stream its last octets ("C" and the closing blank line) become a third,
    malformed message, which the parser then refuses.
    """
    data = (TORTURE / "dblreq.dat").read_bytes()
    out, error, left = run(data)
    assert error is None and left == 0 and len(out) == 3
    first, second = (parse_message(m) for m in out[:2])
    assert isinstance(first, Request) and first.method == "REGISTER" and first.body == b""
    assert isinstance(second, Request) and second.method == "INVITE" and len(second.body) == 150
    assert second.body.endswith(b"a=rtpmap:31 LP")
    assert out[2] == b"C\r\n\r\n"
    with pytest.raises(ParseError):
        parse_message(out[2])


def test_torture_stream() -> None:
    """The CRLF torture requests with a Content-Length, back to back, come out one by one."""
    names = ["wsinv.dat", "intmeth.dat", "esc01.dat", "escnull.dat", "esc02.dat", "lwsdisp.dat",
             "longreq.dat", "semiuri.dat", "transports.dat", "mpart01.dat", "unreason.dat",
             "noreason.dat", "zeromf.dat", "cparam01.dat", "regescrt.dat", "sdp01.dat"]
    files = [(TORTURE / n).read_bytes() for n in names]
    stream = b"".join(files)
    for cuts in (None, list(range(0, len(stream), 7)), list(range(0, len(stream), 1000))):
        out, error, left = run(stream, cuts)
        assert (out, error, left) == (files, None, 0)


# -- size caps ------------------------------------------------------------------------

def test_header_size_cap_is_fatal_513() -> None:
    big = b"OPTIONS sip:a SIP/2.0\r\nX-Pad: " + b"p" * 300 + b"\r\n\r\n"
    assert run(big, max_header=1000)[0] == [big]
    assert run(big, max_header=100)[1] == (513, "Message Too Large", True)
    # without the blank line yet: refused as soon as the head cannot fit any more
    framer = StreamFramer(max_header=100)
    with pytest.raises(ParseError) as info:
        for i in range(len(big)):
            framer.feed(big[i:i + 1])
    assert (info.value.status, info.value.fatal) == (513, True)
    assert framer.error is info.value
    with pytest.raises(ParseError):
        framer.feed(MESSAGES[0])  # the stream stays dead


@PROPS
@given(st.integers(0, 12), st.lists(st.integers(0, 200), max_size=6))
def test_header_cap_boundary_is_cut_independent(extra: int, cuts: list[int]) -> None:
    data = b"OPTIONS sip:a SIP/2.0\r\nX: " + b"v" * (60 + extra) + b"\r\n\r\n"
    end = data.index(b"\r\n\r\n")
    whole = run(data, max_header=end + 6 - extra)
    assert whole == run(data, cuts, max_header=end + 6 - extra)
    assert whole[1] == ((513, "Message Too Large", True) if end > end + 6 - extra else None)


def test_body_size_cap_is_fatal_513() -> None:
    data = sip("MESSAGE", 9, b"x" * 100)
    assert run(data, max_body=100)[0] == [data]
    assert run(data, max_body=99)[1] == (513, "Message Too Large", True)


def test_messages_before_an_error_are_delivered() -> None:
    bad = b"OPTIONS sip:a SIP/2.0\r\nContent-Length: -1\r\n\r\n"
    framer = StreamFramer()
    assert framer.feed(MESSAGES[0] + MESSAGES[1] + bad) == [MESSAGES[0], MESSAGES[1]]
    assert framer.error is not None and framer.error.fatal
    with pytest.raises(ParseError) as info:
        framer.feed(b"")
    assert info.value.reason == "Bad Content-Length header"
    # the same stream cut differently reports the same
    for cuts in ([len(MESSAGES[0])], list(range(0, 400, 3))):
        assert run(MESSAGES[0] + MESSAGES[1] + bad, cuts) == \
            ([MESSAGES[0], MESSAGES[1]], (400, "Bad Content-Length header", True), 0)


def test_trickled_header_is_scanned_once() -> None:
    """The blank-line search resumes where it stopped: a byte-by-byte head is linear work."""
    framer = StreamFramer()
    head = MESSAGES[0][:-4]
    for i in range(len(head)):
        assert framer.feed(head[i:i + 1]) == []
        assert framer._scan == max(0, i + 1 - 3)
    assert framer.feed(b"\r\n\r\n") == [MESSAGES[0]]
    assert framer._scan == 0 and framer.buffered == 0


def test_trickled_body_reads_the_head_once() -> None:
    """A body arriving byte by byte does not make the framer re-read the head each time."""
    data = sip("MESSAGE", 5, b"b" * 50)
    framer = StreamFramer()
    head = len(data) - 50
    assert framer.feed(data[:head]) == []
    assert framer._total == len(data)
    # were the head read again, this edited Content-Length would make it wait for 99 octets
    at = framer._buf.index(b"Content-Length: 50")
    framer._buf[at:at + 18] = b"Content-Length: 99"
    for i in range(head, len(data) - 1):
        assert framer.feed(data[i:i + 1]) == []
    out = framer.feed(data[-1:])
    assert len(out) == 1 and len(out[0]) == len(data) and out[0].endswith(b"b" * 50)
    assert framer._total == 0 and framer.feed(MESSAGES[0]) == [MESSAGES[0]]
