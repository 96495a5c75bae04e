"""Defence against scanners and password guessing (ban list, rate limit).

Failures are counted per source address and per line in a sliding window;
``max_auth_failures`` within ``failure_window`` seconds bans the *source* for
``ban_seconds`` (a line is never locked, or an attacker could lock out a
phone). Networks in ``allow`` are never banned nor rate-limited. Loopback is
not implicitly allowed: a box behind a NAT or border proxy sees everything
from one address, so the admin must say so.

Every failure is logged on one stable line naming the source IP, for fail2ban
(``examples/fail2ban/``)::

    sipyard auth failure: src=192.0.2.7 line=10 reason=wrong-password
"""

from __future__ import annotations

import ipaddress
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Guard", "Ban"]

log = logging.getLogger("sipyard.security")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Ban:
    address: str
    until: float
    failures: int


class Guard:
    def __init__(self, *, max_failures: int = 20, window: float = 60.0, ban_seconds: float = 600.0,
                 allow: Iterable[str] = (), register_rate: int = 500) -> None:
        self.max_failures = max_failures
        self.window = window
        self.ban_seconds = ban_seconds
        self.allow: list[IPNetwork] = [ipaddress.ip_network(a, strict=False) for a in allow]
        self.register_rate = register_rate
        self._fails: dict[str, deque[float]] = {}
        self._line_fails: dict[str, deque[float]] = {}
        self._bans: dict[str, Ban] = {}
        self._rate: dict[str, list[float]] = {}  # ip -> [window start, count]
        self._allowed_cache: dict[str, bool] = {}
        self.total_failures = 0
        self.total_bans = 0
        self.rate_limited = 0

    def configure(self, *, max_failures: int, window: float, ban_seconds: float,
                  allow: Iterable[str], register_rate: int) -> None:
        self.max_failures = max_failures
        self.window = window
        self.ban_seconds = ban_seconds
        self.allow = [ipaddress.ip_network(a, strict=False) for a in allow]
        self.register_rate = register_rate
        self._allowed_cache.clear()

    def allowed(self, ip: str) -> bool:
        hit = self._allowed_cache.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                hit = False
            else:
                hit = any(addr in net for net in self.allow)
            if len(self._allowed_cache) > 65536:
                self._allowed_cache.clear()
            self._allowed_cache[ip] = hit
        return hit

    def banned(self, ip: str, now: float) -> bool:
        ban = self._bans.get(ip)
        if ban is None:
            return False
        if ban.until <= now:
            del self._bans[ip]
            return False
        return True

    def rate_ok(self, ip: str, now: float) -> bool:
        """Fixed one-second windows per source: cheap and enough against floods."""
        limit = self.register_rate
        if limit <= 0 or self.allowed(ip):
            return True
        slot = self._rate.get(ip)
        if slot is None or now - slot[0] >= 1.0:
            if len(self._rate) > 65536:
                self._rate.clear()
            self._rate[ip] = [now, 1.0]
            return True
        slot[1] += 1
        if slot[1] > limit:
            self.rate_limited += 1
            return False
        return True

    def failure(self, ip: str, line: str | None, reason: str, now: float) -> bool:
        """Record one failed authentication; True when the source is now banned."""
        self.total_failures += 1
        log.warning("sipyard auth failure: src=%s line=%s reason=%s", ip, line or "-", reason)
        if line:
            self._count(self._line_fails, line, now)
        if self.allowed(ip):
            return False
        n = self._count(self._fails, ip, now)
        if self.max_failures > 0 and n >= self.max_failures and ip not in self._bans:
            self._bans[ip] = Ban(ip, now + self.ban_seconds, n)
            self.total_bans += 1
            self._fails.pop(ip, None)
            log.warning("sipyard ban: src=%s failures=%d seconds=%d", ip, n, int(self.ban_seconds))
            return True
        return False

    def _count(self, table: dict[str, deque[float]], key: str, now: float) -> int:
        q = table.get(key)
        if q is None:
            if len(table) > 100000:
                self._prune(table, now)
            q = table[key] = deque()
        q.append(now)
        cutoff = now - self.window
        while q and q[0] < cutoff:
            q.popleft()
        return len(q)

    def _prune(self, table: dict[str, deque[float]], now: float) -> None:
        cutoff = now - self.window
        for key in [k for k, q in table.items() if not q or q[-1] < cutoff]:
            del table[key]

    def success(self, ip: str) -> None:
        self._fails.pop(ip, None)

    def line_failures(self, line: str, now: float) -> int:
        q = self._line_fails.get(line)
        if not q:
            return 0
        cutoff = now - self.window
        return sum(1 for t in q if t >= cutoff)

    def bans(self, now: float) -> list[Ban]:
        for ip in [ip for ip, b in self._bans.items() if b.until <= now]:
            del self._bans[ip]
        return sorted(self._bans.values(), key=lambda b: b.until)

    def unban(self, ip: str) -> bool:
        self._fails.pop(ip, None)
        return self._bans.pop(ip, None) is not None

    def unban_all(self) -> int:
        n = len(self._bans)
        self._bans.clear()
        self._fails.clear()
        return n
