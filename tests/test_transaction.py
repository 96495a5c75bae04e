"""Server transactions driven by a fake clock: every call is a pure function call."""

from __future__ import annotations

import ast
import gc
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sipyard
from sipyard.sip.errors import TransactionError
from sipyard.sip.transaction import (
    INVITE_TRANSITIONS,
    NON_INVITE_TRANSITIONS,
    Outcome,
    ServerTransaction,
    TransactionLayer,
    TxEvent,
    TxKey,
    TxState,
    make_key,
)

T1, T2, T4 = 0.5, 4.0, 5.0
LONG = 64 * T1  # timers H, J and L
SENT_BY = "192.0.2.1:5060"
DEST = ("192.0.2.1", 5060)
RESP_1XX = b"SIP/2.0 180 Ringing\r\n\r\n"
RESP_2XX = b"SIP/2.0 200 OK\r\n\r\n"
RESP_486 = b"SIP/2.0 486 Busy Here\r\n\r\n"
STATUS_OF = {TxEvent.SEND_1XX: 180, TxEvent.SEND_2XX: 200, TxEvent.SEND_3XX_6XX: 486}
BYTES_OF = {180: RESP_1XX, 200: RESP_2XX, 486: RESP_486}


def fresh(data: bytes) -> bytes:
    """A new bytes object (not an interned constant), so `is` proves the cache hands it back."""
    return bytes(bytearray(data))


def key(method: str, branch: str = "z9hG4bK-abc") -> TxKey:
    return make_key(branch, SENT_BY, method)


def new_tx(
    layer: TransactionLayer,
    method: str,
    *,
    reliable: bool = False,
    now: float = 0.0,
    branch: str = "z9hG4bK-abc",
) -> ServerTransaction:
    outcome, tx, data = layer.receive_request(key(method, branch), method, reliable, DEST, now)
    assert outcome is Outcome.NEW and tx is not None and data is None
    return tx


def drive(layer: TransactionLayer, method: str, state: TxState) -> ServerTransaction:
    """A UDP transaction of ``method`` brought to ``state`` at t=0 through the public API."""
    tx = new_tx(layer, method)
    if method == "INVITE":
        if state is TxState.COMPLETED:
            layer.send_response(tx, 486, RESP_486, 0.0)
        elif state is TxState.CONFIRMED:
            layer.send_response(tx, 486, RESP_486, 0.0)
            assert layer.receive_request(tx.key, "ACK", False, DEST, 0.0)[0] is Outcome.ACK_ABSORBED
        elif state is TxState.ACCEPTED:
            layer.send_response(tx, 200, RESP_2XX, 0.0)
    elif state is TxState.PROCEEDING:
        layer.send_response(tx, 100, RESP_1XX, 0.0)
    elif state is TxState.COMPLETED:
        layer.send_response(tx, 200, RESP_2XX, 0.0)
    assert tx.state is state
    return tx


TIMER_AT = {  # when each timer fires for a tx driven to its state at t=0
    TxEvent.TIMER_G: T1,
    TxEvent.TIMER_H: LONG,
    TxEvent.TIMER_I: T4,
    TxEvent.TIMER_J: LONG,
    TxEvent.TIMER_L: LONG,
}


def apply(layer: TransactionLayer, tx: ServerTransaction, event: TxEvent) -> None:
    if event is TxEvent.REQUEST:
        outcome, got, _ = layer.receive_request(tx.key, tx.method, False, DEST, 0.0)
        assert outcome is Outcome.RETRANSMISSION and got is tx
    elif event is TxEvent.ACK:
        absorbs = tx.state in (TxState.COMPLETED, TxState.CONFIRMED)  # our non-2xx final
        outcome, got, _ = layer.receive_request(tx.key, "ACK", False, DEST, 0.0)
        assert got is tx
        assert outcome is (Outcome.ACK_ABSORBED if absorbs else Outcome.ACK_UNMATCHED)
    elif event in STATUS_OF:
        status = STATUS_OF[event]
        assert layer.send_response(tx, status, BYTES_OF[status], 0.0) is BYTES_OF[status]
    elif event is TxEvent.ABORT:
        layer.terminate(tx)
    else:
        at = TIMER_AT[event]
        before = tx.state
        g_armed = tx.method == "INVITE" and before is TxState.COMPLETED
        assert layer.next_deadline() == (T1 if g_armed else at)
        layer.handle_timer(at - 1e-9)  # not yet (G may fire meanwhile: a self-loop)
        assert tx.state is before
        fired = layer.handle_timer(at)
        if event is TxEvent.TIMER_G:
            assert fired == [(tx, RESP_486)]
        elif event is TxEvent.TIMER_H:
            assert fired == [(tx, None)]
        else:
            assert fired == []


