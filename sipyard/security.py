"""Defence against scanners and password guessing (ban list, rate limit).

Failures are counted per source address and per line in a sliding window;
``max_failures`` within ``window`` seconds bans the *source* for
``ban_seconds`` (a line is never locked, or an attacker could lock out a
phone). Networks in ``allow`` are never banned nor rate-limited; making a
network allowed (reload) lifts its bans. Loopback is not implicitly allowed: a
box behind a NAT or border proxy sees everything from one address, so the
admin must say so.

A successful authentication does *not* reset the source's count: otherwise
anyone holding one valid account could interleave a good REGISTER between
guesses at other lines and never be banned. Old failures simply age out of
the window.

The per-source and per-line tables are keyed by attacker-chosen values
(spoofable UDP sources, made-up user names), so each is bounded twice:

* by age: every ``sweep_interval`` seconds (and on the first call after one
  has passed) failures older than ``window``, ended bans, rate slots older
  than a second and the allow-list cache go, and a table that shrank is
  rebuilt (a dict never gives memory back on deletion). So after an attack
  the tables are empty again within ``window + sweep_interval`` seconds and
  their memory is free, whether or not traffic continues: an idle server is
  swept by a loop timer that the first entry arms;
* by count: past ``MAX_TRACKED`` keys the stale ones are pruned, then the
  oldest ones dropped, so a flood inside one window cannot grow them further.

The timer knows no clock of its own: it extrapolates the ``now`` of the last
call by the monotonic time since, so callers may use any clock (tests use a
fake one and call :meth:`Guard.sweep` themselves; without a running event loop
no timer is armed).

Every failure is logged on one stable line naming the source IP, for fail2ban
(``examples/fail2ban/``)::

    sipyard auth failure: src=192.0.2.7 line=10 reason=wrong-credentials

``line`` is whatever user name the client claimed; it is escaped by
:func:`log_safe` (no spaces, no control characters, at most 64 characters), so
a crafted user name can never forge a second log line or a ``src=`` field.
What a banned source gets is silence: the request handlers drop everything
from it (no 403: a scanner learns less from nothing, and nothing costs least)
until the ban ends or ``sipyard unban`` lifts it.

A failure from an allowed source is logged with a trailing
``(allowed source)`` so that the fail2ban filter, anchored at the end of the
line, does not ban an address sipyard itself was told to trust.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Guard", "GuardListener", "Ban", "log_safe", "MAX_TRACKED"]

log = logging.getLogger("sipyard.security")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Times = float | list[float]

#: most keys held in each failure table (sources, lines), the ban and the rate table
MAX_TRACKED = 100_000
#: most failure times kept per key (a source is banned long before; a line's count saturates)
MAX_PER_KEY = 1024
#: most entries of the allow-list cache (it is also emptied by every sweep)
MAX_ALLOWED_CACHE = 65_536
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()+@:")


def log_safe(text: str | None, limit: int = 64) -> str:
    """``text`` fit for a one-line, space-separated log record.

    Characters outside a conservative set are written ``%XX`` (UTF-8), so the
    result has no spaces, ``=``, quotes or control characters and cannot be
    mistaken for another field by a log parser such as fail2ban. ``-`` stands
    for nothing; overlong values are cut and end in ``...``.
    """
    if not text:
        return "-"
    if len(text) <= limit and all(c in _SAFE for c in text):
        return text
    out: list[str] = []
    size = 0
    for c in text[: limit * 2]:
        if c in _SAFE:
            piece = c
        else:
            piece = "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
        if size + len(piece) > limit:
            out.append("...")
            break
        out.append(piece)
        size += len(piece)
    else:
        if len(text) > limit * 2:
            out.append("...")
    return "".join(out)


class GuardListener(Protocol):
    """Who mirrors the guard's decisions to other processes (never blocks)."""

    def failure(self, ip: str, now: float) -> None: ...
    def banned(self, ban: Ban) -> None: ...
    def unbanned(self, ip: str | None) -> None: ...


@dataclass(frozen=True, slots=True)
class Ban:
    address: str
    until: float
    failures: int


