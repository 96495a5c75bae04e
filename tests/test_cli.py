"""Tests for sipyard.cli without a running server: parsing, exit codes, offline commands.

The CLI's promises to scripts are its exit codes (0 ok, 1 invalid or refused, 2 timed out,
3 send failed, 4 not running), one clear line on stderr instead of a traceback, and ``--json``
documents. The failure paths of the control channel are provoked with tiny fake servers on a
unix socket (one that never answers, one that hangs up, one that refuses); the commands that
work offline (check, passwd, runstate, demo-init) run against files in a temp dir. The same
commands against a real server: tests/interop/test_control_cli.py.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import PASSWORDS, write_config

from sipyard import cli
from sipyard.config import load_config

pytestmark = pytest.mark.timeout(60)

#: Every command that talks to a running server, with valid arguments.
SERVER_COMMANDS: list[list[str]] = [
    ["status"], ["registry"], ["registry", "10"], ["message", "--to", "10", "hello"],
    ["presence", "10", "away"], ["reload"], ["level", "debug"], ["unregister", "10"],
    ["bans"], ["unban", "192.0.2.7"], ["stop"],
]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """cli.main in this process (fast); returns (exit code, stdout, stderr)."""
    try:
        rc = cli.main(list(argv))
    except SystemExit as exc:  # argparse's own exits (usage errors, --help)
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def site() -> Iterator[Path]:
    """A config dir with a short path (the control socket's sun_path is 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="sycli", dir="/tmp"))
    write_config(d, extra='[groups.100]\ndisplay = "Door bell"\nmembers = ["10", "11"]\n')
    (d / "data").mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class FakeControl:
    """A control socket that misbehaves on purpose: ``silent``, ``hangup`` or ``reply``."""

    def __init__(self, path: Path, mode: str, reply: dict[str, Any] | None = None) -> None:
        self.mode = mode
        self.reply = reply or {}
        self.requests: list[dict[str, Any]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.sock.settimeout(0.02)
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(5)
            buf = b""
            try:
                while b"\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            except OSError:
                pass
            if buf.strip():
                self.requests.append(json.loads(buf))
            if self.mode == "silent":
                self._held.append(conn)  # never answer, never close
                continue
            if self.mode == "reply":
                conn.sendall(json.dumps(self.reply).encode() + b"\n")
            conn.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() at once
        self.thread.join(5)
        for c in self._held:
            c.close()
        self.sock.close()


@pytest.fixture
def fake(site: Path) -> Iterator[Any]:
    made: list[FakeControl] = []

    def make(mode: str, reply: dict[str, Any] | None = None) -> FakeControl:
        f = FakeControl(site / "data" / "control.sock", mode, reply)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


# -- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", SERVER_COMMANDS + [["runstate"], ["runstate", "night"],
                                                      ["check"], ["passwd", "10"]])
def test_config_and_data_are_accepted_anywhere_after_the_command(argv: list[str]) -> None:
    parser = cli.build_parser()
    name, rest = argv[0], argv[1:]
    for placed in ([name, "-c", "C", "--data", "D", *rest], [name, *rest, "--data", "D", "-c", "C"],
                   [name, "--data=D", *rest, "--config", "C"]):
        args = parser.parse_args(placed)
        assert (args.cmd, args.config, args.data) == (name, "C", "D"), placed
        assert hasattr(args, "json")


def test_usage_errors_exit_1_not_2(capsys: pytest.CaptureFixture[str]) -> None:
    # 2 means "timed out" to scripts; a bad argument is "invalid" (1).
    for argv in (["level", "loud"], ["presence", "10", "asleep"], ["message", "hello"],
                 ["nosuchcommand"], ["status", "--bogus"]):
        rc, out, err = run(capsys, *argv)
        assert rc == 1, argv
        assert "error:" in err


def test_level_accepts_numbers(capsys: pytest.CaptureFixture[str], site: Path, fake: Any) -> None:
    f = fake("reply", {"ok": True, "level": "debug"})
    for given, sent in (("3", "debug"), ("0", "error"), ("WARNING", "warning")):
        rc, out, _ = run(capsys, "level", given, "-c", str(site / "sipyard.toml"))
        assert rc == 0
        assert f.requests[-1] == {"op": "level", "level": sent}


