"""``sipyard reload`` under load: the config changes under sipp's feet, nothing is lost.

Eighty lines are registered by sipp (digest auth, the bench's register_auth.xml), then two sipp
loads run at once — authenticated REGISTERs refreshing those bindings and INVITEs redirected
to them (the bench's invite_redirect.xml, ``[redirect] require_auth = false``) — while the test
reloads the config 20 times, swapping custom.toml between two valid contents and an invalid
one. What must hold: sipp counts no failed call, the registry holds exactly the bindings it
held before, every invalid reload is refused with exit 1 naming file, key and reason, and
the server keeps running on the last good config (an alias that only one of the valid files
defines tells which config is live). Run with the SQLite store and with redis, whose lookups
really wait, so requests are in flight at the moment of a swap.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import (
    BENCH,
    PASSWORDS,
    Server,
    UdpClient,
    free_port,
    header_values,
    sip_request,
    status_of,
)

from sipyard.cli import main as cli_main
from sipyard.control import call

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

LINES = [str(n) for n in range(10, 90)]
RATE = 30  # calls/s of each load; kept low: server, two sipps and the test share two cores
CALLS = 240  # per load: ~8 s
RELOADS = 20
#: custom.toml contents. A defines alias "front" (-> line 10), B does not; BAD fails validation.
CUSTOM_A = '[aliases]\nfront = ["sip:10@sipyard.test"]\n\n[logging]\nlevel = "info"\n'
CUSTOM_B = '[security]\nmax_auth_failures = 50\n\n[groups.100]\nmembers = ["10", "11"]\n'
CUSTOM_BAD = '[aliases]\nfront = ["sip:10@sipyard.test"]\n\n[lines.10]\nmax_contacts = "many"\n'


def reload_cli(server: Server) -> tuple[int, str, str]:
    """`sipyard reload -c CONFIG`, run in this process (cli.main) to spare the loaded CPUs."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["reload", "-c", str(server.config)])
    return code, out.getvalue(), err.getvalue()


def bindings(server: Server) -> int:
    reply = call(server.data / "control.sock", {"op": "status"}, timeout=10)
    return int(reply["bindings"])


def sipp_cmd(sipp: str, scenario: str, server: Server, users: Path, port: int, stats: Path,
             rate: int, calls: int) -> list[str]:
    return [sipp, "-sf", str(BENCH / "scenarios" / scenario), "-inf", str(users),
            f"127.0.0.1:{server.port}", "-i", "127.0.0.1", "-p", str(port), "-t", "u1",
            "-r", str(rate), "-m", str(calls), "-l", "200", "-nostdin",
            "-timeout", "60s", "-timeout_error", "-max_retrans", "5",
            "-trace_stat", "-stf", str(stats), "-fd", "1",
            "-trace_err", "-error_file", str(stats.with_suffix(".err"))]


def final_stats(path: Path) -> dict[str, str]:
    rows = list(csv.reader(path.read_text().splitlines(), delimiter=";"))
    head, last = rows[0], rows[-1]
    return dict(zip(head, last, strict=False))


def invite_status(client: UdpClient, server: Server, user: str) -> int:
    """Final status of one INVITE (ACKed, so no retransmission is mistaken for a later one)."""
    ruri = f"sip:{user}@127.0.0.1:{server.port}"
    call_id, branch = uuid.uuid4().hex, "z9hG4bK" + uuid.uuid4().hex[:16]
    invite = sip_request("INVITE", ruri, local_port=client.port, call_id=call_id, branch=branch)
    client.send(invite)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        r = client.recv(max(0.01, deadline - time.monotonic()))
        if r is None or call_id not in header_values(r, "Call-ID") or status_of(r) < 200:
            continue
        ack = [f"ACK {ruri} SIP/2.0"] + [f"{h}: {v}" for h in ("Via", "From", "To", "Call-ID")
                                         for v in header_values(r, h)]
        ack += ["Max-Forwards: 70", "CSeq: 1 ACK", "Content-Length: 0"]
        client.send(("\r\n".join(ack) + "\r\n\r\n").encode())
        return status_of(r)
    return 0