ROWS = [("INVITE", s, e, n) for (s, e), n in INVITE_TRANSITIONS.items()] + [
    ("OPTIONS", s, e, n) for (s, e), n in NON_INVITE_TRANSITIONS.items()
]


@pytest.mark.parametrize(
    ("method", "state", "event", "new"), ROWS, ids=[f"{m}-{s.name}-{e.name}" for m, s, e, _ in ROWS]
)
def test_every_table_row(method: str, state: TxState, event: TxEvent, new: TxState) -> None:
    layer = TransactionLayer(t1=T1, t2=T2, t4=T4)
    tx = drive(layer, method, state)
    apply(layer, tx, event)
    assert tx.state is new
    assert len(layer) == (0 if new is TxState.TERMINATED else 1)
    assert (layer.get(tx.key) is tx) == (new is not TxState.TERMINATED)


ILLEGAL_SENDS = [
    (m, s, e)
    for m, table, states in (
        (
            "INVITE",
            INVITE_TRANSITIONS,
            (TxState.PROCEEDING, TxState.COMPLETED, TxState.CONFIRMED, TxState.ACCEPTED),
        ),
        (
            "OPTIONS",
            NON_INVITE_TRANSITIONS,
            (TxState.TRYING, TxState.PROCEEDING, TxState.COMPLETED),
        ),
    )
    for s in states
    for e in STATUS_OF
    if (s, e) not in table
]


@pytest.mark.parametrize(
    ("method", "state", "event"),
    ILLEGAL_SENDS,
    ids=[f"{m}-{s.name}-{e.name}" for m, s, e in ILLEGAL_SENDS],
)
def test_illegal_send_raises_naming_state_and_event(
    method: str, state: TxState, event: TxEvent
) -> None:
    layer = TransactionLayer(t1=T1, t2=T2, t4=T4)
    tx = drive(layer, method, state)
    cached = tx.last_response
    with pytest.raises(
        TransactionError, match=rf"state {state.name} cannot take event {event.name}"
    ):
        layer.send_response(tx, STATUS_OF[event], b"nope", 1.0)
    assert tx.state is state and tx.last_response is cached  # nothing changed


def test_illegal_sends_cover_the_rfc_rules() -> None:
    assert ("INVITE", TxState.COMPLETED, TxEvent.SEND_2XX) in ILLEGAL_SENDS
    assert ("INVITE", TxState.ACCEPTED, TxEvent.SEND_3XX_6XX) in ILLEGAL_SENDS
    assert ("INVITE", TxState.ACCEPTED, TxEvent.SEND_1XX) in ILLEGAL_SENDS
    assert ("OPTIONS", TxState.COMPLETED, TxEvent.SEND_1XX) in ILLEGAL_SENDS


def test_send_on_terminated_raises() -> None:
    layer = TransactionLayer()
    tx = new_tx(layer, "REGISTER", reliable=True)
    layer.send_response(tx, 200, RESP_2XX, 0.0)  # reliable: J = 0, freed at once
    with pytest.raises(
        TransactionError, match="non-INVITE .* state TERMINATED cannot take event SEND_2XX"
    ):
        layer.send_response(tx, 200, RESP_2XX, 0.0)


def test_ack_on_non_invite_transaction_raises() -> None:
    layer = TransactionLayer()
    tx = new_tx(layer, "OPTIONS")
    with pytest.raises(TransactionError, match="TRYING cannot take event ACK"):
        layer.receive_request(tx.key, "ACK", False, DEST, 0.0)  # a key made by hand, not make_key


@pytest.mark.parametrize("status", [0, 99, 700, 1000])
def test_bad_status_code(status: int) -> None:
    layer = TransactionLayer()
    tx = new_tx(layer, "OPTIONS")
    with pytest.raises(ValueError):
        layer.send_response(tx, status, b"x", 0.0)
    assert tx.state is TxState.TRYING


