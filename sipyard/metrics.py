"""Prometheus text exposition on ``[server] metrics = "HOST:PORT"``.

A tiny asyncio HTTP handler instead of prometheus-client: the figures already
live in the app's counters, so rendering them on scrape costs nothing per
request and adds no dependency or thread.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .ops import OpsContext

__all__ = ["start_metrics", "render"]


#: the event loop's lag at the last probe (one server per process)
_lag: list[float] = [0.0]


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def render(ctx: OpsContext) -> str:
    now = ctx.now()
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            out.append(f"{name}{labels} {value}")

    from . import __version__

    metric("sipyard_info", "gauge", "Version of the running server",
           [(f'{{version="{_esc(__version__)}"}}', 1)])
    metric("sipyard_uptime_seconds", "gauge", "Seconds since the server started",
           [("", round(now - ctx.parts.stats.started, 3))])
    metric("sipyard_requests_total", "counter", "SIP requests received, by method",
           [(f'{{method="{_esc(m)}"}}', n) for m, n in sorted(ctx.parts.stats.requests.items())])
    metric("sipyard_responses_total", "counter", "SIP responses sent, by class",
           [(f'{{class="{c}"}}', n) for c, n in sorted(ctx.parts.stats.responses.items())])
    # Per status code when the app counts them (Stats.codes: status -> count).
    codes = getattr(ctx.parts.stats, "codes", None)
    if codes is not None:
        metric("sipyard_responses_by_code_total", "counter", "SIP responses sent, by status code",
               [(f'{{code="{c}"}}', n) for c, n in sorted(codes.items())])
    bindings = await ctx.parts.store.count(now)
    metric("sipyard_bindings", "gauge", "Registered bindings", [("", bindings)])
    guard = ctx.parts.guard
    metric("sipyard_auth_failures_total", "counter", "Failed authentications",
           [("", guard.total_failures)])
    metric("sipyard_bans", "gauge", "Banned source addresses", [("", len(guard.bans(now)))])
    metric("sipyard_bans_total", "counter", "Bans issued", [("", guard.total_bans)])
    redirect = ctx.parts.current.redirect
    metric("sipyard_suspended_requests", "gauge", "Requests waiting on a redirector",
           [("", redirect.suspended if redirect is not None else 0)])
    metric("sipyard_transactions", "gauge", "Live server transactions", [("", len(ctx.txl))])
    metric("sipyard_tcp_connections", "gauge", "Open SIP TCP connections",
           [("", ctx.transports.connections)])
    metric("sipyard_loop_lag_seconds", "gauge", "Event loop lag at the last probe",
           [("", _lag[0])])
    for k, v in sorted(ctx.parts.hooks.stats().items()):
        metric(f"sipyard_hooks_{k}", "gauge", f"Hook runner: {k}", [("", v)])
    return "\n".join(out) + "\n"


class _Metrics:
    def __init__(self, server: asyncio.AbstractServer, lag: asyncio.Task[None]) -> None:
        self.server = server
        self.lag = lag

    def close(self) -> None:
        self.lag.cancel()
        self.server.close()


async def start_metrics(ctx: OpsContext, addr: tuple[str, int]) -> _Metrics:
    host, port = addr

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):  # the whole request head, however it trickles in
                line = await reader.readline()
                for _ in range(100):
                    if not (await reader.readline()).strip():
                        break
            parts = line.decode("latin-1").split()
            if len(parts) >= 2 and parts[0] == "GET" and parts[1] in ("/metrics", "/"):
                body = (await render(ctx)).encode()
                head = "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            else:
                body = b"not found\n"
                head = "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await asyncio.wait_for(writer.drain(), 5)
        except (TimeoutError, ConnectionError, ValueError):
            pass  # slow, gone, or a request line over the reader's limit
        finally:
            writer.close()

    async def probe_lag() -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(1.0)
            _lag[0] = max(0.0, time.monotonic() - t0 - 1.0)

    server = await asyncio.start_server(handle, host, port)
    return _Metrics(server, asyncio.ensure_future(probe_lag()))
