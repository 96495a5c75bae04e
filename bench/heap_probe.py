"""Where does the memory of a traffic pattern go? In-process server + tracemalloc.

Runs the real :class:`sipyard.app.App` (uvloop) in this process with tracemalloc on,
sends a traffic pattern from a child process over loopback, then compares heap
snapshots: baseline (warmed up), right after the traffic, and after ``--wait``
seconds (transactions expired). Prints the top growth by allocation site.

    python bench/heap_probe.py options-sources --count 50000 --sources 5000 --wait 40
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from support import free_port, write_config  # noqa: E402


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("pattern", choices=["options-sources", "methods", "auth-fail", "garbage"])
    ap.add_argument("--count", type=int, default=50000)
    ap.add_argument("--sources", type=int, default=5000)
    ap.add_argument("--wait", type=float, default=40.0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--log", action="store_true", help="log to a file as the server does")
    ap.add_argument("--no-trace", action="store_true", help="RSS only")
    ap.add_argument("--bounded-methods", action="store_true",
                    help="experiment: count unknown methods as 'other' (the fix pending in app.py)")
    ap.add_argument("--raw-send", action="store_true",
                    help="experiment: UDP answers by socket.sendto, not uvloop's transport")
    a = ap.parse_args()

    import uvloop

    from sipyard.app import App
    from sipyard.config import load_config
    from sipyard.transport import Listen

    d = Path(tempfile.mkdtemp(prefix="heapprobe-"))
    cfg_path = write_config(d, security={"max_auth_failures": 3, "failure_window": 5,
                                         "ban_seconds": 5, "register_rate": 500,
                                         "sweep_interval": 1.0})
    if a.log:
        import logging
        logging.basicConfig(level=logging.WARNING, filename=str(d / "server.log"),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(cfg_path)
    port = free_port()

    async def run() -> None:
        app = App(cfg, config_path=cfg_path)
        await app.start([Listen("udp", "127.0.0.1", port)])
        if a.bounded_methods:
            from collections import Counter as _C

            from sipyard.app import KNOWN_METHODS

            class _Methods(_C[str]):
                def __setitem__(self, key: str, value: int) -> None:
                    super().__setitem__(key if key in KNOWN_METHODS else "other", value)

                def __missing__(self, key: str) -> int:
                    return super().get("other", 0) if key not in KNOWN_METHODS else 0

            app.stats.requests = _Methods()
        if a.raw_send:
            import socket as _s
            proto = next(iter(app.transports._udp.values()))
            fd = proto.transport.get_extra_info("socket").fileno()
            raw = _s.socket(fileno=os.dup(fd))
            transports = app.transports

            def send(src, data):  # type: ignore[no-untyped-def]
                if src.transport == "udp":
                    raw.sendto(data, (src.ip, src.port))
                    return True
                transports.tap = None  # TCP: the real send, then the tap again
                try:
                    return transports.send(src, data)
                finally:
                    transports.tap = send
            transports.tap = send
            app.uac._send = send
        loop = asyncio.get_running_loop()

        async def traffic(count: int) -> None:
            p = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "tests" / "hostile.py"), a.pattern, "127.0.0.1",
                str(port), "--count", str(count), "--sources", str(a.sources))
            await p.wait()

        await traffic(2000)  # warm-up
        await asyncio.sleep(34)
        gc.collect()
        if not a.no_trace:
            tracemalloc.start(12)
        base = tracemalloc.take_snapshot() if not a.no_trace else None
        r0 = rss_kb()
        print(f"baseline rss {r0} kB  txs {len(app.txl._txs)}", flush=True)
        maps0 = anon_maps()
        from collections import Counter
        types0 = Counter(type(o).__name__ for o in gc.get_objects())
        ids0 = {id(o) for o in gc.get_objects()}
        arenas("baseline")
        t0 = time.monotonic()
        await traffic(a.count)
        print(f"sent in {time.monotonic() - t0:.1f}s; rss {rss_kb()} kB txs {len(app.txl._txs)}",
              flush=True)
        after = tracemalloc.take_snapshot() if not a.no_trace else None
        if after is not None and base is not None:
            report("right after traffic", after.compare_to(base, "traceback"), a.top)
        await asyncio.sleep(a.wait)
        gc.collect()
        print(f"after {a.wait}s: rss {rss_kb()} kB (+{rss_kb() - r0}) txs {len(app.txl._txs)}",
              flush=True)
        arenas("after wait")
        pinned(anon_maps() - maps0)
        types1 = Counter(type(o).__name__ for o in gc.get_objects())
        types1.subtract(types0)
        print("  gc-tracked object growth:", [(k, v) for k, v in types1.most_common(8) if v > 100])
        new = [o for o in gc.get_objects() if id(o) not in ids0 and type(o) is tuple]
        for o in new[:: max(1, len(new) // 6)][:6]:
            refs = gc.get_referrers(o)
            print("   new", repr(o)[:90], "<-", [type(r).__name__ + ":" + repr(r)[:60] for r in refs if r is not new][:3])
        trim()
        print(f"after malloc_trim: rss {rss_kb()} kB (+{rss_kb() - r0})", flush=True)
        if not a.no_trace and base is not None:
            end = tracemalloc.take_snapshot()
            stats = end.compare_to(base, "traceback")
            print("traced growth total", sum(s.size_diff for s in stats) // 1024, "kB")
            report("after wait", stats, a.top)
        await app.stop()
        del loop

    uvloop.install()
    asyncio.run(run())
    return 0


def anon_maps() -> set[tuple[int, int]]:
    """Anonymous mappings of this process: (start, end)."""
    out = set()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 6:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.add((lo, hi))
    return out


def pinned(new: set[tuple[int, int]]) -> None:
    """Objects living in mappings made since the baseline: who pins the arenas."""
    if not new:
        return
    ranges = sorted(new)

    def inside(addr: int) -> bool:
        return any(lo <= addr < hi for lo, hi in ranges)

    seen: dict[int, object] = {}
    objs = gc.get_objects()
    for o in objs:
        if inside(id(o)):
            seen[id(o)] = o
        for r in gc.get_referents(o):
            if inside(id(r)):
                seen[id(r)] = r
    print(f"  {len(seen)} objects in {len(ranges)} new mappings "
          f"({sum(hi - lo for lo, hi in ranges) >> 10} kB)")
    for o in list(seen.values())[:40]:
        refs = [type(r).__name__ for r in gc.get_referrers(o) if r is not objs][:3]
        print(f"    {type(o).__name__:14} {repr(o)[:70]:72} <- {refs}")
    del objs


def arenas(title: str) -> None:
    """pymalloc's arena counts (sys._debugmallocstats writes them to stderr)."""
    r, w = os.pipe()
    saved = os.dup(2)
    os.dup2(w, 2)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(w)
    text = os.read(r, 1 << 20).decode(errors="replace")
    while True:
        more = os.read(r, 1 << 20)
        if not more:
            break
        text += more.decode(errors="replace")
    os.close(r)
    for line in text.splitlines():
        if line.startswith(("# arenas allocated current", "# arenas highwater", "# bytes in allocated blocks", "# bytes in available blocks", "Total ")):
            print(f"  [{title}] {line}")


def trim() -> None:
    import contextlib
    import ctypes
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def report(title: str, stats: list[tracemalloc.StatisticDiff], top: int) -> None:
    print(f"--- {title}: total diff {sum(s.size_diff for s in stats) // 1024} kB")
    for s in stats[:top]:
        if s.size_diff < int(os.environ.get("PROBE_MIN", "50000")):
            break
        print(f"{s.size_diff / 1024:9.0f} kB {s.count_diff:+8d} blocks")
        for fr in s.traceback.format()[-12:]:
            if "tracemalloc" in fr:
                continue
            print("      ", fr)


if __name__ == "__main__":
    os.nice(0)
    sys.exit(main())
