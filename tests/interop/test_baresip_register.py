"""baresip 1.0 (a real softphone, headless) registers at sipyard with MD5 digest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from baresip import Baresip, account
from conftest import ServerFactory
from support import PASSWORDS, Server

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def server(start_module_server: ServerFactory) -> Server:
    return start_module_server("baresip-srv", lines=range(10, 14))


def registry(server: Server, line: str) -> list[dict[str, object]]:
    r = server.cli("registry", line, "--json")
    assert r.returncode == 0, r.stderr
    (entry,) = json.loads(r.stdout)["lines"]
    bindings: list[dict[str, object]] = entry["bindings"]
    return bindings


def test_register_ok_and_binding_stored(server: Server, tmp_path: Path) -> None:
    with Baresip(tmp_path / "phone") as phone:
        phone.add_account(account("10", server.port, PASSWORDS["10"]))
        ev = phone.wait_event({"REGISTER_OK", "REGISTER_FAIL"}, timeout=10)
        assert ev["type"] == "REGISTER_OK", ev
        assert ev["accountaor"] == f"sip:10@127.0.0.1:{server.port}"
        (b,) = registry(server, "10")
        assert f"127.0.0.1:{phone.sip_port}" in str(b["contact"])
        assert str(b["user_agent"]).startswith("baresip")
        assert "OK" in phone.reginfo()


def test_wrong_password_is_register_fail(server: Server, tmp_path: Path) -> None:
    with Baresip(tmp_path / "phone") as phone:
        phone.add_account(account("11", server.port, "not-the-password"))
        ev = phone.wait_event({"REGISTER_OK", "REGISTER_FAIL"}, timeout=10)
        assert ev["type"] == "REGISTER_FAIL", ev
        assert "401" in str(ev.get("param", "")), ev
    assert registry(server, "11") == []


def test_registered_phones_call_each_other(server: Server, tmp_path: Path) -> None:
    """The bindings baresip made are usable: 10 calls 11 through the 302 (and the helper's
    dial/hangup work, which the redirect tests build on)."""
    with Baresip(tmp_path / "a") as a, Baresip(tmp_path / "b") as b:
        a.add_account(account("12", server.port, PASSWORDS["12"]))
        b.add_account(account("13", server.port, PASSWORDS["13"]))
        assert a.wait_event({"REGISTER_OK", "REGISTER_FAIL"})["type"] == "REGISTER_OK"
        assert b.wait_event({"REGISTER_OK", "REGISTER_FAIL"})["type"] == "REGISTER_OK"
        assert a.dial(f"sip:13@127.0.0.1:{server.port}")["ok"]
        ev = a.wait_event({"CALL_ESTABLISHED", "CALL_CLOSED"}, timeout=10)
        assert ev["type"] == "CALL_ESTABLISHED", ev
        ev = b.wait_event({"CALL_ESTABLISHED", "CALL_CLOSED"}, timeout=10)
        assert ev["type"] == "CALL_ESTABLISHED" and ev["peeruri"].startswith("sip:12@"), ev
        assert a.hangup()["ok"]
        assert b.wait_event("CALL_CLOSED", timeout=10)["type"] == "CALL_CLOSED"
