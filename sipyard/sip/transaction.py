"""Server transactions (RFC 3261 §17.2, with the RFC 6026 fixes), sans-IO.

The layer sits between framing/parsing and the app. It answers request
retransmissions from a cache so a retransmitted REGISTER or INVITE never
reaches the app twice, absorbs the ACK of a non-2xx final response, and
retransmits INVITE finals over UDP until the ACK comes (timer G) or the
layer gives up (timer H).

It knows nothing of messages: the caller hands it a :class:`TxKey` (built with
:func:`make_key` from the top Via, or from the RFC 2543 fallback fields) and
the response bytes it wants sent. That keeps it independent of the parser and
cheap: it sees every request at 10 000+/s.

No clock is read here. Every call takes ``now`` (seconds, monotonic, any
epoch); :meth:`TransactionLayer.next_deadline` says when
:meth:`TransactionLayer.handle_timer` must next be called, so an adapter keeps
a single ``loop.call_at`` and re-arms it only when the deadline changes.

State logic lives in two tables keyed by ``(state, event)`` — as in h11's
``_state.py`` — and one function beside them for what a table cannot say
(which timers a state arms, reliable-transport shortcuts, freeing). A pair
missing from the table is an illegal transition and raises
:class:`~sipyard.sip.errors.TransactionError` naming both.

Timers. H, J and L last 64*T1 and I lasts T4 for every transaction, so they go
into one FIFO deque per duration: pushes happen in time order, expiry pops from
the left while due. Cancelling is lazy: an entry remembers the state that armed
it and is stale once the transaction has left that state (a transaction enters
each state at most once, so this is exact). Timer G's first interval is T1 for
every transaction, so its first firings have a FIFO of their own too; only the
doubled intervals after that (an ACK that did not come within T1) live in a heap.
Over reliable transports I and J are zero, so the
transaction is freed at once without touching the timer structures, and G is
never armed.

What the app must still do (the layer builds no messages): send the 100
(Trying) to an INVITE when it cannot answer within 200 ms (§17.2.1), answer or
:meth:`~TransactionLayer.terminate` every new transaction (Trying and
Proceeding have no timer, by the RFC), and retransmit its own 2xx to INVITE
(§13.3.1.4) through :meth:`~TransactionLayer.send_response` while Accepted.
For RFC 2543 peers the ACK's To tag is not compared with ours (the key leaves
the To tag out); the app may check it against ``last_response`` if it cares.

Choices where the RFCs leave room: a retransmitted INVITE in Accepted gets
no bytes back (RFC 6026 §7.1: absorbed, the TU resends its 2xx); in Confirmed
it gets the final again (harmless, the peer has it). A stray ACK before any
final, or the ACK of a 2xx, comes back ACK_UNMATCHED for the app to judge.
``now`` must not go backwards (the FIFOs rely on time order).
"""

from __future__ import annotations

import heapq
import sys
from collections import deque
from enum import Enum, IntEnum
from itertools import count
from typing import NamedTuple

from sipyard.sip.errors import TransactionError

__all__ = [
    "MAGIC_COOKIE",
    "TxKey",
    "make_key",
    "TxState",
    "TxEvent",
    "INVITE_TRANSITIONS",
    "NON_INVITE_TRANSITIONS",
    "ServerTransaction",
    "Outcome",
    "TransactionLayer",
]

MAGIC_COOKIE = "z9hG4bK"
_COOKIE_LEN = len(MAGIC_COOKIE)


class TxKey(NamedTuple):
    """What identifies a server transaction (RFC 3261 §17.2.3).

    ``method`` is the method of the request that created the transaction, so
    an ACK carries ``"INVITE"`` here. For RFC 2543 peers ``branch`` holds the
    joined fallback fields (it starts with NUL, which no real branch can, so the
    two kinds of keys never collide).
    """

    branch: str
    sent_by: str
    method: str


# NamedTuple's generated __new__ is a Python function; this skips it (~2x faster).
_new_key = tuple.__new__


