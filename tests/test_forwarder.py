"""The proxy engine (sipyard.forwarder) driven with a fake wire and a fake clock.

Why here and not on the wire: timer C must be more than 3 minutes (RFC 3261 §16.6 step 11;
``[proxy] timer_c`` refuses less), so the forwarder — the same object the server runs —
is driven with a clock the test moves: the bytes it would send are collected, responses
are built from them as a phone would, and what goes upstream is recorded.
"""

from __future__ import annotations

from typing import Any

from sipyard.forwarder import Fork, Forwarder, Hop, Wire
from sipyard.proxy.actions import Target
from sipyard.sip.message import Request, Response, build_response, parse_message
from sipyard.sip.source import Listen, Source
from sipyard.sip.transaction import ServerTransaction, TxKey

PHONE = Source("udp", "192.0.2.40", 5060, None, ("192.0.2.1", 5060))
CALLER = Source("udp", "192.0.2.9", 5060, None, ("192.0.2.1", 5060))


class Harness:
    def __init__(self, **kw: Any) -> None:
        self.now = 0.0
        self.sent: list[tuple[Source, bytes]] = []
        self.upstream: list[int] = []  # statuses relayed or answered on the server transaction
        self.ours: list[int] = []  # the ones we made up
        self.fw = Forwarder(Wire(send=self._send, relay=self._relay, respond=self._respond,
                                 drop=lambda tx: None, clock=lambda: self.now, arm=lambda: None,
                                 udp_local=lambda ip: ("192.0.2.1", 5060)), **kw)
        self.fw.set_addresses([Listen("udp", "192.0.2.1", 5060)], ())
        # a real one: the compiled forwarder checks the type
        self.tx = ServerTransaction(TxKey("z9hG4bKcaller1", "192.0.2.9:5060", "INVITE"), "INVITE",
                                    False, CALLER)

    def _send(self, dest: Any, data: bytes) -> bool:
        self.sent.append((dest, data))
        return True

    def _relay(self, tx: Any, req: Request, resp: Response) -> None:
        self.upstream.append(resp.status)

    def _respond(self, tx: Any, req: Request, status: int, reason: str, headers: Any) -> None:
        self.upstream.append(status)
        self.ours.append(status)

    def invite(self) -> None:
        data = (b"INVITE sip:bob@192.0.2.1 SIP/2.0\r\n"
                b"Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKcaller1\r\n"
                b"Max-Forwards: 70\r\nFrom: <sip:alice@192.0.2.1>;tag=a1\r\n"
                b"To: <sip:bob@192.0.2.1>\r\nCall-ID: c1@192.0.2.9\r\nCSeq: 1 INVITE\r\n"
                b"Contact: <sip:alice@192.0.2.9>\r\nContent-Length: 0\r\n\r\n")
        req = parse_message(data)
        assert isinstance(req, Request)
        self.fw.fork(req, req, CALLER, self.tx,
                     [Target("sip:bob@192.0.2.40", data=Hop(PHONE))])

    def last(self, method: str) -> Request:
        for _dest, data in reversed(self.sent):
            if data.startswith(method.encode() + b" "):
                msg = parse_message(data)
                assert isinstance(msg, Request)
                return msg
        raise AssertionError(f"no {method} sent: {[d[:20] for _, d in self.sent]}")

    def phone(self, status: int, reason: str, to: str = "INVITE") -> None:
        msg = parse_message(build_response(self.last(to), status, reason, to_tag="b1"))
        assert isinstance(msg, Response)
        assert self.fw.on_response(msg, PHONE)

    def run_until(self, t: float) -> None:
        """Move the clock to ``t``, firing every deadline on the way (the app's timer)."""
        while True:
            d = self.fw.next_deadline()
            if d is None or d > t:
                break
            self.now = d
            self.fw.handle_timer(d)
        self.now = t


def test_timer_c_fires_on_a_ringing_branch_cancel_then_the_callees_487_goes_up() -> None:
    h = Harness(timer_c=181.0)
    h.invite()
    h.phone(180, "Ringing")
    h.now = 100.0
    h.phone(180, "Ringing")  # a provisional restarts timer C: now due at 281
    h.run_until(280.9)
    assert not any(d.startswith(b"CANCEL") for _, d in h.sent)
    h.run_until(281.0)
    cancel = h.last("CANCEL")  # timer C fired: the branch is CANCELed (§16.8), no Reason
    assert cancel.get("reason") is None and cancel.uri == "sip:bob@192.0.2.40"
    h.phone(200, "OK", to="CANCEL")
    h.phone(487, "Request Terminated")
    assert h.upstream == [180, 180, 487] and h.ours == []
    assert h.last("ACK").uri == "sip:bob@192.0.2.40"  # the client transaction ACKed the 487
    assert h.fw.active == 0


def test_timer_c_after_only_100_then_no_answer_to_the_cancel_gives_408() -> None:
    h = Harness(timer_c=181.0)
    h.invite()
    h.phone(100, "Trying")  # stops timer A/B; 100 never restarts timer C
    h.run_until(181.0)
    h.last("CANCEL")
    h.run_until(181.0 + 32.0)  # the CANCEL guard (64*T1): the branch is given up
    assert h.upstream == [408] and h.ours == [408]
    assert h.fw.active == 0


