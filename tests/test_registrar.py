"""Registrar: RFC 3261 §10.3 (+ RFC 5626 instance/reg-id, RFC 3327 Path) over a store.

Every test runs against an in-memory store that follows the LocationStore
contract; the ordering and replacement tests also run against the real sqlite
store in a temp dir, so the registrar's update functions are checked where
they really execute.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from support import TORTURE, header_values, sip_request, write_config

from sipyard.config import load_config
from sipyard.registrar import Registrar, Reject, Reply, _parse_q
from sipyard.sip.message import Request, parse_message
from sipyard.store import Binding, LocationStore, StoreError, UpdateFn
from sipyard.store.base import normalize_update, sort_key
from sipyard.store.sqlite import SqliteStore
from sipyard.transport import Source

T = TypeVar("T")
NOW = 1_800_000_000.0
SRC = Source("udp", "127.0.0.1", 5062, None, ("127.0.0.1", 5060))
AOR = "sip:10@sipyard.test"


class MemoryStore(LocationStore):
    """The LocationStore contract in a dict; ``fail`` makes every call raise StoreError."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Binding]] = {}
        self.fail = False
        self.updates = 0

    def _check(self) -> None:
        if self.fail:
            raise StoreError("disk on fire")

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _live(self, aor: str, now: float) -> list[Binding]:
        return sorted((b for b in self.data.get(aor, {}).values() if b.expires_at > now),
                      key=sort_key)

    async def lookup(self, aor: str, now: float) -> list[Binding]:
        self._check()
        return self._live(aor, now)

    async def update(self, aor: str, now: float, fn: UpdateFn) -> list[Binding]:
        self._check()
        puts, removes = normalize_update(aor, fn(self._live(aor, now)))
        self.updates += 1
        table = self.data.setdefault(aor, {})
        for rid in removes:
            table.pop(rid, None)
        for b in puts:
            table[b.binding_id] = b
        return self._live(aor, now)

    async def remove_aor(self, aor: str) -> list[Binding]:
        return list(self.data.pop(aor, {}).values())

    async def expire(self, now: float) -> list[Binding]:
        gone = [b for t in self.data.values() for b in t.values() if b.expires_at <= now]
        for b in gone:
            del self.data[b.aor][b.binding_id]
        return gone

    async def all(self, now: float) -> list[Binding]:
        return [b for aor in sorted(self.data) for b in self._live(aor, now)]

    async def count(self, now: float) -> int:
        return len(await self.all(now))

    async def get_state(self, key: str) -> str | None:
        return None

    async def set_state(self, key: str, value: str | None) -> None:
        pass


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def make_config(tmp: Path, **line_extra: dict[str, Any]) -> Any:
    path = write_config(tmp / "conf", lines=range(10, 14),
                        server={"min_expires": 60, "max_expires": 3600,
                                "default_expires": 1800},
                        line_extra=line_extra)
    return load_config(path)


class Harness:
    """A registrar over a store, with helpers to send it REGISTERs."""

    def __init__(self, config: Any, store: LocationStore,
                 runner: Callable[[Awaitable[Any]], Any] | None = None) -> None:
        self.run = runner or run
        self.reg = Registrar(config, store)
        self.store = store
        self.call_id = uuid.uuid4().hex
        self.cseq = 0

    def request(self, contacts: list[str] | None = None, *, expires: int | str | None = None,
                call_id: str | None = None, cseq: int | None = None,
                headers: list[tuple[str, str]] | None = None, to: str = "<sip:10@sipyard.test>"
                ) -> Request:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        hdrs = [("Contact", c) for c in contacts or []]
        if expires is not None:
            hdrs.append(("Expires", str(expires)))
        hdrs += headers or []
        msg = parse_message(sip_request("REGISTER", "sip:sipyard.test", to=to, frm=to,
                                        headers=hdrs, call_id=call_id or self.call_id,
                                        cseq=cseq))
        assert isinstance(msg, Request)
        return msg

    def send(self, contacts: list[str] | None = None, now: float = NOW, line: str = "10",
             **kw: Any) -> Reply:
        return self.run(self.reg.register(self.request(contacts, **kw), line, SRC, now))

    def reject(self, contacts: list[str] | None = None, now: float = NOW, **kw: Any) -> Reject:
        with pytest.raises(Reject) as info:
            self.send(contacts, now, **kw)
        return info.value

    def bindings(self, now: float = NOW) -> list[Binding]:
        return self.run(self.store.lookup(AOR, now))