def make_key(
    branch: str | None, sent_by: str, method: str, *, fallback: tuple[str, ...] = ()
) -> TxKey:
    """Build the matching key of a request from its top Via (RFC 3261 §17.2.3).

    A branch that starts with the magic cookie (and has more after it) is
    unique per transaction, so (branch, sent-by, method) is the key, with ACK
    mapped to INVITE: the ACK of a non-2xx final shares the INVITE's branch.
    CANCEL keeps its own method: it is a transaction of its own, and
    :meth:`TransactionLayer.find_invite` finds the INVITE it cancels.

    Otherwise the peer follows RFC 2543, and the caller passes in ``fallback``
    the fields that identify the request there: Request-URI, From tag,
    Call-ID, CSeq number and top Via (To tag excluded, so that the ACK, which
    carries our To tag, matches its INVITE, and the CANCEL its INVITE). Those
    are joined with NUL. Sent-by and method are compared as given; the caller
    decides any normalisation (retransmissions repeat the bytes anyway).
    Without a fallback the non-cookie branch itself is used, a best effort.
    """
    if method == "ACK":
        method = "INVITE"
    if branch is not None and len(branch) > _COOKIE_LEN and branch.startswith(MAGIC_COOKIE):
        return _new_key(TxKey, (branch, sent_by, method))
    parts = fallback or (branch or "",)
    return _new_key(TxKey, ("\x00" + "\x00".join(parts), sent_by, method))


class TxState(IntEnum):
    """Server transaction states (IntEnum: hashing stays in C on the hot path)."""

    TRYING = 1  # non-INVITE only: nothing sent yet
    PROCEEDING = 2  # a provisional sent (non-INVITE); INVITE starts here
    COMPLETED = 3  # final sent: INVITE 300-699 waits for ACK; non-INVITE waits out timer J
    CONFIRMED = 4  # INVITE only: ACK received, absorbing ACK retransmissions until timer I
    ACCEPTED = 5  # INVITE only (RFC 6026): 2xx sent, until timer L
    TERMINATED = 6


class TxEvent(IntEnum):
    """What can happen to a server transaction."""

    REQUEST = 1  # the request was retransmitted
    ACK = 2  # an ACK matched the (INVITE) transaction
    SEND_1XX = 3  # the app sends a provisional response
    SEND_2XX = 4  # the app sends a 2xx
    SEND_3XX_6XX = 5  # the app sends a final 300-699
    TIMER_G = 6  # INVITE final retransmission (UDP)
    TIMER_H = 7  # INVITE: no ACK came
    TIMER_I = 8  # INVITE: done absorbing ACKs
    TIMER_J = 9  # non-INVITE: done absorbing request retransmissions
    TIMER_L = 10  # INVITE (RFC 6026): done absorbing INVITE retransmissions after a 2xx
    ABORT = 11  # the app ends the transaction (transport error, shutdown)


_S = TxState
_E = TxEvent

# RFC 3261 §17.2.1 figure 7 as amended by RFC 6026 §7.1 figure 5.
INVITE_TRANSITIONS: dict[tuple[TxState, TxEvent], TxState] = {
    (_S.PROCEEDING, _E.REQUEST): _S.PROCEEDING,  # resend the last provisional
    (_S.PROCEEDING, _E.ACK): _S.PROCEEDING,  # stray ACK before any final: not ours
    (_S.PROCEEDING, _E.SEND_1XX): _S.PROCEEDING,
    (_S.PROCEEDING, _E.SEND_2XX): _S.ACCEPTED,
    (_S.PROCEEDING, _E.SEND_3XX_6XX): _S.COMPLETED,
    (_S.PROCEEDING, _E.ABORT): _S.TERMINATED,
    (_S.COMPLETED, _E.REQUEST): _S.COMPLETED,  # resend the final
    (_S.COMPLETED, _E.ACK): _S.CONFIRMED,
    (_S.COMPLETED, _E.TIMER_G): _S.COMPLETED,  # resend the final, double G up to T2
    (_S.COMPLETED, _E.TIMER_H): _S.TERMINATED,  # no ACK: the app is told
    (_S.COMPLETED, _E.ABORT): _S.TERMINATED,
    (_S.CONFIRMED, _E.REQUEST): _S.CONFIRMED,  # late copy of the INVITE: resend the final
    (_S.CONFIRMED, _E.ACK): _S.CONFIRMED,  # absorbed
    (_S.CONFIRMED, _E.TIMER_I): _S.TERMINATED,
    (_S.CONFIRMED, _E.ABORT): _S.TERMINATED,
    (_S.ACCEPTED, _E.REQUEST): _S.ACCEPTED,  # absorbed, RFC 6026 §7.1 (the TU resends its 2xx)
    (_S.ACCEPTED, _E.ACK): _S.ACCEPTED,  # ACK of a 2xx is end-to-end: passed to the app
    (_S.ACCEPTED, _E.SEND_2XX): _S.ACCEPTED,  # the TU's 2xx retransmission (or a forked 2xx)
    (_S.ACCEPTED, _E.TIMER_L): _S.TERMINATED,
    (_S.ACCEPTED, _E.ABORT): _S.TERMINATED,
}

