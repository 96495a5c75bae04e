"""Guard: failure window, bans, allow list, REGISTER rate limit, unban, log lines."""

from __future__ import annotations

import logging
import re

import pytest

from sipyard import security
from sipyard.security import Guard, log_safe

T0 = 1_000_000.0
LINE_RE = re.compile(r"^sipyard auth failure: src=(\S+) line=(\S+) reason=(\S+)$")


def guard(**kw: object) -> Guard:
    args: dict[str, object] = dict(max_failures=5, window=60.0, ban_seconds=600.0, allow=(),
                                   register_rate=10)
    args.update(kw)
    return Guard(**args)  # type: ignore[arg-type]


def fail(g: Guard, ip: str, n: int, t: float = T0, step: float = 0.0, line: str = "10") -> bool:
    banned = False
    for i in range(n):
        banned = g.failure(ip, line, "wrong-credentials", t + i * step)
    return banned


def test_ban_on_the_nth_failure_in_the_window() -> None:
    g = guard()
    assert not fail(g, "192.0.2.1", 4)
    assert not g.banned("192.0.2.1", T0) and g.failures("192.0.2.1", T0) == 4
    assert g.failure("192.0.2.1", "10", "wrong-credentials", T0 + 1)
    assert g.banned("192.0.2.1", T0 + 1)
    assert not g.banned("192.0.2.2", T0 + 1)  # per source
    (ban,) = g.bans(T0 + 1)
    assert (ban.address, ban.until, ban.failures) == ("192.0.2.1", T0 + 601, 5)
    assert (g.total_failures, g.total_bans) == (5, 1)


def test_failures_age_out_of_the_window() -> None:
    g = guard()
    fail(g, "192.0.2.1", 4, step=1.0)  # T0 .. T0+3
    assert not g.failure("192.0.2.1", "10", "x", T0 + 61)  # the first two have aged out
    assert g.failures("192.0.2.1", T0 + 61) == 3
    assert not g.banned("192.0.2.1", T0 + 61)
    # Slow guessing (one per 20 s with a 60 s window) never reaches 5.
    g2 = guard()
    assert not fail(g2, "192.0.2.9", 50, step=20.0)


def test_ban_expires() -> None:
    g = guard(ban_seconds=30)
    fail(g, "192.0.2.1", 5)
    assert g.banned("192.0.2.1", T0 + 29.9)
    assert not g.banned("192.0.2.1", T0 + 30)
    assert g.bans(T0 + 30) == []
    # Counting starts afresh after a ban.
    assert not fail(g, "192.0.2.1", 4, t=T0 + 31)


def test_success_does_not_reset_the_count() -> None:
    """One valid account must not let its holder guess other lines forever."""
    g = guard()
    for i in range(4):
        g.failure("192.0.2.1", "11", "wrong-credentials", T0 + i)
        g.success("192.0.2.1")
    assert g.failure("192.0.2.1", "11", "wrong-credentials", T0 + 5)


def test_allowed_networks_are_never_banned_nor_limited() -> None:
    g = guard(allow=["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"])
    assert not fail(g, "10.1.2.3", 100)
    assert not g.banned("10.1.2.3", T0)
    assert not fail(g, "2001:db8::7", 100) and not fail(g, "127.0.0.1", 100)
    assert all(g.rate_ok("10.1.2.3", T0) for _ in range(1000))
    assert fail(g, "11.0.0.1", 5)  # outside: banned as usual
    assert g.allowed("10.255.255.255") and not g.allowed("not-an-ip")


def test_reconfigure_allowing_a_banned_source_unbans_it() -> None:
    g = guard()
    fail(g, "192.0.2.1", 5)
    fail(g, "192.0.2.2", 5)
    g.configure(max_failures=5, window=60, ban_seconds=600, allow=["192.0.2.1/32"],
                register_rate=10)
    assert not g.banned("192.0.2.1", T0) and g.banned("192.0.2.2", T0)


def test_zero_max_failures_never_bans() -> None:
    g = guard(max_failures=0)
    assert not fail(g, "192.0.2.1", 1000)
    assert g.bans(T0) == []