def test_no_provisional_at_all_ends_by_timer_b_long_before_timer_c() -> None:
    h = Harness(timer_c=181.0)
    h.invite()
    h.run_until(40.0)
    assert h.upstream == [408]  # timer B (64*T1 = 32 s) fired first: our 408
    assert not any(d.startswith(b"CANCEL") for _, d in h.sent)


def _named(h: Harness) -> list[Any]:
    """Fork to a target named by a host; the resolver's callbacks are returned, not run."""
    pending: list[Any] = []
    h.fw.resolver = lambda uri, done: pending.append((uri, done))
    data = (b"INVITE sip:bob@192.0.2.1 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKcaller2\r\n"
            b"Max-Forwards: 70\r\nFrom: <sip:alice@192.0.2.1>;tag=a2\r\n"
            b"To: <sip:bob@192.0.2.1>\r\nCall-ID: c2@192.0.2.9\r\nCSeq: 1 INVITE\r\n"
            b"Content-Length: 0\r\n\r\n")
    req = parse_message(data)
    assert isinstance(req, Request)
    h.fw.fork(req, req, CALLER, h.tx, [Target("sip:bob@pbx.example.com")])  # type: ignore[arg-type]
    return pending


def test_a_target_named_by_a_host_waits_for_the_resolver() -> None:
    h = Harness()
    pending = _named(h)
    assert [u for u, _ in pending] == ["sip:bob@pbx.example.com"] and h.sent == []
    pending[0][1](PHONE)  # resolved
    assert h.last("INVITE").uri == "sip:bob@pbx.example.com" and h.sent[-1][0] == PHONE


def test_cancel_while_resolving_sends_nothing_and_the_caller_gets_487() -> None:
    h = Harness()
    pending = _named(h)
    assert h.fw.cancel(h.tx)  # type: ignore[arg-type]
    pending[0][1](PHONE)  # the answer comes after the CANCEL: the INVITE never leaves
    assert h.sent == [] and h.upstream == [487] and h.fw.active == 0


def test_a_name_that_does_not_resolve_fails_the_branch() -> None:
    h = Harness()
    pending = _named(h)
    pending[0][1](None)
    assert h.sent == [] and h.upstream == [500]  # a transport error is a 503: §16.7 -> 500


def test_a_finished_call_is_not_kept_alive_by_its_timers() -> None:
    """Timer C (> 3 min) and timer M (32 s) entries outlive the call: they must not hold
    the fork, its requests and contexts (memory, and the GC walking them all)."""
    h = Harness(timer_c=181.0)
    h.invite()
    h.phone(180, "Ringing")
    h.phone(200, "OK")
    assert h.upstream == [180, 200]
    assert h.fw.active == 0  # the fork is done and forgotten
    assert not any(isinstance(entry[2], Fork) for entry in h.fw._heap)
    txs = list(h.fw.ctl._txs.values())
    assert txs and all(tx.request is None for tx in txs)  # Accepted: 2xx still relayed
    h.phone(200, "OK")  # a retransmitted 2xx still goes up (RFC 6026)
    assert h.upstream == [180, 200, 200]


def test_ip_domains_of_other_hosts_are_not_taken_for_us() -> None:
    """A cluster lists every host's address among its domains: only the ones we are bound
    to (or any, on a wildcard bind) mean us; names always do."""
    h = Harness()
    h.fw.set_addresses([Listen("udp", "192.0.2.1", 5060)],
                       ("192.0.2.1", "192.0.2.2", "sip.example.com"))
    assert h.fw.local.is_our_uri("sip:192.0.2.1:5060;lr")
    assert not h.fw.local.is_our_uri("sip:192.0.2.2:5060;lr")  # host B, same port
    assert h.fw.local.is_our_uri("sip:sip.example.com:5060;lr")
    h.fw.set_addresses([Listen("udp", "0.0.0.0", 5060)], ("192.0.2.2",))
    assert h.fw.local.is_our_uri("sip:192.0.2.2:5060;lr")  # could be ours: we cannot tell


def test_an_alias_is_kept_while_a_route_leads_to_another_host() -> None:
    """In a cluster the alias belongs to the host where the flow lives: a hop that still
    has a Route to follow passes the Request-URI on as it is."""
    h = Harness()
    data = (b"BYE sip:alice@10.0.0.5;alias=203.0.113.7~40000~1 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 192.0.2.40:5060;branch=z9hG4bKbye1\r\n"
            b"Route: <sip:192.0.2.2:5060;lr>\r\n"
            b"Max-Forwards: 70\r\nFrom: <sip:bob@192.0.2.1>;tag=b1\r\n"
            b"To: <sip:alice@192.0.2.1>;tag=a1\r\nCall-ID: c2@192.0.2.9\r\nCSeq: 2 BYE\r\n"
            b"Content-Length: 0\r\n\r\n")
    req = parse_message(data)
    assert isinstance(req, Request)
    h.fw.fork(req, req, PHONE, h.tx, [Target(req.uri)], record_route=False)  # type: ignore[arg-type]
    dest, sent = h.sent[-1]
    assert (dest.ip, dest.port) == ("192.0.2.2", 5060)  # to the Route, not to the alias
    assert sent.startswith(b"BYE sip:alice@10.0.0.5;alias=203.0.113.7~40000~1 SIP/2.0")