# RFC 3261 §17.2.2 figure 8.
NON_INVITE_TRANSITIONS: dict[tuple[TxState, TxEvent], TxState] = {
    (_S.TRYING, _E.REQUEST): _S.TRYING,  # absorbed: nothing to resend yet
    (_S.TRYING, _E.SEND_1XX): _S.PROCEEDING,
    (_S.TRYING, _E.SEND_2XX): _S.COMPLETED,
    (_S.TRYING, _E.SEND_3XX_6XX): _S.COMPLETED,
    (_S.TRYING, _E.ABORT): _S.TERMINATED,
    (_S.PROCEEDING, _E.REQUEST): _S.PROCEEDING,  # resend the last provisional
    (_S.PROCEEDING, _E.SEND_1XX): _S.PROCEEDING,
    (_S.PROCEEDING, _E.SEND_2XX): _S.COMPLETED,
    (_S.PROCEEDING, _E.SEND_3XX_6XX): _S.COMPLETED,
    (_S.PROCEEDING, _E.ABORT): _S.TERMINATED,
    (_S.COMPLETED, _E.REQUEST): _S.COMPLETED,  # resend the final
    (_S.COMPLETED, _E.TIMER_J): _S.TERMINATED,
    (_S.COMPLETED, _E.ABORT): _S.TERMINATED,
}

# Module-level aliases: attribute access on an Enum class costs ~0.2 µs.
_TRYING = _S.TRYING
_PROCEEDING = _S.PROCEEDING
_COMPLETED = _S.COMPLETED
_CONFIRMED = _S.CONFIRMED
_ACCEPTED = _S.ACCEPTED
_TERMINATED = _S.TERMINATED
_REQUEST = _E.REQUEST
_ACK = _E.ACK
_SEND_1XX = _E.SEND_1XX
_SEND_2XX = _E.SEND_2XX
_SEND_3XX_6XX = _E.SEND_3XX_6XX
_TIMER_H = _E.TIMER_H
_TIMER_I = _E.TIMER_I
_TIMER_J = _E.TIMER_J
_TIMER_L = _E.TIMER_L
_ABORT = _E.ABORT


def _fixed_timer_rows(
    table: dict[tuple[TxState, TxEvent], TxState],
) -> dict[TxState, tuple[TxEvent, TxState]]:
    """The table's fixed-duration timer rows by state: handle_timer's fast path.

    Derived from the table, so the table stays the one source of truth; the
    timer loop may free inline because every such row ends the transaction.
    """
    rows = {s: (e, n) for (s, e), n in table.items() if e in _FIXED_TIMER_EVENTS}
    assert len(rows) == sum(e in _FIXED_TIMER_EVENTS for _s, e in table), "one timer a state"
    assert all(n is _TERMINATED for _e, n in rows.values()), "fixed timers terminate"
    return rows


_FIXED_TIMER_EVENTS = frozenset({_TIMER_H, _TIMER_I, _TIMER_J, _TIMER_L})
_INVITE_TIMERS = _fixed_timer_rows(INVITE_TRANSITIONS)
_NON_INVITE_TIMERS = _fixed_timer_rows(NON_INVITE_TRANSITIONS)


def _illegal(tx: ServerTransaction, event: TxEvent) -> TransactionError:
    kind = "INVITE" if tx.invite else "non-INVITE"
    return TransactionError(
        f"{kind} server transaction {tx.method} in state {tx.state.name} "
        f"cannot take event {event.name}"
    )


