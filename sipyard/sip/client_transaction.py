"""Client transactions (RFC 3261 §17.1, with the RFC 6026 fixes), sans-IO.

The mirror of :mod:`sipyard.sip.transaction`: a proxy (or any TU) hands a
request it wants sent to :meth:`ClientTransactionLayer.start`, feeds every
response it receives to :meth:`~ClientTransactionLayer.receive_response`, and
calls :meth:`~ClientTransactionLayer.handle_timer` when
:meth:`~ClientTransactionLayer.next_deadline` comes. Each call returns a list
of *actions* — :class:`Send` bytes somewhere, :class:`PassResponse` to the TU,
:class:`Timeout`, :class:`TransportFailure`, :class:`Unmatched` — and does no
I/O itself, reads no clock: ``now`` always comes in as an argument.

Unlike the server side, this layer reads parsed messages: it has to match
responses on the top Via branch and the CSeq method (§17.1.3) and to build the
ACK of a non-2xx final response (§17.1.1.3), which copies headers of both the
INVITE and the response. It sees one response per request sent, far fewer
than the server side sees requests, so clarity wins over micro-speed here.

State logic is a table keyed by ``(state, event)`` whose values are the next
state *and* the table-level actions (retransmit, send ACK, pass up, report a
timeout or transport error), as in h11's ``_state.py``. What a table cannot
say — which timers a state arms, the reliable-transport shortcuts (timers D and
K are zero over TCP, A and E never run), the doubling of A and E — lives in
:meth:`ClientTransactionLayer._enter` and :meth:`~ClientTransactionLayer._rearm`.
Every (live state, response) pair has a row, so nothing a peer sends can raise;
an event the TU causes in a state with no row (a transport error reported
while Accepted) raises :class:`~sipyard.sip.errors.TransactionError` naming both.

Timers. B, F and M last 64*T1, D 32 s and K T4 for every transaction, so each
duration has one FIFO deque: pushes happen in time order, expiry pops from the
left while due. A and E grow, so they live in a heap. Cancelling is lazy: an
entry names its timer event, and is live only while the table has a row for
(the transaction's current state, that event) — timer E stays live from Trying
into Proceeding as §17.1.2.2 wants, timer A dies on leaving Calling. Each
state is entered at most once per transaction and A/E re-arm only when they
fire, so no timer is ever pending twice. ``now`` must not go backwards.

Choices where the RFCs leave room: a 2xx that arrives in Completed (after a
non-2xx final: a downstream forking proxy's 6xx raced a 2xx) is passed up, so a
proxy can still forward it (the ACK of a 2xx is end-to-end, never ours); a
provisional after a final is dropped; a non-2xx in Accepted is dropped
(RFC 6026 §8.4); a transport error in INVITE Proceeding (a TCP connection lost
after a 1xx) terminates and is reported, as in Calling — the RFC 3261 figure
has no such arrow, but the TU must hear of it rather than wait for timer C.
"""

from __future__ import annotations

import heapq
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from itertools import count
from typing import Final

from sipyard.sip.errors import ParseError, TransactionError
from sipyard.sip.message import Request, Response, canonical_name
from sipyard.sip.transaction import MAGIC_COOKIE

__all__ = [
    "CtxState",
    "CtxEvent",
    "Do",
    "INVITE_CLIENT_TRANSITIONS",
    "NON_INVITE_CLIENT_TRANSITIONS",
    "ClientTransaction",
    "ClientTransactionLayer",
    "Action",
    "Send",
    "PassResponse",
    "Timeout",
    "TransportFailure",
    "Unmatched",
    "build_ack",
    "build_cancel",
    "new_request",
    "random_branch_source",
]


class CtxState(IntEnum):
    """Client transaction states (one enum for both kinds, like the server side)."""

    CALLING = 1  # INVITE: sent, nothing heard yet (timers A, B)
    TRYING = 2  # non-INVITE: sent, nothing heard yet (timers E, F)
    PROCEEDING = 3  # a provisional came (non-INVITE: E at T2, F still running)
    COMPLETED = 4  # a final came: INVITE non-2xx re-ACKs (D); non-INVITE absorbs (K)
    ACCEPTED = 5  # INVITE only (RFC 6026): a 2xx came, more 2xx pass up until timer M
    TERMINATED = 6


