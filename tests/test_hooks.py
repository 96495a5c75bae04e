"""Tests for sipyard.hooks: records, the runner (real subprocesses), chat, the examples."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipyard.hooks import (
    ChatService,
    HookRunner,
    Outcome,
    Value,
    decode_record,
    encode_record,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "hooks"
T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def script(path: Path, body: str, mode: int = 0o755) -> Path:
    """Write a POSIX sh hook."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


def with_runner(
    hooks: Path, fn: Callable[[HookRunner], Awaitable[T]], **kw: Any
) -> tuple[T, dict[str, int]]:
    """Run ``fn(runner)`` against a started runner; close it and return (result, stats)."""
    kw.setdefault("timeout", 10.0)
    kw.setdefault("max_running", 4)
    kw.setdefault("queue", 100)

    async def main() -> tuple[T, dict[str, int]]:
        runner = HookRunner(hooks, **kw)
        await runner.start()
        try:
            result = await fn(runner)
            await runner.wait_idle()
            return result, runner.stats()
        finally:
            await runner.close()

    return asyncio.run(main())


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a container's pid 1 may not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- records -----------------------------------------------------------------------------

keys = st.builds(
    lambda head, tail: head + tail,
    st.sampled_from("az_"),
    st.text(alphabet="abz019_", max_size=12),
)
nasty = st.text(alphabet=st.sampled_from("ab=\\\n\r nrk_é\x00\t"), max_size=30)
values = st.one_of(st.text(max_size=40), nasty)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(keys, values, max_size=8))
def test_record_round_trip_and_no_forged_keys(record: dict[str, str]) -> None:
    data = encode_record(record)
    lines = data.split(b"\n")
    assert lines[-1] == b""
    # One line per key, each starting with its own key: a value can never start a line.
    assert [ln.split(b"=", 1)[0].decode() for ln in lines[:-1]] == list(record)
    assert b"\r" not in data
    assert decode_record(data) == record


def test_escaping_is_exactly_backslash_lf_cr() -> None:
    data = encode_record({"a": "x\ny", "b": "c\rd", "c": "e\\nf", "d": "hi there=1==", "e": "\t'$"})
    assert data == (
        b"a=x\\ny\nb=c\\rd\nc=e\\\\nf\nd=hi there=1==\ne=\t'$\n"
    )
    assert decode_record(data)["c"] == "e\\nf"  # a literal backslash-n stays two characters


def test_injection_attempts_stay_inside_their_value() -> None:
    evil = {"user_agent": "x\nline=10\r\nevent=release\\\nstate=night", "line": "11"}
    decoded = decode_record(encode_record(evil))
    assert decoded == evil
    assert set(decoded) == {"user_agent", "line"}


@pytest.mark.parametrize("key", ["Line", "1a", "a-b", "", "a=b", "a\nb", "é", "a b"])
def test_bad_keys_rejected(key: str) -> None:
    with pytest.raises(ValueError):
        encode_record({key: "v"})


def test_value_types() -> None:
    data = encode_record({"a": 1, "b": 2.5, "c": None, "d": True, "e": ""})
    assert data == b"a=1\nb=2.5\nd=1\ne=\n"


def test_decode_rejects_malformed_lines() -> None:
    for bad in (b"novalue\n", b"Bad=1\n", b"=v\n"):
        with pytest.raises(ValueError):
            decode_record(bad)


def test_shell_reads_the_record_as_documented(tmp_path: Path) -> None:
    """The README's reading idiom gets every value back byte for byte, trailing '=' too."""
    out = tmp_path / "out"
    out.mkdir()
    hooks = tmp_path / "hooks"
    script(
        hooks / "state",
        f"""while IFS= read -r kv; do
    k=${{kv%%=*}} v=${{kv#*=}}
    printf '%b' "$v" > "{out}/$k"
done
""",
    )
    record = {
        "trailing": "abc=",
        "equals": "a=b==c",
        "spaces": "  hi  there ",
        "newline": "one\ntwo\n",
        "cr": "a\rb",
        "backslashes": "\\ \\\\ \\n \\c \\0101 %s %b",
        "shell": "; rm -rf / $(id) `id` 'q' \"dq\" | & >x",
        "forge": "x\nline=10",
    }
    result, _ = with_runner(hooks, lambda r: r.run("state", record))
    assert result.ok
    got = {p.name: p.read_bytes().decode() for p in out.iterdir()}
    assert got.pop("event") == "state"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", got.pop("time"))
    assert got == record


# --- runner ------------------------------------------------------------------------------