# -- keys -----------------------------------------------------------------


def test_make_key_rfc3261() -> None:
    assert make_key("z9hG4bK776", SENT_BY, "REGISTER") == ("z9hG4bK776", SENT_BY, "REGISTER")
    assert make_key("z9hG4bK776", SENT_BY, "ACK") == ("z9hG4bK776", SENT_BY, "INVITE")
    assert make_key("z9hG4bK776", SENT_BY, "CANCEL").method == "CANCEL"
    k = make_key("z9hG4bK776", SENT_BY, "INVITE")
    assert type(k) is TxKey and k.branch == "z9hG4bK776" and k.sent_by == SENT_BY
    assert hash(k) == hash(TxKey("z9hG4bK776", SENT_BY, "INVITE"))


FALLBACK = (
    "sip:bob@example.com",
    "fromtag1",
    "call-1@host",
    "1",
    "SIP/2.0/UDP 192.0.2.1;branch=x1",
)


@pytest.mark.parametrize("branch", [None, "", "z9hG4bK", "x1", "Z9HG4BKabc"])
def test_make_key_rfc2543_fallback(branch: str | None) -> None:
    k = make_key(branch, SENT_BY, "INVITE", fallback=FALLBACK)
    assert k.branch == "\x00" + "\x00".join(FALLBACK)
    # The ACK (which carries our To tag, not in the fallback) and the CANCEL find the INVITE.
    assert make_key(branch, SENT_BY, "ACK", fallback=FALLBACK) == k
    cancel = make_key(branch, SENT_BY, "CANCEL", fallback=FALLBACK)
    assert cancel != k and cancel.branch == k.branch
    # Another request differs in some field.
    assert make_key(branch, SENT_BY, "INVITE", fallback=(*FALLBACK[:3], "2", FALLBACK[4])) != k


def test_fallback_keys_never_collide_with_cookie_keys() -> None:
    assert make_key(None, SENT_BY, "INVITE", fallback=("z9hG4bKabc",)) != make_key(
        "z9hG4bKabc", SENT_BY, "INVITE"
    )
    # Without a fallback the bare branch is the best effort: distinct branches stay distinct.
    assert make_key("abc", SENT_BY, "INVITE") != make_key("abd", SENT_BY, "INVITE")
    assert make_key("abc", SENT_BY, "INVITE").branch.startswith("\x00")


def test_rfc2543_transaction_matching_end_to_end() -> None:
    layer = TransactionLayer()
    inv = make_key(None, SENT_BY, "INVITE", fallback=FALLBACK)
    outcome, tx, _ = layer.receive_request(inv, "INVITE", False, DEST, 0.0)
    assert outcome is Outcome.NEW and tx is not None
    assert layer.receive_request(
        make_key(None, SENT_BY, "INVITE", fallback=FALLBACK), "INVITE", False, DEST, 0.1
    )[:2] == (Outcome.RETRANSMISSION, tx)
    assert layer.find_invite(make_key(None, SENT_BY, "CANCEL", fallback=FALLBACK)) is tx
    layer.send_response(tx, 404, RESP_486, 0.2)
    ack = make_key(None, SENT_BY, "ACK", fallback=FALLBACK)
    assert layer.receive_request(ack, "ACK", False, DEST, 0.3) == (Outcome.ACK_ABSORBED, tx, None)


def test_same_branch_other_sent_by_is_another_transaction() -> None:
    layer = TransactionLayer()
    a = layer.receive_request(
        make_key("z9hG4bK1", "a.example:5060", "REGISTER"), "REGISTER", False, DEST, 0.0
    )
    b = layer.receive_request(
        make_key("z9hG4bK1", "b.example:5060", "REGISTER"), "REGISTER", False, DEST, 0.0
    )
    assert a[0] is b[0] is Outcome.NEW and a[1] is not b[1] and len(layer) == 2


# -- retransmissions and ACK ----------------------------------------------