def test_unban_and_unban_all() -> None:
    g = guard()
    fail(g, "192.0.2.1", 5)
    fail(g, "192.0.2.2", 5)
    assert g.unban("192.0.2.1") and not g.unban("192.0.2.1")
    assert not g.banned("192.0.2.1", T0)
    assert not fail(g, "192.0.2.1", 4)  # a fresh count after unban
    assert g.unban_all() == 1 and g.bans(T0) == []
    assert g.failures("192.0.2.1", T0) == 0


def test_line_failures_counted_but_lines_never_locked() -> None:
    g = guard()
    for i in range(30):
        g.failure(f"198.51.100.{i}", "10", "wrong-credentials", T0)
    assert g.line_failures("10", T0) == 30 and g.line_failures("10", T0 + 61) == 0
    assert g.line_failures("11", T0) == 0
    assert g.bans(T0) == []  # 30 sources, one failure each


def test_register_rate_fixed_windows() -> None:
    g = guard(register_rate=3)
    assert [g.rate_ok("192.0.2.1", T0 + 0.1 * i) for i in range(5)] == [True] * 3 + [False] * 2
    assert g.rate_ok("192.0.2.2", T0 + 0.4)  # per source
    assert g.rate_ok("192.0.2.1", T0 + 1.0)  # next window
    assert g.rate_limited == 2
    assert g.rate_ok("192.0.2.1", T0 - 50)  # clock went back: a new window, not a block
    unlimited = guard(register_rate=0)
    assert all(unlimited.rate_ok("192.0.2.1", T0) for _ in range(10000))


def test_tables_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(security, "MAX_TRACKED", 100)
    g = guard(max_failures=1000)
    for i in range(1000):
        g.failure(f"10.0.{i // 256}.{i % 256}", f"user{i}", "wrong-credentials", T0)
        g.rate_ok(f"10.0.{i // 256}.{i % 256}", T0)
    assert len(g._fails) <= 100 and len(g._line_fails) <= 100 and len(g._rate) <= 100
    # The most recent sources are still counted.
    assert g.failures("10.0.3.231", T0) == 1


def test_failure_log_line_is_stable_and_safe(caplog: pytest.LogCaptureFixture) -> None:
    g = guard(allow=["10.0.0.0/8"])
    caplog.set_level(logging.WARNING, logger="sipyard.security")
    g.failure("192.0.2.7", "10", "wrong-credentials", T0)
    g.failure("192.0.2.8", "x line=1 reason=y\nsipyard auth failure: src=6.6.6.6 line=1 reason=z",
              "wrong-credentials", T0)
    g.failure("192.0.2.9", None, "malformed", T0)
    g.failure("10.0.0.1", "10", "wrong-credentials", T0)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0] == "sipyard auth failure: src=192.0.2.7 line=10 reason=wrong-credentials"
    assert "\n" not in msgs[1] and LINE_RE.match(msgs[1]).group(1) == "192.0.2.8"  # type: ignore[union-attr]
    assert msgs[2] == "sipyard auth failure: src=192.0.2.9 line=- reason=malformed"
    assert msgs[3].endswith("(allowed source)") and not LINE_RE.match(msgs[3])


def test_ban_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sipyard.security")
    fail(guard(), "192.0.2.1", 5)
    assert "sipyard ban: src=192.0.2.1 failures=5 seconds=600" in caplog.messages


@pytest.mark.parametrize("text,expected", [
    (None, "-"), ("", "-"), ("10", "10"), ("alice@example.com", "alice@example.com"),
    ("a b", "a%20b"), ("x\r\ny", "x%0D%0Ay"), ("é", "%C3%A9"), ("a=b", "a%3Db"),
    ('"q"', "%22q%22"), ("\udcff", "%ED%B3%BF")])
def test_log_safe(text: str | None, expected: str) -> None:
    assert log_safe(text) == expected


def test_log_safe_cuts_long_values() -> None:
    out = log_safe("a" * 1000)
    assert out == "a" * 64 + "..."
    out = log_safe(" " * 1000)
    assert len(out) <= 67 and out.endswith("...") and " " not in out
