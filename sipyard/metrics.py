"""Prometheus metrics through ``prometheus-client``: one custom collector over the counters
the server keeps anyway.

Why a collector and not ``Counter``/``Gauge`` objects: the figures already live in
:class:`~sipyard.stats.Stats`, the guard, the store and the hook runner; reading them at
scrape time costs nothing per SIP request, and nothing can drift between ``sipyard status``
and ``/metrics``. Async sources (the store's binding count, the call documents) are read
into a :class:`Snapshot` first, because a collector's ``collect`` is synchronous.

Label values never come unchecked from the network: ``method`` is one of
:data:`~sipyard.stats.KNOWN_METHODS` or ``other``, ``class`` one of ``1xx`` … ``6xx``,
``code`` a status code 100–699 that we sent, hook counters a fixed set of names. Anything
else is folded into ``other`` or dropped, so a peer inventing method names cannot add series.

Served under ``/metrics`` on ``[web] listen`` (with the page's access rules) and, as
before, alone on ``[server] metrics = "HOST:PORT"``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from . import __version__
from .ops import OpsContext, call_docs
from .stats import KNOWN_METHODS, OTHER
from .web.http import HttpServer, Request, Response

__all__ = ["CONTENT_TYPE", "LagProbe", "MetricsServer", "Snapshot", "SipyardCollector",
           "render", "snapshot", "start_metrics", "LAG"]

log = logging.getLogger("sipyard")

CONTENT_TYPE = CONTENT_TYPE_LATEST
_METHODS = KNOWN_METHODS | {OTHER}
_CLASSES = frozenset(("1xx", "2xx", "3xx", "4xx", "5xx", "6xx"))
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,40}\Z")


class LagProbe:
    """How late the event loop wakes a 1 s sleep: the lag every SIP request also sees.

    One per process (``LAG``); the web page and the metrics listener share it, each
    holding a reference while it runs.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.lag = 0.0
        self._users = 0
        self._task: asyncio.Task[None] | None = None

    def acquire(self) -> None:
        self._users += 1
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def release(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users == 0 and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(self.interval)
            self.lag = max(0.0, time.monotonic() - t0 - self.interval)


LAG = LagProbe()


@dataclass(slots=True)
class Snapshot:
    """Every figure of one scrape, read at one moment."""

    uptime: float
    requests: Mapping[str, int]
    responses: Mapping[str, int]
    codes: Mapping[int, int]
    bindings: int
    auth_failures: int
    bans: int
    bans_total: int
    suspended: int
    transactions: int
    tcp_connections: int
    loop_lag: float
    hooks: Mapping[str, int]
    calls: int
    trunks: Mapping[str, int] = field(default_factory=dict)


async def snapshot(ctx: OpsContext) -> Snapshot:
    parts = ctx.parts
    now = ctx.now()
    guard = parts.guard
    redirect = parts.current.redirect
    docs = await call_docs(ctx)
    trunks: dict[str, int] = {}
    for trunk in docs["trunks"]:
        state = str(trunk.get("state", ""))
        if state in ("registered", "failed", "disabled"):
            trunks[state] = trunks.get(state, 0) + 1
    return Snapshot(
        uptime=now - parts.stats.started, requests=dict(parts.stats.requests),
        responses=dict(parts.stats.responses), codes=dict(parts.stats.codes),
        bindings=await parts.store.count(now), auth_failures=guard.total_failures,
        bans=len(guard.bans(now)), bans_total=guard.total_bans,
        suspended=redirect.suspended if redirect is not None else 0,
        transactions=len(ctx.txl), tcp_connections=ctx.transports.connections,
        loop_lag=LAG.lag, hooks=parts.hooks.stats(), calls=len(docs["calls"]), trunks=trunks)


class SipyardCollector(Collector):
    """Yields the metric families of one :class:`Snapshot` (checked label values only)."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        s = self.snap
        yield InfoMetricFamily("sipyard", "Version of the running server",
                               value={"version": __version__})
        yield GaugeMetricFamily("sipyard_uptime_seconds", "Seconds since the server started",
                                value=round(s.uptime, 3))
        requests = CounterMetricFamily("sipyard_requests", "SIP requests received, by method",
                                       labels=["method"])
        folded: dict[str, int] = {}
        for method, n in s.requests.items():
            key = method if method in _METHODS else OTHER
            folded[key] = folded.get(key, 0) + n
        for method in sorted(folded):
            requests.add_metric([method], folded[method])
        yield requests
        responses = CounterMetricFamily("sipyard_responses", "SIP responses sent, by class",
                                        labels=["class"])
        for cls in sorted(c for c in s.responses if c in _CLASSES):
            responses.add_metric([cls], s.responses[cls])
        yield responses
        codes = CounterMetricFamily("sipyard_responses_by_code",
                                    "SIP responses sent, by status code", labels=["code"])
        for code in sorted(c for c in s.codes if isinstance(c, int) and 100 <= c <= 699):
            codes.add_metric([str(code)], s.codes[code])
        yield codes
        yield GaugeMetricFamily("sipyard_bindings", "Registered bindings", value=s.bindings)
        yield CounterMetricFamily("sipyard_auth_failures", "Failed authentications",
                                  value=s.auth_failures)
        yield GaugeMetricFamily("sipyard_bans", "Banned source addresses", value=s.bans)
        yield CounterMetricFamily("sipyard_bans", "Bans issued", value=s.bans_total)
        yield GaugeMetricFamily("sipyard_suspended_requests", "Requests waiting on a redirector",
                                value=s.suspended)
        yield GaugeMetricFamily("sipyard_transactions", "Live server transactions",
                                value=s.transactions)
        yield GaugeMetricFamily("sipyard_tcp_connections", "Open SIP TCP connections",
                                value=s.tcp_connections)
        yield GaugeMetricFamily("sipyard_loop_lag_seconds", "Event loop lag at the last probe",
                                value=s.loop_lag)
        yield GaugeMetricFamily("sipyard_calls", "Calls in progress (proxy mode)",
                                value=s.calls)
        trunks = GaugeMetricFamily("sipyard_trunks", "Trunks, by registration state",
                                   labels=["state"])
        for state in sorted(s.trunks):
            trunks.add_metric([state], s.trunks[state])
        yield trunks
        for key in sorted(k for k in s.hooks if _NAME.match(k)):
            yield GaugeMetricFamily(f"sipyard_hooks_{key}", f"Hook runner: {key}",
                                    value=s.hooks[key])


def render(snap: Snapshot) -> bytes:
    """The text exposition of one snapshot (a registry per scrape: nothing global)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SipyardCollector(snap))
    return generate_latest(registry)


async def metrics_response(ctx: OpsContext) -> Response:
    return Response(200, render(await snapshot(ctx)), CONTENT_TYPE)


class MetricsServer:
    """``[server] metrics``: ``/metrics`` alone, no page, no access rules (as before)."""

    def __init__(self, ctx: OpsContext) -> None:
        self.ctx = ctx
        self.http = HttpServer(self._handle)

    async def _handle(self, req: Request) -> Response:
        if req.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", headers=[("Allow", "GET, HEAD")])
        if req.path != "/metrics":
            return Response(404, b"not found\n")
        return await metrics_response(self.ctx)

    async def close(self) -> None:
        await self.http.close()
        LAG.release()


async def start_metrics(ctx: OpsContext, addr: tuple[str, int]) -> MetricsServer:
    server = MetricsServer(ctx)
    await server.http.start(*addr)
    LAG.acquire()
    log.info("metrics on http://%s:%d/metrics", *addr)
    return server