# -- exit codes against no server / a broken one -------------------------------------------


@pytest.mark.parametrize("argv", SERVER_COMMANDS, ids=lambda a: a[0])
def test_not_running_exits_4_with_one_clear_line(
        capsys: pytest.CaptureFixture[str], site: Path, argv: list[str]) -> None:
    rc, out, err = run(capsys, *argv, "-c", str(site / "sipyard.toml"))
    assert rc == 4
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "not running" in err and str(site / "data" / "control.sock") in err


def test_not_running_with_json_prints_an_error_document(
        capsys: pytest.CaptureFixture[str], site: Path) -> None:
    rc, out, err = run(capsys, "status", "--json", "-c", str(site / "sipyard.toml"))
    assert rc == 4
    doc = json.loads(out)
    assert doc["exit"] == 4 and "not running" in doc["error"]


def test_stale_socket_file_is_not_running(capsys: pytest.CaptureFixture[str], site: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(site / "data" / "control.sock"))
    s.close()  # the file stays, nobody listens: a crashed server's leftover
    rc, _, err = run(capsys, "status", "-c", str(site / "sipyard.toml"))
    assert rc == 4 and "nobody listening" in err


def test_data_option_overrides_config(capsys: pytest.CaptureFixture[str], site: Path) -> None:
    other = site / "elsewhere"
    other.mkdir()
    rc, _, err = run(capsys, "status", "--data", str(other), "-c", str(site / "sipyard.toml"))
    assert rc == 4 and str(other / "control.sock") in err


def test_server_that_never_answers_exits_2(
        capsys: pytest.CaptureFixture[str], site: Path, fake: Any) -> None:
    fake("silent")
    rc, out, err = run(capsys, "status", "--timeout", "0.5", "-c", str(site / "sipyard.toml"))
    assert rc == 2
    assert "timed out" in err and "Traceback" not in err


def test_server_that_hangs_up_exits_3(
        capsys: pytest.CaptureFixture[str], site: Path, fake: Any) -> None:
    fake("hangup")
    rc, _, err = run(capsys, "reload", "-c", str(site / "sipyard.toml"))
    assert rc == 3
    assert "send failed" in err


def test_refusal_exits_1_and_op_timeout_exits_2(
        capsys: pytest.CaptureFixture[str], site: Path, fake: Any) -> None:
    fake("reply", {"ok": False, "error": "no line 99"})
    rc, out, err = run(capsys, "registry", "99", "-c", str(site / "sipyard.toml"))
    assert (rc, out) == (1, "")
    assert err.strip() == "sipyard registry: no line 99"


def test_op_timed_out_on_the_server_exits_2(
        capsys: pytest.CaptureFixture[str], site: Path, fake: Any) -> None:
    fake("reply", {"ok": False, "error": "timed out"})
    rc, _, _ = run(capsys, "unregister", "10", "-c", str(site / "sipyard.toml"))
    assert rc == 2


def test_refused_reload_json_carries_file_key_reason(
        capsys: pytest.CaptureFixture[str], site: Path, fake: Any) -> None:
    reply = {"ok": False, "error": "reload refused: /x/custom.toml: lines.10.max_contacts: bad",
             "file": "/x/custom.toml", "key": "lines.10.max_contacts", "reason": "bad"}
    fake("reply", reply)
    rc, out, err = run(capsys, "reload", "--json", "-c", str(site / "sipyard.toml"))
    assert rc == 1
    doc = json.loads(out)
    assert (doc["file"], doc["key"], doc["reason"], doc["exit"]) == (
        "/x/custom.toml", "lines.10.max_contacts", "bad", 1)
    assert "lines.10.max_contacts" in err


