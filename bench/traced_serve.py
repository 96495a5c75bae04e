"""``sipyard serve`` with tracemalloc, for finding what a long run keeps.

A soak shows *that* RSS grows; this shows *where*. ``bench/soak.py`` starts the
server through this file when ``SOAK_TRACE`` names sample times: the server
runs as usual, and each SIGUSR2 writes a heap snapshot (taken from inside the
server, after a full collection, so garbage is not counted) to ``TRACE_DIR``.
Afterwards ``compare`` prints the growth by allocation site between two of them.

    TRACE_DIR=/tmp/t python bench/traced_serve.py serve -c sipyard.toml ...
    python bench/traced_serve.py compare /tmp/t/heap-0060.snap /tmp/t/heap-0300.snap

Tracing costs CPU (about twice the time per request with 10 frames), so run
the soak at a lower rate while tracing; the growth per call is what matters.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
import tracemalloc
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent


def serve(argv: list[str]) -> int:
    out = Path(os.environ.get("TRACE_DIR", "."))
    out.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(int(os.environ.get("TRACE_FRAMES", "10")))
    t0 = time.monotonic()

    def dump(signum: int, frame: FrameType | None) -> None:
        gc.collect()
        tracemalloc.take_snapshot().dump(str(out / f"heap-{time.monotonic() - t0:04.0f}.snap"))

    signal.signal(signal.SIGUSR2, dump)
    sys.path.insert(0, str(ROOT))
    from sipyard.cli import main

    return main(argv)


def compare(old: str, new: str, top: int = 15) -> int:
    a = tracemalloc.Snapshot.load(old)
    b = tracemalloc.Snapshot.load(new)
    keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = b.filter_traces(keep).compare_to(a.filter_traces(keep), "traceback")
    total_a = sum(t.size for t in a.traces)
    total_b = sum(t.size for t in b.traces)
    print(f"traced {total_a >> 10} kB -> {total_b >> 10} kB ({(total_b - total_a) >> 10:+d} kB)")
    for s in stats[:top]:
        print(f"{s.size_diff / 1024:+9.0f} kB {s.count_diff:+8d} blocks "
              f"(now {s.size / 1024:.0f} kB)")
        for line in s.traceback.format(limit=6, most_recent_first=True):
            print("      ", line)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["compare"]:
        sys.exit(compare(*sys.argv[2:4]))
    sys.exit(serve(sys.argv[1:]))
