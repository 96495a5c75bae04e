"""Profile whole proxied calls in process (no sockets): the proxy_call scenario's messages.

    .venv/bin/python bench/profile_proxy.py [N] [--burst K] [--profile [tottime|cumtime]] [--asyncio]

A UAC (port 15060) calls users registered with a UAS contact (port 15070): INVITE → 100
→ 180 → 200 → ACK (2xx, along the Record-Route) → BYE → 200, every message through
``App._on_bytes`` as ``bench/run_proxy_anchor.sh`` sends them. The phones' side is
made by string operations on what the proxy sent, outside the timed proxy work as far
as possible (it is measured and subtracted: ``phones`` below). Prints µs per whole
call (min of 3 runs), the floor to set against ``make bench``'s ``server_us_call``.
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
from sipyard.sip.source import Listen
from sipyard.transport import Source

CONFIG = """[server]
realm = "127.0.0.1"
domains = ["localhost"]
data_dir = "data"
hooks_dir = "hooks"
max_expires = 3600
mode = "proxy"
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
UAC, UAS = 15060, 15070
REGISTER = (
    "REGISTER sip:127.0.0.1:5080 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:15075;branch=z9hG4bK-r{u}\r\n"
    "Max-Forwards: 70\r\nFrom: <sip:{u}@127.0.0.1>;tag=r{u}\r\n"
    "To: <sip:{u}@127.0.0.1>\r\nCall-ID: r{u}@127.0.0.1\r\nCSeq: 1 REGISTER\r\n"
    "Contact: <sip:{u}@127.0.0.1:15070>\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n")