def contacts_of(reply: Reply) -> list[str]:
    return [v for k, v in reply.headers if k == "Contact"]


def expires_of(reply: Reply) -> dict[str, int]:
    """contact URI -> expires param of the 200's Contact values."""
    out = {}
    for value in contacts_of(reply):
        uri = value[1:value.index(">")]
        out[uri] = int(value.rsplit(";expires=", 1)[1])
    return out


@pytest.fixture
def config(tmp_path: Path) -> Any:
    return make_config(tmp_path, **{"11": {"max_contacts": 2},
                                    "12": {"max_contacts": 2, "overflow": "reject"}})


@pytest.fixture
def h(config: Any) -> Harness:
    return Harness(config, MemoryStore())


@pytest.fixture(params=["memory", "sqlite"])
def hs(request: pytest.FixtureRequest, config: Any, tmp_path: Path) -> Iterator[Harness]:
    """Both stores: the registrar's update functions run inside the real one too."""
    if request.param == "memory":
        yield Harness(config, MemoryStore())
        return
    loop = asyncio.new_event_loop()
    store = SqliteStore(tmp_path / "reg.db")
    loop.run_until_complete(store.open())
    try:
        yield Harness(config, store, loop.run_until_complete)
    finally:
        loop.run_until_complete(store.close())
        loop.close()


# -- expiry -------------------------------------------------------------------------

def test_contact_param_beats_header_beats_default(h: Harness) -> None:
    r = h.send(["<sip:a@192.0.2.1>;expires=120", "<sip:b@192.0.2.1>"], expires=600)
    assert expires_of(r) == {"sip:a@192.0.2.1": 120, "sip:b@192.0.2.1": 600}
    r = h.send(["<sip:c@192.0.2.1>"])  # neither: default_expires
    assert expires_of(r)["sip:c@192.0.2.1"] == 1800
    got = {b.contact: b.expires_at - NOW for b in h.bindings()}
    assert got == {"sip:a@192.0.2.1": 120, "sip:b@192.0.2.1": 600, "sip:c@192.0.2.1": 1800}


@pytest.mark.parametrize("contact,expires", [
    ("<sip:a@192.0.2.1>;expires=59", None),
    ("<sip:a@192.0.2.1>", 1),
    ("<sip:a@192.0.2.1>;expires=30", 3600),  # the contact's own value counts
])
def test_too_brief_is_423_with_min_expires(h: Harness, contact: str, expires: int | None) -> None:
    rej = h.reject([contact], expires=expires)
    assert (rej.status, rej.reason) == (423, "Interval Too Brief")
    assert dict(rej.headers) == {"Min-Expires": "60"}
    assert h.bindings() == []


def test_min_expires_itself_is_fine(h: Harness) -> None:
    assert expires_of(h.send(["<sip:a@192.0.2.1>"], expires=60)) == {"sip:a@192.0.2.1": 60}


@pytest.mark.parametrize("given", ["3601", "99999", "4294967295", "4294967296",
                                   "100000000000000000000000"])
def test_long_expiries_are_clamped(h: Harness, given: str) -> None:
    r = h.send([f"<sip:a@192.0.2.1>;expires={given}"])
    assert expires_of(r) == {"sip:a@192.0.2.1": 3600}
    r = h.send(["<sip:b@192.0.2.1>"], expires=given)
    assert expires_of(r)["sip:b@192.0.2.1"] == 3600
    assert all(b.expires_at == NOW + 3600 for b in h.bindings())


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "0x10", "", "3 600", "٣"])
def test_malformed_expires_header_is_400_naming_it(h: Harness, value: str) -> None:
    rej = h.reject(["<sip:a@192.0.2.1>"], expires=value)
    assert rej.status == 400 and rej.reason.startswith("Bad Expires header")


def test_two_expires_headers_are_400(h: Harness) -> None:
    rej = h.reject(["<sip:a@192.0.2.1>"], headers=[("Expires", "60"), ("Expires", "120")])
    assert rej.status == 400 and rej.reason.startswith("Bad Expires header")