class CtxEvent(IntEnum):
    """What can happen to a client transaction."""

    RESP_1XX = 1
    RESP_2XX = 2
    RESP_3XX_6XX = 3
    TIMER_A = 4  # INVITE retransmission (UDP), doubling
    TIMER_B = 5  # INVITE: no response at all in 64*T1
    TIMER_D = 6  # INVITE: done absorbing final retransmissions
    TIMER_E = 7  # non-INVITE retransmission (UDP), doubling up to T2
    TIMER_F = 8  # non-INVITE: no final in 64*T1
    TIMER_K = 9  # non-INVITE: done absorbing final retransmissions
    TIMER_M = 10  # INVITE (RFC 6026): done passing up 2xx retransmissions
    TRANSPORT_ERROR = 11  # the TU could not send our bytes


class Do(IntEnum):
    """Table-level actions of a transition, turned into :class:`Action` objects."""

    RETRANSMIT = 1  # send the request again
    SEND_ACK = 2  # send the ACK of this non-2xx final (INVITE)
    PASS_UP = 3  # hand the response to the TU
    TIMEOUT = 4  # tell the TU the transaction timed out (it acts as if 408 came)
    REPORT_ERROR = 5  # tell the TU the transport failed (it acts as if 503 came)


_S = CtxState
_E = CtxEvent
_Row = tuple[CtxState, tuple[Do, ...]]
_NOTHING: tuple[Do, ...] = ()
_UP = (Do.PASS_UP,)
_ACK_UP = (Do.SEND_ACK, Do.PASS_UP)

# RFC 3261 §17.1.1 figure 5 as amended by RFC 6026 §8.4 figure 3.
INVITE_CLIENT_TRANSITIONS: dict[tuple[CtxState, CtxEvent], _Row] = {
    (_S.CALLING, _E.RESP_1XX): (_S.PROCEEDING, _UP),
    (_S.CALLING, _E.RESP_2XX): (_S.ACCEPTED, _UP),
    (_S.CALLING, _E.RESP_3XX_6XX): (_S.COMPLETED, _ACK_UP),
    (_S.CALLING, _E.TIMER_A): (_S.CALLING, (Do.RETRANSMIT,)),
    (_S.CALLING, _E.TIMER_B): (_S.TERMINATED, (Do.TIMEOUT,)),
    (_S.CALLING, _E.TRANSPORT_ERROR): (_S.TERMINATED, (Do.REPORT_ERROR,)),
    (_S.PROCEEDING, _E.RESP_1XX): (_S.PROCEEDING, _UP),
    (_S.PROCEEDING, _E.RESP_2XX): (_S.ACCEPTED, _UP),
    (_S.PROCEEDING, _E.RESP_3XX_6XX): (_S.COMPLETED, _ACK_UP),
    (_S.PROCEEDING, _E.TRANSPORT_ERROR): (_S.TERMINATED, (Do.REPORT_ERROR,)),  # see docstring
    (_S.COMPLETED, _E.RESP_1XX): (_S.COMPLETED, _NOTHING),  # reordered: dropped
    (_S.COMPLETED, _E.RESP_2XX): (_S.COMPLETED, _UP),  # late fork 2xx: the TU forwards it
    (_S.COMPLETED, _E.RESP_3XX_6XX): (_S.COMPLETED, (Do.SEND_ACK,)),  # re-ACKed, absorbed
    (_S.COMPLETED, _E.TIMER_D): (_S.TERMINATED, _NOTHING),
    (_S.COMPLETED, _E.TRANSPORT_ERROR): (_S.TERMINATED, (Do.REPORT_ERROR,)),  # the ACK failed
    (_S.ACCEPTED, _E.RESP_1XX): (_S.ACCEPTED, _NOTHING),
    (_S.ACCEPTED, _E.RESP_2XX): (_S.ACCEPTED, _UP),  # every 2xx goes up (retransmitted or forked)
    (_S.ACCEPTED, _E.RESP_3XX_6XX): (_S.ACCEPTED, _NOTHING),
    (_S.ACCEPTED, _E.TIMER_M): (_S.TERMINATED, _NOTHING),
}