class ServerTransaction:
    """One server transaction: the app reads it and keeps its own data in ``user``.

    ``dest`` is the caller's opaque "where to send" object of the request
    that created the transaction; ``last_response`` / ``last_status`` are the
    cache that answers retransmissions. Only the layer changes ``state``.
    """

    __slots__ = (
        "key",
        "method",
        "invite",
        "reliable",
        "state",
        "dest",
        "last_response",
        "last_status",
        "user",
        "g_interval",
    )

    def __init__(self, key: TxKey, method: str, reliable: bool, dest: object) -> None:
        invite = method == "INVITE"
        self.key = key
        self.method = method
        self.invite = invite
        self.reliable = reliable
        self.state: TxState = _PROCEEDING if invite else _TRYING
        self.dest = dest
        self.last_response: bytes | None = None
        self.last_status: int | None = None
        self.user: object = None
        self.g_interval = 0.0  # current timer G interval (INVITE over UDP, Completed)

    def __repr__(self) -> str:
        return (
            f"<ServerTransaction {self.method} {self.state.name} "
            f"branch={self.key.branch!r} status={self.last_status}>"
        )


class Outcome(Enum):
    """What :meth:`TransactionLayer.receive_request` made of a request."""

    NEW = "new"  # a transaction was created: the app handles the request
    RETRANSMISSION = "retransmission"  # matched a live transaction: resend the bytes if any
    ACK_ABSORBED = "ack-absorbed"  # ACK of our non-2xx final: nothing more to do
    ACK_UNMATCHED = "ack-unmatched"  # any other ACK (2xx ACKs are end-to-end): the app decides


_NEW = Outcome.NEW
_RETRANSMISSION = Outcome.RETRANSMISSION
_ACK_ABSORBED = Outcome.ACK_ABSORBED
_ACK_UNMATCHED = Outcome.ACK_UNMATCHED

_EMPTY_DICT_SIZE = sys.getsizeof({})
_Entry = tuple[float, ServerTransaction, TxState]  # (deadline, tx, state that armed it)
_GEntry = tuple[float, int, ServerTransaction]  # (deadline, tie-break, tx)