def test_an_invalid_config_still_finds_the_socket(
        capsys: pytest.CaptureFixture[str], site: Path, fake: Any) -> None:
    # custom.toml is being edited and does not validate: `sipyard reload` must still reach the
    # server (which then refuses the file itself) instead of failing on the client side.
    (site / "custom.toml").write_text("[lines.10]\nmax_contacts = \"many\"\n")
    f = fake("reply", {"ok": True, "files": [], "state": None, "removed_lines": []})
    rc, out, _ = run(capsys, "reload", "-c", str(site / "sipyard.toml"))
    assert rc == 0 and f.requests == [{"op": "reload"}]


def test_unreadable_or_missing_config_is_one_line(
        capsys: pytest.CaptureFixture[str], site: Path) -> None:
    rc, out, err = run(capsys, "status", "-c", str(site / "nope.toml"))
    assert rc == 1 and "nope.toml" in err and "Traceback" not in err
    assert err.count("\n") == 1


# -- message: checks before anything is sent ----------------------------------------------


def test_message_length_limit(capsys: pytest.CaptureFixture[str], site: Path, fake: Any) -> None:
    conf = str(site / "sipyard.toml")
    rc, _, err = run(capsys, "message", "--to", "10", "x" * 161, "-c", conf)
    assert rc == 1 and "161 characters" in err
    # words are joined with one space; 160 characters in all is fine
    f = fake("reply", {"ok": True, "results": [
        {"target": "10", "status": "delivered", "detail": "200"}]})
    rc, out, _ = run(capsys, "message", "-c", conf, "--to", "10", "y" * 100, "z" * 59)
    assert rc == 0
    assert f.requests[-1] == {"op": "message", "to": "10", "text": "y" * 100 + " " + "z" * 59}
    assert "delivered" in out
    rc, _, err = run(capsys, "message", "--to", "10", "--subject", "s" * 65, "hi", "-c", conf)
    assert rc == 1 and "subject" in err


@pytest.mark.parametrize("statuses,code", [
    (["delivered"], 0), (["delivered", "failed"], 0), (["failed"], 3), (["not registered"], 3),
    (["failed", "not registered"], 3)])
def test_message_exit_code_follows_delivery(
        capsys: pytest.CaptureFixture[str], site: Path, fake: Any, statuses: list[str],
        code: int) -> None:
    results = [{"target": str(10 + i), "status": s, "detail": ""} for i, s in enumerate(statuses)]
    fake("reply", {"ok": True, "results": results})
    rc, out, _ = run(capsys, "message", "--to", "all", "hi", "--json", "-c",
                     str(site / "sipyard.toml"))
    assert rc == code
    assert json.loads(out) == {"results": results}


# -- offline commands ---------------------------------------------------------------------


def test_runstate_offline_records_shows_and_clears(
        capsys: pytest.CaptureFixture[str], site: Path) -> None:
    conf = str(site / "sipyard.toml")
    (site / "states").mkdir()
    (site / "states" / "night.toml").write_text('[groups.100]\nmembers = ["12"]\n')
    rc, out, _ = run(capsys, "runstate", "-c", conf)
    assert (rc, out.strip()) == (0, "run state: none (server not running)")
    rc, out, _ = run(capsys, "runstate", "night", "-c", conf)
    assert rc == 0 and out.startswith("run state: night (server not running; recorded")
    rc, out, _ = run(capsys, "runstate", "--json", "-c", conf)
    assert json.loads(out) == {"state": "night", "running": False}
    # a state without a file is refused and nothing changes
    rc, _, err = run(capsys, "runstate", "holiday", "-c", conf)
    assert rc == 1 and "holiday.toml" in err
    rc, out, _ = run(capsys, "runstate", "--json", "-c", conf)
    assert json.loads(out)["state"] == "night"
    rc, out, _ = run(capsys, "runstate", "none", "--json", "-c", conf)
    assert json.loads(out) == {"state": None, "running": False}