# RFC 3261 §17.1.2 figure 6.
NON_INVITE_CLIENT_TRANSITIONS: dict[tuple[CtxState, CtxEvent], _Row] = {
    (_S.TRYING, _E.RESP_1XX): (_S.PROCEEDING, _UP),
    (_S.TRYING, _E.RESP_2XX): (_S.COMPLETED, _UP),
    (_S.TRYING, _E.RESP_3XX_6XX): (_S.COMPLETED, _UP),
    (_S.TRYING, _E.TIMER_E): (_S.TRYING, (Do.RETRANSMIT,)),
    (_S.TRYING, _E.TIMER_F): (_S.TERMINATED, (Do.TIMEOUT,)),
    (_S.TRYING, _E.TRANSPORT_ERROR): (_S.TERMINATED, (Do.REPORT_ERROR,)),
    (_S.PROCEEDING, _E.RESP_1XX): (_S.PROCEEDING, _UP),
    (_S.PROCEEDING, _E.RESP_2XX): (_S.COMPLETED, _UP),
    (_S.PROCEEDING, _E.RESP_3XX_6XX): (_S.COMPLETED, _UP),
    (_S.PROCEEDING, _E.TIMER_E): (_S.PROCEEDING, (Do.RETRANSMIT,)),
    (_S.PROCEEDING, _E.TIMER_F): (_S.TERMINATED, (Do.TIMEOUT,)),
    (_S.PROCEEDING, _E.TRANSPORT_ERROR): (_S.TERMINATED, (Do.REPORT_ERROR,)),
    (_S.COMPLETED, _E.RESP_1XX): (_S.COMPLETED, _NOTHING),  # retransmissions absorbed
    (_S.COMPLETED, _E.RESP_2XX): (_S.COMPLETED, _NOTHING),
    (_S.COMPLETED, _E.RESP_3XX_6XX): (_S.COMPLETED, _NOTHING),
    (_S.COMPLETED, _E.TIMER_K): (_S.TERMINATED, _NOTHING),
}

_RESPONSE_EVENTS = (_E.RESP_1XX, _E.RESP_2XX, _E.RESP_3XX_6XX)
_GROWING = frozenset({_E.TIMER_A, _E.TIMER_E})


def _classify(status: int) -> CtxEvent:
    if status < 200:
        return _E.RESP_1XX
    if status < 300:
        return _E.RESP_2XX
    return _E.RESP_3XX_6XX


def random_branch_source() -> str:
    """The default source of branch ids' random part: 64 bits, hex (token chars)."""
    return secrets.token_hex(8)


class ClientTransaction:
    """One client transaction; the TU keeps its own data in ``user``.

    ``key`` is (branch, method) as responses are matched (§17.1.3). ``dest``
    is the TU's opaque "where to send" object; every retransmission and the
    ACK of a non-2xx final go there (§17.1.1.3: same address, port and
    transport as the request). ``last_status`` is the latest response's status.
    """

    __slots__ = (
        "key",
        "request",
        "data",
        "dest",
        "reliable",
        "invite",
        "state",
        "interval",
        "ack",
        "ack_to",
        "last_status",
        "user",
    )

    def __init__(self, request: Request, branch: str, data: bytes, dest: object,
                 reliable: bool) -> None:
        self.key = (branch, request.method)
        #: released (None, b"") once no retransmission, CANCEL or ACK can need them: a
        #: finished transaction still sits in a timer queue for up to 64*T1
        self.request: Request | None = request
        self.data = data
        self.dest = dest
        self.reliable = reliable
        self.invite = request.method == "INVITE"
        self.state: CtxState = _S.CALLING if self.invite else _S.TRYING
        self.interval = 0.0  # current A / E interval
        self.ack: bytes | None = None  # cached ACK of the non-2xx final
        self.ack_to: str | None = None  # the To it was built for
        self.last_status: int | None = None
        self.user: object = None

    @property
    def branch(self) -> str:
        return self.key[0]

    @property
    def method(self) -> str:
        return self.key[1]

    def __repr__(self) -> str:
        return (f"<ClientTransaction {self.method} {self.state.name} "
                f"branch={self.branch!r} status={self.last_status}>")


# -- actions ---------------------------------------------------------------------

class Send:
    """Send ``data`` to ``dest`` (the request, a retransmission or an ACK).

    A plain slotted class: mypyc fails on a dataclass field typed ``object``
    (``KeyError: 'object'`` at import of the compiled module).
    """

    __slots__ = ("tx", "data", "dest")

    def __init__(self, tx: ClientTransaction, data: bytes, dest: object) -> None:
        self.tx = tx
        self.data = data
        self.dest = dest

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Send):
            return NotImplemented
        return (self.tx is other.tx and self.data == other.data
                and self.dest == other.dest)

    def __hash__(self) -> int:
        return hash((id(self.tx), self.data))

    def __repr__(self) -> str:
        return f"Send(tx={self.tx!r}, data={self.data!r}, dest={self.dest!r})"


