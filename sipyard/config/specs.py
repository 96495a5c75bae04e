"""The two spec strings people type both in files and on the command line: listen addresses
and number ranges.

Public because ``--listen`` and tests parse them without a whole config; a ``ValueError``
names what is wrong, and the caller adds the file and key.
"""

from __future__ import annotations

from ._text import host_port, is_number
from .records import Listen, Ranges

__all__ = ["parse_listen", "parse_ranges"]


def parse_listen(spec: str) -> list[Listen]:
    """``udp:HOST:PORT`` / ``tcp:HOST:PORT`` -> one entry; ``HOST:PORT`` -> udp and tcp.

    Always a list, so callers need no type test. ValueError names what is wrong.
    """
    transports = ["udp", "tcp"]
    head, sep, rest = spec.strip().partition(":")
    text = spec.strip()
    if sep and (head.lower() in transports or (head.isalpha() and ":" in rest)):
        if head.lower() not in transports:
            raise ValueError(f"bad listen address {spec!r}: transport must be udp or tcp")
        transports, text = [head.lower()], rest
    try:
        host, port = host_port(text)
    except ValueError as exc:
        raise ValueError(f"bad listen address {spec!r}: {exc}") from None
    return [Listen(t, host, port) for t in transports]


def parse_ranges(spec: str) -> Ranges:
    """``"10-89"``, ``"100-699,1000-1999"``, ``"42"`` -> Ranges (overlaps merged)."""
    spans: list[tuple[int, int]] = []
    for part in spec.split(","):
        lo_s, dash, hi_s = part.strip().partition("-")
        hi_s = hi_s if dash else lo_s
        if not (is_number(lo_s.strip()) and is_number(hi_s.strip())):
            raise ValueError(f"bad range {part.strip()!r}: expected N or N-M (decimal numbers)")
        lo, hi = int(lo_s), int(hi_s)
        if lo > hi or hi >= 10**9:
            raise ValueError(f"bad range {part.strip()!r}: need N <= M < 1000000000")
        spans.append((lo, hi))
    spans.sort()
    merged = [spans[0]]
    for lo, hi in spans[1:]:
        if lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return Ranges(tuple(merged))