@pytest.mark.parametrize("param", ["expires=abc", "expires=-5", "expires=1e3", "expires"])
def test_malformed_contact_expires_is_400_naming_contact(h: Harness, param: str) -> None:
    rej = h.reject([f"<sip:a@192.0.2.1>;{param}"])
    assert rej.status == 400 and rej.reason.startswith("Bad Contact header")


@pytest.mark.parametrize("contact", ["<sip:a@192.0.2.1", "sip:a@[::1", "\"unterminated <sip:a@x>"])
def test_malformed_contact_is_400_naming_contact(h: Harness, contact: str) -> None:
    rej = h.reject([contact])
    assert rej.status == 400 and rej.reason.startswith("Bad Contact header")


def test_granted_expiry_echoed_exactly_others_rounded_up(h: Harness) -> None:
    h.send(["<sip:a@192.0.2.1>"], expires=600)
    r = h.send(["<sip:b@192.0.2.1>"], expires=300, now=NOW + 10.25)
    assert expires_of(r) == {"sip:b@192.0.2.1": 300, "sip:a@192.0.2.1": math.ceil(589.75)}
    # A refresh gets exactly what it asked for again, never one less.
    r = h.send(["<sip:b@192.0.2.1>"], expires=300, now=NOW + 20.9)
    assert expires_of(r)["sip:b@192.0.2.1"] == 300


def test_expires_zero_removes_only_that_contact(h: Harness) -> None:
    h.send(["<sip:a@192.0.2.1>", "<sip:b@192.0.2.1>"], expires=600)
    r = h.send(["<sip:a@192.0.2.1>;expires=0"])
    assert [b.contact for b in h.bindings()] == ["sip:b@192.0.2.1"]
    assert list(expires_of(r)) == ["sip:b@192.0.2.1"]
    assert (r.before, r.after) == (2, 1)
    r = h.send(["<sip:b@192.0.2.1>"], expires=0)
    assert h.bindings() == [] and contacts_of(r) == [] and (r.before, r.after) == (1, 0)


def test_unbinding_an_unknown_contact_is_harmless(h: Harness) -> None:
    r = h.send(["<sip:nobody@192.0.2.9>"], expires=0)
    assert r.status == 200 and contacts_of(r) == [] and h.bindings() == []


def test_fetch_lists_bindings_and_changes_nothing(h: Harness) -> None:
    h.send(["<sip:a@192.0.2.1>;q=0.5"], expires=600)
    store = h.store
    assert isinstance(store, MemoryStore)
    updates = store.updates
    r = h.send(None, now=NOW + 100)
    assert contacts_of(r) == ["<sip:a@192.0.2.1>;q=0.5;expires=500"]
    assert store.updates == updates and (r.before, r.after) == (1, 1) and r.added == ()


def test_expired_bindings_are_not_listed(h: Harness) -> None:
    h.send(["<sip:a@192.0.2.1>"], expires=60)
    h.send(["<sip:b@192.0.2.1>"], expires=600, call_id="other")
    r = h.send(None, now=NOW + 61)
    assert list(expires_of(r)) == ["sip:b@192.0.2.1"]


# -- Contact: * -----------------------------------------------------------------

def test_star_with_expires_zero_removes_all(hs: Harness) -> None:
    hs.send(["<sip:a@192.0.2.1>", "<sip:b@192.0.2.1>"], expires=600)
    hs.send(["<sip:c@192.0.2.1>"], expires=600, call_id="another-phone", cseq=7)
    r = hs.send(["*"], expires=0)
    assert hs.bindings() == [] and contacts_of(r) == [] and (r.before, r.after) == (3, 0)


@pytest.mark.parametrize("expires", [None, 300])
def test_star_needs_expires_zero(h: Harness, expires: int | None) -> None:
    h.send(["<sip:a@192.0.2.1>"], expires=600)
    rej = h.reject(["*"], expires=expires)
    assert rej.status == 400 and "Contact" in rej.reason
    assert len(h.bindings()) == 1


def test_star_mixed_with_contacts_is_400(h: Harness) -> None:
    rej = h.reject(["*", "<sip:a@192.0.2.1>"], expires=0)
    assert rej.status == 400 and rej.reason.startswith("Bad Contact header")


