"""The last 24 hours at one sample a minute, for the status page's chart.

Why a ring in memory and not the store: the chart is a glance at recent load, not an
archive (Prometheus keeps that), so it may start empty after a restart; a fixed-size deque
(``MAX_SAMPLES`` = 1 440) bounds its memory whatever the uptime. Each sample holds the
bindings at that minute and the requests (all, and REGISTERs) counted during it; the
document adds the running minute so the chart moves before the first minute is over.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

__all__ = ["History", "MAX_SAMPLES", "STEP", "run_sampler"]

log = logging.getLogger("sipyard.web")

MAX_SAMPLES = 1440
STEP = 60  # seconds per sample


class History:
    """A bounded ring of ``(minute, bindings, requests, registers)`` samples."""

    def __init__(self, maxlen: int = MAX_SAMPLES, step: int = STEP) -> None:
        self.step = step
        self.samples: deque[tuple[int, int, int, int]] = deque(maxlen=maxlen)
        self._last_requests = 0
        self._last_registers = 0

    @staticmethod
    def totals(requests: Mapping[str, int]) -> tuple[int, int]:
        return sum(requests.values()), requests.get("REGISTER", 0)

    def sample(self, now: float, bindings: int, requests: Mapping[str, int]) -> None:
        """Close the minute that ends at ``now``: its requests are the counters' growth."""
        total, registers = self.totals(requests)
        minute = int(now // self.step) * self.step
        self.samples.append((minute, bindings, max(0, total - self._last_requests),
                             max(0, registers - self._last_registers)))
        self._last_requests, self._last_registers = total, registers

    def doc(self, now: float, bindings: int, requests: Mapping[str, int]) -> dict[str, Any]:
        """Columns (``t`` in epoch seconds, one entry per minute, oldest first); the last
        entry is the running minute (``partial`` true), counted so far."""
        total, registers = self.totals(requests)
        rows = [*self.samples, (int(now), bindings, max(0, total - self._last_requests),
                                max(0, registers - self._last_registers))]
        return {"step": self.step, "partial": True,
                "t": [r[0] for r in rows], "bindings": [r[1] for r in rows],
                "requests": [r[2] for r in rows], "registers": [r[3] for r in rows]}


async def run_sampler(history: History, now: Callable[[], float],
                      bindings: Callable[[float], Awaitable[int]],
                      requests: Callable[[], Mapping[str, int]]) -> None:
    """Sample at every minute boundary until cancelled (a store error skips one sample)."""
    while True:
        t = now()
        await asyncio.sleep(history.step - t % history.step + 0.01)
        t = now()
        try:
            count = await bindings(t)
        except Exception as exc:  # the store is down: the chart has a gap, the page lives
            log.warning("web: history sample skipped: %s", exc)
            continue
        history.sample(t - 1, count, requests())