def test_non_invite_retransmissions_get_identical_cached_bytes() -> None:
    layer = TransactionLayer()
    tx = new_tx(layer, "REGISTER")
    assert layer.receive_request(tx.key, "REGISTER", False, DEST, 0.1) == (
        Outcome.RETRANSMISSION,
        tx,
        None,
    )
    trying = fresh(b"SIP/2.0 100 Trying\r\n\r\n")
    layer.send_response(tx, 100, trying, 0.2)
    assert layer.receive_request(tx.key, "REGISTER", False, DEST, 0.3)[2] is trying
    final = fresh(b"SIP/2.0 200 OK\r\nContact: <sip:a@b>\r\n\r\n")
    assert layer.send_response(tx, 200, final, 0.4) is final
    for t in (0.5, 5.0, 32.0):
        assert layer.receive_request(tx.key, "REGISTER", False, DEST, t) == (
            Outcome.RETRANSMISSION,
            tx,
            final,
        )
    assert (tx.last_status, tx.dest, tx.reliable) == (200, DEST, False)


def test_invite_retransmissions_per_state() -> None:
    layer = TransactionLayer()
    tx = new_tx(layer, "INVITE")
    assert tx.state is TxState.PROCEEDING  # INVITE starts in Proceeding
    assert layer.receive_request(tx.key, "INVITE", False, DEST, 0.0)[2] is None
    layer.send_response(tx, 100, RESP_1XX, 0.0)
    ringing = fresh(b"SIP/2.0 180 Ringing\r\nX: 2\r\n\r\n")
    layer.send_response(tx, 180, ringing, 0.1)
    # The most recent provisional is resent.
    assert layer.receive_request(tx.key, "INVITE", False, DEST, 0.2)[2] is ringing
    layer.send_response(tx, 486, RESP_486, 0.3)
    assert layer.receive_request(tx.key, "INVITE", False, DEST, 0.4)[2] is RESP_486
    layer.receive_request(tx.key, "ACK", False, DEST, 0.5)
    assert layer.receive_request(tx.key, "INVITE", False, DEST, 0.6)[2] is RESP_486  # Confirmed


def test_accepted_absorbs_invite_and_passes_ack_up() -> None:
    layer = TransactionLayer()
    tx = new_tx(layer, "INVITE")
    layer.send_response(tx, 200, RESP_2XX, 0.0)
    assert tx.state is TxState.ACCEPTED
    # RFC 6026 §7.1: INVITE retransmissions are absorbed; the TU resends its own 2xx.
    assert layer.receive_request(tx.key, "INVITE", False, DEST, 0.5) == (
        Outcome.RETRANSMISSION,
        tx,
        None,
    )
    again = fresh(RESP_2XX)
    assert layer.send_response(tx, 200, again, 1.0) is again and tx.state is TxState.ACCEPTED
    assert layer.receive_request(tx.key, "ACK", False, DEST, 1.1) == (
        Outcome.ACK_UNMATCHED,
        tx,
        None,
    )
    # No 2xx retransmission by the transaction: only timer L is pending.
    assert layer.handle_timer(1.2) == [] and layer.next_deadline() == LONG
    assert layer.handle_timer(LONG) == [] and len(layer) == 0


def test_ack_absorbed_stops_g_and_h_and_arms_i() -> None:
    layer = TransactionLayer()
    tx = new_tx(layer, "INVITE")
    layer.send_response(tx, 486, RESP_486, 0.0)
    assert layer.handle_timer(T1) == [(tx, RESP_486)]
    assert layer.receive_request(tx.key, "ACK", False, DEST, 1.0) == (
        Outcome.ACK_ABSORBED,
        tx,
        None,
    )
    assert tx.state is TxState.CONFIRMED
    assert layer.next_deadline() == 1.0 + T4  # stale G and H entries are skipped
    assert layer.receive_request(tx.key, "ACK", False, DEST, 2.0) == (
        Outcome.ACK_ABSORBED,
        tx,
        None,
    )
    assert layer.handle_timer(1.0 + T4 - 0.01) == [] and len(layer) == 1
    assert layer.handle_timer(1.0 + T4) == [] and len(layer) == 0
    assert layer.next_deadline() is None and tx.state is TxState.TERMINATED
    assert layer.handle_timer(100.0) == []  # no late G/H for the freed tx