SDP = ("v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
       "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
INVITE = (
    "INVITE sip:{u}@127.0.0.1:5080 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bK-{n}-1\r\n"
    "Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag={n}SIPpTag001\r\n"
    "To: <sip:{u}@127.0.0.1:5080>\r\nCall-ID: {n}@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
    "Contact: <sip:caller@127.0.0.1:15060;transport=UDP>\r\nUser-Agent: sipp-bench\r\n"
    "Content-Type: application/sdp\r\nContent-Length: " + str(len(SDP)) + "\r\n\r\n" + SDP)
IN_DIALOG = (
    "{method} sip:{u}@127.0.0.1:15070 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bK-{n}-{cseq}\r\n"
    "Route: {route}\r\n"
    "Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag={n}SIPpTag001\r\n"
    "To: <sip:{u}@127.0.0.1:5080>;tag=uas{n}\r\nCall-ID: {n}@127.0.0.1\r\n"
    "CSeq: {cseq} {method}\r\nContact: <sip:caller@127.0.0.1:15060;transport=UDP>\r\n"
    "User-Agent: sipp-bench\r\nContent-Length: 0\r\n\r\n")
KEEP = (b"via", b"from", b"to", b"call-id", b"cseq", b"record-route")


def answer(req: bytes, status: str, tag: bytes) -> bytes:
    """The UAS's response: the request's Via/From/To/Call-ID/CSeq/Record-Route lines copied."""
    head = req.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    out = [b"SIP/2.0 " + status.encode()]
    for line in head:
        name = line.split(b":", 1)[0].strip().lower()
        if name in KEEP:
            if name == b"to" and b";tag=" not in line:
                line += b";tag=" + tag
            out.append(line)
    out += [b"Contact: <sip:uas@127.0.0.1:15070>", b"Content-Length: 0", b"", b""]
    return b"\r\n".join(out)


def header(msg: bytes, name: bytes) -> str:
    for line in msg.split(b"\r\n"):
        if line[:len(name) + 1].lower() == name.lower() + b":":
            return line.split(b":", 1)[1].strip().decode()
    raise KeyError(name)


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 5000
    burst = int(sys.argv[sys.argv.index("--burst") + 1]) if "--burst" in sys.argv else 1
    d = Path(tempfile.mkdtemp())
    (d / "sipyard.toml").write_text(CONFIG)
    out: dict[int, list[bytes]] = {UAC: [], UAS: [], 15075: []}

    def capture(dest: Source, data: bytes) -> bool:
        out.setdefault(dest.port, []).append(data)
        return True

    app = App(load_config(d / "sipyard.toml"), config_path=d / "sipyard.toml")
    app.transports.tap = capture  # the compiled Transports cannot have send patched
    await app.start(listens=[Listen("udp", "127.0.0.1", 5080)])  # Via, Record-Route
    uac = Source("udp", "127.0.0.1", UAC, None, ("127.0.0.1", 5080))
    uas = Source("udp", "127.0.0.1", UAS, None, ("127.0.0.1", 5080))
    reg = Source("udp", "127.0.0.1", 15075, None, ("127.0.0.1", 5080))
    users = 1000
    for u in range(users):
        app._on_bytes(REGISTER.format(u=10000 + u).encode(), reg)
    while len(out[15075]) < users:
        await asyncio.sleep(0.01)

    async def call(tag: str, u: int) -> None:
        app._on_bytes(INVITE.format(n=tag, u=u).encode(), uac)
        if not out[UAS]:  # a suspended chain (first contact) answers on a later iteration
            for spin in range(3000):
                await asyncio.sleep(0 if spin < 100 else 0.001)
                if out[UAS]:
                    break
        if not out[UAS]:
            raise SystemExit(f"no INVITE forwarded; sent: {out!r}")
        fwd = out[UAS].pop()
        app._on_bytes(answer(fwd, "180 Ringing", b"uas" + tag.encode()), uas)
        app._on_bytes(answer(fwd, "200 OK", b"uas" + tag.encode()), uas)
        ok = out[UAC][-1]
        route = header(ok, b"record-route")
        app._on_bytes(IN_DIALOG.format(method="ACK", n=tag, u=u, cseq=1, route=route).encode(),
                      uac)
        app._on_bytes(IN_DIALOG.format(method="BYE", n=tag, u=u, cseq=2, route=route).encode(),
                      uac)
        bye = out[UAS].pop()
        app._on_bytes(answer(bye, "200 OK", b"uas" + tag.encode()), uas)
        out[UAS].clear()
        out[UAC].clear()

    best = float("inf")
    prof = cProfile.Profile() if "--profile" in sys.argv else None
    for run in range(3):
        if prof and run == 2:
            prof.enable()
        t0 = time.process_time()
        for i in range(n):
            await call(f"{run}x{i}", 10000 + i % users)
            if i % burst == burst - 1:
                await asyncio.sleep(0)
        dt = time.process_time() - t0
        if prof and run == 2:
            prof.disable()
        best = min(best, dt)
    # what the phones' side costs (building and parsing their messages), to subtract
    fwd = INVITE.format(n="x", u=1).encode()
    t0 = time.process_time()
    for i in range(n):
        a = answer(fwd, "180 Ringing", b"t")
        answer(fwd, "200 OK", b"t")
        header(a, b"via")
        IN_DIALOG.format(method="ACK", n=i, u=1, cseq=1, route="<sip:x;lr>").encode()
        IN_DIALOG.format(method="BYE", n=i, u=1, cseq=2, route="<sip:x;lr>").encode()
        answer(fwd, "200 OK", b"t")
    phones = time.process_time() - t0
    print(f"proxy_call: {best / n * 1e6:.1f} us per whole call (CPU of the process, in process), of which "
          f"the phones' side about {phones / n * 1e6:.1f}: proxy ≈ "
          f"{(best - phones) / n * 1e6:.1f} us")
    await app.stop()
    if prof:
        prof.dump_stats("/tmp/pp_proxy.prof")
        key = sys.argv[-1] if sys.argv[-1] in ("cumtime", "tottime") else "tottime"
        pstats.Stats(prof).sort_stats(key).print_stats(45)


if __name__ == "__main__":
    run_main(main)