class TransactionLayer:
    """All server transactions of one process, with their timers."""

    def __init__(self, *, t1: float = 0.5, t2: float = 4.0, t4: float = 5.0) -> None:
        self.t1 = t1
        self.t2 = t2
        self.t4 = t4
        self._txs: dict[TxKey, ServerTransaction] = {}
        # One FIFO per distinct fixed duration; H, J and L share 64*T1.
        self._long = 64.0 * t1
        self._q_long: deque[_Entry] = deque()
        self._q_i: deque[_Entry] = self._q_long if t4 == self._long else deque()
        self._queues: tuple[deque[_Entry], ...] = (
            (self._q_long,) if self._q_i is self._q_long else (self._q_long, self._q_i)
        )
        # Timer G: its first interval is always T1, so first firings are due in the
        # order they were armed (a FIFO, O(1) each; most are stale by then: the ACK
        # came); the doubled intervals after a first firing go to a heap.
        self._q_g: deque[_Entry] = deque()
        #: every FIFO whose head may hold the next deadline (G's entries are armed by Completed)
        self._fifos: tuple[deque[_Entry], ...] = (*self._queues, self._q_g)
        self._g_heap: list[_GEntry] = []
        self._g_seq = count()
        self._frees = 0  # since the last _compact check

    # -- requests ---------------------------------------------------------

    def receive_request(
        self, key: TxKey, method: str, reliable: bool, dest: object, now: float
    ) -> tuple[Outcome, ServerTransaction | None, bytes | None]:
        """Match a request to a transaction, creating one for a new request.

        NEW: the app handles the request and answers with send_response.
        RETRANSMISSION: never shown to the app; the bytes (the cached last
        response, None when there is nothing to resend: Trying, or Accepted
        where RFC 6026 §7.1 absorbs) go back to the sender. ACK_ABSORBED: the
        ACK of our non-2xx final. ACK_UNMATCHED: any other ACK, with the
        transaction it hit if any (an Accepted INVITE's: the app's 2xx ACK).
        An ACK never creates a transaction. ``reliable`` and ``dest`` are only
        used when a transaction is created.
        """
        txs = self._txs
        tx = txs.get(key)
        if tx is None:
            if method == "ACK":
                return (_ACK_UNMATCHED, None, None)
            tx = ServerTransaction(key, method, reliable, dest)
            txs[key] = tx
            return (_NEW, tx, None)
        state = tx.state
        event = _ACK if method == "ACK" else _REQUEST
        new = (INVITE_TRANSITIONS if tx.invite else NON_INVITE_TRANSITIONS).get((state, event))
        if new is None:
            raise _illegal(tx, event)
        if event is _REQUEST:  # every REQUEST row is a self-loop
            if state is _ACCEPTED:
                return (_RETRANSMISSION, tx, None)
            return (_RETRANSMISSION, tx, tx.last_response)
        if state is _COMPLETED or state is _CONFIRMED:
            if new is not state:
                self._enter(tx, new, now)
            return (_ACK_ABSORBED, tx, None)
        return (_ACK_UNMATCHED, tx, None)

    def absorb_ack(self, key: TxKey, now: float) -> bool:
        """Take an ACK for the INVITE transaction ``key`` when it is one of our 3xx–6xx
        finals (Completed or Confirmed): True when absorbed, False when the ACK needs
        the whole :meth:`receive_request` (no such transaction, or any other state)."""
        tx = self._txs.get(key)
        if tx is None or not tx.invite:
            return False
        state = tx.state
        if state is _CONFIRMED:
            return True
        if state is not _COMPLETED:
            return False
        self._enter(tx, INVITE_TRANSITIONS[(state, _ACK)], now)
        return True

    def find_invite(self, key_of_cancel: TxKey) -> ServerTransaction | None:
        """The live INVITE transaction a CANCEL (by its own key) refers to.

        The app checks its state: a CANCEL only matters while Proceeding.
        """
        return self._txs.get(
            _new_key(TxKey, (key_of_cancel.branch, key_of_cancel.sent_by, "INVITE"))
        )

    def get(self, key: TxKey) -> ServerTransaction | None:
        """The live transaction with this key, if any."""
        return self._txs.get(key)

    # -- responses --------------------------------------------------------

    def send_response(self, tx: ServerTransaction, status: int, data: bytes, now: float) -> bytes:
        """Record a response the app sends on ``tx`` and drive the FSM; returns ``data``.

        Raises TransactionError when the state does not allow it (a second
        final, anything after Completed, a non-2xx once Accepted), and
        ValueError for a status outside 100-699.
        """
        if status < 200:
            if status < 100:
                raise ValueError(f"bad status code {status}")
            event = _SEND_1XX
        elif status < 300:
            event = _SEND_2XX
        elif status < 700:
            event = _SEND_3XX_6XX
        else:
            raise ValueError(f"bad status code {status}")
        state = tx.state
        try:
            new = (INVITE_TRANSITIONS if tx.invite else NON_INVITE_TRANSITIONS)[(state, event)]
        except KeyError:
            raise _illegal(tx, event) from None
        tx.last_response = data
        tx.last_status = status
        if new is not state:
            self._enter(tx, new, now)
        return data

    def terminate(self, tx: ServerTransaction) -> None:
        """End ``tx`` now (transport error, shutdown). A terminated tx is left alone.

        Idempotent on purpose: the app may race a timer that already freed it.
        """
        if tx.state is not _TERMINATED:
            self._enter(tx, self._transition(tx, _ABORT), 0.0)

    # -- timers -----------------------------------------------------------

    def handle_timer(self, now: float) -> list[tuple[ServerTransaction, bytes | None]]:
        """Fire every timer due at ``now``.

        Returns (tx, bytes to resend) for each timer G, and (tx, None) for each
        timer H (the INVITE's final was never ACKed: the app may log it and
        release what it holds in ``tx.user``). I, J and L free silently.
        """
        out: list[tuple[ServerTransaction, bytes | None]] = []
        txs = self._txs
        live = len(txs)
        for q in self._queues:
            while q and q[0][0] <= now:
                _deadline, tx, armed = q.popleft()
                if tx.state is not armed:
                    continue  # stale: the tx moved on since this timer was armed
                # The table row (armed, H|I|J|L) -> TERMINATED; _free inlined (hot at scale).
                event, tx.state = (_INVITE_TIMERS if tx.invite else _NON_INVITE_TIMERS)[armed]
                del txs[tx.key]
                if event is _TIMER_H:
                    out.append((tx, None))
        if len(txs) != live:
            self._compact()
        due: list[ServerTransaction] = []  # timer G: first firings, then doubled ones
        q_g = self._q_g
        while q_g and q_g[0][0] <= now:
            due.append(q_g.popleft()[1])
        heap = self._g_heap
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
        t2 = self.t2
        for tx in due:
            if tx.state is not _COMPLETED:
                continue  # ACKed, timed out or terminated since
            interval = tx.g_interval * 2.0
            if interval > t2:
                interval = t2
            tx.g_interval = interval
            heapq.heappush(heap, (now + interval, next(self._g_seq), tx))
            out.append((tx, tx.last_response))  # the (COMPLETED, TIMER_G) self-loop
        return out

    def next_deadline(self) -> float | None:
        """When handle_timer must next run (absolute, same clock as ``now``), or None.

        Stale heads are dropped here, so the answer is the real next timer and
        an adapter never wakes up for a cancelled one.
        """
        best: float | None = None
        for q in self._fifos:
            while q:
                deadline, tx, armed = q[0]
                if tx.state is armed:
                    if best is None or deadline < best:
                        best = deadline
                    break
                q.popleft()
        heap = self._g_heap
        while heap:
            deadline, _seq, tx = heap[0]
            if tx.state is _COMPLETED:
                if best is None or deadline < best:
                    best = deadline
                break
            heapq.heappop(heap)
        return best

    def __len__(self) -> int:
        return len(self._txs)

    # -- the state machine ------------------------------------------------

    @staticmethod
    def _transition(tx: ServerTransaction, event: TxEvent) -> TxState:
        table = INVITE_TRANSITIONS if tx.invite else NON_INVITE_TRANSITIONS
        new = table.get((tx.state, event))
        if new is None:
            raise _illegal(tx, event)
        return new

    def _enter(self, tx: ServerTransaction, new: TxState, now: float) -> None:
        """The odd rules: what entering a state does beyond what the tables say.

        Completed arms G (INVITE over UDP) and H, or J (non-INVITE); Confirmed
        arms I; Accepted arms L. J and I are zero over reliable transports, so
        the tx goes straight on to Terminated. Terminated frees the tx; its
        pending timer entries go stale and are dropped when they surface.
        """
        tx.state = new
        if new is _COMPLETED:
            if tx.invite:
                if not tx.reliable:
                    tx.g_interval = self.t1
                    self._q_g.append((now + self.t1, tx, new))
                self._q_long.append((now + self._long, tx, new))
            elif tx.reliable:
                self._free(tx)
            else:
                self._q_long.append((now + self._long, tx, new))
        elif new is _CONFIRMED:
            if tx.reliable:
                self._free(tx)
            else:
                self._q_i.append((now + self.t4, tx, new))
        elif new is _ACCEPTED:
            self._q_long.append((now + self._long, tx, new))
        elif new is _TERMINATED:
            self._free(tx)

    def _free(self, tx: ServerTransaction) -> None:
        # Invariant: a live tx is the dict's value for its key (a request with
        # that key would have matched it), so deleting by key is exact.
        tx.state = _TERMINATED
        del self._txs[tx.key]
        self._frees += 1
        if self._frees >= 4096:
            self._compact()

    def _compact(self) -> None:
        """Give back the dict's memory after a mass expiry.

        A dict never shrinks on deletion, only when a later insertion makes it
        resize; after a burst the server may stay idle holding megabytes. So
        after each batch of expiries (and every 4096 other frees) rebuild it
        when empty or clearly oversized (a live dict costs at most ~120 bytes
        a key, this asks for 256). Amortised O(1): a rebuild copies fewer keys
        than were freed since the dict was last that large.
        """
        self._frees = 0
        txs = self._txs
        if not txs:
            if sys.getsizeof(txs) > _EMPTY_DICT_SIZE:
                self._txs = {}
        elif sys.getsizeof(txs) > 256 * len(txs) + 65536:
            self._txs = dict(txs)
