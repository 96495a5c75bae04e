"""Client transactions driven by a fake clock: every call is a pure function call."""

from __future__ import annotations

import pytest

from sipyard.sip.client_transaction import (
    INVITE_CLIENT_TRANSITIONS,
    NON_INVITE_CLIENT_TRANSITIONS,
    Action,
    ClientTransaction,
    ClientTransactionLayer,
    CtxEvent,
    CtxState,
    Do,
    PassResponse,
    Send,
    Timeout,
    TransportFailure,
    Unmatched,
    build_cancel,
)
from sipyard.sip.errors import TransactionError
from sipyard.sip.message import Request, Response, build_response, parse_message

T1, T2, T4 = 0.5, 4.0, 5.0
LONG = 64 * T1  # timers B, F and M
TIMER_D = 32.0
DEST = ("192.0.2.20", 5060, "udp")
BRANCH = "z9hG4bKtest1"

_REQUEST = (
    "{method} sip:bob@192.0.2.20:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n"
    "Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKupstream;received=192.0.2.9\r\n"
    "Route: <sip:p2.example.com;lr>\r\n"
    "Route: <sip:p3.example.com;lr>\r\n"
    "Max-Forwards: 69\r\n"
    "From: \"Alice\" <sip:alice@example.com>;tag=a1\r\n"
    "To: <sip:bob@example.com>\r\n"
    "Call-ID: c1@example.com\r\n"
    "CSeq: 7 {method}\r\n"
    "Contact: <sip:alice@192.0.2.9>\r\n"
    "Content-Length: 0\r\n\r\n"
)

REASONS = {100: "Trying", 180: "Ringing", 200: "OK", 486: "Busy Here", 487: "Request Terminated",
           302: "Moved Temporarily", 503: "Service Unavailable", 603: "Decline"}


def request(method: str = "INVITE", branch: str = BRANCH) -> Request:
    msg = parse_message(_REQUEST.format(method=method, branch=branch).encode())
    assert isinstance(msg, Request)
    return msg


def response(req: Request, status: int, to_tag: str | None = "b1") -> Response:
    msg = parse_message(build_response(req, status, REASONS[status], to_tag=to_tag))
    assert isinstance(msg, Response)
    return msg


def layer() -> ClientTransactionLayer:
    return ClientTransactionLayer(t1=T1, t2=T2, t4=T4, timer_d=TIMER_D)


def start(ctl: ClientTransactionLayer, method: str = "INVITE", *, reliable: bool = False,
          now: float = 0.0, branch: str = BRANCH) -> ClientTransaction:
    req = request(method, branch)
    tx, actions = ctl.start(req, DEST, reliable, now)
    assert actions == [Send(tx, req.to_bytes(), DEST)]
    return tx


# -- one fake-clock test per table row ---------------------------------------------

PROVISIONAL = {True: 180, False: 100}
FINAL = {True: 486, False: 200}
STATUS_OF = {CtxEvent.RESP_1XX: 180, CtxEvent.RESP_2XX: 200, CtxEvent.RESP_3XX_6XX: 486}


def drive(ctl: ClientTransactionLayer, method: str, state: CtxState,
          reliable: bool) -> ClientTransaction:
    """A transaction of ``method`` brought to ``state`` at t=0 through the public API."""
    tx = start(ctl, method, reliable=reliable)
    invite = method == "INVITE"
    if state is CtxState.PROCEEDING:
        ctl.receive_response(response(tx.request, PROVISIONAL[invite]), 0.0)
    elif state is CtxState.COMPLETED:
        ctl.receive_response(response(tx.request, FINAL[invite]), 0.0)
    elif state is CtxState.ACCEPTED:
        ctl.receive_response(response(tx.request, 200), 0.0)
    assert tx.state is state
    return tx


# when each timer fires for a tx driven to its state at t=0
TIMER_AT = {CtxEvent.TIMER_A: T1, CtxEvent.TIMER_B: LONG, CtxEvent.TIMER_D: TIMER_D,
            CtxEvent.TIMER_E: T1, CtxEvent.TIMER_F: LONG, CtxEvent.TIMER_K: T4,
            CtxEvent.TIMER_M: LONG}


