"""Hooks through the wire: a real ``sipyard serve``, real clients, real hook executables.

The unit tests (tests/test_hooks.py) check the runner with a fake clock of events; these check
what only a running server shows: that a sipsak REGISTER runs ``activate`` once with the right
record, that an expiring binding runs ``release`` from the sweeper and a refresh runs nothing,
that a hook which never ends is killed with the children it started, and that a burst of 1 000
activations under SIPp load never runs more than ``max_running`` hooks at once while SIP keeps up.

The hooks here are small ``/bin/sh`` scripts written by the test with its own paths baked in
(a hook gets a minimal environment, so a path cannot be passed in from the test's). Each one
writes its files with a temporary name and renames them, so the test never reads half a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool
from support import BENCH, PASSWORDS, ROOT, Server, UdpClient, free_port, register, status_of

from sipyard.hooks import decode_record

pytestmark = pytest.mark.interop

EXAMPLES = ROOT / "examples" / "hooks"
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


# -- helpers --------------------------------------------------------------------------------


def write_hook(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def dump_hook(path: Path, out: Path) -> Path:
    """A hook that saves its raw stdin (``EVENT.PID.rec``) and its environment (``.env``)."""
    out.mkdir(parents=True, exist_ok=True)
    return write_hook(path, f"""\
f={out}/$SIPYARD_EVENT.$$
cat >"$f.tmp" && env >"$f.envtmp"
mv "$f.envtmp" "$f.env" && mv "$f.tmp" "$f.rec"
""")


def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``pred`` until it returns something true; that value, or the last one at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def records(out: Path, event: str) -> list[tuple[dict[str, str], bytes, float]]:
    """(decoded record, raw stdin, time the run wrote it) for each finished run of ``event``."""
    found = []
    for rec in sorted(out.glob(f"{event}.*.rec")):
        raw = rec.read_bytes()
        found.append((decode_record(raw), raw, rec.stat().st_mtime))
    return found


def status(server: Server) -> dict[str, Any]:
    r = server.cli("status", "--json")
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def hook_stats_when_idle(server: Server, expect_started: int, timeout: float) -> dict[str, int]:
    """The runner's counters once ``expect_started`` runs were started (or dropped) and none is
    queued or running any more."""
    def idle() -> dict[str, int] | None:
        h: dict[str, int] = status(server)["hooks"]
        done = h["started"] + h["dropped"] >= expect_started
        return h if done and h["running"] == 0 and h["queued"] == 0 else None

    stats = wait_for(idle, timeout, 0.2)
    assert stats, f"hooks not idle after {timeout}s: {status(server)['hooks']}"
    return stats  # type: ignore[no-any-return]


def sipsak_register(server: Server, line: str, port: int, expires: int
                    ) -> subprocess.CompletedProcess[str]:
    """One digest REGISTER by sipsak, sent from and listening on ``port`` (-S -l), so the
    binding's source is known. Contact = ``sip:LINE@127.0.0.1:PORT``."""
    exe = require_tool("sipsak")
    return subprocess.run(
        [exe, "-U", "-i", "-S", "-l", str(port), "-C", f"sip:{line}@127.0.0.1:{port}",
         "-s", f"sip:{line}@127.0.0.1:{server.port}", "-u", line, "-a", PASSWORDS[line],
         "-x", str(expires), "-vv"],
        capture_output=True, text=True, timeout=20)


