"""The response context of one proxied request (RFC 3261 §16.5-16.10), sans-IO.

A :class:`ResponseContext` owns the target set and one :class:`Branch` per
forwarded copy. The driver (the async proxy handler) feeds it what happens —
responses passed up by the client transactions, their timeouts and transport
errors, a CANCEL from upstream, the passing of time — and executes the
actions it returns (:mod:`sipyard.proxy.actions`). Nothing here sends, reads
a clock or knows a transaction object: branches are small integers.

The rules, and where the RFC leaves room, the choice made:

- Provisional responses other than 100 are forwarded at once while no final
  went upstream (and the caller has not CANCELed). Every 2xx to an INVITE is
  forwarded, late ones and retransmissions too (§16.7 step 5, §13.2.2.4);
  for a non-INVITE only the first final goes up.
- Other finals wait until every branch is final and no target is left; then
  the best is chosen (§16.7 step 6): a 6xx first, else the lowest class;
  within 4xx, 407 then 401 then 415/420/484 (what the caller can act on, as
  Kamailio and Flexisip rank them); then first come. A response we made up —
  408 for timer B/F/C, 503 for a transport error (§16.9) — loses to any real
  one. A chosen 401/407 carries the WWW-/Proxy-Authenticate values of every
  401/407 received (§16.7 step 7); a chosen 503 becomes our 500 (step 6); no
  final at all gives 408. A non-INVITE is never answered with 408 (RFC 4320
  §4.2): :class:`GiveUp` instead.
- A 2xx to an INVITE cancels the other branches with ``Reason: SIP;cause=200;
  text="Call completed elsewhere"``; a 6xx cancels them without a Reason; both
  stop new branches. The 6xx waits, like any final, until the CANCELed
  branches end (the 487s come quickly), so a 2xx that raced it can still go
  up first, as the server transaction requires (no 2xx after a 6xx).
- CANCEL from upstream (§16.10): branches that had a provisional get a
  CANCEL now; the others when their first provisional arrives (§9.1 forbids
  earlier) or never, if they time out; untried targets are dropped. When all
  branches have ended the caller gets 487 from us, unless a 2xx went up.
- Serial forking (§16.6, Kamailio's t_load_contacts / repro's
  EQUAL_Q_PARALLEL): targets grouped by q, highest first, equal q in parallel.
  The next group starts when the current one has no live branch left, or when
  ``group_timeout`` passes (the earlier group then keeps ringing unless
  ``cancel_on_group_timeout``).
- 3xx recursion (§16.5, repro's RecursiveRedirect): the Contacts of a 300-302
  become targets, duplicates of any target ever in the set dropped
  (§19.1.4 comparison), at most ``max_depth`` redirections deep and
  ``max_branches`` branches in all. They form groups (by q) placed before
  the remaining ones. A 3xx that added targets is no longer a candidate
  answer; one that added none stays one.
- Timer C (§16.8): per INVITE branch, ``timer_c`` (> 3 min) after the start,
  restarted by every provisional but 100. When it fires on a branch that had a
  provisional, the branch is CANCELed; otherwise the branch ends as if a 408
  came (:class:`AbandonBranch`). A CANCELed branch that still has no final
  after ``cancel_guard`` (64*T1, §9.1's "consider the original transaction
  cancelled") ends the same way, so a silent callee cannot hold the context.

``next_deadline`` is the earliest of the context's timers; a proxy with many
contexts keeps them in one heap keyed by that deadline and re-reads it after
each call, as it does for the transaction layers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from enum import IntEnum
from itertools import count

from sipyard.sip.errors import ParseError
from sipyard.sip.message import STAR, Response, canonical_name
from sipyard.sip.uri import Uri, parse_uri, uri_equal

from .actions import (
    REASON_COMPLETED_ELSEWHERE,
    AbandonBranch,
    CancelBranch,
    ForwardResponse,
    GiveUp,
    ProxyAction,
    SendFinal,
    StartBranch,
    Target,
)
from .routing import strip_top_via

__all__ = ["BranchState", "Branch", "ResponseContext", "group_by_q"]

#: Timer C must be greater than 3 minutes (§16.6 step 11).
DEFAULT_TIMER_C = 181.0
_CHALLENGES = (401, 407)
_RECURSE_ON = frozenset({300, 301, 302})
# Preference inside 4xx: what the caller can act on first (lower wins).
_PREF_4XX = {407: 0, 401: 1, 415: 2, 420: 2, 484: 2}


class BranchState(IntEnum):
    TRYING = 1  # forwarded, nothing heard yet
    PROCEEDING = 2  # a provisional came: it can be CANCELed
    COMPLETED = 3  # a final came, or we ended the branch with a final of our own


class Branch:
    """One forwarded copy. ``final`` is None for a final we made up (``local``)."""

    __slots__ = ("id", "target", "state", "provisional", "final", "status", "local", "order",
                 "candidate", "timer_c", "guard", "cancel_wanted", "cancel_reason", "cancel_sent")

    def __init__(self, branch_id: int, target: Target) -> None:
        self.id = branch_id
        self.target = target
        self.state = BranchState.TRYING
        self.provisional: Response | None = None  # the last one other than 100
        self.final: Response | None = None
        self.status = 0
        self.local = False
        self.order = 0  # when the final came, for "first come"
        self.candidate = True  # may be chosen as the best answer
        self.timer_c: float | None = None
        self.guard: float | None = None  # after our CANCEL: give up at this time
        self.cancel_wanted = False  # CANCEL as soon as a provisional arrives
        self.cancel_reason: str | None = None
        self.cancel_sent = False

    @property
    def live(self) -> bool:
        return self.state is not BranchState.COMPLETED

    def __repr__(self) -> str:
        return f"<Branch {self.id} {self.target.uri} {self.state.name} status={self.status}>"


def group_by_q(targets: Iterable[Target]) -> list[list[Target]]:
    """Targets in groups of equal q, highest q first, given order kept inside a group."""
    groups: list[list[Target]] = []
    for t in sorted(targets, key=lambda t: -t.q):
        if groups and groups[-1][0].q == t.q:
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups


def _q_of(value: str | None) -> float:
    if value is None:
        return 1.0
    try:
        q = float(value)
    except ValueError:
        return 1.0
    return min(max(q, 0.0), 1.0)


class ResponseContext:
    """Forking, best-response selection, CANCEL and timer C of one proxied request."""

    def __init__(self, targets: Sequence[Target], *, invite: bool,
                 timer_c: float = DEFAULT_TIMER_C, group_timeout: float | None = None,
                 cancel_on_group_timeout: bool = False, cancel_guard: float = 32.0,
                 recurse: bool = True, max_depth: int = 3, max_branches: int = 32) -> None:
        self.invite = invite
        self.timer_c = timer_c
        self.group_timeout = group_timeout
        self.cancel_on_group_timeout = cancel_on_group_timeout
        self.cancel_guard = cancel_guard
        self.recurse = recurse
        self.max_depth = max_depth
        self.max_branches = max_branches
        self._branches: dict[int, Branch] = {}
        self._seen: list[Uri | str] = []
        # at most max_branches targets are ever kept (or compared: _is_new is linear); a
        # plain loop, since mypyc turns a generator argument into a list, comparing them all
        kept: list[Target] = []
        for t in targets:
            if len(kept) >= max_branches:
                break
            if self._is_new(t.uri):
                kept.append(t)
        self._pending = group_by_q(kept)
        if not self._pending:
            raise ValueError("a response context needs at least one target")
        self._group_deadline: float | None = None
        self._order = count(1)
        self.final_sent = False  # an answer went upstream (or GiveUp)
        self.answered = False  # a 2xx went upstream (INVITE)
        self.cancelled = False  # the caller CANCELed
        self.declined = False  # a 6xx came: no new branches

    # -- reading -------------------------------------------------------------

    @property
    def branches(self) -> Mapping[int, Branch]:
        return self._branches

    @property
    def done(self) -> bool:
        """The answer went upstream and every branch has ended: the driver may drop it."""
        return self.final_sent and not any(b.live for b in self._branches.values())

    def next_deadline(self) -> float | None:
        """The earliest timer C, CANCEL guard or fork-group timeout, or None."""
        times = [t for b in self._branches.values() if b.live
                 for t in (b.timer_c, b.guard) if t is not None]
        if self._group_deadline is not None:
            times.append(self._group_deadline)
        return min(times) if times else None

    # -- events ----------------------------------------------------------------

    def start(self, now: float) -> list[ProxyAction]:
        """The first group's :class:`StartBranch` actions."""
        if self._branches:
            raise RuntimeError("response context already started")
        return self._advance(now)

    def on_response(self, branch_id: int, response: Response, now: float) -> list[ProxyAction]:
        """A response its client transaction passed up for ``branch_id``."""
        b = self._branches[branch_id]
        status = response.status
        if 200 <= status < 300:
            return self._on_2xx(b, response, now)
        if not b.live:
            return []  # a late provisional or final on a branch we already ended
        if status < 200:
            return self._on_1xx(b, response, now)
        return self._on_failure(b, response, now)

    def on_timeout(self, branch_id: int, now: float) -> list[ProxyAction]:
        """Timer B or F of the branch's client transaction: as if a 408 came (§16.7 step 2)."""
        return self._end_locally(branch_id, 408, now)

    def on_transport_error(self, branch_id: int, now: float) -> list[ProxyAction]:
        """The branch could not be sent: as if a 503 came (§16.9)."""
        return self._end_locally(branch_id, 503, now)

    def on_cancel(self, now: float, reason: str | None = None) -> list[ProxyAction]:
        """The caller CANCELed (§16.10); the driver already answered the CANCEL with 200.

        ``reason`` is the CANCEL's Reason header, passed on (RFC 3326).
        Ignored for a non-INVITE and once an answer went upstream.
        """
        if not self.invite or self.final_sent or self.cancelled:
            return []
        self.cancelled = True
        self._stop_branching()
        out: list[ProxyAction] = []
        for b in self._live():
            out += self._cancel(b, reason, now)
        return out + self._advance(now)

    def handle_timer(self, now: float) -> list[ProxyAction]:
        """Fire timer C, CANCEL guards and the fork-group timeout due at ``now``."""
        out: list[ProxyAction] = []
        for b in self._live():
            if b.timer_c is not None and b.timer_c <= now:
                b.timer_c = None
                if b.state is BranchState.PROCEEDING:
                    out += self._send_cancel(b, None, now)
                else:
                    self._set_final(b, None, 408)
                    out.append(AbandonBranch(b.id))
            elif b.guard is not None and b.guard <= now:
                self._set_final(b, None, 408)
                out.append(AbandonBranch(b.id))
        if self._group_deadline is not None and self._group_deadline <= now:
            self._group_deadline = None
            if self._may_branch() and self._pending:
                if self.cancel_on_group_timeout:
                    for b in self._live():
                        out += self._cancel(b, None, now)
                out += self._start_group(now)
        return out + self._advance(now)

    # -- responses ---------------------------------------------------------------

    def _on_1xx(self, b: Branch, response: Response, now: float) -> list[ProxyAction]:
        b.state = BranchState.PROCEEDING
        out: list[ProxyAction] = []
        if response.status > 100:
            b.provisional = response
            if b.timer_c is not None:
                b.timer_c = now + self.timer_c
            if not self.final_sent and not self.cancelled:
                out.append(ForwardResponse(b.id, strip_top_via(response)))
        if b.cancel_wanted and not b.cancel_sent:
            out += self._send_cancel(b, b.cancel_reason, now)
        return out

    def _on_2xx(self, b: Branch, response: Response, now: float) -> list[ProxyAction]:
        if b.live:
            self._set_final(b, response, response.status)
        if not self.invite:
            if self.final_sent:
                return []
            self.final_sent = True
            self._stop_branching()
            return [ForwardResponse(b.id, strip_top_via(response))]
        out: list[ProxyAction] = [ForwardResponse(b.id, strip_top_via(response))]
        if not self.answered:
            self.answered = self.final_sent = True
            self._stop_branching()
            for other in self._live():
                out += self._cancel(other, REASON_COMPLETED_ELSEWHERE, now)
        return out

    def _on_failure(self, b: Branch, response: Response, now: float) -> list[ProxyAction]:
        status = response.status
        self._set_final(b, response, status)
        out: list[ProxyAction] = []
        if status in _RECURSE_ON and self.recurse and self._may_branch():
            b.candidate = not self._recurse_on(b, response)
        elif status >= 600 and not self.declined:
            self.declined = True
            self._stop_branching()
            for other in self._live():
                out += self._cancel(other, None, now)
        return out + self._advance(now)

    def _end_locally(self, branch_id: int, status: int, now: float) -> list[ProxyAction]:
        b = self._branches[branch_id]
        if not b.live:
            return []
        self._set_final(b, None, status)
        return self._advance(now)

    def _set_final(self, b: Branch, response: Response | None, status: int) -> None:
        b.state = BranchState.COMPLETED
        b.final = response
        b.status = status
        b.local = response is None
        b.order = next(self._order)
        b.timer_c = b.guard = None

    def _recurse_on(self, b: Branch, response: Response) -> bool:
        """Add a 3xx's Contacts to the target set; whether any was new (§16.5)."""
        depth = b.target.depth + 1
        if depth > self.max_depth:
            return False
        try:
            contacts = response.contacts
        except ParseError:
            return False
        if contacts == STAR or isinstance(contacts, str):
            return False
        # only as many as may still become branches: a 3xx with thousands of Contacts
        # costs no more than one with max_branches
        room = self.max_branches - len(self._branches) - sum(map(len, self._pending))
        new = [Target(c.uri, _q_of(c.param("q")), depth)
               for c in itertools.islice(contacts, max(room, 0)) if self._is_new(c.uri)]
        if not new:
            return False
        self._pending[0:0] = group_by_q(new)
        return True

    # -- branching -----------------------------------------------------------------

    def _live(self) -> list[Branch]:
        return [b for b in self._branches.values() if b.live]

    def _may_branch(self) -> bool:
        return not (self.final_sent or self.declined or self.cancelled)

    def _stop_branching(self) -> None:
        self._pending.clear()
        self._group_deadline = None

    def _is_new(self, uri: str) -> bool:
        """Whether ``uri`` was never in the target set; records it (§16.5: at most once)."""
        try:
            parsed: Uri | str = parse_uri(uri)
        except ParseError:
            parsed = uri
        for seen in self._seen:
            if isinstance(parsed, str) or isinstance(seen, str):
                if parsed == seen:
                    return False
            elif uri_equal(parsed, seen):
                return False
        self._seen.append(parsed)
        return True

    def _start_group(self, now: float) -> list[ProxyAction]:
        out: list[ProxyAction] = []
        for target in self._pending.pop(0):
            if len(self._branches) >= self.max_branches:
                self._stop_branching()
                break
            b = Branch(len(self._branches), target)
            if self.invite:
                b.timer_c = now + self.timer_c
            self._branches[b.id] = b
            out.append(StartBranch(b.id, target))
        if self._pending and self.group_timeout is not None:
            self._group_deadline = now + self.group_timeout
        else:
            self._group_deadline = None
        return out

    def _advance(self, now: float) -> list[ProxyAction]:
        """Start the next group when nothing is live; answer when nothing is left."""
        out: list[ProxyAction] = []
        while not self._live() and self._may_branch() and self._pending:
            out += self._start_group(now)
        if not self._live() and not self.final_sent:
            self.final_sent = True
            self._stop_branching()
            out += self._answer()
        return out

    # -- cancelling ------------------------------------------------------------------

    def _cancel(self, b: Branch, reason: str | None, now: float) -> list[ProxyAction]:
        """CANCEL ``b`` now if it had a provisional, else as soon as one comes (§9.1)."""
        if not self.invite or b.cancel_sent:
            return []
        if b.state is BranchState.PROCEEDING:
            return self._send_cancel(b, reason, now)
        b.cancel_wanted = True
        b.cancel_reason = reason
        return []

    def _send_cancel(self, b: Branch, reason: str | None, now: float) -> list[ProxyAction]:
        b.cancel_sent = True
        b.timer_c = None
        b.guard = now + self.cancel_guard
        return [CancelBranch(b.id, reason)]

    # -- the answer ------------------------------------------------------------------

    def _answer(self) -> list[ProxyAction]:
        if self.cancelled:
            return [SendFinal(487, "Request Terminated")]
        candidates = [b for b in self._branches.values() if b.candidate and b.status >= 300]
        if not candidates:
            return [self._timeout()]
        best = min(candidates, key=_rank)
        status = best.status
        if status == 503:  # ours (transport error) or the callee's: §16.7 step 6
            return [SendFinal(500, "Server Internal Error")]
        if status == 408 and (best.local or not self.invite):
            return [self._timeout()]
        assert best.final is not None
        if status in _CHALLENGES:
            return [ForwardResponse(best.id, _merge_challenges(best, candidates))]
        return [ForwardResponse(best.id, strip_top_via(best.final))]

    def _timeout(self) -> ProxyAction:
        return SendFinal(408, "Request Timeout") if self.invite else GiveUp()


def _rank(b: Branch) -> tuple[bool, int, int, int]:
    """Sort key of a candidate final: lower is better (see the module docstring)."""
    status = b.status
    klass = 0 if status >= 600 else status // 100
    pref = _PREF_4XX.get(status, 3)
    return (b.local, klass, pref, b.order)


def _merge_challenges(best: Branch, candidates: list[Branch]) -> Response:
    """``best``'s 401/407 with every other 401/407's challenges added (§16.7 step 7)."""
    assert best.final is not None
    resp = strip_top_via(best.final)
    headers = list(resp.headers)
    for b in sorted(candidates, key=lambda b: b.order):
        if b is best or b.final is None or b.status not in _CHALLENGES:
            continue
        for name in ("WWW-Authenticate", "Proxy-Authenticate"):
            headers += [(name, line) for line in b.final.get_lines(name)]
    return Response(resp.status, resp.reason, resp.version, headers,
                    [canonical_name(n) for n, _ in headers], resp.body)
