"""The registrar with the redis store: the client tests again, two servers sharing
one redis, and a redis that dies under a running server.

Every redis-server here is started by the test on a free 127.0.0.1 port with
persistence off (``--save '' --appendonly no``) and stopped by it.
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from baresip import require_tool
from support import (
    PASSWORDS,
    Server,
    UdpClient,
    auth_header,
    free_port,
    header_values,
    register,
    sip_request,
    status_of,
    write_config,
)
from test_registrar_clients import (  # noqa: F401 - fixtures and tests run again here
    Register,
    client,
    contacts,
    server,
    sha_server,
    short_nonce_server,
    test_answering_sha_line_with_md5_is_refused,
    test_digest_algorithms,
    test_expired_nonce_gets_stale_challenge,
    test_malformed_authorization_is_400,
    test_malformed_headers_are_400_naming_them,
    test_replayed_authorization_is_refused,
    test_sipp_registers_all_80_lines_with_refreshes,
    test_sipsak_registers_with_md5,
    test_sipsak_wrong_password_gets_401_again,
    test_star_needs_expires_zero,
    test_too_brief_is_423_with_min_expires,
    test_unknown_auth_scheme_is_ignored_and_challenged,
)

pytestmark = pytest.mark.interop


class Redis:
    """A throw-away redis-server on a free port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> Redis:
        exe = require_tool("redis-server")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no",
             "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    r = Redis(tmp_path_factory.mktemp("redis")).start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def store_conf(redis_server: Redis) -> dict[str, Any]:
    """Overrides the clients module's fixture: every server there gets its own key prefix."""
    return {"url": redis_server.url + "?key_prefix={prefix}"}


def test_two_servers_share_bindings(redis_server: Redis, tmp_path: Path) -> None:
    url = redis_server.url + "?key_prefix=shared:"
    a = Server(write_config(tmp_path / "a", store={"url": url})).start()
    b = Server(write_config(tmp_path / "b", store={"url": url},
                            redirect={"require_auth": False})).start()
    c = UdpClient(a.addr)
    try:
        contact = f"sip:10-{uuid.uuid4().hex[:6]}@127.0.0.1:{c.port}"
        res = register(c, "10", contact=f"<{contact}>", expires=600)
        assert status_of(res) == 200
        assert contact in contacts(b, "10")  # a fetch through B
        caller = UdpClient(b.addr)
        try:
            inv = caller.request(sip_request(
                "INVITE", f"sip:10@127.0.0.1:{b.port}", frm="<sip:11@sipyard.test>",
                local_port=caller.port, headers=[("Contact", f"<sip:11@127.0.0.1:{caller.port}>")]))
        finally:
            caller.close()
        assert status_of(inv) == 302, inv
        assert any(contact in v for v in header_values(inv or b"", "Contact"))
        # An unregister through B is seen by A.
        reg = Register(UdpClient(b.addr), "10", contact=f"<{contact}>")
        res, _ = reg.authenticated()
        assert status_of(res) == 200
        first = reg.send(expires=0)
        assert first is not None
        res = reg.send(auth_header(first, "10", PASSWORDS["10"], "REGISTER", reg.ruri),
                       expires=0)
        reg.client.close()
        assert status_of(res) == 200
        assert contact not in contacts(a, "10")
    finally:
        c.close()
        a.stop()
        b.stop()


def test_dead_redis_gives_500_with_retry_after(tmp_path: Path) -> None:
    r = Redis(tmp_path / "redis").start()
    srv = Server(write_config(tmp_path / "srv", store={"url": r.url})).start()
    c = UdpClient(srv.addr)
    try:
        assert status_of(register(c, "10")) == 200
        r.stop()
        reg = Register(c, "11")
        first = reg.send()
        assert status_of(first) == 401 and first is not None
        res = reg.send(auth_header(first, "11", PASSWORDS["11"], "REGISTER", reg.ruri),
                       timeout=10)
        assert status_of(res) == 500, res
        assert header_values(res or b"", "Retry-After")
        assert "Traceback" not in srv.log()
    finally:
        c.close()
        srv.stop()
        r.stop()
