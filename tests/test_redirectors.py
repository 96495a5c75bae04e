"""The built-in redirectors, each through a real RedirectServer and a real config."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sipyard.config import ConfigError, load_config
from sipyard.redirect import RedirectOutcome, RedirectServer
from sipyard.redirect.loader import build_chain
from sipyard.redirect.redirectors._dialog import MAX_BODY, parse_dialog_info
from sipyard.redirect.redirectors._rules import compile_user_pattern
from sipyard.sip.message import Request, parse_message

BASE = """
[server]
realm = "example.com"
domains = ["pbx.example.com"]
timezone = "Europe/Berlin"
[lines.12]
secret = "a"
permissions = ["LongDistance"]
[lines.13]
secret = "b"
[lines.14]
secret = "c"
[permissions]
13 = ["Intl"]
[groups.100]
members = [12, 13]
[features]
global_pickup = "*87"
pickup_wait = 5.0
"""


def make_config(tmp_path: Path, extra: str = "", *, base: str = BASE) -> Any:
    path = tmp_path / "sipyard.toml"
    path.write_text(base + extra)
    return load_config(path, data_dir=tmp_path / "data")


@dataclass(frozen=True)
class FakeBinding:
    aor: str
    contact: str
    q: float | None = None
    path: tuple[str, ...] = ()
    source_ip: str = "10.0.0.6"
    source_port: int = 5060
    transport: str = "udp"

    @property
    def binding_id(self) -> str:
        return f"c:{self.contact}"  # as the registrar names a binding without an instance


@dataclass
class Sent:
    method: str
    uri: str
    dest: Any
    headers: dict[str, str]


class Services:
    """The app side: bindings, a clock, SUBSCRIBE answers and NOTIFY delivery by Call-ID."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.logger = logging.getLogger("test.redirectors")
        self.t = datetime(2024, 1, 15, 9, 0, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
        self.bindings: dict[str, list[FakeBinding]] = {}
        self.sent: list[Sent] = []
        #: binding contact -> (SUBSCRIBE status, NOTIFY bodies sent back)
        self.answers: dict[str, tuple[int, list[bytes]]] = {}
        self.routes: dict[str, Callable[[Any], None]] = {}
        self.unregistered: list[str] = []

    def now(self) -> float:
        return self.t

    async def lookup(self, aor: str) -> list[FakeBinding]:
        return list(self.bindings.get(aor, ()))

    def line_for_uri(self, uri: Any) -> str | None:
        user = uri.user_unescaped
        return user if user in self.config.lines and self.config.is_our_domain(uri.host) else None

    async def send_request(self, method: str, request_uri: str, *, dest: Any,
                           headers: Sequence[tuple[str, str]], body: bytes = b"") -> int:
        hdrs = dict(headers)
        self.sent.append(Sent(method, request_uri, dest, hdrs))
        status, bodies = self.answers.get(request_uri, (408, []))
        loop = asyncio.get_running_loop()
        for b in bodies:
            loop.call_soon(self._deliver, hdrs["Call-ID"], b)
        await asyncio.sleep(0)
        return status

    def _deliver(self, call_id: str, body: bytes) -> None:
        cb = self.routes.get(call_id)
        if cb is not None:
            cb(make_notify(call_id, body))

    def register_notify(self, call_id: str, callback: Callable[[Any], None]) -> None:
        self.routes[call_id] = callback

    def unregister_notify(self, call_id: str) -> None:
        self.unregistered.append(call_id)
        self.routes.pop(call_id, None)


def make_request(ruri: str, method: str = "INVITE") -> Request:
    text = (f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK9\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:14@example.com>;tag=f\r\nTo: <{ruri}>\r\n"
            f"Call-ID: req@10.0.0.9\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n")
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def make_notify(call_id: str, body: bytes) -> Request:
    head = (f"NOTIFY sip:system@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.6;branch=z9hG4bKn\r\n"
            f"From: <sip:12@example.com>;tag=p\r\nTo: <sip:system@example.com>;tag=s\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 NOTIFY\r\nEvent: dialog\r\n"
            f"Subscription-State: terminated;reason=timeout\r\n"
            f"Content-Type: application/dialog-info+xml\r\nContent-Length: {len(body)}\r\n\r\n")
    msg = parse_message(head.encode() + body)
    assert isinstance(msg, Request)
    return msg


def redirect(config: Any, ruri: str, *, method: str = "INVITE", caller: str | None = None,
             chain: Sequence[str] | None = None, services: Services | None = None
             ) -> RedirectOutcome:
    services = services or Services(config)
    server = RedirectServer(config, services, chain=build_chain(config, services, chain))

    async def main() -> RedirectOutcome:
        return await server.redirect(make_request(ruri, method), caller)
    out = asyncio.run(main())
    assert server.in_flight == 0 and server.storage_slots == 0
    return out


def contacts(out: RedirectOutcome) -> list[str]:
    return [v for n, v in out.headers if n == "Contact"]


# ----------------------------------------------------------------------- registrations etc.

def test_registrations_q_order_and_path_as_route(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    s = Services(config)
    s.bindings["sip:12@example.com"] = [
        FakeBinding("sip:12@example.com", "sip:12@10.0.0.6:5062", q=0.5),
        FakeBinding("sip:12@example.com", "sip:12@192.0.2.7;transport=tcp", q=0.9,
                    path=("<sip:edge.example.com;lr>", "<sip:p2@10.9.9.9;lr>")),
    ]
    out = redirect(config, "sip:12@example.com", services=s, chain=["registrations"])
    assert out.status == 302
    assert contacts(out) == [
        "<sip:12@192.0.2.7;transport=tcp?Route=%3Csip:edge.example.com%3Blr%3E%2C"
        "%3Csip:p2%4010.9.9.9%3Blr%3E>;q=0.9",
        "<sip:12@10.0.0.6:5062>;q=0.5",
    ]
    # a line with nothing registered: 480
    assert redirect(config, "sip:13@example.com", services=s).status == 480
    # one server, the same binding objects again (the store cache): the same answer from its
    # per-binding cache; new binding objects are seen at once
    server = RedirectServer(config, s, chain=build_chain(config, s, ["registrations"]))

    async def twice() -> list[list[str]]:
        out = [contacts(await server.redirect(make_request("sip:12@example.com")))]
        out.append(contacts(await server.redirect(make_request("sip:12@example.com"))))
        s.bindings["sip:12@example.com"] = [
            FakeBinding("sip:12@example.com", "sip:12@10.0.0.6:5062")]
        out.append(contacts(await server.redirect(make_request("sip:12@example.com"))))
        return out
    first, second, third = asyncio.run(twice())
    assert first == second and len(first) == 2 and third == ["<sip:12@10.0.0.6:5062>"]


def test_registrations_cache_keeps_no_superseded_binding(tmp_path: Path) -> None:
    # Every re-REGISTER gives the store a new binding object; the per-binding cache must
    # hold the current one per device, not every one it ever saw (issue #16, make soak).
    config = make_config(tmp_path)
    s = Services(config)
    chain = build_chain(config, s, ["registrations"])
    server = RedirectServer(config, s, chain=chain)
    aors = [f"sip:{n}@example.com" for n in (12, 13)]

    async def rounds(n: int) -> list[list[str]]:
        seen = []
        for i in range(n):
            for aor in aors:
                s.bindings[aor] = [FakeBinding(aor, aor.replace("example.com", "10.0.0.6"),
                                               q=0.5 + i % 2 / 4)]
                seen.append(contacts(await server.redirect(make_request(aor))))
        return seen

    seen = asyncio.run(rounds(50))
    assert seen[-2:] == [["<sip:12@10.0.0.6>;q=0.75"], ["<sip:13@10.0.0.6>;q=0.75"]]
    cache = chain[0]._cache  # type: ignore[attr-defined]  # white-box: what it keeps
    assert len(cache) == 2
    assert {b for b, _ in cache.values()} == {s.bindings[a][0] for a in aors}


def test_subscribe_strips_q(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    s = Services(config)
    s.bindings["sip:12@example.com"] = [FakeBinding("sip:12@example.com", "sip:12@10.0.0.6", 0.3),
                                        FakeBinding("sip:12@example.com", "sip:12@10.0.0.7", 0.7)]
    chain = ["registrations", "subscribe"]
    out = redirect(config, "sip:12@example.com", method="SUBSCRIBE", services=s, chain=chain)
    assert contacts(out) == ["<sip:12@10.0.0.6>", "<sip:12@10.0.0.7>"]
    out = redirect(config, "sip:12@example.com", services=s, chain=chain)
    assert contacts(out) == ["<sip:12@10.0.0.7>;q=0.7", "<sip:12@10.0.0.6>;q=0.3"]


# ------------------------------------------------------------------------------------- aliases

ALIASES = """
[aliases]
sales = ["12", "<sip:13@example.com>;q=0.5"]
"info@pbx.example.com" = "sip:20@gw.example.com"
ext = "alice@example.org"
"""


def test_aliases(tmp_path: Path) -> None:
    config = make_config(tmp_path, ALIASES)
    out = redirect(config, "sip:sales@pbx.example.com")
    assert out.status == 302
    assert contacts(out) == ["<sip:12@example.com>", "<sip:13@example.com>;q=0.5"]
    assert contacts(redirect(config, "sip:info@PBX.example.com")) == ["<sip:20@gw.example.com>"]
    assert redirect(config, "sip:info@example.com").status == 404  # the AOR is exact
    assert redirect(config, "sip:sales@other.org").status == 404  # not our domain
    assert contacts(redirect(config, "sip:ext@example.com")) == ["<sip:alice@example.org>"]
    # a group number redirects to its members
    assert contacts(redirect(config, "sip:100@example.com")) == ["<sip:12@example.com>",
                                                                 "<sip:13@example.com>"]


@pytest.mark.parametrize("table, key", [
    ('me = "sip:me@example.com"', "aliases.me"),
    ('a = "sip:b@example.com"\nb = ["sip:x@elsewhere.org", "sip:a@pbx.example.com"]', "aliases.a"),
    ('"x@example.com" = "sip:y@example.com"\ny = "<sip:x@example.com>;q=0.1"', "aliases."),
])
def test_alias_loops_rejected_at_load(tmp_path: Path, table: str, key: str) -> None:
    config = make_config(tmp_path, "[aliases]\n" + table)
    with pytest.raises(ConfigError) as err:
        build_chain(config, Services(config), ["aliases"])
    assert err.value.key.startswith(key) and "alias loop" in err.value.reason
    assert err.value.file == str(tmp_path / "sipyard.toml")


def test_alias_bad_target(tmp_path: Path) -> None:
    config = make_config(tmp_path, '[aliases]\nbad = "sip:a b@h"')
    with pytest.raises(ConfigError, match="aliases.bad"):
        build_chain(config, Services(config), ["aliases"])


# ------------------------------------------------------------------------------------- mapping

def test_user_patterns_and_vdigits() -> None:
    cases = [
        ("9XXX", "9123", "123"), ("9XXX", "91234", None), ("9XXX", "9a23", None),
        ("[1-5]x", "35", "35"), ("[1-5]x", "65", None), ("00.", "0049301", "49301"),
        ("00.", "00", ""), ("*9X", "*95", "5"), ("*9X", "x95", None), ("100", "100", ""),
        ("\\X1", "X1", ""), ("re:^8(\\d{3})$", "8123", "123"),
        ("re:^(?P<pre>7)(?P<vdigits>[0-9]+)$", "7555", "555"), ("re:^abc$", "abc", "abc"),
    ]
    for pattern, user, want in cases:
        assert compile_user_pattern(pattern).match(user) == want, (pattern, user)
    assert compile_user_pattern("re:^x+$").match("x" * 500) is None  # length cap
    for bad in ("9.X", "9[", "9]", "[]", "[5-1]", "a b", "re:^(\\d+)+$", "re:^(ab|a)*$",
                "re:(a)\\1", "re:[", "re:a*b*c*d*"):
        with pytest.raises(ValueError):
            compile_user_pattern(bad)


MAPPING = """
[[mapping]]
name = "long distance"
users = ["0."]
permissions = ["LongDistance"]
contacts = ["<sip:{vdigits}@gw.example.com>;q=0.5"]
[[mapping]]
users = ["0."]
contacts = ["sip:operator@example.com"]
[[mapping]]
users = ["9XXX", "8XXX"]
contacts = ["sip:{vdigits}@gw.example.com", "<sip:{digits}@backup.example.com>;q=0.1"]
[[mapping]]
users = ["9."]
contacts = ["sip:never@example.com"]
[[mapping]]
hosts = ["*.corp.example", "exact.example.net"]
users = ["5XX"]
contacts = ["sip:{user}@{host}.pbx.test"]
[[mapping]]
users = ["re:^vm-(.+)$"]
contacts = ["<sip:vm@media.example.com;mailbox={vdigits-escaped}>", "sip:{user}@vm.example.com"]
[[mapping]]
users = ["7."]
contacts = ["sip:{vdigits}@gw.example.com", "sip:seven@gw.example.com"]
[[mapping]]
users = ["6XX"]
contacts = ["sip:{user}@example.com"]
[[mapping]]
users = ["44X"]
permissions = ["Intl"]
contacts = ["sip:intl-{vdigits}@gw.example.com"]
"""


def test_mapping_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(tmp_path, MAPPING)
    # first matching rule wins; both users patterns of a rule work; q kept
    assert contacts(redirect(config, "sip:9123@example.com")) == [
        "<sip:123@gw.example.com>", "<sip:9123@backup.example.com>;q=0.1"]
    assert contacts(redirect(config, "sip:8777@pbx.example.com"))[0] == "<sip:777@gw.example.com>"
    # empty hosts = our domains only
    assert redirect(config, "sip:9123@other.org").status == 404
    # hosts: wildcard includes the bare domain, not look-alikes
    assert contacts(redirect(config, "sip:512@a.b.corp.example")) == [
        "<sip:512@a.b.corp.example.pbx.test>"]
    assert redirect(config, "sip:512@corp.example").status == 302
    assert redirect(config, "sip:512@evilcorp.example").status == 404
    assert redirect(config, "sip:512@EXACT.example.net").status == 302
    # escaping: the user is decoded for matching, re-escaped per context
    out = redirect(config, "sip:vm-a%3Bb%20c@example.com")
    assert contacts(out) == ["<sip:vm@media.example.com;mailbox=a%3Bb%20c>",
                             "<sip:vm-a%3Bb%20c@vm.example.com>"]
    out = redirect(config, "sip:vm-x%0D%0AVia:%20evil@example.com")
    assert all("\r" not in v and "\n" not in v for _, v in out.headers)
    # an invalid result is skipped (logged), the rule's other contacts still go out
    with caplog.at_level(logging.ERROR, "test.redirectors"):
        assert contacts(redirect(config, "sip:7@example.com")) == ["<sip:seven@gw.example.com>"]
    assert any("mapping[6]" in r.getMessage() for r in caplog.records)
    # a rule mapping the request back to itself: 482
    assert redirect(config, "sip:611@example.com").status == 482


def test_mapping_permissions(tmp_path: Path) -> None:
    config = make_config(tmp_path, MAPPING)
    assert contacts(redirect(config, "sip:0049301@example.com", caller="12")) == [
        "<sip:049301@gw.example.com>;q=0.5"]  # vdigits starts at the "." after the 0
    # a caller without the permission does not match: the next rule applies
    assert contacts(redirect(config, "sip:0049301@example.com", caller="13")) == [
        "<sip:operator@example.com>"]
    # nobody authenticated: challenge
    out = redirect(config, "sip:0049301@example.com")
    assert out.status == 401 and out.needs_auth
    # permissions from the [permissions] table count
    assert contacts(redirect(config, "sip:445@example.com", caller="13")) == [
        "<sip:intl-5@gw.example.com>"]
    assert redirect(config, "sip:445@example.com", caller="12").status == 404


WHEN = """
[[mapping]]
users = ["200"]
when = ["Mon-Fri 08:00-18:00"]
contacts = ["sip:office@example.com"]
[[mapping]]
users = ["200"]
when = ["Fri 22:00-06:00", "Sun 23:00-01:00"]
timezone = "UTC"
contacts = ["sip:night@example.com"]
[[mapping]]
users = ["200"]
contacts = ["sip:other@example.com"]
"""


@pytest.mark.parametrize("when, zone, want", [
    ((2024, 1, 15, 9, 0), "Europe/Berlin", "office"),     # Monday morning
    ((2024, 1, 15, 7, 59), "Europe/Berlin", "other"),
    ((2024, 1, 19, 17, 59), "Europe/Berlin", "office"),   # Friday
    ((2024, 1, 19, 18, 0), "Europe/Berlin", "other"),     # end is exclusive
    ((2024, 1, 20, 5, 30), "UTC", "night"),               # Saturday, after Friday night
    ((2024, 1, 20, 6, 0), "UTC", "other"),
    ((2024, 1, 21, 23, 30), "UTC", "night"),              # Sunday night ...
    ((2024, 1, 22, 0, 30), "UTC", "night"),               # ... into Monday
    ((2024, 1, 20, 10, 0), "Europe/Berlin", "other"),     # Saturday
])
def test_mapping_time_windows(tmp_path: Path, when: tuple[int, ...], zone: str,
                              want: str) -> None:
    config = make_config(tmp_path, WHEN)
    s = Services(config)
    s.t = datetime(*when, tzinfo=ZoneInfo(zone)).timestamp()  # type: ignore[misc]
    assert contacts(redirect(config, "sip:200@example.com", services=s)) == [
        f"<sip:{want}@example.com>"]


@pytest.mark.parametrize("rule, key", [
    ('users = ["9X["]\ncontacts = ["sip:a@b"]', "mapping[1].users"),
    ('users = ["9X", "9.X"]\ncontacts = ["sip:a@b"]', "mapping[1].users[1]"),
    ('users = ["re:^(\\\\d+)+$"]\ncontacts = ["sip:a@b"]', "mapping[1].users"),
    ('users = ["9X"]\ncontacts = ["sip:{nope}@b"]', "mapping[1].contacts[0]"),
    ('users = ["9X"]\ncontacts = ["sip:a@b", "not a uri {user}"]', "mapping[1].contacts[1]"),
    ('users = ["9X"]\nwhen = "Mon-Fry 08:00-18:00"\ncontacts = ["sip:a@b"]', "mapping[1].when"),
    ('users = ["9X"]\nwhen = "Mon 08:00-25:00"\ncontacts = ["sip:a@b"]', "mapping[1].when"),
    ('hosts = ["*.*.x"]\nusers = ["9X"]\ncontacts = ["sip:a@b"]', "mapping[1].hosts"),
])
def test_mapping_load_errors_name_file_and_rule(tmp_path: Path, rule: str, key: str) -> None:
    config = make_config(tmp_path, '[[mapping]]\nusers = ["1X"]\ncontacts = ["sip:a@b"]\n'
                         "[[mapping]]\n" + rule)
    with pytest.raises(ConfigError) as err:
        build_chain(config, Services(config), ["mapping"])
    assert err.value.key == key and err.value.file == str(tmp_path / "sipyard.toml")


def test_rule_dicts_with_file_and_index(tmp_path: Path) -> None:
    """Rules given as plain dicts (no RuleConfig) report their ``_file`` / ``_index``."""
    import dataclasses

    config = make_config(tmp_path)
    config = dataclasses.replace(config, fallback=(
        {"users": ["X["], "contacts": ["sip:a@b"], "_file": "/etc/x.toml", "_index": 4},))
    with pytest.raises(ConfigError) as err:
        build_chain(config, Services(config), ["fallback"])
    assert (err.value.file, err.value.key) == ("/etc/x.toml", "fallback[4].users")


def test_fallback_only_when_empty(tmp_path: Path) -> None:
    config = make_config(tmp_path, '[[fallback]]\nusers = ["."]\n'
                         'contacts = ["sip:{user}@pstn.example.com"]\n')
    s = Services(config)
    s.bindings["sip:12@example.com"] = [FakeBinding("sip:12@example.com", "sip:12@10.0.0.6")]
    assert contacts(redirect(config, "sip:12@example.com", services=s)) == ["<sip:12@10.0.0.6>"]
    assert contacts(redirect(config, "sip:5551234@example.com", services=s)) == [
        "<sip:5551234@pstn.example.com>"]


# ------------------------------------------------------------------------------------- pick-up

def test_allcredentials(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    out = redirect(config, "sip:*allcredentials@example.com", method="SUBSCRIBE")
    assert out.status == 302 and contacts(out) == [
        "<sip:12@example.com>", "<sip:13@example.com>", "<sip:14@example.com>"]
    out = redirect(config, "sip:*allcredentials@example.com", method="INVITE")
    assert (out.status, out.headers) == (405, (("Allow", "SUBSCRIBE"),))


def dialog(id: str, call_id: str, local: str, remote: str, direction: str, state: str,
           duration: int, target: str | None, identity: str = "sip:someone@example.org") -> str:
    tgt = f'<target uri="{target}"/>' if target else ""
    return (f'<dialog id="{id}" call-id="{call_id}" local-tag="{local}" remote-tag="{remote}" '
            f'direction="{direction}"><state>{state}</state><duration>{duration}</duration>'
            f"<local><identity>sip:12@example.com</identity></local>"
            f'<remote><identity display="X">{identity}</identity>{tgt}</remote></dialog>')


def dialog_info(*dialogs: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<dialog-info xmlns="urn:ietf:params:xml:ns:'
            'dialog-info" version="3" state="full" entity="sip:12@example.com">'
            + "".join(dialogs) + "</dialog-info>").encode()


RINGING = dialog_info(
    dialog("d1", "short@10.0.0.50", "l1", "r1", "recipient", "early", 5,
           "sip:alice@10.0.0.50:5062;transport=udp"),
    dialog("d2", "long:1@10.0.0.51", "l2", "r2", "recipient", "early", 12, None,
           "sip:bob@example.org"),
    dialog("d3", "out@x", "l3", "r3", "initiator", "early", 50, "sip:c@10.0.0.3"),
    dialog("d4", "talk@x", "l4", "r4", "recipient", "confirmed", 100, "sip:d@10.0.0.4"),
    dialog("d5", "talk2@x", "l5", "r5", "initiator", "confirmed", 200, "sip:e@10.0.0.5?X=1"),
)


def pickup_services(config: Any, body: bytes) -> Services:
    s = Services(config)
    s.bindings["sip:12@example.com"] = [
        FakeBinding("sip:12@example.com", "sip:12@10.0.0.6:5062", path=("<sip:edge;lr>",)),
        FakeBinding("sip:12@example.com", "sip:12@10.0.0.7", source_ip="192.0.2.7",
                    source_port=40000, transport="tcp"),
    ]
    s.answers["sip:12@10.0.0.6:5062"] = (200, [body])
    s.answers["sip:12@10.0.0.7"] = (489, [])  # this phone has no dialog package
    return s


def test_directed_pickup_takes_longest_early_incoming_call(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    s = pickup_services(config, RINGING)
    start = time.monotonic()
    out = redirect(config, "sip:*7812@example.com", services=s)
    assert time.monotonic() - start < 2  # resumed when both phones answered, not by timer
    assert out.status == 302
    assert contacts(out) == [
        "<sip:bob@example.org?Replaces=long:1%4010.0.0.51%3Bto-tag%3Dr2%3Bfrom-tag%3Dl2"
        "%3Bearly-only&Require=replaces>"]
    first, second = s.sent
    assert (first.method, first.uri, first.dest) == ("SUBSCRIBE", "sip:12@10.0.0.6:5062",
                                                     ("10.0.0.6", 5060, "udp"))
    assert second.dest == ("192.0.2.7", 40000, "tcp")
    h = first.headers
    assert (h["Event"], h["Expires"], h["Accept"]) == ("dialog", "0",
                                                      "application/dialog-info+xml")
    assert h["To"] == "<sip:12@example.com>" and h["From"].startswith("<sip:system@example.com>;tag=")
    assert h["Route"] == "<sip:edge;lr>" and "Route" not in second.headers
    assert sorted(s.unregistered) == sorted(x.headers["Call-ID"] for x in s.sent)
    assert s.routes == {}


def test_pickup_prefers_target_over_identity(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    body = dialog_info(dialog("d1", "c@h", "lt", "rt", "recipient", "early", 3,
                              "sip:alice@10.0.0.50;transport=udp?Foo=bar"))
    out = redirect(config, "sip:*7812@example.com", services=pickup_services(config, body))
    assert contacts(out) == ["<sip:alice@10.0.0.50;transport=udp?Replaces=c%40h%3Bto-tag%3Drt"
                             "%3Bfrom-tag%3Dlt%3Bearly-only&Require=replaces>"]


NO_FALLTHROUGH = """
[[mapping]]
users = ["*."]
contacts = ["sip:{user}@gw.example.com"]
[[fallback]]
users = ["."]
contacts = ["sip:{user}@pstn.example.com"]
"""


def test_pickup_without_ringing_call_is_404_never_a_gateway(tmp_path: Path) -> None:
    config = make_config(tmp_path, NO_FALLTHROUGH)
    body = dialog_info(dialog("d4", "talk@x", "l4", "r4", "recipient", "confirmed", 9, "sip:d@h"))
    out = redirect(config, "sip:*7812@example.com", services=pickup_services(config, body))
    assert (out.status, out.headers) == (404, ())
    # a code for a number that is not a line: 404 at once, nothing sent
    s = Services(config)
    assert redirect(config, "sip:*7899@example.com", services=s).status == 404 and not s.sent
    # the same dial rule still works for other numbers
    assert contacts(redirect(config, "sip:*55@example.com")) == ["<sip:*55@gw.example.com>"]


def test_pickup_wait_timer_resumes(tmp_path: Path) -> None:
    config = make_config(tmp_path, base=BASE.replace("pickup_wait = 5.0", "pickup_wait = 0.1"))
    s = Services(config)
    s.bindings["sip:12@example.com"] = [FakeBinding("sip:12@example.com", "sip:12@10.0.0.6")]
    s.answers["sip:12@10.0.0.6"] = (200, [])  # accepted, but the NOTIFY never comes
    start = time.monotonic()
    out = redirect(config, "sip:*7812@example.com", services=s)
    assert out.status == 404 and 0.09 < time.monotonic() - start < 2
    assert s.unregistered and not s.routes


def test_pickup_cancel_unregisters(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    s = Services(config)
    s.bindings["sip:12@example.com"] = [FakeBinding("sip:12@example.com", "sip:12@10.0.0.6")]
    s.answers["sip:12@10.0.0.6"] = (200, [])
    server = RedirectServer(config, s, chain=build_chain(config, s))

    async def main() -> RedirectOutcome:
        task = asyncio.create_task(server.redirect(make_request("sip:*7812@example.com"),
                                                   key="tx1"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert s.routes and server.suspended == 1
        server.cancel_request("tx1", "cancel")
        return await task
    out = asyncio.run(main())
    assert out.status == 487 and not s.routes and len(s.unregistered) == 1
    assert server.redirector("directed_pickup")._searches == {}  # type: ignore[union-attr]


def test_join_takes_longest_confirmed_call_any_direction(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    out = redirect(config, "sip:*7912@example.com", services=pickup_services(config, RINGING))
    assert contacts(out) == ["<sip:e@10.0.0.5?Join=talk2%40x%3Bto-tag%3Dr5%3Bfrom-tag%3Dl5"
                             "&Require=join>"]


def test_global_pickup_searches_every_other_line(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    s = Services(config)
    for line in ("12", "13", "14"):
        s.bindings[f"sip:{line}@example.com"] = [
            FakeBinding(f"sip:{line}@example.com", f"sip:{line}@10.0.1.{line}")]
    s.answers["sip:12@10.0.1.12"] = (200, [dialog_info()])
    s.answers["sip:13@10.0.1.13"] = (200, [dialog_info(
        dialog("d", "ring@h", "a", "b", "recipient", "early", 4, "sip:caller@10.0.0.99"))])
    out = redirect(config, "sip:*87@example.com", caller="14", services=s)
    assert contacts(out) == ["<sip:caller@10.0.0.99?Replaces=ring%40h%3Bto-tag%3Db"
                             "%3Bfrom-tag%3Da%3Bearly-only&Require=replaces>"]
    assert sorted(x.uri for x in s.sent) == ["sip:12@10.0.1.12", "sip:13@10.0.1.13"]


def test_dialog_info_parser_is_defensive() -> None:
    assert [d.id for d in parse_dialog_info(RINGING)] == ["d1", "d2", "d3", "d4", "d5"]
    d2 = parse_dialog_info(RINGING)[1]
    assert (d2.state, d2.duration, d2.remote_target, d2.remote_identity) == (
        "early", 12, None, "sip:bob@example.org")
    bomb = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><dialog-info>&b;</dialog-info>')
    assert parse_dialog_info(bomb) == []
    assert parse_dialog_info(b"<dialog-info><dialog") == []
    assert parse_dialog_info(b"<other/>") == []
    big = dialog_info(dialog("x", "c", "l", "r", "recipient", "early", 1, "sip:a@b")
                      + " " * MAX_BODY)
    assert parse_dialog_info(big) == []


def test_default_chain_end_to_end(tmp_path: Path) -> None:
    config = make_config(tmp_path, ALIASES + MAPPING)
    s = Services(config)
    s.bindings["sip:12@example.com"] = [FakeBinding("sip:12@example.com", "sip:12@10.0.0.6", 0.8)]
    assert [r.name for r in build_chain(config, s)] == list(config.redirect.chain)
    assert contacts(redirect(config, "sip:12@example.com", services=s)) == [
        "<sip:12@10.0.0.6>;q=0.8"]
    assert contacts(redirect(config, "sip:sales@example.com", method="SUBSCRIBE",
                             services=s)) == ["<sip:12@example.com>", "<sip:13@example.com>"]
    assert redirect(config, "sip:14@example.com", services=s).status == 480
    assert redirect(config, "sip:nobody@example.com", services=s).status == 404


def test_loop_check_compares_ports(tmp_path: Path) -> None:
    """A target equal to the Request-URI but for its port is no loop; the same port
    written with a leading zero is (RFC 3261 §19.1.4 compares port numbers)."""
    config = make_config(tmp_path, """
[[mapping]]
users = ["61X"]
contacts = ["sip:{user}@example.com:5080", "sip:{user}@example.com:05080",
            "sip:{user}@example.com:15080", "sip:{user}@example.com"]
""")
    assert contacts(redirect(config, "sip:611@example.com:5080")) == [
        "<sip:611@example.com:15080>", "<sip:611@example.com>"]
    # without a port in the Request-URI only the target without one is equal
    assert contacts(redirect(config, "sip:611@example.com")) == [
        "<sip:611@example.com:5080>", "<sip:611@example.com:05080>",
        "<sip:611@example.com:15080>"]
