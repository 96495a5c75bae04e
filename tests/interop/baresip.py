"""Drive a headless baresip (Debian ``baresip-core`` 1.0) from tests, and shared interop bits.

``Baresip`` runs one phone: a private config dir (``-f``), SIP on a free
127.0.0.1 port, no real audio (``aubridge``/``nil``), and the ``ctrl_tcp``
module on another free port, over which commands go in and events come out as
netstring JSON (``<len>:{...},``). The phone starts without accounts; the test
adds them with :meth:`Baresip.add_account` *after* the control connection is
up, so no ``REGISTER_OK``/``REGISTER_FAIL`` event can be missed.

Typical use::

    with Baresip(tmp_path / "phone10") as phone:
        phone.add_account(account("10", server_port, "pw10secret"))
        phone.wait_event("REGISTER_OK")
        phone.dial("sip:11@127.0.0.1:5060")
        phone.wait_event("CALL_ESTABLISHED")
        phone.hangup()

Every wait is bounded; baresip itself gets ``-t`` so it exits even if a test
dies without stopping it. Also here, because every interop module needs them:
:func:`require_tool` (fail under ``CI``, skip elsewhere) and putting
``tests/`` on ``sys.path`` for ``support``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from support import free_port  # noqa: E402

__all__ = ["Baresip", "BaresipError", "account", "require_tool"]


def require_tool(name: str) -> str:
    """Path of an installed tool; a missing one fails the test under CI, else skips it."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (make deps-test installs it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def account(line: str, server_port: int, password: str, *, host: str = "127.0.0.1",
            regint: int = 300, **params: str) -> str:
    """A baresip account line registering ``line`` at the sipyard on ``host:server_port``.

    The AOR's host is the server's address (sipyard counts 127.0.0.1 as its
    domain), so no outbound proxy setting is needed.
    """
    extra = "".join(f";{k}={v}" for k, v in params.items())
    return (f"<sip:{line}@{host}:{server_port};transport=udp>;auth_pass={password}"
            f";regint={regint};answermode=auto{extra}")


class BaresipError(AssertionError):
    pass


_CONFIG = """\
poll_method\t\tepoll
sip_listen\t\t{host}:{sip_port}
net_interface\t\t{host}
audio_player\t\taubridge,nil
audio_source\t\taubridge,nil
audio_alert\t\taubridge,nil
module_path\t\t/usr/lib/baresip/modules
module\t\t\tg711.so
module\t\t\taubridge.so
module_tmp\t\tuuid.so
module_tmp\t\taccount.so
module_app\t\tmenu.so
module_app\t\tctrl_tcp.so
ctrl_tcp_listen\t\t127.0.0.1:{ctrl_port}
statmode_default\toff
"""