def expected(tx: ClientTransaction, todo: tuple[Do, ...], event: CtxEvent,
             resp: Response | None) -> list[type]:
    kinds = {Do.RETRANSMIT: Send, Do.SEND_ACK: Send, Do.PASS_UP: PassResponse,
             Do.TIMEOUT: Timeout, Do.REPORT_ERROR: TransportFailure}
    return [kinds[d] for d in todo]


def apply(ctl: ClientTransactionLayer, tx: ClientTransaction, event: CtxEvent
          ) -> tuple[list[Action], Response | None]:
    if event in STATUS_OF:
        resp = response(tx.request, STATUS_OF[event])
        return ctl.receive_response(resp, 1.0 if event is not CtxEvent.RESP_1XX else 0.1), resp
    if event is CtxEvent.TRANSPORT_ERROR:
        return ctl.transport_error(tx, 0.1), None
    at = TIMER_AT[event]
    before = tx.state
    assert ctl.next_deadline() == at
    assert ctl.handle_timer(at - 1e-9) == []  # not yet
    assert tx.state is before
    return ctl.handle_timer(at), None


# Timer rows run over the transport where the timer exists and nothing else fires
# at the same time: A/E/D/K need UDP; B/F are tested over TCP (no A/E beside them).
_RELIABLE_FOR = {CtxEvent.TIMER_B: True, CtxEvent.TIMER_F: True}

ROWS = [("INVITE", s, e, n, todo) for (s, e), (n, todo) in INVITE_CLIENT_TRANSITIONS.items()] + [
    ("OPTIONS", s, e, n, todo) for (s, e), (n, todo) in NON_INVITE_CLIENT_TRANSITIONS.items()
]


@pytest.mark.parametrize(("method", "state", "event", "new", "todo"), ROWS,
                         ids=[f"{m}-{s.name}-{e.name}" for m, s, e, _, _ in ROWS])
def test_every_table_row(method: str, state: CtxState, event: CtxEvent, new: CtxState,
                         todo: tuple[Do, ...]) -> None:
    ctl = layer()
    tx = drive(ctl, method, state, _RELIABLE_FOR.get(event, False))
    actions, resp = apply(ctl, tx, event)
    assert tx.state is new
    assert [type(a) for a in actions] == expected(tx, todo, event, resp)
    for action, do in zip(actions, todo, strict=True):
        if do is Do.RETRANSMIT:
            assert isinstance(action, Send) and action.data == tx.data and action.dest == DEST
        elif do is Do.SEND_ACK:
            assert isinstance(action, Send) and action.data.startswith(b"ACK ")
        elif do is Do.PASS_UP:
            assert isinstance(action, PassResponse) and action.response is resp
        elif do is Do.TIMEOUT:
            assert action == Timeout(tx, event)
        else:
            assert action == TransportFailure(tx)
    assert (ctl.get(*tx.key) is tx) == (new is not CtxState.TERMINATED)
    assert len(ctl) == (0 if new is CtxState.TERMINATED else 1)


@pytest.mark.parametrize(("table", "states"), [
    (INVITE_CLIENT_TRANSITIONS,
     (CtxState.CALLING, CtxState.PROCEEDING, CtxState.COMPLETED, CtxState.ACCEPTED)),
    (NON_INVITE_CLIENT_TRANSITIONS, (CtxState.TRYING, CtxState.PROCEEDING, CtxState.COMPLETED)),
])
def test_every_live_state_takes_every_response(
    table: dict[tuple[CtxState, CtxEvent], object], states: tuple[CtxState, ...]
) -> None:
    # nothing a peer sends may raise
    for s in states:
        for e in (CtxEvent.RESP_1XX, CtxEvent.RESP_2XX, CtxEvent.RESP_3XX_6XX):
            assert (s, e) in table


def test_transport_error_in_accepted_raises_naming_state_and_event() -> None:
    ctl = layer()
    tx = drive(ctl, "INVITE", CtxState.ACCEPTED, False)
    with pytest.raises(TransactionError, match="ACCEPTED cannot take event TRANSPORT_ERROR"):
        ctl.transport_error(tx, 1.0)
    assert tx.state is CtxState.ACCEPTED


