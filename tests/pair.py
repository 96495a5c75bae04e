"""An in-memory pair: a real App driven with bytes in, bytes out and a fake clock.

No sockets: the app's transports are never bound, what it sends is captured,
and time only moves when the test moves it (``advance``), which also fires
the transaction timers that fell due. Handler tests use it to check what is
seen on the wire without the timing noise of a live server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sipyard.app import App
from sipyard.config import load_config
from sipyard.sip.source import Source

__all__ = ["Pair", "FakeClock", "PHONE", "OPEN_CONFIG", "PROXY_CONFIG", "status", "header"]

#: where the pair's requests come from unless a test says otherwise
PHONE = Source("udp", "127.0.0.1", 15060, None, ("127.0.0.1", 5060))

#: redirect mode, open registration, no auth: what most handler tests start from
OPEN_CONFIG = """[server]
realm = "127.0.0.1"
data_dir = "data"
hooks_dir = "hooks"
[logging]
level = "warning"
[security]
open_registration = true
register_rate = 0
[redirect]
require_auth = false
"""
#: the same in proxy mode
PROXY_CONFIG = OPEN_CONFIG.replace("[logging]", 'mode = "proxy"\n[logging]')


def status(data: bytes) -> int:
    """The status code of a response the app sent."""
    return int(data.split(b" ", 2)[1])


def header(data: bytes, name: bytes) -> list[bytes]:
    """Every value of header ``name`` (as spelt) in a message the app sent."""
    return [line.split(b":", 1)[1].strip() for line in data.split(b"\r\n")
            if line.lower().startswith(name.lower() + b":")]


class FakeClock:
    """Wall and monotonic seconds that move only when told."""

    def __init__(self, wall: float = 1_800_000_000.0, mono: float = 1000.0) -> None:
        self._wall = wall
        self._mono = mono

    def wall(self) -> float:
        return self._wall

    def mono(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds


class Pair:
    """``async with Pair(tmp_path, config_text) as p: out = await p.request(data)``."""

    def __init__(self, tmp_path: Path, config_text: str) -> None:
        (tmp_path / "sipyard.toml").write_text(config_text)
        self.config_path = tmp_path / "sipyard.toml"
        self.clock = FakeClock()
        self.sent: list[tuple[Source, bytes]] = []
        self.app: App | None = None

    async def __aenter__(self) -> Pair:
        app = self.app = App(load_config(self.config_path), config_path=self.config_path,
                             clock=self.clock)
        app.transports.tap = self._capture
        await app.start(listens=[])
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.app is not None:
            await self.app.stop()

    def _capture(self, dest: Source, data: bytes) -> bool:
        self.sent.append((dest, data))
        return True

    async def request(self, data: bytes, src: Source = PHONE, *,
                      settle: float = 0.01) -> list[bytes]:
        """Feed one datagram; return what the app sent while it settled (the store's
        group commit runs on the event loop, so a REGISTER's 200 comes after a turn)."""
        assert self.app is not None
        start = len(self.sent)
        self.app._on_bytes(data, src)
        await asyncio.sleep(settle)
        return [data for _, data in self.sent[start:]]

    def advance(self, seconds: float) -> list[bytes]:
        """Move the clock on and fire the timers that fell due; return what they sent."""
        assert self.app is not None
        start = len(self.sent)
        self.clock.advance(seconds)
        self.app.run_timers()
        return [data for _, data in self.sent[start:]]