class Baresip:
    """One headless baresip process and its ctrl_tcp connection."""

    def __init__(self, workdir: Path, *, lifetime: float = 120.0, trace: bool = False,
                 netns: str | None = None, host: str = "127.0.0.1") -> None:
        """``netns``: run inside that network namespace (``ip netns exec``), SIP on
        ``host:5060`` and ctrl_tcp on the namespace's own 127.0.0.1 (tests/interop/netns.py)."""
        self.dir = Path(workdir)
        self.lifetime = lifetime
        self.trace = trace
        self.netns = netns
        self.host = host
        self.sip_port = 5060 if netns else _free_pair()
        self.ctrl_port = 4444 if netns else free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.events: list[dict[str, Any]] = []  # every event seen, in order
        self._pending: list[dict[str, Any]] = []  # events not yet taken by wait_event
        self._buf = b""
        self._token = 0
        self.log_path = self.dir / "baresip.log"

    @property
    def contact(self) -> str:
        return f"{self.host}:{self.sip_port}"

    def start(self, timeout: float = 10.0) -> Baresip:
        require_tool("baresip")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config").write_text(_CONFIG.format(sip_port=self.sip_port,
                                                        ctrl_port=self.ctrl_port,
                                                        host=self.host))
        (self.dir / "accounts").write_text("")
        (self.dir / "contacts").write_text("")
        cmd = ["baresip", "-f", str(self.dir), "-t", str(int(self.lifetime))]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        if self.trace:
            cmd.append("-s")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BaresipError(f"baresip exited early ({self.proc.returncode}):\n{self.log()}")
            try:
                self.sock = self._connect()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BaresipError(f"ctrl_tcp did not come up:\n{self.log()}") from None
                time.sleep(0.05)
        return self

    def _connect(self) -> socket.socket:
        addr = ("127.0.0.1", self.ctrl_port)
        if self.netns is None:
            return socket.create_connection(addr, timeout=1.0)
        from netns import socket_in

        return socket_in(self.netns, lambda: socket.create_connection(addr, timeout=1.0))

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- ctrl_tcp ---------------------------------------------------------------------
    def _read_one(self, deadline: float) -> dict[str, Any] | None:
        """The next netstring JSON object, or None at the deadline."""
        assert self.sock is not None
        while True:
            colon = self._buf.find(b":")
            if colon > 0:
                size = int(self._buf[:colon])
                end = colon + 1 + size
                if len(self._buf) > end:
                    payload = self._buf[colon + 1:end]
                    if self._buf[end:end + 1] != b",":
                        raise BaresipError(f"bad netstring: {self._buf[:200]!r}")
                    self._buf = self._buf[end + 1:]
                    obj: dict[str, Any] = json.loads(payload)
                    return obj
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not data:
                raise BaresipError(f"ctrl_tcp connection closed:\n{self.log()}")
            self._buf += data

    def _take(self, obj: dict[str, Any]) -> None:
        if obj.get("event"):
            self.events.append(obj)
            self._pending.append(obj)

    def command(self, command: str, params: str | None = None, timeout: float = 5.0
                ) -> dict[str, Any]:
        """Send a command and return its response (``{"response": true, "ok": …, "data": …}``)."""
        assert self.sock is not None, "not started"
        self._token += 1
        token = f"t{self._token}"
        msg: dict[str, Any] = {"command": command, "token": token}
        if params is not None:
            msg["params"] = params
        body = json.dumps(msg).encode()
        self.sock.sendall(str(len(body)).encode() + b":" + body + b",")
        deadline = time.monotonic() + timeout
        while True:
            obj = self._read_one(deadline)
            if obj is None:
                raise BaresipError(f"no response to {command!r} in {timeout}s")
            if obj.get("response") and obj.get("token") == token:
                return obj
            self._take(obj)

    def wait_event(self, types: str | set[str], timeout: float = 10.0,
                   accountaor: str | None = None) -> dict[str, Any]:
        """The first not-yet-taken event of one of ``types`` (earlier ones are skipped)."""
        wanted = {types} if isinstance(types, str) else set(types)
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self._pending):
                if ev.get("type") in wanted and (
                        accountaor is None or ev.get("accountaor") == accountaor):
                    del self._pending[: i + 1]
                    return ev
            obj = self._read_one(deadline)
            if obj is None:
                seen = [e.get("type") for e in self.events]
                raise BaresipError(f"no {sorted(wanted)} event in {timeout}s; seen {seen}\n"
                                   f"{self.log()[-3000:]}")
            self._take(obj)

    def add_account(self, line: str) -> dict[str, Any]:
        return self.command("uanew", line)

    def dial(self, uri: str) -> dict[str, Any]:
        return self.command("dial", uri)

    def hangup(self) -> dict[str, Any]:
        return self.command("hangup")

    def reginfo(self) -> str:
        return str(self.command("reginfo").get("data", ""))

    # -- life cycle ---------------------------------------------------------------------
    def stop(self, timeout: float = 5.0) -> None:
        if self.sock is not None:
            try:
                body = b'{"command":"quit","token":"quit"}'
                self.sock.sendall(str(len(body)).encode() + b":" + body + b",")
            except OSError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(2)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(2)
            self.proc = None
            self._log.close()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> Baresip:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _free_pair() -> int:
    """A free port whose successor is free too (baresip puts TLS on port + 1)."""
    for _ in range(100):
        port = free_port()
        if port < 65535:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port pair")