def proc_alive(pid: int, *markers: str) -> bool:
    """Whether ``pid`` still runs a program named by one of ``markers`` (a zombie, or a pid
    reused by another program, counts as gone: the container's pid 1 may not reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and any(m.encode() in cmdline for m in markers)


@pytest.fixture
def hooks_dir(tmp_path: Path) -> Path:
    d = tmp_path / "hooks"
    d.mkdir()
    return d


# -- activate / release ---------------------------------------------------------------------


def test_sipsak_register_runs_activate_once_refresh_nothing_expiry_release(
        start_server: Callable[..., Server], hooks_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    dump_hook(hooks_dir / "activate", out)
    dump_hook(hooks_dir / "release", out)
    server = start_server("act", server={"hooks_dir": str(hooks_dir), "min_expires": 1})
    port = free_port()

    before = time.time()
    r = sipsak_register(server, "10", port, expires=3)
    assert r.returncode == 0, r.stdout + r.stderr
    ((rec, raw, _),) = wait_for(lambda: records(out, "activate"), 3.0)
    after = time.time()

    # The record: event first, then time, then the event's keys (examples/hooks/README.md).
    keys = [ln.split("=", 1)[0] for ln in raw.decode().splitlines()]
    assert keys[:2] == ["event", "time"]
    assert rec["event"] == "activate"
    assert rec["line"] == "10"
    assert rec["display"] == "Line 10"
    assert rec["contact"] == f"sip:10@127.0.0.1:{port}"
    assert rec["source"] == f"127.0.0.1:{port}/udp"
    assert rec["user_agent"].startswith("sipsak")
    assert rec["expires"] == "3"
    assert ISO_UTC.fullmatch(rec["time"])
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(before - 1)) <= rec["time"]
    assert rec["time"] <= time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(after + 1))

    # The environment is the minimal one README promises, not the server's.
    env = dict(ln.split("=", 1) for ln in
               next(out.glob("activate.*.env")).read_text().splitlines() if "=" in ln)
    assert env["SIPYARD_EVENT"] == "activate"
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env["SIPYARD_DATA"] == str(server.data.resolve())
    assert env["SIPYARD_CONTROL"] == str(server.data.resolve() / "control.sock")
    assert set(env) - {"PWD", "SHLVL", "_", "OLDPWD"} == {
        "PATH", "LANG", "SIPYARD_EVENT", "SIPYARD_DATA", "SIPYARD_CONTROL"}

    # A refresh of the same contact (one binding before and after) runs nothing.
    time.sleep(1.0)
    r = sipsak_register(server, "10", port, expires=3)
    assert r.returncode == 0, r.stdout + r.stderr
    expiry = time.time() + 3

    # Expiry: the sweeper (1 s period) removes the binding and runs release.
    ((rel, _, ran),) = wait_for(lambda: records(out, "release"), 3 + 4.0)
    assert ran - expiry < 3.0, f"release ran {ran - expiry:.1f}s after the expiry"
    assert ran > expiry - 0.5, "release ran before the refreshed binding expired"
    assert rel["event"] == "release" and rel["line"] == "10" and rel["display"] == "Line 10"
    assert rel["reason"] == "expired" and ISO_UTC.fullmatch(rel["time"])
    assert "contact" not in rel and "expires" not in rel

    time.sleep(1.2)  # one more sweep: nothing further
    assert len(records(out, "activate")) == 1
    assert len(records(out, "release")) == 1
    h = status(server)["hooks"]
    assert (h["started"], h["failed"], h["timed_out"], h["dropped"]) == (2, 0, 0, 0)


def test_shipped_activate_and_release_log_one_line_each(
        start_server: Callable[..., Server], hooks_dir: Path) -> None:
    """examples/hooks/activate and release, as shipped: one line per event in
    ``$SIPYARD_DATA/hooks.log``; an unREGISTER (Expires: 0) releases at once."""
    for name in ("activate", "release"):
        shutil.copy2(EXAMPLES / name, hooks_dir / name)
    server = start_server("examples", server={"hooks_dir": str(hooks_dir)})
    log = server.data / "hooks.log"
    client = UdpClient(server.addr)
    try:
        assert status_of(register(client, "10")) == 200
        assert wait_for(lambda: log.exists() and log.read_text().count("\n") == 1, 3.0)
        assert status_of(register(client, "10", expires=0)) == 200
        assert wait_for(lambda: log.read_text().count("\n") == 2, 3.0)
    finally:
        client.close()
    act, rel = log.read_text().splitlines()
    assert re.fullmatch(
        rf"\S+Z activate line=10 display=Line 10 contact=sip:10@127\.0\.0\.1:{client.port} "
        rf"source=127\.0\.0\.1:{client.port}/udp user_agent=", act), act
    assert re.fullmatch(r"\S+Z release line=10 display=Line 10 reason=unregistered", rel), rel


# -- a hook that never ends -----------------------------------------------------------------


def test_hanging_hook_and_its_child_are_killed_at_the_timeout(
        start_server: Callable[..., Server], hooks_dir: Path, tmp_path: Path) -> None:
    """Line 10's hook dies of SIGTERM; line 11's ignores SIGTERM (so does the child it
    started) and needs the SIGKILL that follows the grace (2 s). Each starts a background
    ``sleep 1000`` that holds the output pipes too, then becomes ``sleep 1000`` itself (exec),
    so the two pids it writes are all its processes; the whole process group goes."""
    out = tmp_path / "pids"
    out.mkdir()
    MARKERS = ("activate", "sleep")  # noqa: N806 - the hook before and after its exec
    write_hook(hooks_dir / "activate", f"""\
