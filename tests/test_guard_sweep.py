"""Issue #16: the guard's tables are swept by age, by call and by its own timer."""

from __future__ import annotations

import asyncio

from sipyard.security import Guard
from sipyard.transport import net_of

T0 = 1_000_000.0


def test_sweep_empties_every_table_once_entries_are_old() -> None:
    g = Guard(max_failures=3, window=5, ban_seconds=7, register_rate=10, sweep_interval=1000)
    for i in range(500):
        g.failure(f"10.0.{i // 250}.{i % 250}", f"user{i}", "wrong-credentials", T0)
        g.rate_ok(f"10.1.{i // 250}.{i % 250}", T0)
    for _ in range(3):
        g.failure("192.0.2.9", "10", "wrong-credentials", T0)
    assert g.banned("192.0.2.9", T0)
    assert g.sizes()["sources"] == 500 and g.sizes()["lines"] == 501
    g.sweep(T0 + 4)  # inside the window: failures stay, rate slots (1 s) go
    assert g.sizes()["sources"] == 500 and g.sizes()["rate"] == 0
    g.sweep(T0 + 6)
    assert g.sizes() == {"sources": 0, "lines": 0, "bans": 1, "rate": 0, "allowed_cache": 0}
    g.sweep(T0 + 8)
    assert g.sizes()["bans"] == 0 and not g.banned("192.0.2.9", T0 + 8)


def test_a_due_sweep_runs_on_the_next_failure() -> None:
    g = Guard(max_failures=0, window=5, sweep_interval=10)
    for i in range(100):
        g.failure(f"10.0.0.{i}", None, "x", T0)
    g.failure("10.9.9.9", None, "x", T0 + 11)
    assert g.sizes()["sources"] == 1


def test_counts_stay_exact_with_one_or_many_failures_per_key() -> None:
    g = Guard(max_failures=0, window=10)
    g.failure("10.0.0.1", "10", "x", T0)
    assert g.failures("10.0.0.1", T0) == 1 and g.failures("10.0.0.1", T0 + 11) == 0
    for k in range(5):
        g.failure("10.0.0.1", "10", "x", T0 + 12 + k)
    assert g.failures("10.0.0.1", T0 + 16) == 5
    assert g.line_failures("10", T0 + 16) == 5 and g.line_failures("10", T0 + 25) == 1


def test_an_idle_server_is_swept_by_the_guards_timer() -> None:
    async def run() -> dict[str, int]:
        g = Guard(max_failures=0, window=0.2, sweep_interval=0.1)
        loop = asyncio.get_running_loop()
        now = loop.time()
        for i in range(50):
            g.failure(f"10.0.0.{i}", f"u{i}", "x", now)
        await asyncio.sleep(0.6)  # no further calls: only the timer can sweep
        sizes = g.sizes()
        g.close()
        return sizes

    assert asyncio.run(run()) == {"sources": 0, "lines": 0, "bans": 0, "rate": 0,
                                  "allowed_cache": 0}


def test_net_of_groups_by_24_and_64() -> None:
    assert net_of("192.0.2.77") == "192.0.2.0/24"
    assert net_of("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert net_of("::ffff:192.0.2.9") == "192.0.2.0/24"
    assert net_of("fe80::1%eth0") == "fe80::/64"
    assert net_of("not-an-ip") == "not-an-ip"