def test_star_with_old_cseq_of_same_call_id_is_refused(hs: Harness) -> None:
    hs.send(["<sip:a@192.0.2.1>"], expires=600, cseq=10)
    rej = hs.reject(["*"], expires=0, cseq=9)
    assert rej.status == 400 and "CSeq" in rej.reason
    assert len(hs.bindings()) == 1
    hs.send(["*"], expires=0, cseq=11)
    assert hs.bindings() == []


# -- Call-ID / CSeq ordering ------------------------------------------------------

def test_same_call_id_needs_higher_cseq(hs: Harness) -> None:
    hs.send(["<sip:a@192.0.2.1>"], expires=600, cseq=5)
    for cseq in (5, 4):
        rej = hs.reject(["<sip:a@192.0.2.1>"], expires=60, cseq=cseq)
        assert rej.status == 400 and "CSeq" in rej.reason
    (b,) = hs.bindings()
    assert (b.cseq, b.expires_at) == (5, NOW + 600)  # the aborted update wrote nothing
    hs.send(["<sip:a@192.0.2.1>"], expires=60, cseq=6)
    (b,) = hs.bindings()
    assert (b.cseq, b.expires_at) == (6, NOW + 60)


def test_a_retransmission_of_a_stored_register_gets_200(hs: Harness) -> None:
    """The 200 was lost with its transaction (a worker killed, a restart after the
    commit): the phone's retransmission, seconds later, is answered as that 200 would
    have been, and writes nothing."""
    hs.send(["<sip:a@192.0.2.1>"], expires=600, cseq=7)
    again = hs.send(["<sip:a@192.0.2.1>"], now=NOW + 4.0, expires=600, cseq=7)
    # the lost 200 said 600 (a granted expiry is echoed exactly), so does this one
    assert again.status == 200 and expires_of(again) == {"sip:a@192.0.2.1": 600}
    (b,) = hs.bindings()
    assert (b.cseq, b.expires_at) == (7, NOW + 600)
    # past the client's retransmission window, or asking for more: not the same request
    for now, expires in ((NOW + 40.0, 600), (NOW + 1.0, 900)):
        rej = hs.reject(["<sip:a@192.0.2.1>"], now=now, expires=expires, cseq=7)
        assert rej.status == 400 and "CSeq" in rej.reason


def test_other_call_id_updates_whatever_its_cseq(hs: Harness) -> None:
    hs.send(["<sip:a@192.0.2.1>"], expires=600, cseq=500)
    hs.send(["<sip:a@192.0.2.1>"], expires=120, call_id="rebooted-phone", cseq=1)
    (b,) = hs.bindings()
    assert (b.call_id, b.cseq, b.expires_at) == ("rebooted-phone", 1, NOW + 120)
    hs.send(["<sip:a@192.0.2.1>"], expires=0, call_id="third", cseq=1)
    assert hs.bindings() == []


def test_refresh_keeps_registered_at(h: Harness) -> None:
    h.send(["<sip:a@192.0.2.1>"], expires=600)
    h.send(["<sip:a@192.0.2.1>"], expires=600, now=NOW + 300)
    (b,) = h.bindings(NOW + 300)
    assert b.registered_at == NOW and b.expires_at == NOW + 900


# -- q ------------------------------------------------------------------------------

def test_q_kept_and_reply_sorted_by_q(h: Harness) -> None:
    r = h.send(["<sip:low@192.0.2.1>;q=0.1", "<sip:none@192.0.2.1>",
                "<sip:mid@192.0.2.1>;q=0.5", "<sip:top@192.0.2.1>;q=1"], expires=600)
    assert contacts_of(r) == [
        "<sip:none@192.0.2.1>;expires=600", "<sip:top@192.0.2.1>;q=1.0;expires=600",
        "<sip:mid@192.0.2.1>;q=0.5;expires=600", "<sip:low@192.0.2.1>;q=0.1;expires=600"]
    assert {b.contact: b.q for b in h.bindings()} == {
        "sip:low@192.0.2.1": 0.1, "sip:none@192.0.2.1": None, "sip:mid@192.0.2.1": 0.5,
        "sip:top@192.0.2.1": 1.0}


