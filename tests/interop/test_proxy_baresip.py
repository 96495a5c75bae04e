"""Two real softphones with sipyard as their *outbound proxy* call each other in proxy mode.

The issue's first "done when": both reach CALL_ESTABLISHED, the callee hangs up, and
exactly one CDR with disposition ``answered``, billsec > 0 and the right lines is in
``cdr.jsonl`` — and was fed to the ``cdr`` hook (a script that appends its stdin to a file).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest
from baresip import Baresip, account, require_tool
from support import PASSWORDS, Server, write_config
from test_baresip_call import _phone_apart_from

pytestmark = pytest.mark.interop


def test_baresip_outbound_proxy_call_and_cdr(tmp_path: Path) -> None:
    require_tool("baresip")
    cfg = write_config(tmp_path / "srv", lines=range(10, 14), server={"mode": "proxy"})
    hooks = tmp_path / "srv" / "hooks"
    hooks.mkdir(parents=True)
    seen = tmp_path / "cdr-hook.txt"
    hook = hooks / "cdr"
    hook.write_text(f"#!/bin/sh\ncat >> {seen}\necho --- >> {seen}\n")
    hook.chmod(0o755)
    server = Server(cfg).start()
    a = b = None
    try:
        a = Baresip(tmp_path / "phone10", lifetime=90).start()
        b = _phone_apart_from(tmp_path / "phone11", a)
        b.lifetime = 90
        b.start()
        proxy = f'"sip:127.0.0.1:{server.port};transport=udp"'
        a.add_account(account("10", server.port, PASSWORDS["10"], outbound=proxy))
        b.add_account(account("11", server.port, PASSWORDS["11"], outbound=proxy))
        for phone in (a, b):
            assert phone.wait_event({"REGISTER_OK", "REGISTER_FAIL"}, timeout=10)["type"] == \
                "REGISTER_OK"
        a.dial(f"sip:11@127.0.0.1:{server.port}")
        ev_a = a.wait_event({"CALL_ESTABLISHED", "CALL_CLOSED"}, timeout=15)
        ev_b = b.wait_event({"CALL_ESTABLISHED", "CALL_CLOSED"}, timeout=15)
        assert ev_a["type"] == ev_b["type"] == "CALL_ESTABLISHED", (ev_a, ev_b, server.log()[-3000:])
        time.sleep(1.2)
        b.hangup()  # the callee hangs up: its BYE goes through the proxy to phone 10
        for phone in (a, b):
            assert phone.wait_event({"CALL_CLOSED"}, timeout=15)["type"] == "CALL_CLOSED"
        path = server.data / "cdr.jsonl"
        end = time.monotonic() + 5
        while time.monotonic() < end and not (path.exists() and seen.exists()):
            time.sleep(0.05)
        records = [json.loads(x) for x in path.read_text().splitlines()]
        assert len(records) == 1, records
        r = records[0]
        assert r["disposition"] == "answered" and r["billsec"] > 0
        assert (r["caller_line"], r["callee_line"], r["hangup"]) == ("10", "11", "callee")
        end = time.monotonic() + 5
        while time.monotonic() < end and "---" not in seen.read_text():
            time.sleep(0.05)
        fed = seen.read_text()
        assert "event=cdr\n" in fed and f"call_id={r['call_id']}\n" in fed
        assert "disposition=answered\n" in fed
    finally:
        for phone in (b, a):
            if phone is not None:
                with contextlib.suppress(Exception):
                    phone.stop()
        server.stop()