def test_unmatched_acks() -> None:
    layer = TransactionLayer()
    assert layer.receive_request(key("ACK"), "ACK", False, DEST, 0.0) == (
        Outcome.ACK_UNMATCHED,
        None,
        None,
    )
    assert len(layer) == 0  # an ACK never creates a transaction
    tx = new_tx(layer, "INVITE")
    # A stray ACK before any final is not the transaction's to absorb.
    assert layer.receive_request(tx.key, "ACK", False, DEST, 0.0) == (
        Outcome.ACK_UNMATCHED,
        tx,
        None,
    )
    assert tx.state is TxState.PROCEEDING
    # The ACK of a 2xx carries a new branch: it matches nothing.
    layer.send_response(tx, 200, RESP_2XX, 0.0)
    assert layer.receive_request(key("ACK", "z9hG4bK-new"), "ACK", False, DEST, 0.1) == (
        Outcome.ACK_UNMATCHED,
        None,
        None,
    )


# -- timers ---------------------------------------------------------------


def run_until_quiet(layer: TransactionLayer) -> list[tuple[float, ServerTransaction, bytes | None]]:
    """Step the fake clock from deadline to deadline, as the adapter's call_at would."""
    fired = []
    while (deadline := layer.next_deadline()) is not None:
        fired += [(deadline, tx, data) for tx, data in layer.handle_timer(deadline)]
    return fired


def test_timer_g_doubles_up_to_t2_then_h_gives_up() -> None:
    layer = TransactionLayer(t1=T1, t2=T2, t4=T4)
    tx = new_tx(layer, "INVITE")
    layer.send_response(tx, 486, RESP_486, 0.0)
    fired = run_until_quiet(layer)
    g = [t for t, _, data in fired if data is not None]
    assert all(data is RESP_486 for _, _, data in fired[:-1])
    assert g == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert [b - a for a, b in zip([0.0, *g], g, strict=False)] == [0.5, 1, 2, 4, 4, 4, 4, 4, 4, 4]
    assert fired[-1] == (LONG, tx, None)  # H: reported once, with no bytes
    assert tx.state is TxState.TERMINATED and len(layer) == 0


def test_timer_g_with_other_t1_t2() -> None:
    layer = TransactionLayer(t1=0.1, t2=0.8, t4=1.0)
    tx = new_tx(layer, "INVITE", now=10.0)
    layer.send_response(tx, 603, RESP_486, 10.0)
    fired = run_until_quiet(layer)
    assert [round(t - 10.0, 6) for t, _, d in fired[:6]] == [0.1, 0.3, 0.7, 1.5, 2.3, 3.1]
    assert round(fired[-1][0] - 10.0, 6) == 6.4 and fired[-1][2] is None


def test_first_and_later_timer_g_firings_interleave_in_time_order() -> None:
    """First firings (a FIFO) and doubled ones (a heap) are due in one timeline."""
    layer = TransactionLayer(t1=0.5, t2=4.0, t4=5.0)
    a = new_tx(layer, "INVITE", branch="z9hG4bKa")
    layer.send_response(a, 486, RESP_486, 0.0)  # G at 0.5, then 1.5, 3.5
    b = new_tx(layer, "INVITE", branch="z9hG4bKb", now=0.8)
    layer.send_response(b, 486, RESP_486, 0.8)  # G at 1.3
    c = new_tx(layer, "INVITE", branch="z9hG4bKc", now=0.9)
    layer.send_response(c, 486, RESP_486, 0.9)  # G at 1.4, but ACKed before
    layer.receive_request(c.key, "ACK", False, DEST, 1.0)
    assert [t for t, _ in layer.handle_timer(0.5)] == [a]
    assert layer.next_deadline() == 1.3
    assert [t for t, _ in layer.handle_timer(1.3)] == [b]
    assert layer.next_deadline() == 1.5  # c's entry is stale and dropped
    assert [t for t, _ in layer.handle_timer(1.5)] == [a]
    assert layer.next_deadline() == 2.3  # b's doubled interval


def test_h_and_g_due_together_report_only_h() -> None:
    layer = TransactionLayer()
    tx = new_tx(layer, "INVITE")
    layer.send_response(tx, 486, RESP_486, 0.0)
    assert layer.handle_timer(1000.0) == [(tx, None)]  # adapter woke up late: no burst
    assert len(layer) == 0 and layer.next_deadline() is None


