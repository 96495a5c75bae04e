"""sipyard under systemd, without systemd: the unit file, the notify protocol, the journal.

What systemd would see is played by the test: a datagram socket in ``$NOTIFY_SOCKET``
that collects what ``sipyard serve`` reports, and a stderr whose device and inode are in
``$JOURNAL_STREAM``. The unit file is checked by ``systemd-analyze verify`` (Debian package
``systemd``, installed by ``make deps-test``), the logrotate snippet by a real rotation.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import require_tool
from support import ROOT, Server, UdpClient, sip_request, status_of, write_config

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

UNIT = ROOT / "examples" / "systemd" / "sipyard.service"
LOGROTATE = ROOT / "examples" / "logrotate" / "sipyard"


def options_ok(server: Server) -> bool:
    probe = UdpClient(server.addr)
    try:
        ruri = f"sip:127.0.0.1:{server.port}"
        return status_of(probe.request(sip_request("OPTIONS", ruri, local_port=probe.port),
                                       timeout=3)) == 200
    finally:
        probe.close()


def recv_fields(sock: socket.socket, timeout: float = 10.0) -> dict[str, str]:
    sock.settimeout(timeout)
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n") if line)


def test_notify_ready_reloading_stopping(tmp_path: Path) -> None:
    name = f"sipyard-notify-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        config = write_config(tmp_path / "srv")
        server = Server(config, env={"NOTIFY_SOCKET": "@" + name})
        # the stderr the server gets is this file: tell it that it is "the journal"
        server.log_path.touch()
        st = server.log_path.stat()
        server.env = {**(server.env or {}), "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        server.start()
        try:
            ready = recv_fields(sock)
            assert ready["READY"] == "1"
            assert f"udp:127.0.0.1:{server.port}" in ready["STATUS"]
            assert options_ok(server)

            assert server.proc is not None
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            server.proc.send_signal(signal.SIGHUP)
            reloading = recv_fields(sock)
            assert reloading["RELOADING"] == "1"
            assert before <= int(reloading["MONOTONIC_USEC"]) \
                <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert recv_fields(sock)["READY"] == "1"
            assert options_ok(server)

            server.proc.send_signal(signal.SIGTERM)
            assert recv_fields(sock)["STOPPING"] == "1"
            assert server.proc.wait(10) == 0
        finally:
            server.stop()
    log = server.log()
    # journal form: the priority journald strips, no timestamp of our own
    assert re.search(r"^<6>INFO sipyard\S*: ", log, re.M), log
    assert not re.search(r"^\d{4}-\d\d-\d\d ", log, re.M), log


def test_no_journal_no_notify_socket_keeps_timestamps(tmp_path: Path) -> None:
    env = {"JOURNAL_STREAM": "1:1", "NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}
    server = Server(write_config(tmp_path / "srv"), env=env)
    server.start()
    try:
        assert options_ok(server)  # an unreachable notify socket changes nothing
    finally:
        assert server.stop() == 0
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO sipyard", server.log(), re.M)


def test_unit_file_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` checks that ExecStart exists: the test puts a stand-in
    for /usr/local/bin/sipyard in its own dir and verifies a copy pointing there."""
    analyze = require_tool("systemd-analyze")
    text = UNIT.read_text()
    assert re.search(r"^ExecStart=/usr/local/bin/sipyard serve -c /etc/sipyard/sipyard.toml$",
                     text, re.M)
    for line in ("Type=notify", "User=sipyard", "StateDirectory=sipyard",
                 "RuntimeDirectory=sipyard", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                 "ProtectSystem=strict", "NoNewPrivileges=yes", "Restart=on-failure",
                 "ExecReload=/bin/kill -HUP $MAINPID"):
        assert re.search(f"^{re.escape(line)}$", text, re.M), line
    stand_in = tmp_path / "sipyard"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    unit = tmp_path / "sipyard.service"
    unit.write_text(text.replace("/usr/local/bin/sipyard", str(stand_in)))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sipyard.service" not in out.stderr, out.stderr  # no warning about our unit


def test_logrotate_rotates_cdr(tmp_path: Path) -> None:
    logrotate = shutil.which("/usr/sbin/logrotate") or require_tool("logrotate")
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o750)
    cdr = data / "cdr.jsonl"
    cdr.write_text('{"call_id": "a"}\n')
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    conf = tmp_path / "sipyard.logrotate"
    conf.write_text(LOGROTATE.read_text().replace("/var/lib/sipyard", str(data))
                    .replace("su sipyard sipyard", f"su {user} {group}"))
    out = subprocess.run([logrotate, "--state", str(tmp_path / "state"), "--force", str(conf)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert cdr.exists() and cdr.stat().st_size == 0  # emptied in place (copytruncate)
    assert (data / "cdr.jsonl.1").read_text() == '{"call_id": "a"}\n'
