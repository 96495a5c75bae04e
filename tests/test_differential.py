"""Differential check of the fields transactions hang on, against two other parsers.

For every message the torture table calls valid, Call-ID, CSeq, the From and
To tags and the top Via branch must agree with ``sipmessage`` and
``aiosipua`` wherever those libraries manage to parse the message (both are
stricter than RFC 4475 in places: wsinv's folding, semiuri, IPv6 …). An oracle
that fails on a file is skipped for that file only; a minimum number of files
must still have been compared, so a broken oracle cannot pass silently.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import aiosipua
import pytest
import sipmessage
from test_torture_parse import EXPECT, VALID, load

from sipyard.sip.message import parse_message

Fields = tuple[str, tuple[int, str], str | None, str | None, str | None]

VALID_FILES = sorted(name for name, outcome in EXPECT.items()
                     if outcome == VALID and not name.startswith("rfc5118/archive/"))


def ours(data: bytes) -> Fields:
    m = parse_message(data)
    return (m.call_id, m.cseq, m.from_.tag, m.to.tag, m.top_via.branch)


def via_sipmessage(data: bytes) -> Fields:
    m = sipmessage.Message.parse(data)
    cseq = m.cseq
    return (m.call_id, (cseq.sequence, cseq.method), m.from_address.parameters.get("tag"),
            m.to_address.parameters.get("tag"), m.via[0].parameters.get("branch"))


def via_aiosipua(data: bytes) -> Fields:
    with contextlib.redirect_stdout(io.StringIO()):  # it prints Content-Length warnings
        m = aiosipua.SipMessage.parse(data)
    cseq = m.cseq
    assert cseq is not None and m.from_addr is not None and m.to_addr is not None
    return (m.call_id or "", (cseq.seq, cseq.method), m.from_addr.tag, m.to_addr.tag,
            m.via[0].branch)


def _unescape(fields: Fields) -> Fields:
    """sipmessage %-decodes parameter values (intmeth's ``branch=…%66…``); compare likewise."""
    call_id, cseq, ftag, ttag, branch = fields

    def dec(v: str | None) -> str | None:
        return None if v is None else unquote(v)

    return (call_id, cseq, dec(ftag), dec(ttag), dec(branch))


ORACLES: dict[str, tuple[Callable[[bytes], Fields], Callable[[Fields], Fields], int]] = {
    # name: (oracle, normalisation applied to our fields, files it must manage at least)
    "sipmessage": (via_sipmessage, _unescape, 28),   # 31 of 36 with sipmessage 0.7.1
    "aiosipua": (via_aiosipua, lambda f: f, 34),     # 36 of 36 with aiosipua 0.7.1
}


def _compare(oracle: Callable[[bytes], Fields], norm: Callable[[Fields], Fields]
             ) -> tuple[list[str], list[str]]:
    compared: list[str] = []
    mismatches: list[str] = []
    for name in VALID_FILES:
        data = load(name)
        try:
            theirs: Any = oracle(data)
        except Exception:  # the oracle cannot read this file: not our verdict to judge
            continue
        mine = norm(ours(data))
        compared.append(name)
        if mine != theirs:
            mismatches.append(f"{name}: ours {mine} != theirs {theirs}")
    return compared, mismatches


@pytest.mark.parametrize("oracle", sorted(ORACLES))
def test_transaction_fields_agree(oracle: str) -> None:
    fn, norm, minimum = ORACLES[oracle]
    compared, mismatches = _compare(fn, norm)
    assert not mismatches, "\n".join(mismatches)
    assert len(compared) >= minimum, f"{oracle} compared only {len(compared)}: {compared}"


def test_every_valid_file_is_compared_by_some_oracle() -> None:
    seen: set[str] = set()
    for fn, norm, _ in ORACLES.values():
        seen.update(_compare(fn, norm)[0])
    assert len(VALID_FILES) == 36
    assert seen == set(VALID_FILES), sorted(set(VALID_FILES) - seen)


def test_the_oracles_are_real() -> None:
    """Guard against a stubbed oracle: both read a plain request the same way we do."""
    data = (b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKq\r\n"
            b"From: <sip:a@b>;tag=f1\r\nTo: <sip:c@d>;tag=t1\r\nCall-ID: cid@h\r\n"
            b"CSeq: 42 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    expected = ("cid@h", (42, "OPTIONS"), "f1", "t1", "z9hG4bKq")
    assert ours(data) == expected
    for fn, _, _ in ORACLES.values():
        assert fn(data) == expected
