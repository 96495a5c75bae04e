"""Shared test helpers: run a real sipyard process and talk SIP to it.

Every server listens on 127.0.0.1 at a random free port (UDP and TCP on the
same number) and is stopped by the fixture that started it.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
TORTURE = SHARED / "testdata" / "torture"
BENCH = SHARED / "bench"
PASSWORDS = {str(n): f"pw{n}secret" for n in range(10, 90)}


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(200):
        port = random.randint(20000, 60000)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            u.bind(("127.0.0.1", port))
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()
    raise RuntimeError("no free port")


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def write_config(d: Path, *, realm: str = "sipyard.test", lines: range | list[str] = range(10, 20),
                 server: dict[str, Any] | None = None, security: dict[str, Any] | None = None,
                 extra: str = "", line_extra: dict[str, dict[str, Any]] | None = None,
                 redirect: dict[str, Any] | None = None, hooks: dict[str, Any] | None = None,
                 store: dict[str, Any] | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    srv = {"realm": realm, "domains": ["127.0.0.1", "localhost"], "data_dir": "data",
           "hooks_dir": "hooks", "listen": ["udp:127.0.0.1:0"]}
    srv.update(server or {})
    out = ["[server]"] + [f"{k} = {toml_value(v)}" for k, v in srv.items()]
    out += ["", "[logging]", 'level = "info"']
    sec = {"register_rate": 0}
    sec.update(security or {})
    out += ["", "[security]"] + [f"{k} = {toml_value(v)}" for k, v in sec.items()]
    if redirect:
        out += ["", "[redirect]"] + [f"{k} = {toml_value(v)}" for k, v in redirect.items()]
    if hooks:
        out += ["", "[hooks]"] + [f"{k} = {toml_value(v)}" for k, v in hooks.items()]
    if store:
        out += ["", "[store]"] + [f"{k} = {toml_value(v)}" for k, v in store.items()]
    for n in lines:
        n = str(n)
        out += ["", f"[lines.{n}]", f'display = "Line {n}"', f"secret = {toml_value(PASSWORDS[n])}"]
        for k, v in (line_extra or {}).get(n, {}).items():
            out.append(f"{k} = {toml_value(v)}")
    out += ["", extra]
    path = d / "sipyard.toml"
    path.write_text("\n".join(out) + "\n")
    return path


class Server:
    """A ``sipyard serve`` child process."""

    def __init__(self, config: Path, port: int | None = None, *, log_level: str = "info",
                 env: dict[str, str] | None = None, listen: list[str] | None = None,
                 wrap: list[str] | None = None) -> None:
        """``wrap``: a command prefix, e.g. ``["ip", "netns", "exec", NS]`` (tests/interop/netns.py)."""
        self.config = config
        self.wrap = wrap or []
        self.port = port or free_port()
        self.listen = listen or [f"udp:127.0.0.1:{self.port}", f"tcp:127.0.0.1:{self.port}"]
        self.log_level = log_level
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = config.parent / f"server-{self.port}.log"
        self.data = config.parent / "data"

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self, timeout: float = 15.0) -> Server:
        cmd = [*self.wrap, sys.executable, "-m", "sipyard.cli", "serve", "-c", str(self.config),
               "--log-level", self.log_level]
        for spec in self.listen:
            cmd += ["--listen", spec]
        env = dict(os.environ)
        env.update(self.env or {})
        self._log = open(self.log_path, "a")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     env=env, cwd=str(ROOT))
        deadline = time.monotonic() + timeout
        seen = 0
        assert self.proc.stdout is not None
        while seen < len(self.listen):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"server did not start; log:\n{self.log()}")
            line = self.proc.stdout.readline()
            if "listening on" in line:
                seen += 1
        self._wait_control(deadline)
        return self

    def _wait_control(self, deadline: float) -> None:
        sock = self.data / "control.sock"
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        rc = self.proc.returncode
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()
        self.proc = None
        return rc

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def cli(self, *args: str, timeout: float = 30.0, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "-c", str(self.config), timeout=timeout, input=input)


def run_cli(*args: str, timeout: float = 30.0, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sipyard.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=str(ROOT), input=input)


# -- raw SIP over UDP/TCP --------------------------------------------------------------

def sip_request(method: str, ruri: str, *, to: str | None = None, frm: str | None = None,
                headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                call_id: str | None = None, cseq: int = 1, branch: str | None = None,
                local_port: int = 5060, transport: str = "UDP", via_host: str = "127.0.0.1"
                ) -> bytes:
    branch = branch or "z9hG4bK" + uuid.uuid4().hex[:16]
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {via_host}:{local_port};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: {frm or '<sip:tester@127.0.0.1>'};tag={uuid.uuid4().hex[:8]}",
        f"To: {to or '<' + ruri + '>'}",
        f"Call-ID: {call_id or uuid.uuid4().hex}",
        f"CSeq: {cseq} {method}",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or [])]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class UdpClient:
    def __init__(self, server: tuple[str, int], timeout: float = 2.0) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(timeout)
        self.port = self.sock.getsockname()[1]

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def recv(self, timeout: float | None = None) -> bytes | None:
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(65536)
            return data
        except TimeoutError:
            return None

    def request(self, data: bytes, timeout: float = 2.0, skip_provisional: bool = True
                ) -> bytes | None:
        self.send(data)
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            got = self.recv(left)
            if got is None:
                return None
            if skip_provisional and status_of(got) < 200:
                continue
            return got

    def close(self) -> None:
        self.sock.close()


def status_of(data: bytes | None) -> int:
    if not data:
        return 0
    m = re.match(rb"SIP/2\.0 (\d{3}) ", data)
    return int(m.group(1)) if m else -1


def header_values(data: bytes, name: str) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    out = []
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == name.lower():
            out.append(v.strip())
    return out


def auth_header(challenge_resp: bytes, user: str, password: str, method: str, uri: str,
                nc: int = 1) -> str:
    from sipyard.sip.digest import client_response
    from sipyard.sip.headers import parse_auth

    value = header_values(challenge_resp, "WWW-Authenticate")[0]
    _, params = parse_auth(value)
    return client_response(username=user, realm=params["realm"], password=password, method=method,
                           uri=uri, nonce=params["nonce"], nc=nc, cnonce=uuid.uuid4().hex[:16],
                           qop="auth", algorithm=params.get("algorithm", "MD5"),
                           opaque=params.get("opaque"))


def register(client: UdpClient, line: str, *, realm: str = "sipyard.test",
             password: str | None = None, expires: int = 300, contact: str | None = None,
             host: str = "127.0.0.1") -> bytes | None:
    """REGISTER line with digest auth; returns the final response."""
    ruri = f"sip:{host}"
    to = f"<sip:{line}@{realm}>"
    contact = contact or f"<sip:{line}@127.0.0.1:{client.port}>"
    call_id = uuid.uuid4().hex
    hdrs = [("Contact", contact), ("Expires", str(expires))]
    r = client.request(sip_request("REGISTER", ruri, to=to, frm=to, headers=hdrs,
                                   call_id=call_id, local_port=client.port))
    if status_of(r) != 401:
        return r
    assert r is not None
    auth = auth_header(r, line, password or PASSWORDS[line], "REGISTER", ruri)
    return client.request(sip_request("REGISTER", ruri, to=to, frm=to, call_id=call_id, cseq=2,
                                      headers=hdrs + [("Authorization", auth)],
                                      local_port=client.port))