def test_transport_error_after_termination_is_ignored() -> None:
    ctl = layer()
    tx = start(ctl, "OPTIONS", reliable=True)
    ctl.receive_response(response(tx.request, 200), 0.0)  # K = 0 over TCP
    assert tx.state is CtxState.TERMINATED
    assert ctl.transport_error(tx, 0.0) == []


# -- INVITE ----------------------------------------------------------------------------

def test_non_2xx_final_acked_then_retransmissions_re_acked_and_absorbed() -> None:
    ctl = layer()
    tx = start(ctl)
    busy = response(tx.request, 486)
    first = ctl.receive_response(busy, 1.0)
    assert len(first) == 2
    ack, up = first
    assert isinstance(ack, Send) and ack.dest == DEST
    assert up == PassResponse(tx, busy)
    for t in (1.5, 2.5, 4.5):  # the UAS retransmits its final (timer G)
        again = ctl.receive_response(response(tx.request, 486), t)
        assert again == [Send(tx, ack.data, DEST)]  # re-ACKed, not passed up
    assert ctl.handle_timer(1.0 + TIMER_D - 0.01) == []
    assert tx.state is CtxState.COMPLETED
    assert ctl.handle_timer(1.0 + TIMER_D) == []
    assert tx.state is CtxState.TERMINATED and len(ctl) == 0
    assert ctl.receive_response(busy, 40.0) == [Unmatched(busy)]


def test_ack_of_non_2xx_follows_rfc3261_17_1_1_3() -> None:
    ctl = layer()
    tx = start(ctl)
    [ack, _up] = ctl.receive_response(response(tx.request, 486, to_tag="callee9"), 1.0)
    assert isinstance(ack, Send)
    msg = parse_message(ack.data)
    assert isinstance(msg, Request)
    assert msg.method == "ACK" and msg.uri == "sip:bob@192.0.2.20:5060"  # same R-URI
    assert msg.get_lines("via") == [f"SIP/2.0/UDP 192.0.2.1:5060;branch={BRANCH}"]  # top Via only
    assert msg.get_lines("route") == ["<sip:p2.example.com;lr>", "<sip:p3.example.com;lr>"]
    assert msg.get("from") == '"Alice" <sip:alice@example.com>;tag=a1'
    assert msg.to.tag == "callee9"  # To of the response
    assert msg.call_id == "c1@example.com"
    assert msg.cseq == (7, "ACK")
    assert msg.max_forwards == 70
    assert msg.body == b"" and msg.get("content-length") == "0"


def test_2xx_passed_up_every_time_while_accepted() -> None:
    ctl = layer()
    tx = start(ctl)
    sent = tx.request
    assert sent is not None
    assert [type(a) for a in ctl.receive_response(response(sent, 180), 0.2)] == [PassResponse]
    for t, tag in ((1.0, "b1"), (1.5, "b1"), (2.0, "fork2")):  # retransmission and a forked 2xx
        ok = response(sent, 200, to_tag=tag)
        assert ctl.receive_response(ok, t) == [PassResponse(tx, ok)]  # no ACK: end-to-end
    assert tx.state is CtxState.ACCEPTED
    assert ctl.receive_response(response(sent, 180), 2.1) == []
    assert ctl.receive_response(response(sent, 486), 2.2) == []
    assert ctl.next_deadline() == 1.0 + LONG  # timer M, armed on entering Accepted
    ctl.handle_timer(1.0 + LONG)
    assert tx.state is CtxState.TERMINATED
    # timer M ended it silently: nothing it pointed to is kept by its timer entries
    assert tx.request is None and tx.user is None and tx.data == b""
    late = response(sent, 200)
    assert ctl.receive_response(late, 40.0) == [Unmatched(late)]


def test_late_2xx_after_non_2xx_final_is_passed_up() -> None:
    ctl = layer()
    tx = start(ctl)
    ctl.receive_response(response(tx.request, 603), 1.0)
    ok = response(tx.request, 200, to_tag="other")
    assert ctl.receive_response(ok, 1.1) == [PassResponse(tx, ok)]
    assert tx.state is CtxState.COMPLETED