def test_activate_record_as_seen_by_the_script(tmp_path: Path) -> None:
    dump = tmp_path / "stdin"
    script(tmp_path / "activate", f"cat > {dump}\n")
    record: dict[str, Value] = {
        "line": 11, "display": "Kitchen", "contact": "sip:11@192.0.2.7:5060;ob",
        "source": "192.0.2.7:5060", "user_agent": "Phone/1.0\nline=99",
        "expires": 3600, "unknown": None, "time": 1714564800.0,
    }

    async def go(r: HookRunner) -> bool:
        return r.fire("activate", record)

    fired, stats = with_runner(tmp_path, go)
    assert fired
    data = dump.read_bytes()
    assert data.startswith(b"event=activate\ntime=2024-05-01T12:00:00Z\n")
    assert decode_record(data) == {
        "event": "activate", "time": "2024-05-01T12:00:00Z", "line": "11", "display": "Kitchen",
        "contact": "sip:11@192.0.2.7:5060;ob", "source": "192.0.2.7:5060",
        "user_agent": "Phone/1.0\nline=99", "expires": "3600",
    }
    assert stats["started"] == stats["finished"] == 1
    assert stats["failed"] == stats["timed_out"] == stats["dropped"] == 0


def test_environment_is_minimal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPYARD_SECRET", "leak")
    (tmp_path / "reload").symlink_to(shutil.which("env") or "/usr/bin/env")
    extra = {"SIPYARD_DATA": str(tmp_path), "SIPYARD_CONTROL": str(tmp_path / "control.sock")}
    result, _ = with_runner(tmp_path, lambda r: r.run("reload", {}), env_extra=extra)
    assert result.ok
    env = dict(ln.split("=", 1) for ln in result.stdout.decode().splitlines())
    assert env == {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
        "SIPYARD_EVENT": "reload", **extra,
    }


def test_timeout_kills_the_hook_and_its_children(tmp_path: Path) -> None:
    """The hook ignores SIGTERM (and so do its children): SIGKILL to the group after grace."""
    pids = tmp_path / "pids"
    script(
        tmp_path / "state",
        f"""trap '' TERM
sleep 1000 &
echo $! > {pids}
sh -c 'sleep 1000' </dev/null >/dev/null 2>&1 &
echo $! >> {pids}
echo $$ >> {pids}
sleep 1000
""",
    )
    start = time.monotonic()
    result, stats = with_runner(
        tmp_path, lambda r: r.run("state", {}), timeout=0.5, kill_grace=0.3
    )
    assert time.monotonic() - start < 5
    assert result.timed_out and result.returncode is None
    procs = [int(p) for p in pids.read_text().split()]
    assert len(procs) == 3
    deadline = time.monotonic() + 3
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in procs)
    assert stats["timed_out"] == 1 and stats["started"] == stats["finished"] == 1


def test_timeout_sigterm_is_enough_for_a_polite_hook(tmp_path: Path) -> None:
    pid = tmp_path / "pid"
    script(tmp_path / "state", f"sleep 1000 &\necho $! > {pid}\nwait\n")
    start = time.monotonic()
    result, _ = with_runner(tmp_path, lambda r: r.run("state", {}), timeout=0.3, kill_grace=30)
    assert result.timed_out
    assert time.monotonic() - start < 5  # did not sit out the 30 s grace
    child = int(pid.read_text())
    deadline = time.monotonic() + 3
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_concurrency_bounded_and_every_event_accounted_for(tmp_path: Path) -> None:
    """1000 events, max_running=4: the scripts themselves never see more than 4 at once."""
    log = tmp_path / "log"
    script(
        tmp_path / "activate",
        f"echo + >> {log}\nwhile IFS= read -r kv; do :; done\necho - >> {log}\n",
    )

    async def go(r: HookRunner) -> int:
        return sum(r.fire("activate", {"line": i}) for i in range(1000))

    accepted, stats = with_runner(tmp_path, go, max_running=4, queue=1000)
    assert accepted == 1000
    level = peak = 0
    for mark in log.read_text().split():
        level += 1 if mark == "+" else -1
        peak = max(peak, level)
    assert level == 0
    assert 1 <= peak <= 4
    assert log.read_text().count("+") == 1000
    assert stats["started"] + stats["dropped"] == 1000
    assert stats["dropped"] == 0 and stats["finished"] == 1000 and stats["failed"] == 0
    assert stats["peak"] == 4 and stats["running"] == stats["queued"] == 0


