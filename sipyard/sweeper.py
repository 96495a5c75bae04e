"""Expiring bindings: once a second, and a line whose last binding went fires ``release``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .hooks import iso_time
from .parts import Parts
from .store import StoreError

__all__ = ["sweep_bindings"]

log = logging.getLogger("sipyard")


async def sweep_bindings(parts: Parts, now_fn: Callable[[], float],
                         interval: float = 1.0) -> None:
    store = parts.store
    hooks = parts.hooks
    while True:
        await asyncio.sleep(interval)
        now = now_fn()
        try:
            expired = await store.expire(now)
        except StoreError as exc:
            log.error("store error while expiring bindings: %s", exc)
            continue
        except Exception:
            log.exception("expiry sweep failed")
            continue
        for aor in {b.aor for b in expired}:
            try:
                left = await store.lookup(aor, now)
            except StoreError:
                continue
            if not left:
                line = aor[4:].split("@", 1)[0] if aor.startswith("sip:") else aor
                lc = parts.current.config.lines.get(line)
                hooks.fire("release", {
                    "event": "release", "line": line,
                    "display": lc.display if lc is not None and lc.display else "",
                    "reason": "expired", "time": iso_time(now)})
