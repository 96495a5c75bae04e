"""The redirect server: runs the redirector chain for a request (DESIGN §3, sipXregistry's model).

Contract (what a redirector may rely on)
  * ``process(ctx)`` is synchronous and cheap. It returns ``Result.SUCCESS``, ``Result.ERROR``
    (→ 500), an ``ErrorDescriptor`` (a 4xx–6xx answer of its choosing) or ``Result.SUSPEND``.
    An exception counts as ERROR 500 and is logged with the redirector's name.
  * ERROR stops the chain; every redirector holding state for the request gets ``cancel(seq)``.
  * SUSPEND means "I started async work and will call the resume handle" (``ctx.resume_handle()``
    or ``RedirectServer.resume(seq, name)``). The chain still runs to its end (later redirectors
    see a complete pass), the resulting response is thrown away, and once *every* redirector
    that suspended has resumed, the whole chain runs again from the start with the same
    ``seq`` and the same private storage. A redirector may suspend again on a later pass;
    after ``MAX_PASSES`` passes the request fails with 500.
  * Private storage: ``ctx.storage`` is a slot per (seq, redirector), kept across passes and
    freed when the request ends, however it ends.
  * ``cancel(seq)`` reaches every redirector that suspended or stored something for the request
    when the request ends: by CANCEL (answer 487), transaction or server-side timeout (408),
    reload (500 + Retry-After), shutdown (503), another redirector's ERROR — and also on normal
    completion, so "drop what you hold for seq" is the only meaning it has and cleanup cannot
    be forgotten. It must not block; exceptions from it are logged and ignored.
  * Sequence numbers are unsigned 32-bit, incrementing and wrapping; a number still in flight
    is skipped, never reused.
  * Every suspended request is bounded by ``[redirect] suspend_timeout`` (sipX had none):
    past it the request is answered 408 and its state is cancelled and freed.

Answers (after a complete pass)
  * contacts → 302 Moved Temporarily, one Contact per target, highest q first;
  * no contacts and the target is a configured line (it exists but nothing is registered)
    → 480 Temporarily Unavailable; otherwise (or when a redirector sealed the set empty,
    e.g. a pick-up that found no ringing call) → 404 Not Found;
  * a contact equal to the Request-URI would send the caller straight back here: it is
    dropped, and if nothing else is left the answer is 482 Loop Detected.

Cost: a request that suspends once runs the chain twice plus one future and one timeout; the
bindings are fetched once and reused by the re-run, so the re-run costs what the first pass did.

Reload (``close()``): requests still in flight are answered 500 with ``Retry-After: 1`` rather
than re-run on the new chain — a pick-up search or any other suspended work belongs to the old
redirector instances, and a caller retrying after a second gets a consistent answer.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from sipyard.compiled import mypyc_attr
from sipyard.sip.errors import ParseError
from sipyard.sip.uri import SipUri, parse_uri, uri_equal

from .contacts import Contact, ContactSet
from .services import BindingLike, Services, line_aor

if TYPE_CHECKING:
    from sipyard.config import Config
    from sipyard.sip.message import Request

__all__ = [
    "Result", "ErrorDescriptor", "NEEDS_AUTH", "Redirector", "RedirectContext", "Slot",
    "Services", "BindingLike", "RedirectOutcome", "RedirectServer", "ResumeHandle",
    "line_aor", "MAX_PASSES", "SEQ_MASK",
]

SEQ_MASK: Final = 0xFFFFFFFF
#: Passes of the chain one request may take (a redirector suspending forever is a bug).
MAX_PASSES: Final = 16


class Result(enum.Enum):
    SUCCESS = "success"
    ERROR = "error"
    SUSPEND = "suspend"


@dataclass(frozen=True, slots=True)
class ErrorDescriptor:
    """A redirector's final answer instead of the chain's (sipX's ErrorDescriptor).

    ``warning`` becomes ``Warning: <code> <agent> "<text>"``; ``headers`` are sent as given
    (Retry-After, Allow, Accept, Unsupported …).
    """

    status: int = 500
    reason: str = "Server Internal Error"
    warning: str | None = None
    warning_code: int = 399
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 699:
            raise ValueError(f"an ErrorDescriptor status must be 4xx-6xx, not {self.status}")
        if not 300 <= self.warning_code <= 399:
            raise ValueError(f"a Warning code must be 3xx, not {self.warning_code}")


#: The caller must authenticate first: the app answers with a digest challenge (401).
NEEDS_AUTH: Final = ErrorDescriptor(401, "Unauthorized")
_INTERNAL: Final = ErrorDescriptor()


class Slot:
    """A redirector's private storage for one request (kept across passes)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Any = None

    def get(self, default: Any = None) -> Any:
        return default if self.value is None else self.value

    def set(self, value: Any) -> None:
        self.value = value

    def clear(self) -> None:
        self.value = None


class _Request:
    """Server-side record of one request in flight."""

    __slots__ = ("seq", "key", "request", "caller", "target", "line", "bindings", "slots",
                 "suspended", "pending", "resumed_early", "running", "waiter", "ended",
                 "cancelled", "finished", "passes", "timer", "timed_out")

    def __init__(self, seq: int, key: Hashable, request: Request, caller: str | None) -> None:
        self.seq = seq
        self.key = key
        self.request = request
        self.caller = caller
        self.target: SipUri | None = None
        self.line: str | None = None
        self.bindings: Sequence[BindingLike] = ()
        self.slots: dict[int, Slot] | None = None
        self.suspended: set[int] = set()  # every redirector that ever suspended
        self.pending: set[int] = set()  # suspended on the last pass, not resumed yet
        self.resumed_early: set[int] = set()  # resumed while the pass was still running
        self.running = False
        self.waiter: asyncio.Future[None] | None = None
        self.ended: RedirectOutcome | None = None
        self.cancelled = False
        self.finished = False
        self.passes = 0
        self.timer: asyncio.TimerHandle | None = None  # the suspend_timeout, armed once
        self.timed_out = False


class ResumeHandle:
    """Resumes one suspended redirector of one request; harmless after the request ended.

    Bound to the request record, not its number, so a late timer can never resume a newer
    request that happens to reuse the sequence number after wrapping.
    """

    __slots__ = ("_server", "_rec", "_index")

    def __init__(self, server: RedirectServer, rec: _Request, index: int) -> None:
        self._server = server
        self._rec = rec
        self._index = index

    @property
    def seq(self) -> int:
        return self._rec.seq

    def __call__(self) -> None:
        self._server._resume(self._rec, self._index)


class RedirectContext:
    """What a redirector sees: the request, the (rewritable) target, the contact set so far."""

    __slots__ = ("request", "target", "caller", "contacts", "seq", "bindings", "line", "now",
                 "pass_number", "_server", "_rec", "_index", "_user_of", "_user")

    def __init__(self, server: RedirectServer, rec: _Request, target: SipUri, now: float) -> None:
        self.request = rec.request
        #: The Request-URI being redirected; a redirector may replace it for those after it.
        self.target = target
        #: The authenticated line number of the caller, None when unauthenticated.
        self.caller = rec.caller
        self.contacts = ContactSet()
        self.seq = rec.seq
        #: The target line's bindings, fetched once before the first pass.
        self.bindings = rec.bindings
        #: The configured line the Request-URI names, if any.
        self.line = rec.line
        self.now = now
        #: 0 on the first pass, 1 after the first resume …
        self.pass_number = rec.passes
        self._server = server
        self._rec = rec
        self._index = 0
        self._user_of: SipUri | None = None
        self._user: str | None = None

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def storage(self) -> Slot:
        """This redirector's private slot for this request."""
        rec = self._rec
        slots = rec.slots
        if slots is None:
            slots = rec.slots = {}
        slot = slots.get(self._index)
        if slot is None:
            slot = slots[self._index] = Slot()
        return slot

    def resume_handle(self) -> ResumeHandle:
        """A callable that resumes this redirector for this request (for timers, callbacks)."""
        return ResumeHandle(self._server, self._rec, self._index)

    @property
    def max_forwards(self) -> int | None:
        """Loop-detection info: the request's Max-Forwards (None when absent or unreadable)."""
        return _max_forwards(self.request)

    @property
    def user(self) -> str | None:
        """The target's user part, %-decoded (what dial patterns match against); cached."""
        target = self.target
        if self._user_of is not target:
            self._user = target.user_unescaped
            self._user_of = target
        return self._user


def _max_forwards(request: Any) -> int | None:
    try:
        value = request.max_forwards
    except (ParseError, AttributeError):
        return None
    return value if isinstance(value, int) else None


@mypyc_attr(allow_interpreted_subclasses=True)  # plug-ins and tests subclass it
class Redirector(ABC):
    """One step of the chain. Subclasses set ``name`` and implement ``process``.

    Built once per server (config load or reload); per-request state lives in ``ctx.storage``
    or in a dict keyed by seq that ``cancel`` empties.
    """

    name: ClassVar[str] = ""

    def __init__(self, config: Config, services: Services) -> None:
        self.config = config
        self.services = services
        self.log = services.logger

    @abstractmethod
    def process(self, ctx: RedirectContext) -> Result | ErrorDescriptor:
        """Edit ``ctx.contacts`` and say how it went. Synchronous; must be cheap."""

    def cancel(self, seq: int) -> None:  # noqa: B027 - optional hook
        """The request ``seq`` is over: drop timers, callbacks and anything held for it."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """The server is closing (reload or shutdown), after every request was cancelled."""


@dataclass(slots=True, init=False, unsafe_hash=True)
class RedirectOutcome:
    """The answer for the app: status line, headers to add, the targets (for logs/metrics).

    One per request: ``Final`` fields and a written-out ``__init__`` (a dataclass's
    generated one runs as Python even in a compiled build).
    """

    status: Final[int]
    reason: Final[str]
    headers: Final[tuple[tuple[str, str], ...]]
    contacts: Final[tuple[Contact, ...]]
    seq: Final[int]
    error: Final[ErrorDescriptor | None]

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = (),
                 contacts: tuple[Contact, ...] = (), seq: int = -1,
                 error: ErrorDescriptor | None = None) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.contacts = contacts
        self.seq = seq
        self.error = error

    @property
    def needs_auth(self) -> bool:
        """The app should answer with a digest challenge instead of this status."""
        return self.status == 401 and self.error is not None


_WHY: Final[dict[str, tuple[int, str, tuple[tuple[str, str], ...]]]] = {
    "cancel": (487, "Request Terminated", ()),
    "timeout": (408, "Request Timeout", ()),
    "reload": (500, "Server Reloading", (("Retry-After", "1"),)),
    "shutdown": (503, "Service Unavailable", (("Retry-After", "5"),)),
}


class RedirectServer:
    """Runs the chain for each request; owns sequence numbers, storage and suspensions."""

    def __init__(self, config: Config, services: Services, *, chain: Sequence[Redirector],
                 seq_start: int = 0) -> None:
        self.config = config
        self.services = services
        self.log = services.logger
        self.chain: tuple[Redirector, ...] = tuple(chain)
        self._index_of = {r.name or type(r).__name__: i for i, r in enumerate(self.chain)}
        self.suspend_timeout = float(config.redirect.suspend_timeout)
        self._warn_agent = config.server.realm or "sipyard"
        self._next_seq = seq_start & SEQ_MASK
        self._in_flight: dict[int, _Request] = {}
        self._by_key: dict[Hashable, _Request] = {}
        self._suspended = 0
        self._closed = False

    # -- status -----------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def suspended(self) -> int:
        """Requests waiting for a redirector to resume."""
        return self._suspended

    @property
    def storage_slots(self) -> int:
        """Private-storage slots held right now (should be 0 when nothing is in flight)."""
        return sum(len(r.slots) for r in self._in_flight.values() if r.slots)

    def redirector(self, name: str) -> Redirector | None:
        i = self._index_of.get(name)
        return None if i is None else self.chain[i]

    # -- the request path --------------------------------------------------------------
    async def redirect(self, request: Request, caller: str | None = None, *,
                       key: Hashable | None = None) -> RedirectOutcome:
        """Find the targets for ``request``; ``key`` (e.g. the transaction) for cancel_request.

        Cancelling the awaiting task works too: the request's state is cancelled and freed.
        """
        started = self.start(request, caller, key=key)
        if isinstance(started, RedirectOutcome):
            return started
        return await started

    def start(self, request: Request, caller: str | None = None, *,
              key: Hashable | None = None
              ) -> RedirectOutcome | Coroutine[Any, Any, RedirectOutcome]:
        """:meth:`redirect` without a coroutine when it can: the outcome at once, or a
        coroutine to await when the bindings need I/O or a redirector suspended.

        Most requests are answered from memory in one pass of the chain; running that
        pass here saves the coroutines, frames and wake-ups of the async path. Once a
        coroutine is returned it owns the request: the caller must run it (or close it,
        which releases the request like a cancelled task).
        """
        if self._closed:
            reason = "Service Unavailable"
            return RedirectOutcome(503, reason, (("Retry-After", "1"),))
        seq = self._alloc_seq()
        rec = _Request(seq, seq if key is None else key, request, caller)
        self._in_flight[seq] = rec
        if key is not None:
            self._by_key[key] = rec
        done = False
        try:
            target = self._target(rec)
            if isinstance(target, RedirectOutcome):
                done = True
                return target
            services = self.services
            try:
                line = rec.line = services.line_for_uri(target)
                if line is not None:
                    # services written before lookup_now existed always take the async path
                    lookup_now = getattr(services, "lookup_now", None)
                    found = None if lookup_now is None else lookup_now(
                        line_aor(self.config, line))
                    if found is None:  # the bindings need I/O: all of it async
                        return self._drive(rec, target, lookup=True)
                    rec.bindings = found
            except Exception:
                done = True
                return self._lookup_failed(rec)
            outcome = self._pass(rec, target)
            if outcome is not None:
                done = True
                return outcome
            return self._drive(rec, target, lookup=False)
        except BaseException:
            done = True
            raise
        finally:
            if done:
                self._release(rec)

    def _alloc_seq(self) -> int:
        seq = self._next_seq
        in_flight = self._in_flight
        if seq in in_flight:
            if len(in_flight) > SEQ_MASK:  # pragma: no cover - 2**32 requests in flight
                raise RuntimeError("no free redirect sequence number")
            while seq in in_flight:
                seq = (seq + 1) & SEQ_MASK
        self._next_seq = (seq + 1) & SEQ_MASK
        return seq

    def _target(self, rec: _Request) -> SipUri | RedirectOutcome:
        try:
            target = rec.request.ruri
        except ParseError as exc:
            return RedirectOutcome(exc.status, exc.reason, seq=rec.seq)
        if not isinstance(target, SipUri):
            return RedirectOutcome(416, "Unsupported URI Scheme", seq=rec.seq)
        rec.target = target
        return target

    def _lookup_failed(self, rec: _Request) -> RedirectOutcome:
        self.log.exception("redirect: binding lookup for %s failed", rec.request.uri)
        self._cancel_states(rec)
        return RedirectOutcome(500, "Server Internal Error", (("Retry-After", "5"),),
                               seq=rec.seq)

    def _pass(self, rec: _Request, target: SipUri) -> RedirectOutcome | None:
        """One pass of the chain: the outcome, or None when somebody is still suspended.

        A pass whose suspenders all resumed during it runs again at once.
        """
        while True:
            if rec.ended is not None:
                return rec.ended
            outcome = self._run_pass(rec, target)
            if rec.ended is not None:
                return rec.ended
            if outcome is not None:
                return outcome
            if rec.pending:
                return None

    async def _drive(self, rec: _Request, target: SipUri, *, lookup: bool) -> RedirectOutcome:
        """The async rest of a request: its binding lookup (redis) and its suspensions."""
        request = rec.request
        try:
            if lookup:
                try:
                    assert rec.line is not None
                    rec.bindings = await self.services.lookup(line_aor(self.config, rec.line))
                except Exception:
                    return self._lookup_failed(rec)
                outcome = self._pass(rec, target)
                if outcome is not None:
                    return outcome
            while True:
                loop = asyncio.get_running_loop()
                if rec.timer is None:  # one timer for the whole request, from its first suspension
                    rec.timer = loop.call_later(self.suspend_timeout, self._timeout, rec)
                waiter = rec.waiter = loop.create_future()
                self._suspended += 1
                try:
                    await waiter
                finally:
                    rec.waiter = None
                    self._suspended -= 1
                if rec.timed_out and rec.ended is None:
                    self.log.warning("redirect: %s seq %d still suspended after %.1f s (waiting "
                                     "for %s): 408", request.method, rec.seq,
                                     self.suspend_timeout,
                                     ", ".join(self._name(i) for i in sorted(rec.pending)))
                    return self._end(rec, "timeout")
                outcome = self._pass(rec, target)
                if outcome is not None:
                    return outcome
        finally:
            self._release(rec)

    def _timeout(self, rec: _Request) -> None:
        rec.timer = None
        rec.timed_out = True
        waiter = rec.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _run_pass(self, rec: _Request, target: SipUri) -> RedirectOutcome | None:
        """One pass of the chain: an outcome, or None when somebody suspended."""
        ctx = RedirectContext(self, rec, target, self.services.now())
        suspended: list[int] | None = None
        rec.running = True
        try:
            for index, redirector in enumerate(self.chain):
                ctx._index = index
                try:
                    result = redirector.process(ctx)
                except Exception:
                    self.log.exception("redirector %s failed on %s %s (seq %d)",
                                       self._name(index), rec.request.method, rec.request.uri,
                                       rec.seq)
                    result = _INTERNAL
                if result is Result.SUCCESS:
                    if rec.ended is not None:
                        break  # cancelled from inside the pass
                    continue
                if result is Result.SUSPEND:
                    if suspended is None:
                        suspended = []
                    suspended.append(index)
                    rec.suspended.add(index)
                    continue
                if result is Result.ERROR:
                    result = _INTERNAL
                elif not isinstance(result, ErrorDescriptor):
                    self.log.error("redirector %s returned %r; treating it as an error",
                                   self._name(index), result)
                    result = _INTERNAL
                self._cancel_states(rec)
                return self._error_outcome(rec, result)
        finally:
            rec.running = False
        rec.passes += 1
        if suspended is None:
            rec.resumed_early.clear()
            return self._final(rec, ctx)
        if rec.passes >= MAX_PASSES:
            self.log.error("redirect: %s seq %d suspended %d times; giving up",
                           rec.request.method, rec.seq, rec.passes)
            self._cancel_states(rec)
            return self._error_outcome(rec, _INTERNAL)
        rec.pending = set(suspended).difference(rec.resumed_early)
        rec.resumed_early.clear()
        return None

    def _final(self, rec: _Request, ctx: RedirectContext) -> RedirectOutcome:
        contacts = ctx.contacts
        if contacts:
            ordered = self._drop_loops(rec, contacts.ordered())
            if not ordered:
                return RedirectOutcome(482, "Loop Detected", seq=rec.seq)
            return RedirectOutcome(302, "Moved Temporarily",
                                   tuple(("Contact", c.header_value()) for c in ordered),
                                   tuple(ordered), rec.seq)
        if rec.line is not None and not contacts.sealed:
            return RedirectOutcome(480, "Temporarily Unavailable", seq=rec.seq)
        return RedirectOutcome(404, "Not Found", seq=rec.seq)

    def _drop_loops(self, rec: _Request, contacts: list[Contact]) -> list[Contact]:
        """Remove targets equal to the Request-URI: the caller would come straight back."""
        ruri = rec.target
        assert ruri is not None
        host = ruri.host_lower
        # cheap filters before a parse: most targets are other hosts, other users (a
        # target without escapes names an equal user only by containing it) or other
        # ports (an equal URI has the same port, and its digits, §19.1.4)
        user = ruri.user_unescaped
        port = str(ruri.port) if ruri.port is not None else ""
        out = contacts
        for c in contacts:
            uri = c.uri
            if (host not in uri.lower() or (user and user not in uri and "%" not in uri)
                    or port not in uri):
                continue
            try:
                same = uri_equal(parse_uri(c.uri), ruri)
            except ParseError:
                continue
            if same:
                self.log.warning("redirect: %s maps %s back to itself (from %s); dropped",
                                 rec.request.method, rec.request.uri, c.source or "?")
                if out is contacts:
                    out = list(contacts)
                out.remove(c)
        return out

    def _error_outcome(self, rec: _Request, desc: ErrorDescriptor) -> RedirectOutcome:
        headers = list(desc.headers)
        if desc.warning is not None:
            text = desc.warning.replace("\\", "\\\\").replace('"', '\\"')
            headers.append(("Warning", f'{desc.warning_code} {self._warn_agent} "{text}"'))
        return RedirectOutcome(desc.status, desc.reason, tuple(headers), seq=rec.seq, error=desc)

    # -- resume / cancel ----------------------------------------------------------------
    def resume(self, seq: int, redirector: str) -> bool:
        """Resume ``redirector`` (by name) for request ``seq``; False when nothing waits."""
        rec = self._in_flight.get(seq)
        index = self._index_of.get(redirector)
        if rec is None or index is None:
            return False
        return self._resume(rec, index)

    def _resume(self, rec: _Request, index: int) -> bool:
        if rec.finished or rec.ended is not None:
            return False
        if rec.running:
            rec.resumed_early.add(index)
            return True
        if index not in rec.pending:
            return False
        rec.pending.discard(index)
        if not rec.pending:
            waiter = rec.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        return True

    def cancel_request(self, key: Hashable, why: str = "cancel") -> bool:
        """End a request early: ``why`` is "cancel" (487), "timeout" (408), "reload" (500 +
        Retry-After) or "shutdown" (503). ``key`` is what was passed to ``redirect`` (or the
        seq). The awaiting ``redirect()`` returns that outcome. False when no such request."""
        rec = self._by_key.get(key)
        if rec is None and isinstance(key, int):
            rec = self._in_flight.get(key)
        if rec is None or rec.finished or rec.ended is not None:
            return False
        self._end(rec, why)
        return True

    def _end(self, rec: _Request, why: str) -> RedirectOutcome:
        status, reason, headers = _WHY.get(why, (500, "Server Internal Error", ()))
        outcome = rec.ended = RedirectOutcome(status, reason, headers, seq=rec.seq)
        self._cancel_states(rec)
        waiter = rec.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return outcome

    def _cancel_states(self, rec: _Request) -> None:
        """cancel(seq) to every redirector holding state for the request, once."""
        if rec.cancelled:
            return
        rec.cancelled = True
        holders = set(rec.suspended)
        if rec.slots:
            holders.update(i for i, slot in rec.slots.items() if slot.value is not None)
        debug = self.log.isEnabledFor(logging.DEBUG)
        for index in sorted(holders):
            if debug:
                self.log.debug("redirect: seq %d over: cancel(%d) to %s", rec.seq, rec.seq,
                               self._name(index))
            try:
                self.chain[index].cancel(rec.seq)
            except Exception:
                self.log.exception("redirector %s: cancel(%d) failed", self._name(index),
                                   rec.seq)
        rec.pending.clear()

    def _release(self, rec: _Request) -> None:
        """The request is over (answered, cancelled, timed out or its task was cancelled)."""
        self._cancel_states(rec)
        rec.finished = True
        if rec.timer is not None:
            rec.timer.cancel()
            rec.timer = None
        if rec.slots is not None:
            rec.slots.clear()
            rec.slots = None
        if self._in_flight.get(rec.seq) is rec:
            del self._in_flight[rec.seq]
        if self._by_key.get(rec.key) is rec:
            del self._by_key[rec.key]

    def close(self, why: str = "reload") -> None:
        """Stop taking requests; end those in flight ("reload": 500 + Retry-After: 1)."""
        self._closed = True
        for rec in list(self._in_flight.values()):
            if rec.ended is None:
                self._end(rec, why)
        for redirector in self.chain:
            try:
                redirector.close()
            except Exception:
                self.log.exception("redirector %s: close() failed", redirector.name)

    def _name(self, index: int) -> str:
        r = self.chain[index]
        return r.name or type(r).__name__
