"""Profile the per-request path in process (no sockets): parse → transaction → answer.

    .venv/bin/python bench/profile_path.py [options|register|invite] [N] [--burst K]
        [--profile [tottime|cumtime]] [--asyncio]

Prints µs per request (min of 3 runs, gc on); with --profile the top functions by own time.
The bench scenarios' messages are used as they are rendered by sipp.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

from _uvloop import run as run_main  # bench/_uvloop.py, beside this script

from sipyard.app import App
from sipyard.config import load_config
from sipyard.transport import Source

TEMPLATES = {
    "options": (
        "OPTIONS sip:127.0.0.1:5080 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bK-{n}-1-0\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:ping@127.0.0.1>;tag={n}SIPpTag001\r\n"
        "To: <sip:127.0.0.1:5080>\r\nCall-ID: {n}-1234@127.0.0.1\r\nCSeq: 1 OPTIONS\r\n"
        "Accept: application/sdp\r\nUser-Agent: sipp-bench\r\nContent-Length: 0\r\n\r\n"),
    "register": (
        "REGISTER sip:127.0.0.1:5080 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bK-{n}-1-0\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:user{u:06d}@127.0.0.1>;tag={n}SIPpTag001\r\n"
        "To: <sip:user{u:06d}@127.0.0.1>\r\nCall-ID: {n}-1234@127.0.0.1\r\nCSeq: 1 REGISTER\r\n"
        "Contact: <sip:user{u:06d}@127.0.0.1:15060;transport=UDP>\r\nExpires: 3600\r\n"
        "User-Agent: sipp-bench\r\nContent-Length: 0\r\n\r\n"),
    "invite": (
        "INVITE sip:user{u:06d}@127.0.0.1:5080 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bK-{n}-1-0\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag={n}SIPpTag001\r\n"
        "To: <sip:user{u:06d}@127.0.0.1>\r\nCall-ID: {n}-1234@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
        "Contact: <sip:caller@127.0.0.1:15060>\r\nContent-Type: application/sdp\r\n"
        "User-Agent: sipp-bench\r\nContent-Length: 129\r\n\r\n"
        "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
        "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"),
}
#: the hop-by-hop ACK of the 302, as the bench's invite_redirect scenario sends it
ACK = ("ACK sip:user{u:06d}@127.0.0.1:5080 SIP/2.0\r\n"
       "Via: SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bK-{n}-1-0\r\n"
       "Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag={n}SIPpTag001\r\n"
       "To: <sip:user{u:06d}@127.0.0.1>;tag={tag}\r\nCall-ID: {n}-1234@127.0.0.1\r\n"
       "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")

CONFIG = """[server]
realm = "127.0.0.1"
data_dir = "data"
hooks_dir = "hooks"
[logging]
level = "warning"
[security]
open_registration = true
register_rate = 0
[store]
synchronous = "normal"
[redirect]
require_auth = false
"""


async def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "options"
    n = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else 20000
    # datagrams handled per loop iteration (a loaded server reads bursts; 1 = one at a time)
    burst = int(sys.argv[sys.argv.index("--burst") + 1]) if "--burst" in sys.argv else 1
    d = Path(tempfile.mkdtemp())
    (d / "sipyard.toml").write_text(CONFIG)
    app = App(load_config(d / "sipyard.toml"), config_path=d / "sipyard.toml")
    await app.start(listens=[])
    sent = []
    last: list[bytes] = [b""]

    def capture(src: Source, data: bytes) -> bool:
        sent.append(len(data))
        last[0] = data
        return True

    app.transports.tap = capture  # the compiled Transports cannot have send patched
    src = Source("udp", "127.0.0.1", 15060, None, ("127.0.0.1", 5080))
    if kind == "invite":  # register the targets first
        for u in range(1000):
            app._on_bytes(TEMPLATES["register"].format(n=f"r{u}", u=u).encode(), src)
        for _ in range(50):
            await asyncio.sleep(0.01)
    tmpl = TEMPLATES[kind]
    best = float("inf")
    prof = cProfile.Profile() if "--profile" in sys.argv else None
    for run in range(3):
        msgs = [tmpl.format(n=f"{run}x{i}", u=i % 1000).encode() for i in range(n)]
        if prof and run == 2:
            prof.enable()
        t0 = time.perf_counter()
        for i, m in enumerate(msgs):
            app._on_bytes(m, src)
            if kind == "invite":  # answer the 302 with its ACK, as sipp does
                tag = last[0].split(b";tag=", 1)[1].split(b"\r\n", 1)[0].decode()
                app._on_bytes(ACK.format(n=f"{run}x{i}", u=i % 1000, tag=tag).encode(), src)
            if kind != "options" and i % burst == burst - 1:
                await asyncio.sleep(0)
        while len(sent) < (run + 1) * n + (1000 if kind == "invite" else 0):
            await asyncio.sleep(0.001)
        dt = time.perf_counter() - t0
        if prof and run == 2:
            prof.disable()
        best = min(best, dt)
    what = "INVITE + ACK" if kind == "invite" else "request"
    print(f"{kind}: {best / n * 1e6:.1f} us per {what} (wall, in process, incl. handler tasks)")
    await app.stop()
    if prof:
        prof.dump_stats("/tmp/pp.prof")
        pstats.Stats(prof).sort_stats(sys.argv[-1] if sys.argv[-1] in ("cumtime", "tottime") else "tottime").print_stats(40)


if __name__ == "__main__":
    run_main(main)
