"""Memory per binding and restart time with 100 000 bindings (issue: registrar, benchmark).

    .venv/bin/python bench/store_bench.py [N]

1. Writes N bindings into a fresh sqlite store through the LocationStore API
   (the same rows a REGISTER writes: contact, Call-ID, source, user agent …).
2. Starts `sipyard serve` on an empty data dir and on the filled one, waits until
   each answers OPTIONS, and reports the RSS of both: (filled - empty) / N is the
   cost of a binding in the running server.
3. The time from exec to the first OPTIONS answer with N bindings is the start half
   of a restart (the store loads every unexpired binding before the server listens);
   the time from SIGTERM to the process's exit is the stop half.
Prints measured numbers only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sipyard.store import open_store
from sipyard.store.base import Binding

CONFIG = """[server]
realm = "127.0.0.1"
data_dir = "data"
hooks_dir = "hooks"
listen = ["udp:127.0.0.1:{port}"]
[logging]
level = "warning"
[security]
open_registration = true
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fill(data_dir: Path, n: int) -> None:
    store = open_store(None, data_dir)
    await store.open()
    now = time.time()
    chunk = 2000
    for start in range(0, n, chunk):
        await asyncio.gather(*(_put(store, i, now) for i in range(start, min(n, start + chunk))))
    await store.close()


async def _put(store: object, i: int, now: float) -> None:
    aor = f"sip:user{i:06d}@127.0.0.1"
    b = Binding(aor=aor, binding_id=f"c:sip:user{i:06d}@10.0.{i // 250 % 250}.{i % 250}:5060",
                contact=f"sip:user{i:06d}@10.0.{i // 250 % 250}.{i % 250}:5060;transport=udp",
                params="", q=None, expires_at=now + 3600, registered_at=now,
                call_id=f"{uuid.uuid4().hex}@10.0.0.1", cseq=1 + i % 50,
                source_ip=f"10.0.{i // 250 % 250}.{i % 250}", source_port=5060, transport="udp",
                conn_id=None, path=(), user_agent="Yealink SIP-T46S 66.86.0.15", instance=None,
                reg_id=None)
    await store.update(aor, now, lambda cur: ([b], []))  # type: ignore[attr-defined]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def serve_and_measure(d: Path) -> tuple[float, int, float]:
    port = free_port()
    (d / "sipyard.toml").write_text(CONFIG.format(port=port))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "sipyard.cli", "serve", "-c",
                             str(d / "sipyard.toml")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.05)
    ready = None
    try:
        while time.monotonic() - t0 < 60:
            branch = uuid.uuid4().hex
            msg = (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;"
                   f"branch=z9hG4bK{branch};rport\r\nFrom: <sip:b@127.0.0.1>;tag=1\r\n"
                   f"To: <sip:127.0.0.1>\r\nCall-ID: {branch}\r\nCSeq: 1 OPTIONS\r\n"
                   "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
            sock.sendto(msg, ("127.0.0.1", port))
            try:
                if sock.recv(4096).startswith(b"SIP/2.0 200"):
                    ready = time.monotonic() - t0
                    break
            except OSError:
                continue
        time.sleep(1.0)  # let the loop settle before reading RSS
        rss = rss_kib(proc.pid)
    finally:
        sock.close()
        t_stop = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        stopped = time.monotonic() - t_stop
    if ready is None:
        raise SystemExit("server never answered OPTIONS")
    return ready, rss, stopped


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    base = Path(tempfile.mkdtemp(prefix="sipyard-store-bench-"))
    empty, full = base / "empty", base / "full"
    for d in (empty, full):
        (d / "data").mkdir(parents=True)
    t0 = time.monotonic()
    asyncio.run(fill(full / "data", n))
    print(f"filled {n} bindings through the store API in {time.monotonic() - t0:.1f} s")
    ready_empty, rss_empty, stop_empty = serve_and_measure(empty)
    ready_full, rss_full, stop_full = serve_and_measure(full)
    print(f"start to first OPTIONS answer: empty store {ready_empty:.2f} s, "
          f"{n} bindings {ready_full:.2f} s (target <= 2 s)")
    print(f"SIGTERM to exit: empty store {stop_empty:.2f} s, {n} bindings {stop_full:.2f} s")
    per = (rss_full - rss_empty) * 1024 / n
    print(f"RSS: empty {rss_empty // 1024} MiB, with {n} bindings {rss_full // 1024} MiB: "
          f"{per:.0f} bytes per binding (target <= 1024)")
    if os.environ.get("KEEP") is None:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