@pytest.mark.parametrize("text,value", [
    ("0", 0.0), ("0.", 0.0), ("0.5", 0.5), ("0.125", 0.125), ("1", 1.0), ("1.000", 1.0)])
def test_qvalues_accepted(text: str, value: float) -> None:
    assert _parse_q(text) == value


@pytest.mark.parametrize("text", ["", "1.5", "2", "-0.5", "nan", "inf", "1e-1", "0.1234", ".5",
                                  "0_5", " 0.5", "0.5 ", "1.001", "0.x", "٠.5"])
def test_bad_qvalues_rejected(text: str) -> None:
    assert _parse_q(text) is None


@pytest.mark.parametrize("text", ["", "1.5", "nan", "1e-1", "0.1234", ".5", "0_5", "1.001"])
def test_bad_qvalues_are_400(h: Harness, text: str) -> None:
    rej = h.reject([f"<sip:a@192.0.2.1>;q={text}"], expires=600)
    assert rej.status == 400 and rej.reason.startswith("Bad Contact header")
    assert h.bindings() == []


# -- contact limits ---------------------------------------------------------------

def test_max_contacts_replaces_the_oldest(hs: Harness) -> None:
    for i, name in enumerate("abc"):
        r = hs.send([f"<sip:{name}@192.0.2.1>"], expires=600, line="11",
                    now=NOW + i, call_id=f"phone-{name}")
    assert sorted(b.contact for b in hs.run(hs.store.lookup("sip:11@sipyard.test", NOW + 5))) == [
        "sip:b@192.0.2.1", "sip:c@192.0.2.1"]
    assert r.after == 2 and sorted(expires_of(r)) == ["sip:b@192.0.2.1", "sip:c@192.0.2.1"]
    # A refresh of an existing binding is no overflow.
    hs.send(["<sip:b@192.0.2.1>"], expires=600, line="11", now=NOW + 5, call_id="phone-b")
    assert len(hs.run(hs.store.lookup("sip:11@sipyard.test", NOW + 5))) == 2


def test_max_contacts_in_one_request_keeps_the_first(h: Harness) -> None:
    r = h.send([f"<sip:{n}@192.0.2.1>" for n in "abcd"], expires=600, line="11")
    assert sorted(expires_of(r)) == ["sip:a@192.0.2.1", "sip:b@192.0.2.1"]


def test_contact_listed_twice_counts_once(h: Harness) -> None:
    h.send(["<sip:a@192.0.2.1>"], expires=600, line="11", call_id="a")
    r = h.send(["<sip:b@192.0.2.1>;expires=60", "<sip:b@192.0.2.1>;expires=120"], line="11",
               call_id="b", now=NOW + 1)
    got = {b.contact: b.expires_at for b in h.run(h.store.lookup("sip:11@sipyard.test", NOW + 1))}
    assert got == {"sip:a@192.0.2.1": NOW + 600, "sip:b@192.0.2.1": NOW + 121}
    assert expires_of(r)["sip:b@192.0.2.1"] == 120


def test_max_contacts_reject_is_503_with_retry_after(hs: Harness) -> None:
    for name in "ab":
        hs.send([f"<sip:{name}@192.0.2.1>"], expires=600, line="12", call_id=name)
    with pytest.raises(Reject) as info:
        hs.send(["<sip:c@192.0.2.1>"], expires=600, line="12", call_id="c")
    assert info.value.status == 503 and "Retry-After" in dict(info.value.headers)
    assert sorted(b.contact for b in hs.run(hs.store.lookup("sip:12@sipyard.test", NOW))) == [
        "sip:a@192.0.2.1", "sip:b@192.0.2.1"]
    # Unregistering one makes room again.
    hs.send(["<sip:a@192.0.2.1>"], expires=0, line="12", call_id="a", cseq=100)
    hs.send(["<sip:c@192.0.2.1>"], expires=600, line="12", call_id="c")


# -- RFC 5626 instance / reg-id ------------------------------------------------------

INST = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"'