def test_timer_a_doubles_until_timer_b() -> None:
    ctl = layer()
    tx = start(ctl)
    sends: list[float] = []
    now = 0.0
    while tx.state is CtxState.CALLING:
        deadline = ctl.next_deadline()
        assert deadline is not None
        now = deadline
        for action in ctl.handle_timer(now):
            if isinstance(action, Send):
                assert action.data == tx.data
                sends.append(now)
            else:
                assert action == Timeout(tx, CtxEvent.TIMER_B)
    assert sends == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # A: T1, 2T1, 4T1 … (no cap)
    assert now == LONG and ctl.next_deadline() is None and len(ctl) == 0


def test_provisional_stops_timer_a_and_b() -> None:
    ctl = layer()
    tx = start(ctl)
    ctl.receive_response(response(tx.request, 100), 0.1)
    assert tx.state is CtxState.PROCEEDING
    assert ctl.next_deadline() is None  # A and B are stale; Proceeding waits for the TU
    assert ctl.handle_timer(1000.0) == []


# -- non-INVITE --------------------------------------------------------------------------

def _retransmission_times(ctl: ClientTransactionLayer, tx: ClientTransaction,
                          until: float, provisional_at: float | None = None) -> list[float]:
    times: list[float] = []
    while tx.state is not CtxState.TERMINATED:
        deadline = ctl.next_deadline()
        assert deadline is not None
        if provisional_at is not None and provisional_at < deadline:
            ctl.receive_response(response(tx.request, 100), provisional_at)
            provisional_at = None
            continue
        if deadline > until:
            break
        times += [deadline for a in ctl.handle_timer(deadline) if isinstance(a, Send)]
    return times


def test_timer_e_doubles_capped_at_t2_then_f() -> None:
    ctl = layer()
    tx = start(ctl, "OPTIONS")
    times = _retransmission_times(ctl, tx, 100.0)
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]  # 0.5, 1, 2, 4, then T2=4 each
    assert tx.state is CtxState.TERMINATED  # F at 64*T1


def test_timer_e_runs_at_t2_once_proceeding() -> None:
    ctl = layer()
    tx = start(ctl, "OPTIONS")
    times = _retransmission_times(ctl, tx, 20.0, provisional_at=0.6)
    # E fired at 0.5 (next at 1.5); the 100 at 0.6 leaves that pending entry,
    # after which every interval is T2.
    assert times == [0.5, 1.5, 5.5, 9.5, 13.5, 17.5]
    assert tx.state is CtxState.PROCEEDING


def test_non_invite_final_absorbs_retransmissions_until_k() -> None:
    ctl = layer()
    tx = start(ctl, "OPTIONS")
    ok = response(tx.request, 200)
    assert ctl.receive_response(ok, 1.0) == [PassResponse(tx, ok)]
    assert ctl.receive_response(response(tx.request, 200), 1.2) == []
    assert ctl.next_deadline() == 1.0 + T4
    ctl.handle_timer(1.0 + T4)
    assert tx.state is CtxState.TERMINATED


# -- reliable transports ---------------------------------------------------------------

def test_reliable_invite_has_no_timer_a_and_zero_d() -> None:
    ctl = layer()
    tx = start(ctl, reliable=True)
    assert ctl.next_deadline() == LONG  # only B
    actions = ctl.receive_response(response(tx.request, 486), 1.0)
    assert [type(a) for a in actions] == [Send, PassResponse]  # still ACKed
    assert tx.state is CtxState.TERMINATED and len(ctl) == 0  # D = 0
    assert ctl.next_deadline() is None


def test_reliable_non_invite_has_no_timer_e_and_zero_k() -> None:
    ctl = layer()
    tx = start(ctl, "MESSAGE", reliable=True)
    assert ctl.next_deadline() == LONG  # only F
    assert ctl.handle_timer(LONG - 0.01) == []
    ctl.receive_response(response(tx.request, 200), 1.0)
    assert tx.state is CtxState.TERMINATED and ctl.next_deadline() is None  # K = 0


