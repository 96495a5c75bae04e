"""Hostile traffic over loopback for the bounded-state tests and ``bench/heap_probe.py``.

Each pattern sends ``count`` requests spread over ``sources`` source addresses in
127.0.0.0/8 (a socket bound to 127.A.B.C sends from that address: the whole /8
is local on Linux) and reads the answers, in windows small enough that the
server's socket buffer never overflows; ``send()`` returns how many answers came
back so a test can tell a dropped flood from a served one.

Patterns: ``options-sources`` (OPTIONS to the server), ``methods`` (a distinct
valid method token per request), ``auth-fail`` (REGISTER with a wrong digest,
a distinct claimed user per request), ``garbage`` (PROTOS-c07-like: invalid
methods, huge headers, broken URIs, binary junk).

    python tests/hostile.py options-sources 127.0.0.1 5060 --count 20000 --sources 2000
"""

from __future__ import annotations

import argparse
import contextlib
import random
import select
import socket
import time
import uuid
from collections.abc import Callable, Iterator

__all__ = ["source_ip", "send", "PATTERNS"]


def source_ip(i: int) -> str:
    """The i-th source address: 127.1.0.1, 127.1.0.2, … (never 127.0.0.1 itself)."""
    return f"127.{1 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}"


def _request(method: str, ruri: str, src: str, port: int, *, to: str | None = None,
             extra: str = "", cseq_method: str | None = None) -> bytes:
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    return (f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {src}:{port};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:probe@{src}>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: {to or '<' + ruri + '>'}\r\n"
            f"Call-ID: {uuid.uuid4().hex}@{src}\r\n"
            f"CSeq: 1 {cseq_method or method}\r\n"
            f"{extra}"
            f"Content-Length: 0\r\n\r\n").encode()


def _options(i: int, src: str, port: int, host: str) -> bytes:
    return _request("OPTIONS", f"sip:{host}", src, port)


def _method(i: int, src: str, port: int, host: str) -> bytes:
    m = f"XM{i:06X}{uuid.uuid4().hex[:4].upper()}"
    return _request(m, f"sip:{host}", src, port)


def _auth_fail(i: int, src: str, port: int, host: str) -> bytes:
    user = f"scan{i}{uuid.uuid4().hex[:6]}"
    nonce = uuid.uuid4().hex
    auth = (f'Authorization: Digest username="{user}", realm="sipyard.test", '
            f'nonce="{nonce}", uri="sip:{host}", response="{uuid.uuid4().hex}", '
            f'algorithm=MD5, qop=auth, nc=00000001, cnonce="{uuid.uuid4().hex[:8]}"\r\n')
    return _request("REGISTER", f"sip:{host}", src, port, to=f"<sip:{user}@sipyard.test>",
                    extra=f"Contact: <sip:{user}@{src}:{port}>\r\nExpires: 60\r\n{auth}")


def _garbage(i: int, src: str, port: int, host: str) -> bytes:
    """One of several PROTOS-c07-like mutations (seeded by i: reproducible)."""
    rnd = random.Random(i)
    kind = i % 6
    if kind == 0:  # invalid method characters
        m = "".join(rnd.choice("INVITE()<>@,;:\\\"/[]?={}\x01") for _ in range(rnd.randint(1, 40)))
        return _request(m, f"sip:{host}", src, port, cseq_method="INVITE")
    if kind == 1:  # huge header value
        big = "A" * rnd.choice((1024, 8192, 30000))
        return _request("INVITE", f"sip:10@{host}", src, port, extra=f"Subject: {big}\r\n")
    if kind == 2:  # broken Request-URI
        uri = rnd.choice(("sip:", "sip:@", "sip:10@[::1", "sip:10@host:99999", "sip:%%%@x",
                          "sip:" + "a" * 5000, "<sip:10@x>", "sip:10@ho st"))
        return _request("INVITE", uri, src, port)
    if kind == 3:  # broken From / To / CSeq
        extra = rnd.choice(("Contact: <sip:\x00\x01>\r\n", "Contact: " + "<" * 2000 + "\r\n",
                            "Expires: 99999999999999999999\r\n", "Max-Forwards: -1\r\n"))
        return _request("INVITE", f"sip:10@{host}", src, port, extra=extra,
                        to=rnd.choice(("<sip:", "\"" * 100, "sip:10@" + host)))
    if kind == 4:  # many headers
        extra = "".join(f"X-H{n}: {n}\r\n" for n in range(rnd.randint(100, 500)))
        return _request("OPTIONS", f"sip:{host}", src, port, extra=extra)
    return bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 600)))


PATTERNS: dict[str, Callable[[int, str, int, str], bytes]] = {
    "options-sources": _options, "methods": _method, "auth-fail": _auth_fail,
    "garbage": _garbage,
}


def _groups(count: int, sources: int) -> Iterator[tuple[int, int, int]]:
    """(source index, first request index, requests from it), round robin by block."""
    per, extra = divmod(count, sources)
    first = 0
    for s in range(sources):
        n = per + (1 if s < extra else 0)
        if n:
            yield s, first, n
            first += n


def send(pattern: str, host: str, port: int, *, count: int, sources: int = 1,
         window: int = 400, timeout: float = 1.0, source_offset: int = 0) -> int:
    """Send ``count`` requests of ``pattern`` from ``sources`` addresses; answers received.

    At most ``window`` requests are outstanding; a window's answers are awaited for
    up to ``timeout`` seconds (unanswered garbage is expected: it only slows the
    next window down, it never stops the run).
    """
    make = PATTERNS[pattern]
    got = 0
    batch: list[tuple[socket.socket, list[bytes]]] = []
    outstanding = 0

    def flush() -> None:
        nonlocal got, outstanding
        socks = [s for s, _ in batch]
        for s, msgs in batch:
            for m in msgs:
                with contextlib.suppress(OSError):
                    s.sendto(m, (host, port))
        want = outstanding
        end = time.monotonic() + timeout
        while want > 0:
            left = end - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(socks, [], [], left)
            for s in ready:
                while True:
                    try:
                        s.recv(65536, socket.MSG_DONTWAIT)
                    except (BlockingIOError, OSError):
                        break
                    got += 1
                    want -= 1
        for s in socks:
            s.close()
        batch.clear()
        outstanding = 0

    for s_index, first, n in _groups(count, sources):
        src = source_ip(s_index + source_offset)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((src, 0))
        lport = sock.getsockname()[1]
        batch.append((sock, [make(first + k, src, lport, host) for k in range(n)]))
        outstanding += n
        if outstanding >= window or len(batch) >= 200:
            flush()
    if batch:
        flush()
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("pattern", choices=sorted(PATTERNS))
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--sources", type=int, default=1)
    ap.add_argument("--offset", type=int, default=0, help="first source index")
    a = ap.parse_args()
    if not a.host.startswith("127.") and a.host != "::1":
        ap.error("loopback only")
    t0 = time.monotonic()
    got = send(a.pattern, a.host, a.port, count=a.count, sources=a.sources,
               source_offset=a.offset)
    print(f"{a.pattern}: sent {a.count} from {a.sources} sources, {got} answers, "
          f"{time.monotonic() - t0:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