def test_instance_and_reg_id_replace_across_call_ids(hs: Harness) -> None:
    hs.send([f"<sip:10@192.0.2.1:5060>;{INST};reg-id=1"], expires=600, call_id="boot-1")
    r = hs.send([f"<sip:10@198.51.100.7:40000>;{INST};reg-id=1"], expires=600,
                call_id="boot-2", cseq=1)
    (b,) = hs.bindings()
    assert b.contact == "sip:10@198.51.100.7:40000" and b.call_id == "boot-2"
    assert (b.instance, b.reg_id) == ('"<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"', 1)
    assert contacts_of(r) == [f"<sip:10@198.51.100.7:40000>;{INST};reg-id=1;expires=600"]
    # A second flow of the same instance is a second binding.
    hs.send([f"<sip:10@192.0.2.1:5061>;{INST};reg-id=2"], expires=600, call_id="boot-2")
    assert sorted(b.reg_id or 0 for b in hs.bindings()) == [1, 2]


def test_instance_without_reg_id_replaces_too(h: Harness) -> None:
    h.send([f"<sip:10@192.0.2.1:5060>;{INST}"], expires=600, call_id="x")
    h.send([f"<sip:10@192.0.2.2:5060>;{INST}"], expires=600, call_id="y")
    assert [b.contact for b in h.bindings()] == ["sip:10@192.0.2.2:5060"]


def test_reg_id_without_instance_is_ignored(h: Harness) -> None:
    h.send(["<sip:10@192.0.2.1>;reg-id=1"], expires=600, call_id="x")
    h.send(["<sip:10@192.0.2.2>;reg-id=1"], expires=600, call_id="y")
    assert sorted(b.contact for b in h.bindings()) == ["sip:10@192.0.2.1", "sip:10@192.0.2.2"]
    assert all(b.reg_id is None for b in h.bindings())


def test_two_reg_ids_in_one_register_is_400(h: Harness) -> None:
    rej = h.reject([f"<sip:10@192.0.2.1>;{INST};reg-id=1", f"<sip:10@192.0.2.2>;{INST};reg-id=2"],
                   expires=600)
    assert rej.status == 400 and rej.reason.startswith("Bad Contact header")


@pytest.mark.parametrize("rid", ["x", "0", "-1", "99999999999"])
def test_bad_reg_id_is_400(h: Harness, rid: str) -> None:
    rej = h.reject([f"<sip:10@192.0.2.1>;{INST};reg-id={rid}"], expires=600)
    assert rej.status == 400 and rej.reason == "Bad Contact header: reg-id"


# -- Path (RFC 3327) ----------------------------------------------------------------

def test_path_stored_and_echoed_only_with_supported_path(h: Harness) -> None:
    path = [("Path", "<sip:edge.example.com;lr>")]
    r = h.send(["<sip:a@192.0.2.1>"], expires=600, headers=path)
    assert [k for k, _ in r.headers] == ["Contact"]
    assert h.bindings()[0].path == ()
    r = h.send(["<sip:b@192.0.2.1>"], expires=600,
               headers=path + [("Supported", "outbound, path")], call_id="two")
    assert ("Path", "<sip:edge.example.com;lr>") in r.headers
    assert ("Supported", "path") in r.headers
    assert {b.contact: b.path for b in h.bindings()}["sip:b@192.0.2.1"] == (
        "<sip:edge.example.com;lr>",)


def test_edge_path_goes_on_top_of_the_stored_path_and_is_not_echoed(h: Harness) -> None:
    """Proxy mode: this server's own Path value (naming the phone's flow) is stored per
    Contact on top of the phone's Path, but the 200 echoes only what the phone sent."""
    asked: list[tuple[str, bool]] = []

    def edge(contact: str, outbound: bool) -> str | None:
        asked.append((contact, outbound))
        return None if "direct" in contact else "<sip:TOKEN@192.0.2.9:5060;lr;ob>"

    req = h.request(["<sip:nat@10.0.0.5>", f"<sip:direct@192.0.2.1>;{INST};reg-id=1"],
                    expires=600, headers=[("Path", "<sip:edge.example.com;lr>"),
                                          ("Supported", "path")])
    plan = h.reg.plan(req, "10", SRC, NOW, edge)
    assert plan.fn is not None
    after = h.run(h.store.update(plan.aor, NOW, plan.fn))
    reply = plan.reply(after, NOW)
    assert asked == [("sip:nat@10.0.0.5", False), ("sip:direct@192.0.2.1", True)]
    assert [v for k, v in reply.headers if k == "Path"] == ["<sip:edge.example.com;lr>"]
    paths = {b.contact: b.path for b in h.bindings()}
    assert paths == {"sip:nat@10.0.0.5": ("<sip:TOKEN@192.0.2.9:5060;lr;ob>",
                                          "<sip:edge.example.com;lr>"),
                     "sip:direct@192.0.2.1": ("<sip:edge.example.com;lr>",)}


