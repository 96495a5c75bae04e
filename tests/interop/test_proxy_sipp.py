"""Forking through the proxy with real SIP clients: sipp callers and callees (tests/interop/sipp/).

The issue's sipp "done when": each callee is a sipp UAS registered on the line by the
test (REGISTER over UDP with the UAS's port as Contact), the caller a sipp UAC. A sipp run
passes only when every message of its scenario came as written (exit 0): the CANCEL's
Reason header is checked by the UAS itself (``uas_ring_elsewhere.xml``: ``ereg`` with
``check_it``), the caller's final by the UAC (``uac_busy.xml`` expects 486, …).

One proxy-mode server for the module, loopback trusted (the caller needs no digest),
``fork_group_timeout`` 1.5 s for the serial-fork cases. Every test uses its own line.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from support import Server, UdpClient, free_port, register, status_of, write_config

pytestmark = pytest.mark.interop
SCENARIOS = Path(__file__).resolve().parent / "sipp"
REALM = "sipyard.test"
GROUP_TIMEOUT = 1.5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cfg = write_config(tmp_path_factory.mktemp("proxy-sipp"), server={"mode": "proxy"},
                       lines=range(10, 30),
                       security={"trusted": ["127.0.0.0/8"]},
                       extra=f"[proxy]\nfork_group_timeout = {GROUP_TIMEOUT}\n")
    srv = Server(cfg).start()
    yield srv
    srv.stop()


class Sipp:
    """One sipp process running one call of a scenario in tests/interop/sipp/."""

    def __init__(self, sipp: str, workdir: Path, scenario: str, *, target: str | None = None,
                 service: str | None = None, delay_ms: int = 0,
                 keys: dict[str, str] | None = None) -> None:
        self.name = f"{scenario}-{free_port()}"
        self.port = free_port()
        self.msg_log = workdir / f"{self.name}.msg.log"
        self.err_log = workdir / f"{self.name}.err.log"
        self.screen = workdir / f"{self.name}.screen.txt"
        cmd = [sipp, "-sf", str(SCENARIOS / f"{scenario}.xml"), "-i", "127.0.0.1",
               "-p", str(self.port), "-mp", str(free_port()), "-cp", str(free_port()),
               "-m", "1", "-timeout", "20s", "-nostdin", "-d", str(delay_ms),
               "-trace_msg", "-message_file", str(self.msg_log),
               "-trace_err", "-error_file", str(self.err_log),
               "-trace_logs", "-log_file", str(workdir / f"{self.name}.log")]
        if target is not None:
            cmd += [target, "-s", service or ""]
        for k, v in (keys or {}).items():
            cmd += ["-key", k, v]
        self._out = open(self.screen, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT)

    @property
    def contact(self) -> str:
        return f"<sip:phone@127.0.0.1:{self.port}>"

    def wait(self, timeout: float = 25.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
        finally:
            self._out.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._out.close()

    def report(self) -> str:
        def tail(p: Path) -> str:
            return p.read_text(errors="replace")[-2500:] if p.exists() else ""
        return (f"--- {self.name} rc={self.proc.returncode}\n{tail(self.err_log)}\n"
                f"{tail(self.msg_log)}")

    def received_at(self, start_line: str) -> list[float]:
        """When each message starting with ``start_line`` arrived (from the -trace_msg log)."""
        text = self.msg_log.read_text(errors="replace") if self.msg_log.exists() else ""
        out = []
        for m in re.finditer(r"-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n\S+ message "
                             r"received \[\d+\] bytes :\n\n(.*)", text):
            if m.group(2).startswith(start_line):
                out.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp())
        return out


@pytest.fixture
def sipp(tool: Callable[[str], str], tmp_path: Path, server: Server
         ) -> Iterator[Callable[..., Sipp]]:
    path = tool("sipp")
    made: list[Sipp] = []

    def run(scenario: str, **kw: object) -> Sipp:
        if scenario.startswith("uac"):
            kw.setdefault("target", f"127.0.0.1:{server.port}")
        s = Sipp(path, tmp_path, scenario, **kw)  # type: ignore[arg-type]
        made.append(s)
        return s

    yield run
    for s in made:
        s.stop()


def bind(server: Server, line: str, *contacts: str) -> None:
    reg = UdpClient(server.addr)
    try:
        for c in contacts:
            assert status_of(register(reg, line, contact=c, realm=REALM)) == 200
    finally:
        reg.close()


def passed(server: Server, *runs: Sipp) -> None:
    """Every sipp run ended with exit 0 (all its calls successful)."""
    codes = [r.wait() for r in runs]
    if any(codes):
        raise AssertionError(f"sipp exit codes {codes}\n" + "\n".join(r.report() for r in runs)
                             + f"\n--- server\n{server.log()[-3000:]}")


def test_two_contacts_ring_first_200_wins_other_cancelled_with_reason(
        server: Server, sipp: Callable[..., Sipp]) -> None:
    a = sipp("uas_answer", delay_ms=400)
    b = sipp("uas_ring_elsewhere")
    time.sleep(0.3)
    bind(server, "20", a.contact, b.contact)
    caller = sipp("uac_answer", service="20")
    passed(server, caller, a, b)
    assert a.received_at("INVITE ") and b.received_at("INVITE ")  # both rang
    assert b.received_at("CANCEL ")


def test_both_busy_caller_gets_486(server: Server, sipp: Callable[..., Sipp]) -> None:
    a, b = sipp("uas_busy", delay_ms=100), sipp("uas_busy", delay_ms=300)
    time.sleep(0.3)
    bind(server, "21", a.contact, b.contact)
    passed(server, sipp("uac_busy", service="21"), a, b)


def test_603_cancels_the_other_branch_and_the_caller_gets_603(
        server: Server, sipp: Callable[..., Sipp]) -> None:
    a, b = sipp("uas_decline", delay_ms=300), sipp("uas_ring")
    time.sleep(0.3)
    bind(server, "22", a.contact, b.contact)
    passed(server, sipp("uac_decline", service="22"), a, b)
    assert b.received_at("CANCEL ")


def test_302_from_a_callee_is_recursed(server: Server, sipp: Callable[..., Sipp]) -> None:
    c = sipp("uas_answer")  # not registered: reached only through the 302
    a = sipp("uas_redirect", delay_ms=100, keys={"target": f"sip:phone@127.0.0.1:{c.port}"})
    time.sleep(0.3)
    bind(server, "23", a.contact)
    passed(server, sipp("uac_answer", service="23"), a, c)


def test_caller_cancel_while_ringing_487_and_callees_cancelled(
        server: Server, sipp: Callable[..., Sipp]) -> None:
    a, b = sipp("uas_ring"), sipp("uas_ring")
    time.sleep(0.3)
    bind(server, "24", a.contact, b.contact)
    passed(server, sipp("uac_cancel", service="24"), a, b)


def test_serial_fork_by_q_next_contact_only_after_the_first_failed(
        server: Server, sipp: Callable[..., Sipp]) -> None:
    first, second = sipp("uas_busy", delay_ms=800), sipp("uas_answer")
    time.sleep(0.3)
    bind(server, "25", f"{first.contact};q=1.0", f"{second.contact};q=0.5")
    passed(server, sipp("uac_answer", service="25"), first, second)
    (t1,), (t2,) = first.received_at("INVITE "), second.received_at("INVITE ")
    assert 0.7 < t2 - t1 < GROUP_TIMEOUT, (t1, t2)  # after the 486 (800 ms), before the timeout


def test_serial_fork_by_q_next_contact_after_fork_group_timeout(
        server: Server, sipp: Callable[..., Sipp]) -> None:
    first, second = sipp("uas_ring_elsewhere"), sipp("uas_answer")
    time.sleep(0.3)
    bind(server, "26", f"{first.contact};q=1.0", f"{second.contact};q=0.5")
    passed(server, sipp("uac_answer", service="26"), first, second)
    (t1,), (t2,) = first.received_at("INVITE "), second.received_at("INVITE ")
    assert GROUP_TIMEOUT - 0.1 < t2 - t1 < GROUP_TIMEOUT + 1.0, (t1, t2)
    assert first.received_at("CANCEL ")  # the first kept ringing until the second answered