@pytest.mark.parametrize(
    ("method", "status", "at"),
    [("OPTIONS", 200, LONG), ("OPTIONS", 404, LONG), ("INVITE", 200, LONG)],
)
def test_j_and_l_free_silently(method: str, status: int, at: float) -> None:
    layer = TransactionLayer()
    tx = new_tx(layer, method, now=3.0)
    layer.send_response(tx, status, BYTES_OF.get(status, RESP_486), 3.0)
    assert layer.next_deadline() == 3.0 + at
    assert layer.handle_timer(3.0 + at - 0.001) == [] and len(layer) == 1
    assert layer.handle_timer(3.0 + at) == [] and len(layer) == 0
    # A late retransmission now is a new request again.
    assert layer.receive_request(tx.key, method, False, DEST, 40.0)[0] is Outcome.NEW


def test_provisional_only_arms_nothing() -> None:
    layer = TransactionLayer()
    for i, method in enumerate(("INVITE", "OPTIONS")):
        tx = new_tx(layer, method, branch=f"z9hG4bK{i}")
        layer.send_response(tx, 180, RESP_1XX, 0.0)
    assert layer.next_deadline() is None and layer.handle_timer(1e9) == [] and len(layer) == 2


def test_many_transactions_expire_in_order() -> None:
    layer = TransactionLayer()
    txs = []
    for i in range(10):
        tx = new_tx(layer, "REGISTER", now=float(i), branch=f"z9hG4bK{i}")
        layer.send_response(tx, 200, RESP_2XX, float(i))
        txs.append(tx)
    for i in range(10):
        assert layer.next_deadline() == LONG + i
        layer.handle_timer(LONG + i)
        assert len(layer) == 9 - i and txs[i].state is TxState.TERMINATED
        assert all(t.state is TxState.COMPLETED for t in txs[i + 1 :])


def test_t4_equal_to_64_t1_shares_one_queue() -> None:
    layer = TransactionLayer(t1=0.5, t4=32.0)
    a = new_tx(layer, "INVITE", branch="z9hG4bKa")
    layer.send_response(a, 486, RESP_486, 0.0)  # H at 32
    layer.receive_request(a.key, "ACK", False, DEST, 10.0)  # I at 42 in the same FIFO
    assert len(layer._queues) == 1
    assert layer.handle_timer(32.0) == [] and len(layer) == 1  # H and G entries are stale
    assert layer.next_deadline() == 42.0
    layer.handle_timer(42.0)
    assert len(layer) == 0


# -- reliable transports --------------------------------------------------


def test_reliable_non_invite_freed_at_final_without_timers() -> None:
    layer = TransactionLayer()
    tx = new_tx(layer, "REGISTER", reliable=True)
    layer.send_response(tx, 100, RESP_1XX, 0.0)
    assert len(layer) == 1
    layer.send_response(tx, 200, RESP_2XX, 0.0)
    assert len(layer) == 0 and tx.state is TxState.TERMINATED
    assert layer.next_deadline() is None
    assert not layer._q_long and not layer._q_g and not layer._g_heap  # the timer structures were not touched


def test_reliable_invite_no_g_and_ack_frees_at_once() -> None:
    layer = TransactionLayer()
    tx = new_tx(layer, "INVITE", reliable=True)
    layer.send_response(tx, 486, RESP_486, 0.0)
    assert layer.next_deadline() == LONG and not layer._q_g and not layer._g_heap  # H, no G
    assert layer.receive_request(tx.key, "ACK", True, DEST, 1.0) == (Outcome.ACK_ABSORBED, tx, None)
    assert len(layer) == 0 and layer.next_deadline() is None


def test_reliable_invite_h_still_fires() -> None:
    layer = TransactionLayer()
    tx = new_tx(layer, "INVITE", reliable=True)
    layer.send_response(tx, 486, RESP_486, 0.0)
    assert run_until_quiet(layer) == [(LONG, tx, None)]


def test_reliable_invite_2xx_keeps_l() -> None:
    layer = TransactionLayer()
    tx = new_tx(layer, "INVITE", reliable=True)
    layer.send_response(tx, 200, RESP_2XX, 0.0)
    assert tx.state is TxState.ACCEPTED and layer.next_deadline() == LONG


# -- CANCEL and app-driven termination ------------------------------------