@dataclass(slots=True, init=False, unsafe_hash=True)
class PassResponse:
    """Hand ``response`` to the TU (a proxy's response context)."""

    tx: Final[ClientTransaction]
    response: Final[Response]

    def __init__(self, tx: ClientTransaction, response: Response) -> None:
        self.tx = tx
        self.response = response


@dataclass(slots=True, init=False, unsafe_hash=True)
class Timeout:
    """Timer B or F fired: the TU acts as if a 408 had arrived (§16.7 step 2 / §8.1.3.1)."""

    tx: Final[ClientTransaction]
    timer: Final[CtxEvent]

    def __init__(self, tx: ClientTransaction, timer: CtxEvent) -> None:
        self.tx = tx
        self.timer = timer


@dataclass(slots=True, init=False, unsafe_hash=True)
class TransportFailure:
    """Sending failed: the TU acts as if a 503 had arrived (§16.9, §8.1.3.1)."""

    tx: Final[ClientTransaction]

    def __init__(self, tx: ClientTransaction) -> None:
        self.tx = tx


@dataclass(slots=True, init=False, unsafe_hash=True)
class Unmatched:
    """A response no transaction of ours matches: a proxy forwards it statelessly (§16.7)."""

    response: Final[Response]

    def __init__(self, response: Response) -> None:
        self.response = response


Action = Send | PassResponse | Timeout | TransportFailure | Unmatched


def _illegal(tx: ClientTransaction, event: CtxEvent) -> TransactionError:
    kind = "INVITE" if tx.invite else "non-INVITE"
    return TransactionError(
        f"{kind} client transaction {tx.method} in state {tx.state.name} "
        f"cannot take event {event.name}"
    )


_FifoEntry = tuple[float, ClientTransaction, CtxEvent]
_HeapEntry = tuple[float, int, ClientTransaction, CtxEvent]


