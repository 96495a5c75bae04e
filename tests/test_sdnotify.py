"""sdnotify, logsetup and the CLI's help/version text, in process (no server).

The server side (a real ``sipyard serve`` telling a socket READY/RELOADING/STOPPING) is in
tests/interop/test_systemd.py; here each piece is checked on its own against a socket the
test listens on, so a failure points at the function, not at the wiring.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipyard import clihelp, logsetup, sdnotify, version_line
from sipyard.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket under an abstract name, announced in $NOTIFY_SOCKET."""
    name = f"sipyard-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield sock
    sock.close()


def fields(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_notify_abstract_socket(listener: socket.socket) -> None:
    assert sdnotify.ready("listening on udp:127.0.0.1:5060")
    assert fields(listener) == {"READY": "1", "STATUS": "listening on udp:127.0.0.1:5060"}


def test_notify_path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.stopping()
        assert fields(sock)["STOPPING"] == "1"
        assert os.environ["NOTIFY_SOCKET"] == str(path)  # kept for the next message


def test_notify_without_socket_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize("value", ["relative/path", "vsock:2:1234"])
def test_unsupported_socket_is_ignored(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.notify("READY=1") is False


def test_gone_socket_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    assert sdnotify.notify("READY=1") is False


def test_newline_in_a_field_cannot_add_a_field(listener: socket.socket) -> None:
    sdnotify.notify("STATUS=a\nREADY=1")
    assert fields(listener) == {"STATUS": "a READY=1"}


def test_reloading_then_ready_even_when_the_reload_fails(listener: socket.socket) -> None:
    async def refused() -> dict[str, object]:
        raise RuntimeError("bad config")

    async def run() -> None:
        with sdnotify.reloading():
            await refused()

    with pytest.raises(RuntimeError):
        asyncio.run(run())
    first = fields(listener)
    assert first["RELOADING"] == "1"
    usec = int(first["MONOTONIC_USEC"])
    now = time_usec()
    assert 0 < now - usec < 5_000_000  # CLOCK_MONOTONIC, in microseconds
    assert fields(listener)["READY"] == "1"


def time_usec() -> int:
    import time

    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_reload_result_passes_through(listener: socket.socket) -> None:
    async def ok() -> dict[str, object]:
        return {"ok": True}

    async def run() -> dict[str, object]:
        with sdnotify.reloading():
            return await ok()

    assert asyncio.run(run()) == {"ok": True}


# -- logsetup ---------------------------------------------------------------------------

def test_journal_stream_must_be_our_stderr(tmp_path: Path) -> None:
    with open(tmp_path / "err", "w") as f, open(tmp_path / "other", "w") as g:
        st, other = os.fstat(f.fileno()), os.fstat(g.fileno())
        assert logsetup.stderr_is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not logsetup.stderr_is_journal(
            f, {"JOURNAL_STREAM": f"{other.st_dev}:{other.st_ino}"})
        assert not logsetup.stderr_is_journal(f, {})
        assert not logsetup.stderr_is_journal(f, {"JOURNAL_STREAM": "garbage"})
        assert not logsetup.stderr_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_journal_format_has_priority_and_no_timestamp() -> None:
    fmt = logsetup.JournalFormatter()
    rec = logging.LogRecord("sipyard.security", logging.WARNING, __file__, 1,
                            "sipyard auth failure: src=%s line=10 reason=x", ("192.0.2.7",), None)
    line = fmt.format(rec)
    assert line == "<4>WARNING sipyard.security: sipyard auth failure: src=192.0.2.7 line=10 reason=x"
    # journald strips "<4>"; what remains must still match the fail2ban filter
    failregex = _fail2ban_regex().replace("<HOST>", r"(?P<host>\S+)")
    assert re.match(failregex, line[3:]).group("host") == "192.0.2.7"  # type: ignore[union-attr]
    rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "one\ntwo", (), None)
    assert fmt.format(rec) == "<3>ERROR x: one\n<3>two"


def _fail2ban_regex() -> str:
    text = (ROOT / "examples" / "fail2ban" / "filter.d" / "sipyard.conf").read_text()
    return re.search(r"^failregex = (.*)$", text, re.M).group(1)  # type: ignore[union-attr]


# -- CLI text ---------------------------------------------------------------------------

def test_every_command_has_an_example() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(clihelp.EXAMPLES)
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "\nexample:\n  " in text, name
        for line in clihelp.EXAMPLES[name][0]:
            assert line in text


def test_every_example_parses() -> None:
    """An example a reader copies must at least be a valid command line (options renamed
    or removed since the example was written fail here)."""
    parser = build_parser()
    for name, (lines, _) in clihelp.EXAMPLES.items():
        for line in lines:
            words = shlex.split(line.split("|")[-1])
            if words[0] != "sipyard":  # e.g. "systemctl reload sipyard"
                continue
            try:
                parser.parse_args(words[1:])
            except SystemExit as exc:
                raise AssertionError(f"{name}: example does not parse: {line}") from exc


def test_version_names_the_core() -> None:
    out = subprocess.run([sys.executable, "-m", "sipyard.cli", "--version"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert re.fullmatch(r"sipyard \d+\.\d+\.\d+\S* \(core: (compiled|pure Python)\)\n", out.stdout)
    assert out.stdout.strip() == version_line()
