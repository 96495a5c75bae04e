"""CPU cost of a redirect whose chain suspends once vs one that does not (issue: redirect).

    .venv/bin/python bench/suspend_bench.py [N]

The default chain plus one redirector in front: ``plain`` adds nothing; ``suspend``
suspends on the first pass and resumes on the next loop iteration (the shape of an
asynchronous lookup that answers at once). Each request runs through
``RedirectServer.redirect`` as its own task, as the app runs it, against a real
config and store cache with the target line registered from two contacts.
Prints CPU µs per request (process time, best of 5) and the ratio; target ≤ 2.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sipyard.config import load_config
from sipyard.redirect.loader import build_chain
from sipyard.redirect.pipeline import RedirectContext, Redirector, RedirectServer, Result
from sipyard.sip.message import parse_message
from sipyard.store.base import Binding

CONFIG = """[server]
realm = "example.test"
data_dir = "data"
hooks_dir = "hooks"
[lines.12]
secret = "x"
"""

INVITE = (b"INVITE sip:12@example.test SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bK-1\r\nMax-Forwards: 70\r\n"
          b"From: <sip:caller@127.0.0.1>;tag=1\r\nTo: <sip:12@example.test>\r\n"
          b"Call-ID: 1@127.0.0.1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


class Services:
    def __init__(self, config: Any, bindings: list[Binding]) -> None:
        import logging

        self.config = config
        self.logger = logging.getLogger("bench")
        self.bindings = bindings

    def now(self) -> float:
        return time.time()

    async def lookup(self, aor: str) -> list[Binding]:
        return self.bindings

    def line_for_uri(self, uri: Any) -> str | None:
        return "12"


class Plain(Redirector):
    name = "plain"

    def process(self, ctx: RedirectContext) -> Result:
        return Result.SUCCESS


class SuspendOnce(Redirector):
    name = "suspend"

    def process(self, ctx: RedirectContext) -> Result:
        if ctx.storage.get() is None:
            ctx.storage.set(1)
            asyncio.get_running_loop().call_soon(ctx.resume_handle())
            return Result.SUSPEND
        return Result.SUCCESS


def binding(i: int) -> Binding:
    now = time.time()
    return Binding(aor="sip:12@example.test", binding_id=f"c{i}", contact=f"sip:12@10.0.0.{i}:5060",
                   params="", q=None, expires_at=now + 3600, registered_at=now, call_id="x",
                   cseq=1, source_ip=f"10.0.0.{i}", source_port=5060, transport="udp",
                   conn_id=None, path=(), user_agent="", instance=None, reg_id=None)


async def cost(server: RedirectServer, n: int) -> float:
    req = parse_message(INVITE)
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(n):
            out = await asyncio.create_task(server.redirect(req))
            assert out.status == 302
        best = min(best, time.process_time() - t0)
    return best / n * 1e6


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    d = Path(tempfile.mkdtemp())
    (d / "sipyard.toml").write_text(CONFIG)
    cfg = load_config(d / "sipyard.toml")
    services = Services(cfg, [binding(1), binding(2)])
    chain = build_chain(cfg, services)  # type: ignore[arg-type]
    plain = RedirectServer(cfg, services, chain=[Plain(cfg, services), *chain])  # type: ignore[arg-type]
    chain2 = build_chain(cfg, services)  # type: ignore[arg-type]
    susp = RedirectServer(cfg, services, chain=[SuspendOnce(cfg, services), *chain2])  # type: ignore[arg-type]
    a = await cost(plain, n)
    b = await cost(susp, n)
    print(f"redirect, default chain: {a:.1f} us/request unsuspended, {b:.1f} us/request "
          f"suspended once: ratio {b / a:.2f} (target <= 2)")


if __name__ == "__main__":
    asyncio.run(main())