def test_runstate_show_on_a_fresh_site_creates_nothing(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    conf = write_config(tmp_path / "fresh")
    rc, out, _ = run(capsys, "runstate", "-c", str(conf))
    assert rc == 0 and "none" in out
    assert not (tmp_path / "fresh" / "data").exists()


def test_check_ok_json_and_states(capsys: pytest.CaptureFixture[str], site: Path) -> None:
    conf = str(site / "sipyard.toml")
    (site / "states").mkdir()
    (site / "states" / "night.toml").write_text('[groups.100]\nmembers = ["12"]\n')
    rc, out, _ = run(capsys, "check", "-c", conf)
    assert rc == 0
    assert out.startswith(f"config ok: {conf} (10 lines, 1 group)")
    assert "run states ok: night" in out
    rc, out, _ = run(capsys, "check", "--json", "-c", conf, "--state", "night")
    doc = json.loads(out)
    assert {"files", "lines", "groups", "warnings", "state"} <= set(doc)
    assert doc["state"] == "night" and doc["lines"] == 10 and doc["groups"] == 1
    assert doc["files"] == [conf, str(site / "states" / "night.toml")]


def test_check_reports_file_key_reason(capsys: pytest.CaptureFixture[str], site: Path) -> None:
    conf = str(site / "sipyard.toml")
    (site / "custom.toml").write_text('[lines.10]\nmax_contacts = "many"\n')
    rc, out, err = run(capsys, "check", "-c", conf)
    assert rc == 1 and out == ""
    assert err.startswith(f"sipyard check: {site / 'custom.toml'}: lines.10.max_contacts: ")
    rc, out, _ = run(capsys, "check", "-c", conf, "--json")
    doc = json.loads(out)
    assert (doc["file"], doc["key"]) == (str(site / "custom.toml"), "lines.10.max_contacts")


def test_check_finds_a_broken_run_state_and_a_bad_chain(
        capsys: pytest.CaptureFixture[str], site: Path) -> None:
    conf = str(site / "sipyard.toml")
    (site / "states").mkdir()
    (site / "states" / "night.toml").write_text('[groups.100]\nmembers = ["42"]\n')
    rc, _, err = run(capsys, "check", "-c", conf)
    assert rc == 1 and "night.toml: groups.100.members" in err
    (site / "states" / "night.toml").unlink()
    (site / "custom.toml").write_text('[redirect]\nchain = ["registrations", "nosuch"]\n')
    rc, _, err = run(capsys, "check", "-c", conf)
    assert rc == 1 and "redirect.chain[1]" in err and "nosuch" in err


def test_passwd_secret_ha1_and_refusals(capsys: pytest.CaptureFixture[str], site: Path) -> None:
    conf = site / "sipyard.toml"
    rc, out, _ = run(capsys, "passwd", "10", "--password", "n3w-secret", "-c", str(conf))
    assert rc == 0 and "reload" in out
    assert load_config(conf).lines["10"].secret == "n3w-secret"
    rc, out, _ = run(capsys, "passwd", "--ha1", "11", "--password", "x", "--json", "-c", str(conf))
    assert rc == 0 and json.loads(out) == {"line": "11", "file": str(conf), "form": "ha1"}
    line = load_config(conf).lines["11"]
    assert line.secret is None and set(line.ha1) == {"MD5", "SHA-256", "SHA-512-256"}
    assert load_config(conf).lines["12"].secret == PASSWORDS["12"]  # others untouched
    rc, _, err = run(capsys, "passwd", "9", "--password", "x", "-c", str(conf))
    assert rc == 1 and "outside" in err


def test_passwd_reads_stdin(capsys: pytest.CaptureFixture[str], site: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    conf = site / "sipyard.toml"
    monkeypatch.setattr("sys.stdin", io.StringIO("from-stdin\n"))
    rc, _, _ = run(capsys, "passwd", "12", "-c", str(conf))
    assert rc == 0 and load_config(conf).lines["12"].secret == "from-stdin"
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    rc, _, err = run(capsys, "passwd", "12", "-c", str(conf))
    assert rc == 1 and "empty" in err


def test_demo_init_writes_config_and_night_state(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    d = tmp_path / "demo"
    rc, out, _ = run(capsys, "demo-init", str(d))
    assert rc == 0 and "line 10:" in out
    cfg = load_config(d / "sipyard.toml", state="night")
    assert cfg.groups["100"].members == ("12",)
    assert load_config(d / "sipyard.toml").groups["100"].members == ("10", "11")
    rc, out, _ = run(capsys, "demo-init", str(d))
    assert rc == 0 and "exists" in out