# -- what is stored ----------------------------------------------------------------------

def test_binding_records_source_call_id_and_user_agent(h: Harness) -> None:
    r = h.send(['"Desk" <sip:a@192.0.2.1;transport=tcp>;foo=bar;q=0.7'], expires=600,
               headers=[("User-Agent", "phone/1.0 " + "x" * 300)], call_id="c-1", cseq=42)
    (b,) = h.bindings()
    assert (b.aor, b.contact, b.params, b.q) == (AOR, "sip:a@192.0.2.1;transport=tcp", ";foo=bar",
                                                 0.7)
    assert (b.source_ip, b.source_port, b.transport, b.call_id, b.cseq) == (
        "127.0.0.1", 5062, "udp", "c-1", 42)
    assert b.user_agent.startswith("phone/1.0") and len(b.user_agent) == 200
    assert r.added == (b,) and (r.aor, r.line, r.before, r.after) == (AOR, "10", 0, 1)


def test_other_uri_schemes_are_stored_as_written(h: Harness) -> None:
    h.send(["<tel:+15555550100>", "<mailto:desk@example.com>"], expires=600)
    assert sorted(b.contact for b in h.bindings()) == ["mailto:desk@example.com",
                                                       "tel:+15555550100"]


def test_escnull_makes_two_bindings(h: Harness) -> None:
    """RFC 4475 3.1.1.4: %00 and %00%00 are two contacts."""
    msg = parse_message((TORTURE / "escnull.dat").read_bytes())
    assert isinstance(msg, Request)
    r = run(h.reg.register(msg, "10", SRC, NOW))
    assert sorted(expires_of(r)) == ["sip:%00%00@host5.example.com", "sip:%00@host5.example.com"]


def test_regescrt_contact_comes_back_unchanged(h: Harness) -> None:
    """RFC 4475 3.3.14: the escaped Route header in the contact survives."""
    msg = parse_message((TORTURE / "regescrt.dat").read_bytes())
    assert isinstance(msg, Request)
    r = run(h.reg.register(msg, "10", SRC, NOW))
    assert contacts_of(r) == ["<sip:user@example.com?Route=%3Csip:sip.example.com%3E>;expires=1800"]


def test_store_error_propagates_and_nothing_is_claimed(h: Harness) -> None:
    store = h.store
    assert isinstance(store, MemoryStore)
    store.fail = True
    with pytest.raises(StoreError):
        h.send(["<sip:a@192.0.2.1>"], expires=600)
    with pytest.raises(StoreError):
        h.send(None)
    store.fail = False
    assert h.bindings() == []


# -- the AOR ----------------------------------------------------------------------------

@pytest.mark.parametrize("to,status", [
    ("<sip:10@sipyard.test>", None), ("<sip:10@127.0.0.1>", None), ("<sip:10@LOCALHOST>", None),
    ("<sip:10@example.com>", 404), ("<sip:sipyard.test>", 400), ("<tel:10>", 400)])
def test_target_line_from_to(h: Harness, to: str, status: int | None) -> None:
    req = h.request(["<sip:a@192.0.2.1>"], to=to)
    if status is None:
        assert h.reg.target_line(req) == "10"
    else:
        with pytest.raises(Reject) as info:
            h.reg.target_line(req)
        assert info.value.status == status


def test_reply_headers_are_wire_ready(h: Harness) -> None:
    """The Contact values go into a real response unchanged."""
    from sipyard.sip.message import build_response

    req = h.request(["<sip:a@192.0.2.1>;q=0.5"], expires=600)
    r = run(h.reg.register(req, "10", SRC, NOW))
    data = build_response(req, r.status, r.reason, to_tag="t", headers=r.headers)
    assert header_values(data, "Contact") == ["<sip:a@192.0.2.1>;q=0.5;expires=600"]