def test_queue_overflow_is_dropped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    script(tmp_path / "release", "sleep 0.2\n")

    async def go(r: HookRunner) -> list[bool]:
        return [r.fire("release", {"line": 11}) for _ in range(10)]

    with caplog.at_level(logging.WARNING, logger="sipyard.hooks"):
        fired, stats = with_runner(tmp_path, go, max_running=1, queue=2)
    assert fired == [True] * 3 + [False] * 7
    assert stats["dropped"] == 7 and stats["started"] == 3 and stats["finished"] == 3
    drops = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(drops) == 1  # one warning per overflow episode, not one per event


def test_run_reports_dropped_when_queue_full(tmp_path: Path) -> None:
    script(tmp_path / "release", "sleep 0.3\n")

    async def go(r: HookRunner) -> list[Outcome]:
        r.fire("release", {})
        results = await asyncio.gather(r.run("release", {}), r.run("release", {}))
        return [x.outcome for x in results]

    outcomes, stats = with_runner(tmp_path, go, max_running=1, queue=1)
    assert outcomes == [Outcome.OK, Outcome.DROPPED]
    assert stats["dropped"] == 1


def test_missing_hook_is_fine(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def go(r: HookRunner) -> tuple[bool, Outcome]:
        return r.fire("activate", {"line": 1}), (await r.run("cdr", {})).outcome

    with caplog.at_level(logging.DEBUG, logger="sipyard.hooks"):
        (fired, outcome), stats = with_runner(tmp_path / "nowhere", go)
    assert fired is False and outcome is Outcome.MISSING
    assert stats["started"] == stats["dropped"] == stats["failed"] == 0
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


def test_non_executable_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    script(tmp_path / "activate", "exit 0\n", mode=0o644)
    (tmp_path / "release").mkdir()  # a directory is not a hook either

    async def go(r: HookRunner) -> list[bool]:
        return [r.fire(name, {}) for name in ("activate", "activate", "release", "activate")]

    with caplog.at_level(logging.WARNING, logger="sipyard.hooks"):
        fired, stats = with_runner(tmp_path, go)
    assert fired == [False] * 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert sum("activate" in w for w in warnings) == 1
    assert stats["started"] == 0


@pytest.mark.parametrize(
    "name", ["../activate", "chat/../../x", "chat/a/b", "a/b", "", "x" * 33, "Activate",
             "chat/", "/etc/passwd", "chat/.."],
)
def test_hook_names_cannot_escape(tmp_path: Path, name: str) -> None:
    runner = HookRunner(tmp_path, timeout=1, max_running=1, queue=1)
    with pytest.raises(ValueError):
        runner.fire(name, {})


def test_failure_exit_status_and_stderr_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    script(tmp_path / "state", "echo 'first problem' >&2\necho second >&2\nexit 3\n")
    (tmp_path / "reload").write_text("no shebang here\n")
    (tmp_path / "reload").chmod(0o755)

    async def go(r: HookRunner) -> tuple[Any, Any]:
        return await r.run("state", {}), await r.run("reload", {})

    with caplog.at_level(logging.WARNING, logger="sipyard.hooks"):
        (bad, noexec), stats = with_runner(tmp_path, go)
    assert bad.outcome is Outcome.FAILED and bad.returncode == 3
    assert bad.stderr == b"first problem\nsecond\n"
    # stdlib asyncio gets ENOEXEC; uvloop (libuv's execvp) hands such a file to /bin/sh
    assert noexec.outcome is Outcome.FAILED and noexec.returncode in (None, 127)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "exit 3" in text and "first problem | second" in text
    assert stats["failed"] == 2
    if noexec.returncode is None:
        assert "cannot run" in text and stats["started"] == 1


def test_output_capped_and_unread_stdin_is_fine(tmp_path: Path) -> None:
    script(tmp_path / "cdr", "head -c 300000 /dev/zero\n")  # never reads its stdin
    big = {"args": "x" * 500_000}
    result, _ = with_runner(tmp_path, lambda r: r.run("cdr", big))
    assert result.ok and result.stdout == b"\0" * 65536


def test_close_drops_queue_and_kills_running(tmp_path: Path) -> None:
    pid = tmp_path / "pid"
    script(tmp_path / "state", f"sleep 1000 &\necho $! > {pid}\nwait\n")

    async def main() -> dict[str, int]:
        r = HookRunner(tmp_path, timeout=60, max_running=1, queue=5)
        for _ in range(3):
            r.fire("state", {})  # before start(): queued, not lost
        await r.start()
        for _ in range(100):
            if pid.exists() and pid.read_text().strip():
                break
            await asyncio.sleep(0.02)
        await r.close()
        assert r.fire("state", {}) is False
        return r.stats()

    start = time.monotonic()
    stats = asyncio.run(main())
    assert time.monotonic() - start < 5
    assert stats["started"] == 1 and stats["dropped"] == 3 and stats["running"] == 0
    child = int(pid.read_text())
    deadline = time.monotonic() + 3
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_update_takes_new_dir_and_limits(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    script(old / "state", "echo old\n")
    script(new / "state", "echo new\n")

    async def go(r: HookRunner) -> list[bytes]:
        first = (await r.run("state", {})).stdout
        r.update(new, timeout=5, max_running=2, queue=0)
        second = (await r.run("state", {})).stdout  # queue=0 still runs when a slot is free
        return [first, second]

    outputs, stats = with_runner(old, go)
    assert outputs == [b"old\n", b"new\n"]
    assert stats["dropped"] == 0
    with pytest.raises(ValueError):
        HookRunner(tmp_path, timeout=0, max_running=1, queue=1)


# --- chat --------------------------------------------------------------------------------


def chat(hooks: Path, text: str, **kw: Any) -> list[str]:
    async def go(r: HookRunner) -> list[str]:
        return await ChatService(r).handle(text, line="11", display="Kitchen")

    return with_runner(hooks, go, **kw)[0]


@pytest.fixture()
def chat_dir(tmp_path: Path) -> Path:
    hooks = tmp_path / "hooks"
    shutil.copytree(EXAMPLES, hooks)
    return hooks


def test_chat_echo_hi_there(chat_dir: Path) -> None:
    assert chat(chat_dir, "/echo hi there") == ["hi there"]
    assert chat(chat_dir, "/ECHO a=b c=\n") == ["a=b c="]
    assert chat(chat_dir, "/echo back\\slash \\n") == ["back\\slash \\n"]


def test_chat_unknown_command_helps(chat_dir: Path) -> None:
    assert chat(chat_dir, "/nosuch") == ["unknown command /nosuch — try /help: door, echo, time"]
    assert chat(chat_dir, "/../../bin/sh -c id") == [
        "unknown command /../../bin/sh — try /help: door, echo, time"
    ]
    empty = chat_dir.parent / "empty"
    empty.mkdir()
    assert chat(empty, "/nosuch x") == ["unknown command /nosuch — no chat commands are installed"]


def test_chat_help_lists_installed_commands(chat_dir: Path) -> None:
    script(chat_dir / "chat" / "off", "exit 0\n", mode=0o644)  # not executable
    script(chat_dir / "chat" / "Bad.Name", "exit 0\n")
    assert chat(chat_dir, "/help") == ["commands: /door /echo /time /help"]
    assert chat(chat_dir, " /HELP me") == ["commands: /door /echo /time /help"]
    assert chat(chat_dir, "/") == ["commands: /door /echo /time /help"]


def test_chat_needs_a_slash(chat_dir: Path) -> None:
    assert chat(chat_dir, "hello") == ["chat commands start with / — try /help"]


def test_chat_record_and_metacharacters_passed_literally(tmp_path: Path) -> None:
    dump = tmp_path / "stdin"
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("keep")
    script(tmp_path / "chat" / "dump", f"cat > {dump}\necho ok\n")
    args = f"; rm -rf {sentinel} $(touch {tmp_path}/pwned) `id` && echo x=y | cat  "
    assert chat(tmp_path, f"/dump {args}") == ["ok"]
    record = decode_record(dump.read_bytes())
    assert list(record)[:2] == ["event", "time"]
    assert record == {
        "event": "chat", "time": record["time"], "command": "dump", "args": args,
        "line": "11", "display": "Kitchen",
    }
    assert sentinel.exists() and not (tmp_path / "pwned").exists()
    # through the example echo too: the reply is the text, nothing was run
    shutil.copy(EXAMPLES / "chat" / "echo", tmp_path / "chat" / "echo")
    assert chat(tmp_path, f"/echo {args}") == [args.rstrip()[:160]]
    assert sentinel.exists() and not (tmp_path / "pwned").exists()


def test_chat_binary_and_long_input_is_data(tmp_path: Path) -> None:
    dump = tmp_path / "stdin"
    script(tmp_path / "chat" / "dump", f"cat > {dump}\n")
    args = "\x00\x01\x1b[2J\udcff\n/echo x\r\nline=1\\" + "y" * 200_000
    assert chat(tmp_path, "/dump " + args) == ["/dump: done"]
    assert decode_record(dump.read_bytes())["args"] == args


def test_chat_output_replaced_and_capped(tmp_path: Path) -> None:
    script(tmp_path / "chat" / "bytes", r"printf 'ok \377\376 end\n'" + "\n")
    long = "é" * 300
    script(
        tmp_path / "chat" / "many",
        f"printf '\\n  \\n{long}\\n'\nfor i in 2 3 4 5 6 7; do echo line $i; done\n",
    )
    assert chat(tmp_path, "/bytes") == ["ok \ufffd\ufffd end"]
    assert chat(tmp_path, "/many") == ["é" * 160, "line 2", "line 3", "line 4", "line 5"]


def test_chat_failures_get_short_replies(tmp_path: Path) -> None:
    script(tmp_path / "chat" / "fail", "echo 'secret detail'\necho oops >&2\nexit 2\n")
    script(tmp_path / "chat" / "slow", "sleep 1000\n")
    script(tmp_path / "chat" / "quiet", "exit 0\n")
    assert chat(tmp_path, "/fail") == ["/fail failed (exit 2)"]
    assert chat(tmp_path, "/slow", timeout=0.3, kill_grace=0.1) == ["/slow timed out"]
    assert chat(tmp_path, "/quiet") == ["/quiet: done"]


# --- the examples ------------------------------------------------------------------------


def test_examples_are_executable_posix_sh() -> None:
    for name in ("activate", "release", "chat/echo", "chat/time", "chat/door"):
        path = EXAMPLES / name
        assert os.access(path, os.X_OK), name
        text = path.read_text()
        assert text.startswith("#!/bin/sh\n"), name
        assert "\\\\" in text and "carriage return" in text, name  # escaping documented


def test_example_activate_and_release_log(tmp_path: Path) -> None:
    async def go(r: HookRunner) -> list[bool]:
        fired = [
            r.fire("activate", {
                "line": 11, "display": "Kitchen", "contact": "sip:11@192.0.2.7",
                "source": "192.0.2.7:5060", "user_agent": "Evil\nline=99", "time": 0,
            })
        ]
        await r.wait_idle()
        fired.append(r.fire("release", {"line": 11, "reason": "expired", "time": 60}))
        return fired

    fired, stats = with_runner(EXAMPLES, go, env_extra={"SIPYARD_DATA": str(tmp_path)})
    assert fired == [True, True] and stats["failed"] == 0
    assert (tmp_path / "hooks.log").read_text().splitlines() == [
        "1970-01-01T00:00:00Z activate line=11 display=Kitchen contact=sip:11@192.0.2.7 "
        "source=192.0.2.7:5060 user_agent=Evil\\nline=99",
        "1970-01-01T00:01:00Z release line=11 display= reason=expired",
    ]


def test_example_chat_time_and_door() -> None:
    [reply] = chat(EXAMPLES, "/time")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+", reply)
    assert chat(EXAMPLES, "/door") == ["door: would open door for line 11"]
    assert chat(EXAMPLES, "/echo") == ["usage: /echo TEXT"]


def test_a_missing_hook_is_remembered_until_its_directory_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """find() runs for every event: a hook found missing costs one stat of the directory
    afterwards, not a failed stat; installing it (a new file moves the directory's mtime)
    is seen at the next event, and so is one in a subdirectory (chat/)."""
    hooks = tmp_path / "hooks"
    (hooks / "chat").mkdir(parents=True)
    old = time.time() - 60  # a directory changed in the last second is never trusted
    os.utime(hooks, (old, old))
    os.utime(hooks / "chat", (old, old))
    runner = HookRunner(hooks, timeout=1, max_running=1, queue=1)
    assert runner.find("cdr") is None and runner.find("chat/echo") is None
    stats: list[str] = []
    real_stat = os.stat

    def counting_stat(path: Any, *args: Any, **kw: Any) -> os.stat_result:
        stats.append(os.fspath(path))
        return real_stat(path, *args, **kw)

    monkeypatch.setattr(os, "stat", counting_stat)
    assert runner.find("cdr") is None
    assert stats == [str(hooks)]  # the directory only
    monkeypatch.setattr(os, "stat", real_stat)
    script(hooks / "cdr", "exit 0\n")
    assert runner.find("cdr") == str(hooks / "cdr")
    script(hooks / "chat" / "echo", "exit 0\n")
    assert runner.find("chat/echo") == str(hooks / "chat" / "echo")
    # removed again: missing at once (the removal moves the directory's mtime too)
    (hooks / "cdr").unlink()
    assert runner.find("cdr") is None


def test_hook_names_from_the_network_are_not_remembered_without_bound(tmp_path: Path) -> None:
    runner = HookRunner(tmp_path, timeout=1, max_running=1, queue=1)
    for i in range(5000):
        assert runner.find(f"chat/w{i}") is None
    assert len(runner._paths) <= 256 and len(runner._missing) <= 256
