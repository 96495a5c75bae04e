"""The Python floor as N processes on one port: what ``--workers N`` costs any Python server.

    .venv/bin/python bench/floor_procs.py N PORT [SHARED_BENCH_DIR]

Runs N copies of the shared fixed-answer responder (``../shared/bench/py_udp_200.py``:
uvloop, no parsing, no state) bound with ``SO_REUSEPORT`` to 127.0.0.1:PORT, copy i pinned to
CPU i, as children of this process (so ``run_anchor.sh -p`` sums their CPU). It prints
"listening on" when all are bound and stops them on SIGTERM.

Why: issue #14 bounds sipyard's CPU per call with 2 workers at 1.15 × one worker's. Part of
what two processes cost is the event loop's per-wake-up price at half the rate each, which
no sipyard code pays or saves; this measures that part alone, under the same sipp load.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import sys
from pathlib import Path


def _responder(shared: Path) -> object:
    spec = importlib.util.spec_from_file_location("py_udp_200", shared / "py_udp_200.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _child(index: int, port: int, shared: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[index % len(cpus)]})
    mod = _responder(shared)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
    sock.bind(("127.0.0.1", port))
    import uvloop

    uvloop.install()
    asyncio.run(mod.serve_async(sock))  # type: ignore[attr-defined]
    os._exit(0)


def main() -> int:
    n, port = int(sys.argv[1]), int(sys.argv[2])
    here = Path(__file__).resolve().parent
    shared = Path(sys.argv[3]) if len(sys.argv) > 3 else here.parent.parent / "shared" / "bench"
    kids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            _child(i, port, shared)
        kids.append(pid)
    signal.signal(signal.SIGTERM, lambda *_: [os.kill(k, signal.SIGTERM) for k in kids])
    print(f"floor x{n} listening on udp:127.0.0.1:{port}", flush=True)
    for k in kids:
        while True:
            try:
                os.waitpid(k, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
