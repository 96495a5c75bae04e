"""The proxy's sans-IO core: Max-Forwards, loops, routing (§16.12.1), the response context."""

from __future__ import annotations

import pytest

from sipyard.proxy import (
    REASON_COMPLETED_ELSEWHERE,
    AbandonBranch,
    BranchState,
    CancelBranch,
    ForwardResponse,
    GiveUp,
    Interface,
    LocalAddresses,
    LoopDetector,
    MaxForwardsVerdict,
    ProxyAction,
    ResponseContext,
    SendFinal,
    StartBranch,
    Target,
    check_max_forwards,
    forward_request,
    group_by_q,
    next_hop,
    next_max_forwards,
    preprocess_routes,
    record_route_values,
    strip_top_via,
    wants_record_route,
)
from sipyard.sip.message import Request, Response, parse_message

US = Interface("192.0.2.1", 5060, "udp")
US_TCP = Interface("192.0.2.1", 5060, "tcp")
US_V6 = Interface("[2001:db8::1]", 5070, "tcp")
OURS = LocalAddresses([US, US_TCP, US_V6], aliases=["proxy.example.com"])


def req(text: str) -> Request:
    msg = parse_message(text.replace("\n", "\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def invite(uri: str = "sip:bob@example.com", *, extra: str = "", method: str = "INVITE",
           mf: str | None = "70", via: str = "SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKua1",
           to_tag: str = "") -> Request:
    mf_line = f"Max-Forwards: {mf}\n" if mf is not None else ""
    return req(
        f"{method} {uri} SIP/2.0\n"
        f"Via: {via}\n"
        f"{mf_line}"
        "From: <sip:alice@example.com>;tag=a1\n"
        f"To: <sip:bob@example.com>{to_tag}\n"
        "Call-ID: call1@192.0.2.9\n"
        f"CSeq: 1 {method}\n"
        f"{extra}"
        "Content-Length: 4\n\nv=0\n"
    )


# -- Max-Forwards ------------------------------------------------------------------

def test_max_forwards_absent_becomes_70_present_decremented() -> None:
    absent = invite(mf=None)
    assert check_max_forwards(absent) is MaxForwardsVerdict.FORWARD
    assert next_max_forwards(absent) == 70
    assert next_max_forwards(invite(mf="5")) == 4
    assert next_max_forwards(invite(mf="1")) == 0  # forwarded with 0: the next hop refuses


def test_max_forwards_zero_is_483_unless_options_to_us() -> None:
    assert check_max_forwards(invite(mf="0")) is MaxForwardsVerdict.TOO_MANY_HOPS
    options = invite("sip:192.0.2.1", method="OPTIONS", mf="0")
    assert check_max_forwards(options) is MaxForwardsVerdict.TOO_MANY_HOPS
    assert check_max_forwards(options, addressed_to_us=True) is MaxForwardsVerdict.ANSWER_HERE
    assert check_max_forwards(invite(mf="0"), addressed_to_us=True) is (
        MaxForwardsVerdict.TOO_MANY_HOPS)  # only OPTIONS may be answered (§16.3 item 3)
    with pytest.raises(ValueError):
        next_max_forwards(invite(mf="0"))


# -- our addresses -----------------------------------------------------------------

@pytest.mark.parametrize(("uri", "ours"), [
    ("sip:192.0.2.1:5060;lr", True),
    ("sip:192.0.2.1;lr", True),  # default port 5060
    ("sip:192.0.2.1:5060;lr;transport=tcp", True),
    ("sip:PROXY.example.com;lr", True),  # alias, any case
    ("sip:[2001:DB8::0:1]:5070;lr", True),  # IPv6, canonical form
    ("sip:user@192.0.2.1:5060", True),  # only host and port count
    ("sip:192.0.2.1:5062;lr", False),
    ("sips:192.0.2.1;lr", False),  # sips defaults to 5061
    ("sip:192.0.2.2;lr", False),
    ("tel:+15551234", False),
    ("sip:[bad", False),
])
def test_is_our_uri(uri: str, ours: bool) -> None:
    assert OURS.is_our_uri(uri) is ours


def test_is_our_via() -> None:
    assert OURS.is_our_via(invite(via="SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx").top_via)
    assert not OURS.is_our_via(invite().top_via)


# -- loop detection ----------------------------------------------------------------

def _forwarded(loops: LoopDetector, received: Request, target: str, n: int = 0) -> Request:
    received = preprocess_routes(received, OURS)
    branch = loops.branch(loops.request_hash(received), n)
    fwd = forward_request(received, target=target, via=US.via(branch),
                          max_forwards=next_max_forwards(received))
    return fwd.request


def _via_downstream(fwd: Request, uri: str | None = None) -> Request:
    """What comes back after another element added its Via (and maybe retargeted)."""
    text = fwd.to_bytes().decode().replace(
        "\r\nVia: ", "\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKx7\r\nVia: ", 1)
    if uri is not None:
        text = text.replace(fwd.uri, uri, 1)
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def test_branch_is_cookie_hash_counter_and_unique_per_fork() -> None:
    loops = LoopDetector(OURS)
    h = loops.request_hash(invite())
    assert len(h) == 20 and h == loops.request_hash(invite())
    assert loops.branch(h, 0) == f"z9hG4bK{h}.0" != loops.branch(h, 1)
    other = invite(via="SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKua2")  # a new transaction
    assert loops.request_hash(other) != h
    assert LoopDetector(OURS, secret=b"k").request_hash(invite()) != h


def test_request_coming_back_unchanged_is_a_loop() -> None:
    loops = LoopDetector(OURS)
    original = invite("sip:bob@example.com")
    fwd = _forwarded(loops, original, target="sip:bob@example.com")  # e.g. a static route
    assert not loops.is_loop(preprocess_routes(original, OURS))
    back = _via_downstream(fwd)
    assert loops.is_loop(back)


def test_spiral_with_changed_request_uri_is_not_a_loop() -> None:
    loops = LoopDetector(OURS)
    fwd = _forwarded(loops, invite("sip:bob@example.com"), target="sip:bob@example.com")
    spiral = _via_downstream(fwd, uri="sip:bob-mobile@example.com")  # retargeted downstream
    assert not loops.is_loop(spiral)


def test_loop_through_our_route_then_back_by_request_uri() -> None:
    loops = LoopDetector(OURS)
    routed = invite(extra="Route: <sip:192.0.2.1;lr>\n")
    fwd = _forwarded(loops, routed, target="sip:bob@example.com")
    assert fwd.get_all("route") == []
    assert loops.is_loop(_via_downstream(fwd))  # hash taken after §16.4, so it matches


def test_foreign_or_tampered_via_is_not_a_loop() -> None:
    loops = LoopDetector(OURS)
    fake = invite(via="SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKdeadbeef.0")
    assert not loops.is_loop(fake)
    assert not loops.is_loop(invite())


# -- routing: RFC 3261 §16.12.1 examples ------------------------------------------------

P1 = LocalAddresses([Interface("p1.example.com", 5060)])
P2 = LocalAddresses([Interface("p2.domain.com", 5060)])
P4 = LocalAddresses([Interface("p4.domain.com", 5060)])


def bye(uri: str, routes: str) -> Request:
    return req(f"BYE {uri} SIP/2.0\n"
               "Via: SIP/2.0/UDP u.example.com;branch=z9hG4bKbye\n"
               "Max-Forwards: 70\nFrom: <sip:a@x>;tag=1\nTo: <sip:b@y>;tag=2\n"
               "Call-ID: c\nCSeq: 2 BYE\n"
               + (f"Route: {routes}\n" if routes else "") + "Content-Length: 0\n\n")


def test_16_12_1_1_basic_trapezoid() -> None:
    # P2 receives the INVITE record-routed by P1, retargets it and record-routes itself.
    at_p2 = req("INVITE sip:callee@domain.com SIP/2.0\n"
                "Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKp1\n"
                "Via: SIP/2.0/UDP u1.example.com;branch=z9hG4bKu1\n"
                "Max-Forwards: 69\nFrom: <sip:caller@u1.example.com>;tag=9\n"
                "To: <sip:callee@domain.com>\nCall-ID: c\nCSeq: 1 INVITE\n"
                "Contact: <sip:caller@u1.example.com>\n"
                "Record-Route: <sip:p1.example.com;lr>\nContent-Length: 0\n\n")
    p2 = Interface("p2.domain.com", 5060)
    fwd = forward_request(preprocess_routes(at_p2, P2),
                          target="sip:callee@u2.domain.com", via=p2.via("z9hG4bKp2"),
                          max_forwards=68, record_route=record_route_values(p2, p2))
    assert fwd.request.uri == "sip:callee@u2.domain.com"
    assert fwd.request.get_all("record-route") == ["<sip:p2.domain.com:5060;lr>",
                                                   "<sip:p1.example.com;lr>"]
    assert fwd.next_hop == "sip:callee@u2.domain.com"
    # The callee's BYE: route set = the Record-Route in order.
    at_p2_bye = bye("sip:caller@u1.example.com",
                    "<sip:p2.domain.com;lr>,<sip:p1.example.com;lr>")
    step = next_hop(preprocess_routes(at_p2_bye, P2))
    assert step.request.uri == "sip:caller@u1.example.com"
    assert step.request.get_all("route") == ["<sip:p1.example.com;lr>"]
    assert step.next_hop == "sip:p1.example.com;lr"  # loose: R-URI kept
    step = next_hop(preprocess_routes(step.request, P1))
    assert step.request.get_all("route") == []
    assert step.next_hop == "sip:caller@u1.example.com"


def test_16_12_1_2_traversing_a_strict_routing_proxy() -> None:
    # U1's BYE; P3 (p3.middle.com) is a strict router: its Record-Route had no ;lr.
    at_p1 = bye("sip:callee@u2.domain.com",
                "<sip:p1.example.com;lr>,<sip:p2.example.com;lr>,<sip:p3.middle.com>,"
                "<sip:p4.domain.com;lr>")
    step = next_hop(preprocess_routes(at_p1, P1))
    assert step.next_hop == "sip:p2.example.com;lr"
    assert step.request.uri == "sip:callee@u2.domain.com"
    p2 = LocalAddresses([Interface("p2.example.com", 5060)])
    step = next_hop(preprocess_routes(step.request, p2))
    # next hop without ;lr: R-URI to the end of the Route set, the strict route into the R-URI
    assert step.request.uri == "sip:p3.middle.com"
    assert step.request.get_all("route") == ["<sip:p4.domain.com;lr>",
                                             "<sip:callee@u2.domain.com>"]
    assert step.next_hop == "sip:p3.middle.com"
    # P3, a strict router, sends on: the top Route becomes the R-URI.
    at_p4 = bye("sip:p4.domain.com;lr", "<sip:callee@u2.domain.com>")
    step = next_hop(preprocess_routes(at_p4, P4))
    # P4 sees its own Record-Route value in the R-URI: the last Route is the real one.
    assert step.request.uri == "sip:callee@u2.domain.com"
    assert step.request.get_all("route") == []
    assert step.next_hop == "sip:callee@u2.domain.com"


def test_16_12_1_3_two_namespaces_with_double_record_route() -> None:
    # RFC 3261 rewrites Record-Route in the response here; RFC 5658 doubles it instead.
    left = Interface("gateway.leftprivatespace.com", 5060)
    right = Interface("gateway.rightprivatespace.com", 5060)
    gateway = LocalAddresses([left, right])
    at_p1 = req("INVITE sip:callee@gateway.leftprivatespace.com SIP/2.0\n"
                "Via: SIP/2.0/UDP u1.leftprivatespace.com;branch=z9hG4bKu1\n"
                "Max-Forwards: 70\nFrom: <sip:caller@u1.leftprivatespace.com>;tag=9\n"
                "To: <sip:callee@gateway.leftprivatespace.com>\nCall-ID: c\nCSeq: 1 INVITE\n"
                "Contact: <sip:caller@u1.leftprivatespace.com>\nContent-Length: 0\n\n")
    fwd = forward_request(at_p1, target="sip:callee@rightprivatespace.com",
                          via=right.via("z9hG4bKgw"), max_forwards=69,
                          record_route=record_route_values(inbound=left, outbound=right))
    rr = fwd.request.get_all("record-route")
    assert rr == ["<sip:gateway.rightprivatespace.com:5060;lr>",
                  "<sip:gateway.leftprivatespace.com:5060;lr>"]
    # The callee (U2) routes top-first, the caller (U1) bottom-first: each reaches its side.
    from_u2 = bye("sip:caller@u1.leftprivatespace.com", ",".join(rr))
    from_u1 = bye("sip:callee@u2.rightprivatespace.com", ",".join(reversed(rr)))
    for request in (from_u2, from_u1):
        step = next_hop(preprocess_routes(request, gateway))
        assert step.request.get_all("route") == []  # both our values popped
        assert step.next_hop == request.uri


def test_record_route_values() -> None:
    assert record_route_values(US, US) == ["<sip:192.0.2.1:5060;lr>"]
    assert record_route_values(US_TCP, US_TCP) == ["<sip:192.0.2.1:5060;lr;transport=tcp>"]
    assert record_route_values(inbound=US, outbound=US_TCP) == [
        "<sip:192.0.2.1:5060;lr;transport=tcp>", "<sip:192.0.2.1:5060;lr>"]
    for value in record_route_values(US, US_V6):
        assert OURS.is_our_uri(value.strip("<>"))
    for method in ("INVITE", "SUBSCRIBE", "REFER", "NOTIFY"):
        assert wants_record_route(invite(method=method))
    for method in ("BYE", "MESSAGE", "OPTIONS", "REGISTER"):
        assert not wants_record_route(invite(method=method))


def test_forward_request_builds_the_copy() -> None:
    original = invite(extra="Record-Route: <sip:up.example.com;lr>\nRoute: <sip:192.0.2.1;lr>\n")
    before = original.to_bytes()
    received = preprocess_routes(original, OURS)
    fwd = forward_request(received, target="sip:bob@192.0.2.50:5062", via=US.via("z9hG4bKb.0"),
                          max_forwards=next_max_forwards(received),
                          record_route=record_route_values(US, US),
                          route_set=["<sip:edge.example.com;lr>"])
    out = fwd.request
    assert original.to_bytes() == before  # the received request is untouched
    assert out.uri == "sip:bob@192.0.2.50:5062"
    assert [v.raw for v in out.vias] == ["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKb.0",
                                         "SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKua1"]
    assert out.max_forwards == 69
    assert out.get_all("record-route") == ["<sip:192.0.2.1:5060;lr>", "<sip:up.example.com;lr>"]
    assert out.get_all("route") == ["<sip:edge.example.com;lr>"]  # ours popped, Path added
    assert fwd.next_hop == "sip:edge.example.com;lr"
    assert out.body == original.body == b"v=0\r" and out.call_id == original.call_id
    assert out.headers[0][0] == "Via"


def test_strip_top_via() -> None:
    two_lines = parse_message(b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n"
                              b"Via: SIP/2.0/UDP b;branch=z9hG4bK2\r\nCSeq: 1 INVITE\r\n\r\n")
    one_line = parse_message(b"SIP/2.0 180 Ringing\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1, "
                             b"SIP/2.0/UDP b;branch=z9hG4bK2\r\nCSeq: 1 INVITE\r\n\r\n")
    for msg in (two_lines, one_line):
        assert isinstance(msg, Response)
        assert [v.host for v in strip_top_via(msg).vias] == ["b"]
        assert [v.host for v in msg.vias] == ["a", "b"]


# -- the response context -----------------------------------------------------------

REASONS = {100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK",
           302: "Moved Temporarily", 401: "Unauthorized", 404: "Not Found",
           407: "Proxy Authentication Required", 408: "Request Timeout", 480: "Unavailable",
           486: "Busy Here", 487: "Request Terminated", 500: "Server Error",
           503: "Service Unavailable", 603: "Decline"}


def resp(status: int, branch_id: int = 0, extra: str = "", tag: str = "t") -> Response:
    msg = parse_message((
        f"SIP/2.0 {status} {REASONS[status]}\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKh.{branch_id}\r\n"
        "Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKua1\r\n"
        f"From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag={tag}\r\n"
        "Call-ID: call1@192.0.2.9\r\nCSeq: 1 INVITE\r\n" + extra.replace("\n", "\r\n")
        + "Content-Length: 0\r\n\r\n").encode())
    assert isinstance(msg, Response)
    return msg


def targets(*uris: str, q: float = 1.0) -> list[Target]:
    return [Target(u, q) for u in uris]


def forwarded(actions: list[ProxyAction]) -> list[tuple[int, int]]:
    return [(a.branch_id, a.response.status) for a in actions if isinstance(a, ForwardResponse)]


def started(ctx: ResponseContext, now: float = 0.0) -> list[ProxyAction]:
    return ctx.start(now)


A, B, C = "sip:a@192.0.2.31", "sip:b@192.0.2.32", "sip:c@192.0.2.33"


def test_parallel_start_and_provisionals_except_100_forwarded_at_once() -> None:
    ctx = ResponseContext(targets(A, B), invite=True)
    assert started(ctx) == [StartBranch(0, Target(A)), StartBranch(1, Target(B))]
    assert ctx.on_response(0, resp(100), 0.1) == []
    [fwd] = ctx.on_response(0, resp(180), 0.2)
    assert isinstance(fwd, ForwardResponse) and fwd.response.status == 180
    assert [v.host for v in fwd.response.vias] == ["192.0.2.9"]  # our Via removed
    assert ctx.branches[0].state is BranchState.PROCEEDING


def test_non_2xx_finals_wait_for_all_branches() -> None:
    ctx = ResponseContext(targets(A, B), invite=True)
    started(ctx)
    assert ctx.on_response(1, resp(486, 1), 1.0) == []
    assert not ctx.final_sent
    assert forwarded(ctx.on_response(0, resp(404), 2.0)) == [(1, 486)]  # same class: first
    assert ctx.done


def test_2xx_forwarded_at_once_and_cancels_the_others_with_reason() -> None:
    ctx = ResponseContext(targets(A, B, C), invite=True)
    started(ctx)
    ctx.on_response(1, resp(180, 1), 0.5)  # B rings; C has said nothing yet
    out = ctx.on_response(0, resp(200), 1.0)
    assert forwarded(out) == [(0, 200)]
    assert out[1:] == [CancelBranch(1, REASON_COMPLETED_ELSEWHERE)]
    assert ctx.on_response(2, resp(100, 2), 1.1) == [  # C's first provisional: CANCEL now
        CancelBranch(2, REASON_COMPLETED_ELSEWHERE)]
    assert ctx.on_response(2, resp(180, 2), 1.2) == []  # not forwarded after the answer
    # a late 2xx from B (the CANCEL crossed it) is forwarded too; the 487 is not
    assert forwarded(ctx.on_response(1, resp(200, 1, tag="t2"), 1.3)) == [(1, 200)]
    assert ctx.on_response(2, resp(487, 2), 1.4) == []
    assert ctx.done
    assert forwarded(ctx.on_response(0, resp(200), 1.5)) == [(0, 200)]  # retransmission


def test_6xx_cancels_the_rest_and_becomes_the_answer() -> None:
    ctx = ResponseContext(targets(A, B) + targets(C, q=0.5), invite=True)
    started(ctx)
    ctx.on_response(1, resp(180, 1), 0.5)
    ctx.on_response(0, resp(486), 0.6)
    assert ctx.on_response(0, resp(603), 0.7) == []  # A is already final: ignored
    ctx2 = ResponseContext(targets(A, B) + targets(C, q=0.5), invite=True)
    started(ctx2)
    ctx2.on_response(1, resp(180, 1), 0.5)
    assert ctx2.on_response(0, resp(603), 1.0) == [CancelBranch(1, None)]
    # the 487 ends it: the 6xx wins, C (the next group) is never tried
    assert forwarded(ctx2.on_response(1, resp(487, 1), 1.1)) == [(0, 603)]
    assert 2 not in ctx2.branches and ctx2.done


@pytest.mark.parametrize(("finals", "best"), [
    ([486, 503], 486),  # lowest class
    ([500, 302], 302),
    ([404, 407], 407),  # a challenge first within 4xx
    ([486, 603], 603),  # 6xx beats everything
    ([480, 404], 480),  # same class: first come
])
def test_best_response(finals: list[int], best: int) -> None:
    ctx = ResponseContext([Target(f"sip:u{i}@192.0.2.40") for i in range(len(finals))],
                          invite=True, recurse=False)
    started(ctx)
    out: list[ProxyAction] = []
    for i, status in enumerate(finals):
        extra = "Contact: <sip:x@192.0.2.77>\n" if status == 302 else ""
        out += ctx.on_response(i, resp(status, i, extra), 1.0 + i)
    assert [s for _b, s in forwarded(out)] == [best]


def test_503_becomes_500_and_transport_error_counts_as_503() -> None:
    ctx = ResponseContext(targets(A, B), invite=True)
    started(ctx)
    ctx.on_response(0, resp(503), 1.0)
    assert ctx.on_transport_error(1, 1.1) == [SendFinal(500, "Server Internal Error")]


def test_challenges_of_all_branches_are_merged() -> None:
    ctx = ResponseContext(targets(A, B, C), invite=True)
    started(ctx)
    ctx.on_response(0, resp(401, 0, 'WWW-Authenticate: Digest realm="a", nonce="1"\n'), 1.0)
    ctx.on_response(1, resp(486, 1), 1.1)
    out = ctx.on_response(2, resp(407, 2, 'Proxy-Authenticate: Digest realm="c", nonce="3"\n'),
                          1.2)
    [fwd] = out
    assert isinstance(fwd, ForwardResponse) and fwd.branch_id == 2
    assert fwd.response.status == 407
    assert fwd.response.get_lines("proxy-authenticate") == ['Digest realm="c", nonce="3"']
    assert fwd.response.get_lines("www-authenticate") == ['Digest realm="a", nonce="1"']
    assert [v.host for v in fwd.response.vias] == ["192.0.2.9"]


def test_real_response_beats_local_408() -> None:
    ctx = ResponseContext(targets(A, B), invite=True)
    started(ctx)
    assert ctx.on_timeout(0, 32.0) == []  # timer B of branch 0
    assert forwarded(ctx.on_response(1, resp(480, 1), 33.0)) == [(1, 480)]
    only_local = ResponseContext(targets(A), invite=True)
    started(only_local)
    assert only_local.on_timeout(0, 32.0) == [SendFinal(408, "Request Timeout")]


def test_non_invite_408_is_never_sent() -> None:
    ctx = ResponseContext(targets(A), invite=False)
    started(ctx)
    assert ctx.on_timeout(0, 32.0) == [GiveUp()]
    ctx = ResponseContext(targets(A), invite=False)
    started(ctx)
    assert ctx.on_response(0, resp(408), 1.0) == [GiveUp()]


def test_non_invite_first_2xx_only_and_no_cancel() -> None:
    ctx = ResponseContext(targets(A, B), invite=False)
    started(ctx)
    assert ctx.next_deadline() is None  # no timer C for non-INVITE
    assert forwarded(ctx.on_response(0, resp(200), 1.0)) == [(0, 200)]
    assert ctx.on_response(1, resp(200, 1), 1.1) == []
    assert ctx.on_cancel(1.2) == []
    assert ctx.done


def test_cancel_from_upstream() -> None:
    ctx = ResponseContext(targets(A, B) + targets(C, q=0.5), invite=True)
    started(ctx)
    ctx.on_response(0, resp(180), 0.5)
    assert ctx.on_cancel(1.0) == [CancelBranch(0, None)]  # B has no provisional yet
    out = ctx.on_response(1, resp(180, 1), 1.5)
    assert out == [CancelBranch(1, None)]  # CANCEL sent on its first provisional, not forwarded
    assert ctx.on_response(0, resp(487), 1.6) == []
    assert ctx.on_response(1, resp(487, 1), 1.7) == [SendFinal(487, "Request Terminated")]
    assert 2 not in ctx.branches and ctx.done


def test_cancel_with_reason_passed_on_and_branch_that_never_answers() -> None:
    ctx = ResponseContext(targets(A), invite=True)
    started(ctx)
    assert ctx.on_cancel(1.0, reason="SIP;cause=487") == []
    assert ctx.on_timeout(0, 32.0) == [SendFinal(487, "Request Terminated")]


def test_serial_forking_by_q_next_group_when_all_failed() -> None:
    ctx = ResponseContext(targets(A, B) + targets(C, q=0.5), invite=True)
    assert started(ctx) == [StartBranch(0, Target(A)), StartBranch(1, Target(B))]
    assert ctx.on_response(0, resp(486), 1.0) == []
    assert ctx.on_response(1, resp(480, 1), 2.0) == [StartBranch(2, Target(C, 0.5))]
    assert forwarded(ctx.on_response(2, resp(404, 2), 3.0)) == [(0, 486)]  # best of all


def test_serial_forking_group_timeout() -> None:
    ctx = ResponseContext(targets(A) + targets(B, q=0.5) + targets(C, q=0.1), invite=True,
                          group_timeout=20.0, cancel_on_group_timeout=True)
    started(ctx)
    ctx.on_response(0, resp(180), 1.0)
    assert ctx.next_deadline() == 20.0
    assert ctx.handle_timer(20.0) == [CancelBranch(0, None), StartBranch(1, Target(B, 0.5))]
    assert ctx.next_deadline() == 40.0  # the last group still waits
    keep = ResponseContext(targets(A) + targets(B, q=0.5), invite=True, group_timeout=5.0)
    started(keep)
    assert keep.handle_timer(5.0) == [StartBranch(1, Target(B, 0.5))]  # A keeps ringing
    assert keep.branches[0].live


def test_3xx_recursion_dedup_and_depth_cap() -> None:
    ctx = ResponseContext(targets(A), invite=True, max_depth=1)
    started(ctx)
    contacts = (f"Contact: <{A}>, <sip:y@192.0.2.50>;q=1.0, <sip:x@192.0.2.51>;q=0.5, "
                "<SIP:y@192.0.2.50>\n")  # A and the second y are duplicates (§19.1.4)
    out = ctx.on_response(0, resp(302, 0, contacts), 1.0)
    assert out == [StartBranch(1, Target("sip:y@192.0.2.50", 1.0, 1))]
    assert not ctx.branches[0].candidate
    second = "Contact: <sip:z@192.0.2.52>\n"
    out = ctx.on_response(1, resp(302, 1, second), 2.0)  # depth 2 > cap: not followed
    assert out == [StartBranch(2, Target("sip:x@192.0.2.51", 0.5, 1))]
    assert ctx.branches[1].candidate  # the capped 302 stays a possible answer
    # all final: the kept 302 (class 3) beats the 486; A's consumed 302 is not a candidate
    assert forwarded(ctx.on_response(2, resp(486, 2), 3.0)) == [(1, 302)]


def test_timer_c_cancels_a_ringing_branch_then_gives_up() -> None:
    ctx = ResponseContext(targets(A), invite=True, timer_c=181.0, cancel_guard=32.0)
    started(ctx, 0.0)
    assert ctx.next_deadline() == 181.0
    ctx.on_response(0, resp(100), 10.0)
    assert ctx.next_deadline() == 181.0  # 100 does not restart timer C
    ctx.on_response(0, resp(180), 20.0)
    assert ctx.next_deadline() == 201.0  # every other provisional does
    assert ctx.handle_timer(200.9) == []
    assert ctx.handle_timer(201.0) == [CancelBranch(0, None)]
    assert ctx.next_deadline() == 233.0  # the CANCEL guard
    assert ctx.handle_timer(233.0) == [AbandonBranch(0), SendFinal(408, "Request Timeout")]
    assert ctx.done


def test_timer_c_before_any_provisional_acts_as_408() -> None:
    ctx = ResponseContext(targets(A, B), invite=True, timer_c=10.0)
    started(ctx)
    ctx.on_response(1, resp(180, 1), 5.0)
    assert ctx.handle_timer(10.0) == [AbandonBranch(0)]
    out = ctx.on_response(1, resp(486, 1), 11.0)
    assert forwarded(out) == [(1, 486)]  # the real 486 beats our 408


def test_context_needs_targets_and_dedups_them() -> None:
    with pytest.raises(ValueError):
        ResponseContext([], invite=True)
    ctx = ResponseContext(targets(A, "sip:A@192.0.2.31", A), invite=True)
    assert len(started(ctx)) == 2  # user parts are case-sensitive; the exact duplicate goes
    with pytest.raises(RuntimeError):
        ctx.start(0.0)


def test_group_by_q() -> None:
    ts = [Target("sip:1@h", 0.5), Target("sip:2@h", 1.0), Target("sip:3@h", 0.5),
          Target("sip:4@h", 0.9)]
    assert [[t.uri for t in g] for g in group_by_q(ts)] == [
        ["sip:2@h"], ["sip:4@h"], ["sip:1@h", "sip:3@h"]]


def test_max_branches_caps_the_fork() -> None:
    ctx = ResponseContext([Target(f"sip:u{i}@h") for i in range(5)], invite=True,
                          max_branches=3)
    assert len(started(ctx)) == 3


def test_request_uri_with_a_user_at_our_address_is_not_a_strict_route() -> None:
    feature = invite("sip:*97@192.0.2.1", extra="Route: <sip:192.0.2.1;lr>\n")
    out = preprocess_routes(feature, OURS)
    assert out.uri == "sip:*97@192.0.2.1" and out.get_all("route") == []
    assert OURS.is_our_record_route("sip:192.0.2.1:5060;lr")
    assert not OURS.is_our_record_route("sip:*97@192.0.2.1")


# -- a driver: how the async handler is meant to use both layers -----------------------------

def test_driver_loop_end_to_end() -> None:
    """Fork an INVITE to two phones over UDP: one busy, one answers; fake clock throughout."""
    from sipyard.sip.client_transaction import (
        ClientTransactionLayer,
        PassResponse,
        Send,
        Timeout,
        TransportFailure,
        Unmatched,
        build_cancel,
    )
    from sipyard.sip.message import build_response

    ctl = ClientTransactionLayer()
    loops = LoopDetector(OURS)
    wire: list[tuple[object, bytes]] = []  # what the transport would send
    upstream: list[int] = []  # statuses sent on the server transaction
    branch_tx = {}
    received = preprocess_routes(invite(), OURS)
    assert check_max_forwards(received) is MaxForwardsVerdict.FORWARD
    assert not loops.is_loop(received)
    h = loops.request_hash(received)
    ctx = ResponseContext([Target(A), Target(B)], invite=True)

    def run(actions: list[ProxyAction], now: float) -> None:
        for a in actions:
            if isinstance(a, StartBranch):
                fwd = forward_request(received, target=a.target.uri,
                                      via=US.via(loops.branch(h, a.branch_id)),
                                      max_forwards=next_max_forwards(received),
                                      record_route=record_route_values(US, US))
                tx, sends = ctl.start(fwd.request, fwd.next_hop, False, now)
                tx.user = a.branch_id
                branch_tx[a.branch_id] = tx
                tx_actions(list(sends), now)
            elif isinstance(a, CancelBranch):
                invite_tx = branch_tx[a.branch_id]
                cancel = build_cancel(invite_tx.request, a.reason)
                _tx, sends = ctl.start(cancel, invite_tx.dest, False, now)
                tx_actions(list(sends), now)
            elif isinstance(a, AbandonBranch):
                ctl.terminate(branch_tx[a.branch_id])
            elif isinstance(a, ForwardResponse):
                upstream.append(a.response.status)
            elif isinstance(a, SendFinal):
                upstream.append(a.status)

    def tx_actions(actions: list[object], now: float) -> None:
        for t in actions:
            if isinstance(t, Send):
                wire.append((t.dest, t.data))
            elif isinstance(t, PassResponse):
                if t.tx.method == "INVITE":
                    assert isinstance(t.tx.user, int)
                    run(ctx.on_response(t.tx.user, t.response, now), now)
            elif isinstance(t, Timeout | TransportFailure) and t.tx.method == "INVITE":
                assert isinstance(t.tx.user, int)
                run(ctx.on_timeout(t.tx.user, now), now)
            elif isinstance(t, Unmatched):
                pass  # a proxy forwards it statelessly by its Via

    def phone_answers(branch_id: int, status: int, now: float, tag: str) -> None:
        tx = branch_tx[branch_id]
        data = build_response(tx.request, status, REASONS[status], to_tag=tag)
        msg = parse_message(data)
        assert isinstance(msg, Response)
        tx_actions(list(ctl.receive_response(msg, now)), now)

    run(ctx.start(0.0), 0.0)
    assert [d for d, _ in wire] == [A, B]
    phone_answers(0, 180, 0.2, "ta")
    phone_answers(1, 486, 0.3, "tb")  # B busy: ACKed by its client transaction
    assert wire[-1][0] == B and wire[-1][1].startswith(b"ACK sip:b@192.0.2.32 SIP/2.0")
    phone_answers(0, 200, 1.0, "ta")
    assert upstream == [180, 200]  # the 486 lost to the 2xx and was never sent
    assert ctx.done
    run([], 1.0)
    assert ctl.next_deadline() is not None  # A in Accepted (M), B in Completed (D)
    tx_actions(list(ctl.handle_timer(40.0)), 40.0)
    assert len(ctl) == 0


# -- bad input: nothing grows with what a peer sends -------------------------------------------

def test_a_hundred_targets_keep_at_most_max_branches() -> None:
    ctx = ResponseContext([Target(f"sip:u{i}@192.0.2.50") for i in range(100)], invite=True,
                          max_branches=16)
    assert len(started(ctx)) == 16
    assert len(ctx._seen) == 16  # the other 84 were never even compared


def test_a_3xx_with_thousands_of_contacts_adds_only_what_may_still_branch() -> None:
    ctx = ResponseContext(targets(A, B), invite=True, max_branches=4)
    started(ctx)
    contacts = "".join("Contact: " + ", ".join(f"<sip:x{i}@192.0.2.60>"
                                               for i in range(n, n + 200)) + "\n"
                       for n in range(0, 2000, 200))  # 10 lines: the line-length cap holds
    assert ctx.on_response(0, resp(302, 0, contacts), 1.0) == []  # B still rings
    out = ctx.on_response(1, resp(486, 1), 2.0)
    # 2 branches exist: room for 2 more, the first two Contacts; the rest never looked at
    assert [a.target.uri for a in out if isinstance(a, StartBranch)] == [
        "sip:x0@192.0.2.60", "sip:x1@192.0.2.60"]
    assert len(ctx._seen) == 4


def test_route_set_cap() -> None:
    from sipyard.proxy.checks import MAX_ROUTE_VALUES, route_set_too_large

    ok = invite(extra="".join(f"Route: <sip:p{i}.example.com;lr>\n"
                              for i in range(MAX_ROUTE_VALUES)))
    assert not route_set_too_large(ok)
    many = ", ".join(f"<sip:p{i}.example.com;lr>" for i in range(MAX_ROUTE_VALUES + 1))
    assert route_set_too_large(invite(extra=f"Record-Route: {many}\n"))
    assert route_set_too_large(invite(extra=f"Route: {many}\n"))