class Guard:
    """Failure counting, bans and the per-source REGISTER rate limit.

    Time is passed in (``now``, seconds, any clock as long as it is the same
    one everywhere) so tests drive it without sleeping.
    """

    def __init__(self, *, max_failures: int = 20, window: float = 60.0, ban_seconds: float = 600.0,
                 allow: Iterable[str] = (), register_rate: int = 500,
                 sweep_interval: float = 10.0) -> None:
        # key -> the failure time, or the failure times oldest first when there are
        # several: most keys of a scan see one failure, and a float costs 24 bytes
        # where a deque cost over 1 KiB, from malloc (issue #16: 54 MB for 50 000).
        self._fails: dict[str, Times] = {}
        self._line_fails: dict[str, Times] = {}
        self._bans: dict[str, Ban] = {}
        self._rate: dict[str, list[float]] = {}  # ip -> [window start, count]
        self._allowed_cache: dict[str, bool] = {}
        self.total_failures = 0
        self.total_bans = 0
        self.rate_limited = 0
        #: processes sharing the sources (workers of one host): each allows its share
        self.rate_share = 1
        #: told of local failures, bans and unbans (sipyard.cluster.shared mirrors them)
        self.listener: GuardListener | None = None
        self.sweeps = 0
        self.sweep_interval = float(sweep_interval)
        self._last_sweep: float | None = None  # caller's clock
        self._last_now = 0.0  # caller's clock at the last call that added an entry
        self._last_mono = 0.0  # time.monotonic() then
        self._timer: asyncio.TimerHandle | None = None
        self.configure(max_failures=max_failures, window=window, ban_seconds=ban_seconds,
                       allow=allow, register_rate=register_rate)

    def configure(self, *, max_failures: int, window: float, ban_seconds: float,
                  allow: Iterable[str], register_rate: int,
                  sweep_interval: float | None = None) -> None:
        """Apply (new) limits; counts and bans are kept, except that a source
        now on the allow list is unbanned at once. ``sweep_interval=None`` keeps
        the current one."""
        self.max_failures = max_failures
        self.window = float(window)
        self.ban_seconds = float(ban_seconds)
        self.allow: list[IPNetwork] = [ipaddress.ip_network(a, strict=False) for a in allow]
        self.register_rate = register_rate
        if sweep_interval is not None:
            self.sweep_interval = float(sweep_interval)
        self._allowed_cache.clear()
        for ip in [ip for ip in self._bans if self.allowed(ip)]:
            del self._bans[ip]
            self._fails.pop(ip, None)

    def allowed(self, ip: str) -> bool:
        hit = self._allowed_cache.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                hit = False
            else:
                hit = any(addr in net for net in self.allow)
            if len(self._allowed_cache) >= MAX_ALLOWED_CACHE:
                self._allowed_cache = {}
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
        if limit > 0 and self.rate_share > 1:
            limit = -(-limit // self.rate_share)
        if limit <= 0 or self.allowed(ip):
            return True
        slot = self._rate.get(ip)
        if slot is None or not 0.0 <= now - slot[0] < 1.0:
            if slot is None:
                if len(self._rate) >= MAX_TRACKED:
                    self._rate = {}
                self._touch(now)
            self._rate[ip] = [now, 1.0]
            return True
        slot[1] += 1
        if slot[1] > limit:
            self.rate_limited += 1
            return False
        return True

    def failure(self, ip: str, line: str | None, reason: str, now: float) -> bool:
        """Record one failed authentication; True when the source is banned by it."""
        self.total_failures += 1
        self._touch(now)
        allowed = self.allowed(ip)
        log.warning("sipyard auth failure: src=%s line=%s reason=%s%s", log_safe(ip),
                    log_safe(line), log_safe(reason), " (allowed source)" if allowed else "")
        if line:
            self._count(self._line_fails, line, now)
        if allowed or ip in self._bans:
            return False
        if self.listener is not None:
            self.listener.failure(ip, now)
        n = self._count(self._fails, ip, now)
        if self.max_failures > 0 and n >= self.max_failures:
            if len(self._bans) >= MAX_TRACKED:
                self.bans(now)
            self._bans[ip] = ban = Ban(ip, now + self.ban_seconds, n)
            self.total_bans += 1
            if self.listener is not None:
                self.listener.banned(ban)
            self._fails.pop(ip, None)
            log.warning("sipyard ban: src=%s failures=%d seconds=%d", log_safe(ip), n,
                        int(self.ban_seconds))
            return True
        return False

    def _count(self, table: dict[str, Times], key: str, now: float) -> int:
        """Add a failure at ``now`` for ``key``; its failures within the window."""
        now = float(now)
        cutoff = now - self.window
        times = table.get(key)
        if times is None:
            if len(table) >= MAX_TRACKED:
                self._prune(table, now)
            table[key] = now
            return 1
        if not isinstance(times, list):
            if times <= cutoff:
                table[key] = now
                return 1
            table[key] = [times, now]
            return 2
        _drop_old(times, cutoff)
        times.append(now)
        if len(times) > MAX_PER_KEY:
            del times[0]
        return len(times)

    def _prune(self, table: dict[str, Times], now: float) -> None:
        """Drop keys with no failure in the window, then the oldest keys, to half the cap."""
        cutoff = now - self.window
        for key in [k for k, t in table.items() if _last(t) <= cutoff]:
            del table[key]
        excess = len(table) - MAX_TRACKED // 2
        if excess > 0:
            for key in list(table)[:excess]:  # dicts keep insertion order: oldest first
                del table[key]

    # -- sweeping ---------------------------------------------------------------

    def _touch(self, now: float) -> None:
        """An entry is being added at ``now``: sweep if one is due, else make sure one comes."""
        self._last_now = now
        self._last_mono = time.monotonic()
        last = self._last_sweep
        if last is None:
            self._last_sweep = now
        elif now - last >= self.sweep_interval or now < last:
            self.sweep(now)
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (unit tests, tools): callers sweep themselves
            self._timer = loop.call_later(self.sweep_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.sweep(self._last_now + (time.monotonic() - self._last_mono))
        if self._fails or self._line_fails or self._bans or self._rate:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._timer = loop.call_later(self.sweep_interval, self._on_timer)

    def sweep(self, now: float) -> int:
        """Drop everything that no longer counts at ``now``; the number of keys dropped."""
        self._last_sweep = now
        self.sweeps += 1
        cutoff = now - self.window
        dropped = 0
        for name in ("_fails", "_line_fails"):
            table: dict[str, Times] = getattr(self, name)
            before = len(table)
            for key in [k for k, t in table.items() if _last(t) <= cutoff]:
                del table[key]
            for t in table.values():
                if isinstance(t, list):
                    _drop_old(t, cutoff)
            if len(table) < before:
                dropped += before - len(table)
                setattr(self, name, _shrunk(table, before))
        before = len(self._bans)
        for ip in [ip for ip, b in self._bans.items() if b.until <= now]:
            del self._bans[ip]
        if len(self._bans) < before:
            dropped += before - len(self._bans)
            self._bans = _shrunk(self._bans, before)
        before = len(self._rate)
        for ip in [ip for ip, slot in self._rate.items() if not 0.0 <= now - slot[0] < 1.0]:
            del self._rate[ip]
        if len(self._rate) < before:
            dropped += before - len(self._rate)
            self._rate = _shrunk(self._rate, before)
        if self._allowed_cache:
            self._allowed_cache = {}
        return dropped

    def sizes(self) -> dict[str, int]:
        """Keys held per table (for status and tests)."""
        return {"sources": len(self._fails), "lines": len(self._line_fails),
                "bans": len(self._bans), "rate": len(self._rate),
                "allowed_cache": len(self._allowed_cache)}

    def close(self) -> None:
        """Stop the sweep timer (the server is stopping)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def success(self, ip: str) -> None:
        """A source authenticated. Deliberately keeps its failure count (see module doc)."""

    def failures(self, ip: str, now: float) -> int:
        """Failures of a source within the window (0 once banned: the ban took them)."""
        return self._recent(self._fails.get(ip), now)

    def line_failures(self, line: str, now: float) -> int:
        return self._recent(self._line_fails.get(line), now)

    def _recent(self, times: Times | None, now: float) -> int:
        if times is None:
            return 0
        cutoff = now - self.window
        if not isinstance(times, list):
            return 1 if times > cutoff else 0
        return sum(1 for t in times if t > cutoff)

    def bans(self, now: float) -> list[Ban]:
        for ip in [ip for ip, b in self._bans.items() if b.until <= now]:
            del self._bans[ip]
        return sorted(self._bans.values(), key=lambda b: b.until)

    def unban(self, ip: str) -> bool:
        self._fails.pop(ip, None)
        if self.listener is not None:
            self.listener.unbanned(ip)
        return self._bans.pop(ip, None) is not None

    def unban_all(self) -> int:
        n = len(self._bans)
        self._bans = {}
        self._fails = {}
        if self.listener is not None:
            self.listener.unbanned(None)
        return n

    def install_ban(self, ban: Ban) -> None:
        """A ban decided elsewhere (another worker or host): no log line, no listener call."""
        if not self.allowed(ban.address):
            self._bans[ban.address] = ban

    def drop_ban(self, ip: str) -> None:
        """A ban lifted elsewhere."""
        self._bans.pop(ip, None)
        self._fails.pop(ip, None)


def _last(times: Times) -> float:
    if isinstance(times, list):
        return times[-1] if times else -math.inf
    return times


def _drop_old(times: list[float], cutoff: float) -> None:
    i = 0
    n = len(times)
    while i < n and times[i] <= cutoff:
        i += 1
    if i:
        del times[:i]


def _shrunk(table: dict[str, Any], before: int) -> dict[str, Any]:
    """``table`` itself, or a compact copy when it lost at least half its keys.

    A dict keeps its slots after deletions; copying gives them back (the copy
    costs less than the deletions it follows)."""
    if len(table) * 2 <= before:
        return dict(table)
    return table