class ClientTransactionLayer:
    """All client transactions of one process, keyed by (branch, method), with their timers."""

    def __init__(self, *, t1: float = 0.5, t2: float = 4.0, t4: float = 5.0,
                 timer_d: float = 32.0,
                 branch_source: Callable[[], str] = random_branch_source) -> None:
        self.t1 = t1
        self.t2 = t2
        self.t4 = t4
        self.timer_d = timer_d
        self._branch_source = branch_source
        self._txs: dict[tuple[str, str], ClientTransaction] = {}
        self._long = 64.0 * t1  # B, F and M
        # One FIFO per distinct fixed duration (equal durations share one).
        self._fifos: dict[float, deque[_FifoEntry]] = {}
        self._heap: list[_HeapEntry] = []
        self._seq = count()

    # -- starting ------------------------------------------------------------

    def new_branch(self) -> str:
        """A fresh RFC 3261 branch id: the magic cookie plus the injected random part."""
        return MAGIC_COOKIE + self._branch_source()

    def start(self, request: Request, dest: object, reliable: bool, now: float,
              data: bytes | None = None) -> tuple[ClientTransaction, list[Action]]:
        """Create the transaction of ``request`` and return its first :class:`Send`.

        The request must already carry our Via on top with a magic-cookie
        branch (from :meth:`new_branch`, or a proxy's loop-detecting branch);
        that branch and the method are the key. A CANCEL reuses its INVITE's
        branch and is a transaction of its own (§9.1). ``data`` is the
        serialised request when the caller already has it. ACK is refused:
        the ACK of a non-2xx is built here, the ACK of a 2xx is end-to-end
        and has no transaction (§17.1.1.3, §13.2.2.4).
        """
        method = request.method
        if method == "ACK":
            raise ValueError("an ACK has no client transaction (§17.1.1.3)")
        branch = request.top_via.branch
        if branch is None or len(branch) <= len(MAGIC_COOKIE) or not branch.startswith(
                MAGIC_COOKIE):
            raise ValueError(f"top Via branch {branch!r} lacks the magic cookie")
        key = (branch, method)
        if key in self._txs:
            raise ValueError(f"a {method} client transaction with branch {branch} exists")
        if data is None:
            data = request.to_bytes()
        tx = ClientTransaction(request, branch, data, dest, reliable)
        self._txs[key] = tx
        if not reliable:
            tx.interval = self.t1
            timer = _E.TIMER_A if tx.invite else _E.TIMER_E
            heapq.heappush(self._heap, (now + self.t1, next(self._seq), tx, timer))
        self._fifo(self._long).append((now + self._long, tx, _E.TIMER_B if tx.invite else _E.TIMER_F))
        return tx, [Send(tx, data, dest)]

    # -- responses -----------------------------------------------------------

    def receive_response(self, response: Response, now: float) -> list[Action]:
        """Match ``response`` (§17.1.3: top Via branch and CSeq method) and drive its FSM.

        Returns :class:`Unmatched` when no live transaction has that key (or
        the Via / CSeq cannot be read), else what the table row says:
        :class:`PassResponse`, and for an INVITE non-2xx final the
        :class:`Send` of the ACK before it.
        """
        try:
            branch = response.top_via.branch
            method = response.cseq[1]
        except ParseError:
            return [Unmatched(response)]
        tx = self._txs.get((branch or "", method))
        if tx is None:
            return [Unmatched(response)]
        tx.last_status = response.status
        return self._fire(tx, _classify(response.status), now, response)

    # -- the TU's reports ----------------------------------------------------

    def transport_error(self, tx: ClientTransaction, now: float) -> list[Action]:
        """The TU failed to send bytes of ``tx``: terminate it and report back.

        A terminated transaction is left alone (the report raced a timer).
        """
        if tx.state is _S.TERMINATED:
            return []
        return self._fire(tx, _E.TRANSPORT_ERROR, now, None)

    def terminate(self, tx: ClientTransaction) -> None:
        """Forget ``tx`` silently (shutdown, or a proxy branch given up). Idempotent."""
        if tx.state is not _S.TERMINATED:
            self._free(tx)
        tx.request = None
        tx.user = None

    def get(self, branch: str, method: str) -> ClientTransaction | None:
        """The live transaction with this key, if any."""
        return self._txs.get((branch, method))

    def __len__(self) -> int:
        return len(self._txs)

    # -- timers --------------------------------------------------------------

    def handle_timer(self, now: float) -> list[Action]:
        """Fire every timer due at ``now``; return the retransmissions and reports."""
        out: list[Action] = []
        for q in list(self._fifos.values()):
            while q and q[0][0] <= now:
                _deadline, tx, event = q.popleft()
                if (tx.state, event) in _table(tx):
                    out += self._fire(tx, event, now, None)
        heap = self._heap
        while heap and heap[0][0] <= now:
            _deadline, _seq, tx, event = heapq.heappop(heap)
            if (tx.state, event) in _table(tx):
                out += self._fire(tx, event, now, None)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next run, or None; stale heads are dropped."""
        best: float | None = None
        for q in self._fifos.values():
            while q:
                deadline, tx, event = q[0]
                if (tx.state, event) in _table(tx):
                    if best is None or deadline < best:
                        best = deadline
                    break
                q.popleft()
        heap = self._heap
        while heap:
            deadline, _seq, tx, event = heap[0]
            if (tx.state, event) in _table(tx):
                if best is None or deadline < best:
                    best = deadline
                break
            heapq.heappop(heap)
        return best

    # -- the state machine ---------------------------------------------------

    def _fire(self, tx: ClientTransaction, event: CtxEvent, now: float,
              response: Response | None) -> list[Action]:
        row = _table(tx).get((tx.state, event))
        if row is None:
            raise _illegal(tx, event)
        new, todo = row
        out: list[Action] = []
        for do in todo:
            if do is Do.PASS_UP:
                assert response is not None
                out.append(PassResponse(tx, response))
            elif do is Do.SEND_ACK:
                assert response is not None
                out.append(Send(tx, self._ack(tx, response), tx.dest))
            elif do is Do.RETRANSMIT:
                out.append(Send(tx, tx.data, tx.dest))
                self._rearm(tx, event, now)
            elif do is Do.TIMEOUT:
                out.append(Timeout(tx, event))
            else:
                out.append(TransportFailure(tx))
        if new is not tx.state:
            self._enter(tx, new, now)
            if new is _S.TERMINATED and not out:  # timer K, D or M: nothing goes to the TU
                tx.request = None
                tx.user = None
        return out

    def _rearm(self, tx: ClientTransaction, event: CtxEvent, now: float) -> None:
        """A and E double; E is capped at T2, and runs at T2 once Proceeding (§17.1.2.2)."""
        interval = tx.interval * 2.0
        if event is _E.TIMER_E and (interval > self.t2 or tx.state is _S.PROCEEDING):
            interval = self.t2
        tx.interval = interval
        heapq.heappush(self._heap, (now + interval, next(self._seq), tx, event))

    def _enter(self, tx: ClientTransaction, new: CtxState, now: float) -> None:
        """The odd rules: timers armed on entering a state; zero timers free at once.

        Completed arms D (INVITE) or K (non-INVITE), both zero over reliable
        transports, where the transaction ends at once; Accepted arms M. Timers
        of the left state go stale by themselves (see the module docstring).
        """
        tx.state = new
        if new is not _S.CALLING and new is not _S.PROCEEDING and new is not _S.TRYING:
            tx.data = b""  # nothing is retransmitted any more (the TU may still read request)
        if new is _S.COMPLETED:
            duration = self.timer_d if tx.invite else self.t4
            if tx.reliable or duration <= 0.0:
                self._free(tx)
            else:
                event = _E.TIMER_D if tx.invite else _E.TIMER_K
                self._fifo(duration).append((now + duration, tx, event))
        elif new is _S.ACCEPTED:
            self._fifo(self._long).append((now + self._long, tx, _E.TIMER_M))
        elif new is _S.TERMINATED:
            self._free(tx)

    def _fifo(self, duration: float) -> deque[_FifoEntry]:
        q = self._fifos.get(duration)
        if q is None:
            q = self._fifos[duration] = deque()
        return q

    def _free(self, tx: ClientTransaction) -> None:
        tx.state = _S.TERMINATED
        # its timer entries may hold it for up to 64*T1 more; request and user are the
        # TU's to read in the reports returned with this step, and dropped by it after
        tx.data = b""
        if self._txs.get(tx.key) is tx:
            del self._txs[tx.key]

    def _ack(self, tx: ClientTransaction, response: Response) -> bytes:
        """The ACK of a non-2xx final, built once per To value and cached."""
        to = response.get("to") or ""
        if tx.ack is None or tx.ack_to != to:
            assert tx.request is not None  # kept in COMPLETED for an INVITE
            tx.ack = build_ack(tx.request, response).to_bytes()
            tx.ack_to = to
        return tx.ack


def _table(tx: ClientTransaction) -> dict[tuple[CtxState, CtxEvent], _Row]:
    return INVITE_CLIENT_TRANSITIONS if tx.invite else NON_INVITE_CLIENT_TRANSITIONS


# -- building requests -----------------------------------------------------------

def new_request(method: str, uri: str, headers: list[tuple[str, str]],
                body: bytes = b"") -> Request:
    """A :class:`Request` built from parts (the message model has no public builder)."""
    return Request(method, uri, "SIP/2.0", headers, [canonical_name(n) for n, _ in headers],
                   body)


def build_ack(invite: Request, response: Response) -> Request:
    """The ACK of a non-2xx final to ``invite`` (RFC 3261 §17.1.1.3).

    Same Request-URI, Call-ID and From as the INVITE, its top Via only, To
    from the response (it carries the UAS's tag), CSeq with the INVITE's number
    and method ACK, and the INVITE's Route headers: the ACK must follow the
    INVITE hop by hop.
    """
    headers = [("Via", invite.top_via.raw)]
    headers += [("Route", line) for line in invite.get_lines("route")]
    headers += [
        ("Max-Forwards", "70"),
        ("From", invite.get("from") or ""),
        ("To", response.get("to") or ""),
        ("Call-ID", invite.call_id),
        ("CSeq", f"{invite.cseq[0]} ACK"),
        ("Content-Length", "0"),
    ]
    return new_request("ACK", invite.uri, headers)


def build_cancel(request: Request, reason: str | None = None) -> Request:
    """The CANCEL of ``request`` (RFC 3261 §9.1), to be sent as its own transaction.

    Same Request-URI, Call-ID, To, From and CSeq number, a single Via equal to
    the request's top Via (so the CANCEL's branch is the INVITE's), the same
    Route headers; ``reason`` becomes a Reason header (RFC 3326), e.g.
    ``SIP;cause=200;text="Call completed elsewhere"``.
    """
    headers = [("Via", request.top_via.raw)]
    headers += [("Route", line) for line in request.get_lines("route")]
    headers += [
        ("Max-Forwards", "70"),
        ("From", request.get("from") or ""),
        ("To", request.get("to") or ""),
        ("Call-ID", request.call_id),
        ("CSeq", f"{request.cseq[0]} CANCEL"),
    ]
    if reason:
        headers.append(("Reason", reason))
    headers.append(("Content-Length", "0"))
    return new_request("CANCEL", request.uri, headers)