line=''
while IFS= read -r kv; do case ${{kv%%=*}} in line) line=${{kv#*=}} ;; esac; done
[ "$line" = 11 ] && trap '' TERM
sleep 1000 &
echo $! >{out}/child.$line.tmp && mv {out}/child.$line.tmp {out}/child.$line
echo $$ >{out}/hook.$line.tmp && mv {out}/hook.$line.tmp {out}/hook.$line
exec sleep 1000
""")
    server = start_server("hang", server={"hooks_dir": str(hooks_dir)}, hooks={"timeout": 1})
    clients = [UdpClient(server.addr) for _ in range(3)]
    try:
        for client, line in zip(clients, ("10", "11"), strict=False):
            assert status_of(register(client, line)) == 200
        names = [f"{k}.{n}" for k in ("hook", "child") for n in ("10", "11")]
        assert wait_for(lambda: all((out / n).exists() for n in names), 3.0), list(out.iterdir())
        started = {n: (out / n).stat().st_mtime for n in names}
        pids = {n: int((out / n).read_text()) for n in names}
        assert all(proc_alive(pids[n], *MARKERS) for n in names)

        # SIP is not held up while both hooks hang.
        t0 = time.monotonic()
        assert status_of(register(clients[2], "12")) == 200
        assert time.monotonic() - t0 < 1.0  # line 11's hook hangs for 3 s

        gone: dict[str, float] = {}
        deadline = time.monotonic() + 8.0
        while len(gone) < len(names) and time.monotonic() < deadline:
            for n in names:
                if n not in gone and not proc_alive(pids[n], *MARKERS):
                    gone[n] = time.time()
            time.sleep(0.02)
        assert set(gone) == set(names), f"still running: {set(names) - set(gone)}"
        for n in names:
            lived = gone[n] - started[n]
            limit = 1.0 + (2.0 if n.endswith(".11") else 0.0) + 1.5  # timeout + grace + slack
            assert 0.8 <= lived <= limit, f"{n} lived {lived:.2f}s"
        # Line 11's hook outlived SIGTERM: it went only with the SIGKILL after the grace.
        assert gone["hook.11"] - started["hook.11"] >= 2.5

        h = hook_stats_when_idle(server, 3, 5.0)  # line 12's hook hung too, and went at 1 s
        assert h["timed_out"] == 3 and h["running"] == 0
        assert "killed after 1.0s timeout" in server.log()
    finally:
        for c in clients:
            c.close()
        for f in out.glob("*.1?"):  # a failed run must not leave its sleeps behind
            pid = int(f.read_text())
            if proc_alive(pid, *MARKERS):
                os.kill(pid, signal.SIGKILL)


# -- a burst of activations under SIP load --------------------------------------------------

BURST_USERS = 1000
#: SIPp rate (REGISTERs per second) and count: every user twice, so each user's first
#: REGISTER adds a binding (activate) and the second refreshes it (no hook).
BURST_RATE = 2000
BURST_CALLS = 2 * BURST_USERS
MAX_RUNNING = 4


def sipp_stats(path: Path) -> dict[str, str]:
    rows = list(csv.reader(io.StringIO(path.read_text()), delimiter=";"))
    return dict(zip(rows[0], rows[-1], strict=False))


def test_burst_of_1000_activations_never_runs_more_than_max_running(
        start_server: Callable[..., Server], hooks_dir: Path, tmp_path: Path) -> None:
    """Open registration, 1 000 distinct users REGISTERed by SIPp at 2 000/s (two rounds).

    Concurrency is measured by the hooks themselves: each run makes the directory
    ``running/PID``, counts the entries there with a glob (a builtin; the count can only
    under-state how many hooks the server has running at that instant, never over-state it),
    appends the count, sleeps 10 ms and removes its directory. The server's own ``peak`` gauge
    is checked as well.

    The rate: SIPp is asked for 2 000/s. On the 2-core reference machine the server answers
    fewer (400–800/s seen while other work shared the cores), so SIPp retransmits (1 300–3 100
    retransmissions seen) and the 2 000 REGISTERs take 2.5–5 s; what is asserted is that none
    fails. The 1 000 hook runs (4 processes each) then take 5–20 s, by how busy the machine is.
    """
    exe = require_tool("sipp")
    out = tmp_path / "burst"
    (out / "running").mkdir(parents=True)
    write_hook(hooks_dir / "activate", f"""\
mkdir {out}/running/$$
set -- {out}/running/*
echo $# >>{out}/counts
sleep 0.01
rmdir {out}/running/$$
""")
    server = start_server(
        "burst", server={"hooks_dir": str(hooks_dir)}, lines=["10"],
        security={"open_registration": True},
        hooks={"max_running": MAX_RUNNING, "queue": 2 * BURST_USERS, "timeout": 30})
    users = tmp_path / "users.csv"
    users.write_text("SEQUENTIAL\n" + "".join(f"u{n}\n" for n in range(BURST_USERS)))
    stats = tmp_path / "sipp.csv"
    r = subprocess.run(
        [exe, "-sf", str(BENCH / "scenarios" / "register.xml"), "-inf", str(users),
         f"127.0.0.1:{server.port}", "-i", "127.0.0.1", "-p", str(free_port()),
         "-r", str(BURST_RATE), "-l", str(BURST_CALLS), "-m", str(BURST_CALLS),
         "-timeout", "60s", "-nostdin", "-trace_stat", "-stf", str(stats)],
        capture_output=True, text=True, timeout=90, cwd=tmp_path)
    st = sipp_stats(stats)
    assert (st["SuccessfulCall(C)"], st["FailedCall(C)"]) == (str(BURST_CALLS), "0"), \
        r.stdout[-2000:] + r.stderr[-2000:]
    assert r.returncode == 0

    h = hook_stats_when_idle(server, BURST_USERS, 60.0)
    assert h["dropped"] == 0 and h["failed"] == 0 and h["timed_out"] == 0
    assert h["started"] == h["finished"] == BURST_USERS  # one activate per user, none per refresh
    assert h["peak"] == MAX_RUNNING

    counts = [int(x) for x in (out / "counts").read_text().split()]
    assert len(counts) == BURST_USERS
    assert max(counts) <= MAX_RUNNING
    assert max(counts) >= 2  # the hooks did overlap: the measure can see concurrency
    assert not list((out / "running").iterdir())
    assert status(server)["bindings"] == BURST_USERS