def test_cancel_has_its_own_transaction_and_finds_the_invite() -> None:
    layer = TransactionLayer()
    inv = new_tx(layer, "INVITE", branch="z9hG4bKc1")
    layer.send_response(inv, 100, RESP_1XX, 0.0)
    cancel_key = make_key("z9hG4bKc1", SENT_BY, "CANCEL")
    outcome, cancel, _ = layer.receive_request(cancel_key, "CANCEL", False, DEST, 1.0)
    assert outcome is Outcome.NEW and cancel is not None and cancel is not inv and len(layer) == 2
    assert layer.find_invite(cancel_key) is inv
    layer.send_response(cancel, 200, RESP_2XX, 1.0)
    layer.send_response(inv, 487, RESP_486, 1.0)
    assert layer.receive_request(cancel_key, "CANCEL", False, DEST, 1.1)[2] is RESP_2XX
    assert layer.find_invite(make_key("z9hG4bKother", SENT_BY, "CANCEL")) is None
    assert layer.find_invite(make_key("z9hG4bKc1", "elsewhere:5060", "CANCEL")) is None
    layer.terminate(inv)
    assert layer.find_invite(cancel_key) is None and len(layer) == 1


def test_terminate_frees_and_is_idempotent() -> None:
    layer = TransactionLayer()
    tx = new_tx(layer, "INVITE")
    layer.send_response(tx, 486, RESP_486, 0.0)
    layer.terminate(tx)
    assert tx.state is TxState.TERMINATED and len(layer) == 0
    layer.terminate(tx)  # e.g. after a timer already freed it
    assert layer.handle_timer(1000.0) == [] and layer.next_deadline() is None
    with pytest.raises(TransactionError, match="TERMINATED"):
        layer.send_response(tx, 486, RESP_486, 0.0)


def test_user_slot_and_repr() -> None:
    layer = TransactionLayer()
    tx = new_tx(layer, "REGISTER")
    tx.user = {"seq": 7}
    assert layer.receive_request(tx.key, "REGISTER", False, DEST, 0.0)[1].user == {"seq": 7}  # type: ignore[union-attr]
    assert "REGISTER" in repr(tx) and "TRYING" in repr(tx)
    with pytest.raises(AttributeError):
        tx.other = 1  # type: ignore[attr-defined]


# -- model-based check: random traffic keeps the invariants ---------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["req", "ack", "1xx", "2xx", "4xx", "tick", "abort"]),
        st.integers(0, 5),  # which branch
        st.sampled_from(["INVITE", "OPTIONS"]),
        st.booleans(),  # reliable
        st.floats(0, 8),  # time step
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_random_traffic_invariants(script: list[tuple[str, int, str, bool, float]]) -> None:
    layer = TransactionLayer()
    now = 0.0
    seen: dict[TxKey, ServerTransaction] = {}
    for op, n, method, reliable, step in script:
        k = make_key(f"z9hG4bK{n}", SENT_BY, method)
        tx = layer.get(k)
        if op == "req":
            outcome, got, data = layer.receive_request(k, method, reliable, DEST, now)
            assert (outcome is Outcome.NEW) == (tx is None)
            if tx is not None:
                assert got is tx and (data is None or data is tx.last_response)
            assert got is not None
            seen[k] = got
        elif op == "ack":
            outcome, got, _ = layer.receive_request(
                make_key(f"z9hG4bK{n}", SENT_BY, "ACK"), "ACK", reliable, DEST, now
            )
            if outcome is Outcome.ACK_ABSORBED:
                assert got is not None and got.state in (TxState.CONFIRMED, TxState.TERMINATED)
        elif op in ("1xx", "2xx", "4xx") and tx is not None:
            status = {"1xx": 180, "2xx": 200, "4xx": 404}[op]
            try:
                layer.send_response(tx, status, b"r", now)
            except TransactionError:
                assert tx.state in (TxState.COMPLETED, TxState.CONFIRMED, TxState.ACCEPTED)
        elif op == "tick":
            now += step
            for t, data in layer.handle_timer(now):
                assert data is None or (t.state is TxState.COMPLETED and t.invite)
        elif op == "abort" and tx is not None:
            layer.terminate(tx)
        live = [t for t in seen.values() if t.state is not TxState.TERMINATED]
        assert len(layer) == len(live)
        assert all(layer.get(t.key) is t for t in live)
        deadline = layer.next_deadline()
        assert deadline is None or deadline > now  # every due timer has been handled
        assert (deadline is None) == all(
            t.state in (TxState.TRYING, TxState.PROCEEDING) for t in live
        )
    # Whatever happened, every answered transaction is gone once the timers have run out.
    layer.handle_timer(now + 64 * T1 + T4 + 1)
    live = [t for t in seen.values() if t.state is not TxState.TERMINATED]
    assert all(t.state in (TxState.TRYING, TxState.PROCEEDING) for t in live)
    assert len(layer) == len(live) and layer.next_deadline() is None


