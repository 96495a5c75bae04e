"""Real SIP clients against a running ``sipyard serve``: sipsak and sipp, over UDP and TCP.

These are the tools people point at a registrar first; if they cannot get a 200 for an
OPTIONS the server is unusable whatever the unit tests say. Every run is bounded (sipp by
``-m``, ``-timeout`` and an outer timeout; sipsak by an outer timeout) and talks only to
127.0.0.1. A missing tool fails under CI and skips elsewhere (``conftest.require_tool``).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ServerFactory
from support import BENCH, Server, free_port

pytestmark = pytest.mark.interop

OPTIONS_XML = BENCH / "scenarios" / "options.xml"


@pytest.fixture(scope="module")
def server(start_module_server: ServerFactory) -> Server:
    return start_module_server("clients")


def _access_lines(server: Server, method: str, transport: str, user: str) -> list[str]:
    pattern = re.compile(rf"sipyard\.request: {method} from=sip:{user}@\S+ .* "
                         rf"src=127\.0\.0\.1:\d+/{transport} status=200$", re.M)
    return pattern.findall(server.log())


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipsak_options_gets_200(server: Server, tool: Callable[[str], str],
                                 transport: str) -> None:
    sipsak = tool("sipsak")
    before = len(_access_lines(server, "OPTIONS", transport, "sipsak"))
    args = [sipsak, "-vv", "-s", f"sip:127.0.0.1:{server.port}"]
    if transport == "tcp":
        args += ["-E", "tcp"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"sipsak exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "SIP/2.0 200 OK" in r.stdout, r.stdout
    assert f"Via: SIP/2.0/{transport.upper()} " in r.stdout  # really over that transport
    deadline = time.monotonic() + 3  # the access line follows the answer
    while len(after := _access_lines(server, "OPTIONS", transport, "sipsak")) < before + 1 \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(after) == before + 1, after


def _sipp_stats(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert len(lines) >= 2, f"no statistics in {path}"
    header, last = lines[0].split(";"), lines[-1].split(";")
    return dict(zip(header, last, strict=False))


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sipp_options_200_calls_none_failed(server: Server, tool: Callable[[str], str],
                                            tmp_path: Path, transport: str) -> None:
    sipp = tool("sipp")
    assert OPTIONS_XML.is_file(), f"{OPTIONS_XML} is missing (shared/bench)"
    stats = tmp_path / "stats.csv"
    errors = tmp_path / "errors.log"
    before = len(_access_lines(server, "OPTIONS", "udp" if transport == "u1" else "tcp", "ping"))
    cmd = [sipp, "-sf", str(OPTIONS_XML), f"127.0.0.1:{server.port}", "-i", "127.0.0.1",
           "-p", str(free_port()), "-t", transport, "-m", "200", "-r", "100",
           "-timeout", "30s", "-nostdin", "-trace_stat", "-stf", str(stats),
           "-trace_err", "-error_file", str(errors)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    err_text = errors.read_text() if errors.exists() else ""
    assert r.returncode == 0, f"sipp exit {r.returncode}\n{r.stderr[-2000:]}\n{err_text[-2000:]}"
    row = _sipp_stats(stats)
    assert row["TotalCallCreated"] == "200", row
    assert row["SuccessfulCall(C)"] == "200", row
    assert row["FailedCall(C)"] == "0", row
    # The access line is written just after the answer is sent: give the last one a moment.
    deadline = time.monotonic() + 3
    while True:
        after = _access_lines(server, "OPTIONS", "udp" if transport == "u1" else "tcp", "ping")
        if len(after) - before >= 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(after) - before == 200  # one handled request per call, none twice
