"""``[proxy] nat_ping_interval``: OPTIONS pings to the bindings that sit behind NAT.

Why: a NAT forgets an idle UDP mapping after 30 s to a few minutes, and a phone that lost
power never unregisters; until its binding expires every call to its line rings a dead
flow. Pinging each binding behind NAT (:func:`sipyard.nat.behind_nat`) at its flow keeps
the mapping open and finds the dead ones: a binding that answers nothing
:data:`MAX_FAILURES` times in a row is dropped (and ``release`` fires when it was its
line's last), as Kamailio's nathelper + ``keepalive`` and OpenSIPS's ``natping`` do.

Choices: any response counts as alive, even 405 or 481 (the phone is there and its NAT
mapping is open; only silence or a flow that cannot be reached is a failure). Pings of
one round go out in parallel and wait at most the interval (never more than 64*T1 =
32 s) for an answer, so a round takes that long whatever the number of dead phones; a round never overlaps the next. A
binding is keyed by (AOR, binding id, registration Call-ID and CSeq): a re-REGISTER
resets its count. Off by default (0): sites without NAT pay nothing. A binding whose flow
lives on another host sharing the store (its Path names that host) is that host's to ping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .hooks import iso_time
from .nat import behind_nat
from .store import StoreError
from .store.base import Binding

if TYPE_CHECKING:
    from .messaging import Sender
    from .parts import Parts

__all__ = ["NatPinger", "MAX_FAILURES"]

log = logging.getLogger("sipyard.proxy")

#: consecutive unanswered pings after which a binding is dropped
MAX_FAILURES = 3

_Key = tuple[str, str, str, int]


def _key(b: Binding) -> _Key:
    return (b.aor, b.binding_id, b.call_id, b.cseq)


def _alive(status: int) -> bool:
    """A real answer from the phone; 408 (no answer) and 503 (not sent) are ours."""
    return status not in (408, 503)


class NatPinger:
    """Runs the ping rounds while ``[proxy] nat_ping_interval`` > 0 (read every round)."""

    def __init__(self, parts: Parts, sender: Sender, now: Callable[[], float]) -> None:
        self.parts = parts
        self.sender = sender
        self.now = now
        self.failures: dict[_Key, int] = {}
        self.sent = 0
        self.dropped = 0

    async def run(self) -> None:
        """Forever: sleep the interval (1 s while off, to notice a reload), ping a round."""
        while True:
            interval = self.parts.current.config.proxy.nat_ping_interval
            await asyncio.sleep(interval if interval > 0 else 1.0)
            if self.parts.current.config.proxy.nat_ping_interval <= 0:
                self.failures.clear()
                continue
            try:
                await self.round()
            except StoreError as exc:
                log.error("nat ping: store error: %s", exc)
            except Exception:
                log.exception("nat ping round failed")

    async def round(self) -> None:
        """Ping every binding behind NAT once; drop the ones that failed too often."""
        now = self.now()
        edge = self.sender.edge
        targets = [b for b in await self.parts.store.all(now)
                   if behind_nat(b.contact, b.source_ip,
                                 outbound=b.reg_id is not None and b.instance is not None)
                   and not (edge is not None and b.path and edge.elsewhere(b.path[0]))]
        live = {_key(b) for b in targets}
        for k in [k for k in self.failures if k not in live]:
            del self.failures[k]  # re-registered, expired or removed meanwhile
        # a ping must be answered before the next round is due (at most 64*T1)
        timeout = min(self.parts.current.config.proxy.nat_ping_interval, 32.0)
        codes = await asyncio.gather(*(self._ping(b, timeout) for b in targets))
        dead = []
        for b, status in zip(targets, codes, strict=True):
            k = _key(b)
            if _alive(status):
                self.failures.pop(k, None)
                continue
            n = self.failures.get(k, 0) + 1
            self.failures[k] = n
            if n >= MAX_FAILURES:
                dead.append(b)
        for b in dead:
            await self._drop(b, now)

    async def _ping(self, b: Binding, timeout: float) -> int:
        self.sent += 1
        return await self.sender.send_to_binding(b, "OPTIONS", headers=(), timeout=timeout)

    async def _drop(self, b: Binding, now: float) -> None:
        k = _key(b)
        self.failures.pop(k, None)

        def without(current: list[Binding]) -> tuple[list[Binding], list[str]]:
            gone = [x.binding_id for x in current if _key(x) == k]
            return [], gone

        left = await self.parts.store.update(b.aor, now, without)
        self.dropped += 1
        log.info("nat ping: %s (%s from %s:%d/%s) answered none of %d pings; binding dropped",
                 b.aor, b.contact, b.source_ip, b.source_port, b.transport, MAX_FAILURES)
        if not left:
            line = b.aor[4:].split("@", 1)[0] if b.aor.startswith("sip:") else b.aor
            lc = self.parts.current.config.lines.get(line)
            self.parts.hooks.fire("release", {
                "event": "release", "line": line,
                "display": lc.display if lc is not None and lc.display else "",
                "reason": "unreachable", "time": iso_time(now)})