# -- memory and speed -----------------------------------------------------


def test_memory_returns_to_baseline_after_100k_expire() -> None:
    n = 100_000
    layer = TransactionLayer()
    pad = b"x" * 366
    # Keys and 400-byte responses are built before tracing (it makes allocation ~5x
    # slower); from then on the layer holds the only reference to each.
    keys = [make_key(f"z9hG4bK{i:010d}", SENT_BY, "REGISTER") for i in range(n)]
    responses = [b"SIP/2.0 200 OK\r\nCSeq: %010d\r\n" % i + pad for i in range(n)]
    assert len(responses[0]) == 400
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        receive, send = layer.receive_request, layer.send_response
        for i in range(n):
            k, keys[i] = keys[i], None  # type: ignore[call-overload]
            _, tx, _ = receive(k, "REGISTER", False, DEST, 0.0)
            data, responses[i] = responses[i], None  # type: ignore[call-overload]
            send(tx, 200, data, 0.0)  # type: ignore[arg-type]
        del k, tx, data
        grown = tracemalloc.get_traced_memory()[0] - base
        assert len(layer) == n and grown > n * 100  # transactions, dict and timer entries
        assert layer.handle_timer(LONG - 0.1) == [] and len(layer) == n
        assert layer.handle_timer(LONG + 0.1) == []
        assert len(layer) == 0 and layer.next_deadline() is None
        del keys, responses
        gc.collect()
        left = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # What may remain: deque's cache of <= 16 free blocks (~8 KiB) and the new empty dict.
    assert left < 16 * 1024, f"{left} bytes still held after expiry (grew by {grown})"


def test_benchmark_receive_and_send() -> None:
    """Prints µs per operation (run with -s); asserts only that the work was done.

    Best of three rounds, garbage collector off while timing: the number is the
    layer's own cost, not the noise of a shared machine or of gc passes (the app
    tunes gc for the whole process).
    """
    n = 20_000
    keys = [make_key(f"z9hG4bK{i}", SENT_BY, "REGISTER") for i in range(n)]
    data = b"x" * 400
    best = [float("inf")] * 3
    gc.collect()
    gc.disable()
    try:
        for _round in range(3):
            layer = TransactionLayer()
            receive, send = layer.receive_request, layer.send_response
            t0 = time.perf_counter()
            for k in keys:
                _, tx, _ = receive(k, "REGISTER", False, DEST, 0.0)
                send(tx, 200, data, 0.0)  # type: ignore[arg-type]
            t1 = time.perf_counter()
            for k in keys:
                receive(k, "REGISTER", False, DEST, 1.0)
            t2 = time.perf_counter()
            layer.handle_timer(LONG)
            t3 = time.perf_counter()
            assert len(layer) == 0
            for j, dt in enumerate((t1 - t0, t2 - t1, t3 - t2)):
                best[j] = min(best[j], dt / n * 1e6)
    finally:
        gc.enable()
    print(
        f"\n[transaction] receive_request+send_response: {best[0]:.2f} µs/pair, "
        f"retransmission: {best[1]:.2f} µs, expiry: {best[2]:.2f} µs/tx"
    )


def test_core_imports_no_io_or_clock() -> None:
    # the source, also when a mypyc build of the module is what got imported (a compiled
    # module's __file__ depends on the import order of its group; the package's does not)
    tree = ast.parse((Path(sipyard.__file__).parent / "sip" / "transaction.py").read_text())
    names = {
        a.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for a in node.names
    }
    names |= {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert not names & {"asyncio", "socket", "time", "selectors", "threading"}