def test_reliable_invite_timer_b_still_fires() -> None:
    ctl = layer()
    tx = start(ctl, reliable=True)
    assert ctl.handle_timer(LONG) == [Timeout(tx, CtxEvent.TIMER_B)]


# -- matching ------------------------------------------------------------------------

def test_response_matching_no_transaction_is_unmatched() -> None:
    ctl = layer()
    tx = start(ctl)
    other_branch = response(request("INVITE", "z9hG4bKother"), 180)
    other_method = response(request("OPTIONS", BRANCH), 200)  # CSeq method differs
    no_via = parse_message(b"SIP/2.0 200 OK\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(no_via, Response)
    for resp in (other_branch, other_method, no_via):
        assert ctl.receive_response(resp, 0.1) == [Unmatched(resp)]
    assert tx.state is CtxState.CALLING


def test_cancel_is_its_own_transaction_with_the_invite_branch() -> None:
    ctl = layer()
    invite_tx = start(ctl)
    ctl.receive_response(response(invite_tx.request, 180), 0.2)
    cancel = build_cancel(invite_tx.request, 'SIP;cause=200;text="Call completed elsewhere"')
    cancel_tx, actions = ctl.start(cancel, invite_tx.dest, False, 1.0)
    assert cancel_tx.key == (BRANCH, "CANCEL") and invite_tx.key == (BRANCH, "INVITE")
    assert len(ctl) == 2 and actions == [Send(cancel_tx, cancel.to_bytes(), DEST)]
    assert cancel.uri == invite_tx.request.uri and cancel.cseq == (7, "CANCEL")
    assert cancel.get_lines("via") == [invite_tx.request.top_via.raw]
    assert cancel.to.tag is None and cancel.from_.tag == "a1"
    assert cancel.get_lines("route") == invite_tx.request.get_lines("route")
    assert cancel.get("reason") == 'SIP;cause=200;text="Call completed elsewhere"'
    ok = response(cancel, 200)
    assert ctl.receive_response(ok, 1.1) == [PassResponse(cancel_tx, ok)]
    terminated = response(invite_tx.request, 487)
    acts = ctl.receive_response(terminated, 1.2)
    assert [type(a) for a in acts] == [Send, PassResponse]
    assert acts[1] == PassResponse(invite_tx, terminated)
    assert cancel_tx.state is CtxState.COMPLETED and invite_tx.state is CtxState.COMPLETED


def test_branches_come_from_the_injected_source() -> None:
    source = iter(["aaa", "bbb"])
    ctl = ClientTransactionLayer(branch_source=lambda: next(source))
    assert ctl.new_branch() == "z9hG4bKaaa"
    assert ctl.new_branch() == "z9hG4bKbbb"
    assert layer().new_branch().startswith("z9hG4bK") and len(layer().new_branch()) == 23


def test_start_refuses_ack_bad_branch_and_duplicates() -> None:
    ctl = layer()
    with pytest.raises(ValueError, match="ACK"):
        ctl.start(request("ACK"), DEST, False, 0.0)
    with pytest.raises(ValueError, match="magic cookie"):
        ctl.start(request("INVITE", "1234"), DEST, False, 0.0)
    start(ctl)
    with pytest.raises(ValueError, match="exists"):
        ctl.start(request(), DEST, False, 0.0)


def test_terminate_is_silent_and_idempotent() -> None:
    ctl = layer()
    tx = start(ctl)
    ctl.terminate(tx)
    ctl.terminate(tx)
    assert len(ctl) == 0 and ctl.next_deadline() is None and ctl.handle_timer(100.0) == []
    assert "TERMINATED" in repr(tx)


def test_many_transactions_fire_in_time_order() -> None:
    ctl = layer()
    txs = [start(ctl, "OPTIONS", reliable=True, now=float(i), branch=f"z9hG4bK{i}")
           for i in range(5)]
    fired = [a for t in range(5) for a in ctl.handle_timer(LONG + t)]
    assert fired == [Timeout(tx, CtxEvent.TIMER_F) for tx in txs]