@contextlib.contextmanager
def redis_server(exe: str, workdir: Path) -> Iterator[str]:
    """A throw-away redis-server on a free 127.0.0.1 port; yields its URL."""
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    break
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_reload_twenty_times_under_register_and_invite_load(
        start_server: Callable[..., Server], tool: Callable[[str], str], tmp_path: Path,
        backend: str) -> None:
    sipp = tool("sipp")
    with contextlib.ExitStack() as stack:
        store = {}
        if backend == "redis":
            url = stack.enter_context(redis_server(tool("redis-server"), tmp_path))
            store = {"url": url}
        server = start_server("reload", lines=LINES, redirect={"require_auth": False},
                              server={"max_expires": 3600}, store=store or None)
        run_load_and_reloads(server, sipp, tmp_path)


def run_load_and_reloads(server: Server, sipp: str, tmp_path: Path) -> None:
    users = tmp_path / "users.csv"
    users.write_text("SEQUENTIAL\n" + "".join(
        f"{n};[authentication username={n} password={PASSWORDS[n]}];\n" for n in LINES))
    reg_port, inv_port = free_port(), free_port()

    # 1. every line registered once, from the port the REGISTER load will use again
    pre = subprocess.run(sipp_cmd(sipp, "register_auth.xml", server, users, reg_port,
                                  tmp_path / "pre.csv", 200, len(LINES)),
                         capture_output=True, text=True, timeout=60)
    assert pre.returncode == 0, (pre.stdout[-2000:], pre.stderr[-2000:])
    before = bindings(server)
    assert before == len(LINES)
    custom = server.config.parent / "custom.toml"
    custom.write_text(CUSTOM_A)
    assert reload_cli(server)[0] == 0

    # 2. both loads, and the reloads while they run
    procs = {
        name: subprocess.Popen(sipp_cmd(sipp, scenario, server, users, port,
                                        tmp_path / f"{name}.csv", RATE, CALLS),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for name, scenario, port in (("register", "register_auth.xml", reg_port),
                                     ("invite", "invite_redirect.xml", inv_port))}
    client = UdpClient(server.addr)
    refused: list[str] = []
    try:
        time.sleep(0.5)
        pause = (CALLS / RATE - 2.0) / RELOADS
        for i in range(RELOADS):
            text = (CUSTOM_B, CUSTOM_A, CUSTOM_BAD)[i % 3]
            custom.write_text(text)
            code, out, err = reload_cli(server)
            if text is CUSTOM_BAD:
                assert code == 1, (out, err)
                refused.append(err)
                # the last good config (A) still runs: its alias answers
                assert invite_status(client, server, "front") == 302
            else:
                assert code == 0, err
                assert out.startswith("reloaded: ")
                assert invite_status(client, server, "front") == (302 if text is CUSTOM_A
                                                                 else 404)
            time.sleep(pause)
        results = {name: p.wait(60) for name, p in procs.items()}
    finally:
        client.close()
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(5)
    for name in procs:
        stats = final_stats(tmp_path / f"{name}.csv")
        err_log = tmp_path / f"{name}.err"
        detail = (name, results[name], err_log.read_text()[-2000:] if err_log.exists() else "")
        assert results[name] == 0, detail
        assert stats["FailedCall(C)"] == "0", detail
        assert stats["SuccessfulCall(C)"] == str(CALLS), detail

    # 3. nothing lost, and every refusal said where and why
    assert bindings(server) == before
    assert len(refused) == RELOADS // 3
    for err in refused:
        assert err.count("\n") == 1
        assert f"{custom}: lines.10.max_contacts: " in err
        assert "reload refused" in err
    log = server.log()
    assert log.count("reload refused, old config kept") == RELOADS // 3
    # --json gives the parts separately, for scripts
    custom.write_text(CUSTOM_BAD)
    proc = server.cli("reload", "--json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert (doc["file"], doc["key"]) == (str(custom), "lines.10.max_contacts")
    assert doc["reason"] and doc["reason"] in doc["error"]
