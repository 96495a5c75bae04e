"""The control plane from the outside: every ``sipyard`` tool against a real server.

A ``sipyard serve`` process per concern (one shared by most tests, fresh ones where a test
bans, stops or messages), driven by the CLI as a person or a script would: human tables by
default, ``--json`` documents with the keys the README promises, exit codes 0/1/3/4 (2, a
time-out, needs a server that stalls: tests/test_cli.py fakes one). Phones are either sipp
(the Done-when path: a sipp UAS registered as line 10 receives ``sipyard message``) or small
Python UDP phones that register with digest auth and answer MESSAGEs as told, for the edge
cases (all lines, groups, a phone that refuses or never answers). Also here: the control
socket refuses another user, the SIP side keeps answering while a control client stalls,
and the Prometheus endpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import (
    Server,
    UdpClient,
    free_port,
    header_values,
    register,
    run_cli,
    sip_request,
    status_of,
    write_config,
)

from sipyard.cli import main as cli_main
from sipyard.control import call

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
REALM = "sipyard.test"
GROUPS = '[groups.100]\ndisplay = "Door bell"\nmembers = ["10", "11"]\n'
#: a short op deadline, so a phone that never answers costs the test ~2.5 s, not 32
CONTROL = "[control]\nrequest_timeout = 3.0\n"
STATUS_KEYS = {"version", "pid", "uptime", "realm", "listen", "state", "log_level", "bindings",
               "lines_registered", "transactions", "suspended", "requests", "responses",
               "auth_failures", "bans", "hooks", "tcp_connections"}
BINDING_KEYS = {"contact", "source", "user_agent", "expires_in", "q"}


def cli(server: Server, *argv: str) -> subprocess.CompletedProcess[str]:
    """``sipyard ARGV -c CONFIG`` run in this process: the same code as the installed tool
    (cli.main), without 0.3 s of interpreter start-up per call. The tests that must see the
    real executable (exit status, stdout of a separate process) use ``server.cli``."""
    return run_main(*argv, "-c", str(server.config))


def run_main(*argv: str) -> subprocess.CompletedProcess[str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


def js(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and text in proc.stderr, proc.stderr


def control(server: Server, request: dict[str, Any]) -> dict[str, Any]:
    """A raw control request from this process (cheaper than a CLI run, for set-up)."""
    return call(server.data / "control.sock", request, timeout=10)


# -- phones -------------------------------------------------------------------------------


def answer(request: bytes, status: int, reason: str) -> bytes:
    """A response to ``request`` as a phone sends it (copies the dialog-forming headers)."""
    lines = [f"SIP/2.0 {status} {reason}"]
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for v in header_values(request, name):
            if name == "To" and ";tag=" not in v:
                v += ";tag=phone1"
            lines.append(f"{name}: {v}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Phone:
    """A registered line that answers MESSAGEs with ``status`` (None: never answers)."""

    def __init__(self, server: Server, line: str, status: int | None = 200) -> None:
        self.line = line
        self.status = status
        self.client = UdpClient(server.addr)
        r = register(self.client, line, realm=REALM)
        assert status_of(r) == 200, r
        self.messages: list[bytes] = []
        self._seen: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        sock = self.client.sock
        sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                data, addr = sock.recvfrom(65536)
            except (TimeoutError, OSError):
                continue
            if not data.startswith(b"MESSAGE "):
                continue
            key = header_values(data, "Call-ID")[0].encode()
            if key not in self._seen:  # retransmissions are answered, not counted
                self._seen.add(key)
                self.messages.append(data)
            if self.status is not None:
                reason = "OK" if self.status == 200 else "Busy Here"
                sock.sendto(answer(data, self.status, reason), addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.client.close()


@pytest.fixture
def phones(request: pytest.FixtureRequest) -> Iterator[Callable[..., Phone]]:
    made: list[tuple[Server, Phone]] = []

    def make(server: Server, line: str, status: int | None = 200) -> Phone:
        p = Phone(server, line, status)
        made.append((server, p))
        return p

    yield make
    for server, p in made:
        p.close()
        if server.proc is not None:
            control(server, {"op": "unregister", "line": p.line})


def body_of(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[1]


# -- servers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv(start_module_server: Callable[..., Server]) -> Server:
    """The shared server: lines 10–19, door-bell group 100, metrics on."""
    return start_module_server("ctl", extra=GROUPS + CONTROL,
                               server={"metrics": f"127.0.0.1:{free_port()}"})


@pytest.fixture(scope="module")
def msrv(start_module_server: Callable[..., Server]) -> Server:
    """A server for the messaging tests: only their phones are registered on it."""
    return start_module_server("msg", extra=GROUPS + CONTROL)


# -- status, registry, presence, level, reload, runstate, unregister, check, passwd -----------


def test_status_human_and_json(srv: Server) -> None:
    r = srv.cli("status")  # the real executable, once
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("sipyard ") and f"pid {srv.proc.pid}" in lines[0]  # type: ignore[union-attr]
    assert f"realm        {REALM}" in lines
    assert "run state    none" in lines
    assert f"udp:127.0.0.1:{srv.port}" in r.stdout
    doc = js(cli(srv, "status", "--json"))
    assert set(doc) >= STATUS_KEYS
    assert doc["realm"] == REALM and doc["state"] is None
    assert doc["pid"] == srv.proc.pid  # type: ignore[union-attr]
    assert f"udp:127.0.0.1:{srv.port}" in doc["listen"]
    assert f"tcp:127.0.0.1:{srv.port}" in doc["listen"]
    assert doc["log_level"] == "info"
    assert isinstance(doc["requests"], dict) and isinstance(doc["responses"], dict)


def test_config_and_data_anywhere_after_the_command(srv: Server) -> None:
    conf, data = str(srv.config), str(srv.data)
    for i, argv in enumerate((["status", "--data", data, "-c", conf, "--json"],
                              ["status", "--json", "--data", data, "-c", conf],
                              ["registry", "--data", data, "11", "--json", "-c", conf],
                              ["registry", "-c", conf, "11", "--json"])):
        doc = js(run_cli(*argv) if i == 0 else run_main(*argv))
        assert doc.get("realm", REALM) == REALM
    # --data wins over the config's data_dir: an empty dir has no server
    empty = Path(tempfile.mkdtemp(prefix="syd", dir="/tmp"))
    try:
        one_line_error(run_main("status", "-c", conf, "--data", str(empty)), 4, "not running")
    finally:
        shutil.rmtree(empty)


def test_registry_human_json_and_unknown_line(srv: Server) -> None:
    c = UdpClient(srv.addr)
    try:
        assert status_of(register(c, "12", realm=REALM)) == 200
        r = cli(srv, "registry")
        assert r.returncode == 0
        head, *rows = r.stdout.splitlines()
        assert head.split() == ["LINE", "DISPLAY", "PRESENCE", "CONTACT", "SOURCE", "EXPIRES", "Q",
                                "USER-AGENT"]
        assert [row.split()[0] for row in rows if not row.startswith(" ")][:10] == [
            str(n) for n in range(10, 20)]
        row12 = next(row for row in rows if row.startswith("12 "))
        assert f"sip:12@127.0.0.1:{c.port}" in row12 and f"127.0.0.1:{c.port}/udp" in row12
        doc = js(cli(srv, "registry", "12", "--json"))
        (line,) = doc["lines"]
        assert {"line", "display", "type", "presence", "bindings"} <= set(line)
        assert (line["line"], line["display"], line["type"]) == ("12", "Line 12", "phone")
        (b,) = line["bindings"]
        assert set(b) >= BINDING_KEYS
        assert b["contact"] == f"sip:12@127.0.0.1:{c.port}"
        assert b["source"] == f"127.0.0.1:{c.port}/udp"
        assert 290 <= b["expires_in"] <= 300 and b["q"] is None
        one_line_error(cli(srv, "registry", "99"), 1, "no line 99")
    finally:
        control(srv, {"op": "unregister", "line": "12"})
        c.close()


def test_presence(srv: Server) -> None:
    r = cli(srv, "presence", "13", "dnd")
    assert (r.returncode, r.stdout.strip()) == (0, "line 13: dnd")
    assert js(cli(srv, "registry", "13", "--json"))["lines"][0]["presence"] == "dnd"
    assert js(cli(srv, "presence", "13", "here", "--json")) == {"line": "13", "state": "here"}
    assert js(cli(srv, "registry", "13", "--json"))["lines"][0]["presence"] == "here"
    one_line_error(cli(srv, "presence", "99", "away"), 1, "no line 99")


def test_level(srv: Server) -> None:
    try:
        r = cli(srv, "level", "debug")
        assert (r.returncode, r.stdout.strip()) == (0, "log level debug")
        assert js(cli(srv, "status", "--json"))["log_level"] == "debug"
        assert js(cli(srv, "level", "1", "--json")) == {"level": "warning"}
        assert js(cli(srv, "status", "--json"))["log_level"] == "warning"
    finally:
        assert cli(srv, "level", "info").returncode == 0


def test_reload_and_runstate_show(srv: Server) -> None:
    r = cli(srv, "reload")
    assert r.returncode == 0
    assert r.stdout.startswith(f"reloaded: {srv.config}") and "(run state none)" in r.stdout
    doc = js(cli(srv, "reload", "--json"))
    assert {"files", "state", "removed_lines"} <= set(doc)
    assert (doc["files"], doc["state"], doc["removed_lines"]) == ([str(srv.config)], None, [])
    r = cli(srv, "runstate")
    assert (r.returncode, r.stdout.strip()) == (0, "run state: none")
    doc = js(cli(srv, "runstate", "--json"))
    assert (doc["state"], doc["running"]) == (None, True)


def test_unregister(srv: Server) -> None:
    c = UdpClient(srv.addr)
    try:
        assert status_of(register(c, "14", realm=REALM)) == 200
        assert len(js(cli(srv, "registry", "14", "--json"))["lines"][0]["bindings"]) == 1
        r = cli(srv, "unregister", "14")
        assert (r.returncode, r.stdout.strip()) == (0, "line 14: 1 binding(s) removed")
        assert js(cli(srv, "registry", "14", "--json"))["lines"][0]["bindings"] == []
        assert js(cli(srv, "unregister", "14", "--json")) == {"line": "14", "removed": 0}
        one_line_error(cli(srv, "unregister", "99"), 1, "no line 99")
    finally:
        c.close()


def test_check_on_the_running_config(srv: Server) -> None:
    r = cli(srv, "check")
    assert r.returncode == 0 and r.stdout.startswith(f"config ok: {srv.config} (10 lines, 1 group)")
    doc = js(cli(srv, "check", "--json"))
    assert {"files", "lines", "groups", "warnings", "state"} <= set(doc)
    assert (doc["lines"], doc["groups"], doc["state"]) == (10, 1, None)


def test_passwd_then_reload_changes_who_may_register(srv: Server) -> None:
    r = cli(srv, "passwd", "15", "--password", "fresh-15")
    assert r.returncode == 0 and "sipyard reload" in r.stdout
    c = UdpClient(srv.addr)
    try:
        # not applied until reload: the old password still works
        assert status_of(register(c, "15", realm=REALM, expires=60)) == 200
        assert cli(srv, "reload").returncode == 0
        assert status_of(register(c, "15", realm=REALM, expires=60)) == 401
        assert status_of(register(c, "15", realm=REALM, password="fresh-15", expires=60)) == 200
    finally:
        control(srv, {"op": "unregister", "line": "15"})
        c.close()


# -- bans, unban, stop ---------------------------------------------------------------------


def test_bans_unban_and_stop(start_server: Callable[..., Server]) -> None:
    s = start_server("ban", security={"max_auth_failures": 3, "ban_seconds": 600})
    assert cli(s, "bans").stdout.strip() == "no bans"
    c = UdpClient(s.addr, timeout=0.5)
    try:
        for _ in range(10):  # wrong password until the server stops answering
            if status_of(register(c, "10", password="wrong")) == 0:
                break
        else:
            pytest.fail("never banned")
        r = cli(s, "bans")
        assert r.returncode == 0
        head, row = r.stdout.splitlines()
        assert head.split() == ["ADDRESS", "FAILURES", "REMAINING"]
        assert row.split()[:2] == ["127.0.0.1", "3"]
        (ban,) = js(cli(s, "bans", "--json"))["bans"]
        assert {"address", "until", "failures"} <= set(ban)
        assert ban["address"] == "127.0.0.1" and 590 < ban["until"] - time.time() <= 600
        assert js(cli(s, "status", "--json"))["bans"] == 1
        r = cli(s, "unban", "127.0.0.1")
        assert (r.returncode, r.stdout.strip()) == (0, "unbanned 127.0.0.1")
        assert status_of(register(c, "10")) == 200  # heard again
        one_line_error(cli(s, "unban", "127.0.0.1"), 1, "127.0.0.1 was not banned")
        assert js(cli(s, "unban", "all", "--json")) == {"address": "all", "removed": 0}
    finally:
        c.close()
    # stop: the tool returns once the server is gone; the process exits cleanly
    assert s.proc is not None
    r = s.cli("stop")
    assert (r.returncode, r.stdout.strip()) == (0, "stopped")
    assert s.proc.wait(10) == 0
    assert not (s.data / "control.sock").exists()
    for argv in (["status"], ["registry"], ["message", "--to", "10", "hi"], ["reload"],
                 ["level", "info"], ["unregister", "10"], ["bans"], ["unban", "all"],
                 ["presence", "10", "away"], ["stop"]):
        one_line_error(cli(s, *argv), 4, "sipyard is not running")
    one_line_error(s.cli("status"), 4, "sipyard is not running")  # the real executable too


# -- message ------------------------------------------------------------------------------


def test_message_reaches_a_sipp_phone(msrv: Server, tmp_path: Path,
                                      tool: Callable[[str], str]) -> None:
    """Done-when: `sipyard message --to 10 hello` reaches a sipp UAS registered as line 10."""
    sipp = tool("sipp")
    logs = {k: tmp_path / f"{k}.log" for k in ("msg", "log", "err")}
    cmd = [sipp, "-sf", str(SCENARIOS / "register_wait_message.xml"),
           "-oocsf", str(SCENARIOS / "answer_message.xml"),
           "-i", "127.0.0.1", "-p", str(free_port()), "-m", "1", "-d", "4000",
           "-nostdin", "-timeout", "20s", "-timeout_error",
           "-trace_msg", "-message_file", str(logs["msg"]),
           "-trace_logs", "-log_file", str(logs["log"]),
           "-trace_err", "-error_file", str(logs["err"]), f"127.0.0.1:{msrv.port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    try:
        deadline = time.monotonic() + 5
        while not control(msrv, {"op": "registry", "line": "10"})["lines"][0]["bindings"]:
            assert time.monotonic() < deadline and proc.poll() is None, "sipp did not register"
            time.sleep(0.05)
        r = msrv.cli("message", "--to", "10", "hello")
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert r.stdout.splitlines()[1].split() == ["10", "delivered", "200"]
        rc = proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        control(msrv, {"op": "unregister", "line": "10"})
    assert rc == 0, proc.stderr.read() if proc.stderr else ""
    # what sipp received, from its own checks (answer_message.xml) and its message trace
    log = logs["log"].read_text()
    assert "MESSAGE-BODY:hello\n" in log
    assert f"MESSAGE-FROM: <sip:system@{REALM}>" in log
    assert "MESSAGE-TYPE: text/plain" in log
    assert "Failed regexp" not in logs["err"].read_text()
    trace = logs["msg"].read_text()
    start = trace.index("MESSAGE sip:10@127.0.0.1:")
    msg = trace[start:trace.index("-----", start)].strip().replace("\n", "\r\n").encode()
    assert body_of(msg) == b"hello"
    assert header_values(msg, "Content-Type")[0].startswith("text/plain")
    assert header_values(msg, "From")[0].startswith(f"<sip:system@{REALM}>")
    assert header_values(msg, "To")[0] == f"<sip:10@{REALM}>"


def test_message_details_subject_and_json(msrv: Server, phones: Callable[..., Phone]) -> None:
    p = phones(msrv, "12")
    doc = js(cli(msrv, "message", "--to", "12", "--subject", "Door", "Someone", "at", "the", "door",
                      "--json"))
    assert doc == {"results": [{"target": "12", "status": "delivered", "detail": "200"}]}
    (msg,) = p.messages
    assert msg.startswith(b"MESSAGE sip:12@127.0.0.1:")
    assert body_of(msg) == b"Someone at the door"
    assert header_values(msg, "Subject") == ["Door"]
    assert header_values(msg, "Content-Type")[0].startswith("text/plain")
    assert header_values(msg, "From")[0].startswith(f"<sip:system@{REALM}>")
    # non-ASCII text goes out as UTF-8; the limit counts characters, not bytes
    text = "é" * 160
    assert cli(msrv, "message", "--to", "12", text).returncode == 0
    assert body_of(p.messages[-1]).decode("utf-8") == text


def test_message_to_all_and_to_a_group(msrv: Server, phones: Callable[..., Phone]) -> None:
    ps = {n: phones(msrv, n) for n in ("10", "11", "13")}
    r = cli(msrv, "message", "--to", "all", "fire drill")
    assert r.returncode == 0, r.stderr
    rows = [row.split() for row in r.stdout.splitlines()[1:]]
    assert rows == [["10", "delivered", "200"], ["11", "delivered", "200"],
                    ["13", "delivered", "200"]]  # only registered lines are listed
    assert all([body_of(m) for m in p.messages] == [b"fire drill"] for p in ps.values())
    doc = js(cli(msrv, "message", "--to", "100", "ding", "--json"))  # the door-bell group
    assert doc["results"] == [{"target": "10", "status": "delivered", "detail": "200"},
                              {"target": "11", "status": "delivered", "detail": "200"}]
    assert [body_of(m) for m in ps["13"].messages] == [b"fire drill"]
    assert body_of(ps["10"].messages[-1]) == b"ding" == body_of(ps["11"].messages[-1])


def test_message_refusals_and_failures(msrv: Server, phones: Callable[..., Phone]) -> None:
    r = cli(msrv, "message", "--to", "19", "anyone?")
    assert r.returncode == 3
    assert r.stdout.splitlines()[1].split() == ["19", "not", "registered"]
    assert js_any(cli(msrv, "message", "--to", "19", "x", "--json")) == {
        "results": [{"target": "19", "status": "not registered", "detail": ""}]}
    one_line_error(cli(msrv, "message", "--to", "10", "x" * 161), 1, "161 characters")
    # the server checks the length too (another client than the CLI)
    reply = control(msrv, {"op": "message", "to": "10", "text": "x" * 161})
    assert reply["ok"] is False and "at most 160" in reply["error"]
    one_line_error(cli(msrv, "message", "--to", "99", "hi"), 1, "no line or group 99")
    busy = phones(msrv, "16", status=486)
    doc = js_any(cli(msrv, "message", "--to", "16", "hi", "--json"), code=3)
    assert doc["results"] == [{"target": "16", "status": "failed", "detail": "486"}]
    assert len(busy.messages) == 1
    # a phone that never answers: reported within the server's op deadline, not after 32 s
    phones(msrv, "17", status=None)
    t0 = time.monotonic()
    doc = js_any(cli(msrv, "message", "--to", "17", "hi", "--json"), code=3)
    assert doc["results"] == [{"target": "17", "status": "failed", "detail": "408"}]
    assert time.monotonic() - t0 < 6


def js_any(proc: subprocess.CompletedProcess[str], code: int = 3) -> Any:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


# -- the control socket and the SIP side ----------------------------------------------------


def _as_nobody(argv: list[str]) -> tuple[int, str]:
    """Run cli.main(argv) in a forked child as nobody; (exit code, stderr)."""
    import sipyard.cli
    import sipyard.config
    import sipyard.control  # noqa: F401  (imported before the uid change)

    nobody = pwd.getpwnam("nobody")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 99
        try:
            os.close(r)
            sys.stderr = os.fdopen(w, "w")  # pytest has replaced the sys streams
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            code = sipyard.cli.main(argv)
        except BaseException as exc:  # noqa: BLE001
            print(f"child crashed: {exc!r}", file=sys.stderr)
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        err = f.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the CLI as another user")
def test_control_socket_refuses_another_user() -> None:
    d = Path(tempfile.mkdtemp(prefix="synb", dir="/tmp"))
    os.chmod(d, 0o755)  # nobody may reach the socket file; its mode 0660 decides
    server = Server(write_config(d))
    try:
        server.start()
        sock = server.data / "control.sock"
        assert sock.stat().st_mode & 0o777 == 0o660
        os.chmod(server.data, 0o755)
        conf = str(server.config)
        code, err = _as_nobody(["status", "-c", conf])
        assert code == 1, err
        assert err.startswith(f"sipyard status: permission denied on {sock}"), err
        assert err.count("\n") == 1
        # a config nobody may not read: still one clear line, never a traceback
        os.chmod(server.config, 0o600)
        code, err = _as_nobody(["reload", "-c", conf])
        assert code == 1 and "Permission denied" in err and "Traceback" not in err, err
        assert err.count("\n") == 1
        assert js(cli(server, "status", "--json"))["realm"] == REALM  # root still gets in
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_sip_keeps_answering_while_a_control_client_stalls(srv: Server) -> None:
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(str(srv.data / "control.sock"))
    slow.sendall(b'{"op": "sta')  # half a request, then nothing
    c = UdpClient(srv.addr)
    try:
        t0 = time.monotonic()
        for i in range(20):
            r = c.request(sip_request("OPTIONS", f"sip:127.0.0.1:{srv.port}",
                                      local_port=c.port, cseq=i + 1), timeout=1.0)
            assert status_of(r) == 200
        assert time.monotonic() - t0 < 2.0
        # and other control clients are served meanwhile
        assert js(cli(srv, "status", "--json"))["realm"] == REALM
    finally:
        c.close()
        slow.close()


# -- metrics --------------------------------------------------------------------------------


def scrape(srv: Server) -> dict[str, float]:
    text = _metrics_text(srv)
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _metrics_url(srv: Server, path: str) -> str:
    cfg = srv.config.read_text()
    port = int(cfg.split('metrics = "127.0.0.1:', 1)[1].split('"', 1)[0])
    return f"http://127.0.0.1:{port}{path}"


def _metrics_text(srv: Server) -> str:
    with urllib.request.urlopen(_metrics_url(srv, "/metrics"), timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return resp.read().decode()


def test_metrics_names_and_counters(srv: Server) -> None:
    text = _metrics_text(srv)
    for name, kind in (("sipyard_requests_total", "counter"),
                       ("sipyard_responses_total", "counter"),
                       ("sipyard_bindings", "gauge"), ("sipyard_auth_failures_total", "counter"),
                       ("sipyard_bans", "gauge"), ("sipyard_suspended_requests", "gauge"),
                       ("sipyard_loop_lag_seconds", "gauge"), ("sipyard_transactions", "gauge")):
        assert f"# TYPE {name} {kind}\n" in text, name
    before = scrape(srv)
    c = UdpClient(srv.addr)
    try:
        assert status_of(register(c, "18", realm=REALM)) == 200
        assert status_of(register(c, "18", realm=REALM, password="wrong")) == 401
        after = scrape(srv)
    finally:
        control(srv, {"op": "unregister", "line": "18"})
        c.close()
    reg = 'sipyard_requests_total{method="REGISTER"}'
    assert after[reg] - before.get(reg, 0) == 4  # two challenged, one good, one bad
    ok, fail = 'sipyard_responses_total{class="2xx"}', 'sipyard_responses_total{class="4xx"}'
    assert after[ok] - before.get(ok, 0) >= 1
    assert after[fail] - before.get(fail, 0) >= 3
    assert after["sipyard_bindings"] - before["sipyard_bindings"] == 1
    assert after["sipyard_auth_failures_total"] - before["sipyard_auth_failures_total"] == 1
    assert after["sipyard_bans"] == 0 and after["sipyard_suspended_requests"] == 0
    assert 0 <= after["sipyard_loop_lag_seconds"] < 1
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(_metrics_url(srv, "/nope"), timeout=5)
    assert exc.value.code == 404


def test_sighup_reloads(srv: Server) -> None:
    assert srv.proc is not None
    before = srv.log().count("config reloaded")
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while srv.log().count("config reloaded") == before:
        assert time.monotonic() < deadline, "SIGHUP did not reload"
        time.sleep(0.05)


def test_a_second_server_on_the_same_data_dir_is_refused(srv: Server) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sipyard.cli", "serve", "-c", str(srv.config),
         "--listen", f"udp:127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        f"sipyard serve: another sipyard is running on {srv.data / 'control.sock'}")
    assert "Traceback" not in proc.stderr
    assert js(cli(srv, "status", "--json"))["pid"] == srv.proc.pid  # type: ignore[union-attr]
