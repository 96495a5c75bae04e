"""The status page's routes, its JSON API and ``/metrics``, and both HTTP listeners' life.

Every document comes from :mod:`sipyard.ops`, the functions the control socket answers
with, so ``GET /api/registry`` is byte for byte what ``sipyard registry --json`` prints
(minus formatting). ``GET /api/state`` bundles the documents the page polls, keyed by the
endpoint each comes from. ``[web] token`` and ``actions`` are read per request from the
live config, so a reload changes them at once; ``[web] listen`` needs a restart.

Routes (see :mod:`.access` for who may call them):
  ``GET /`` the page; ``GET /static/*`` its script, style and icon;
  ``GET /api/state`` {status, registry, bans, runstate, calls, cdr, trunks, web};
  ``GET /api/status|registry[?line=N]|bans|runstate|calls|cdr|trunks|history``;
  ``GET /metrics`` Prometheus text (501 without prometheus-client);
  ``POST /api/unban`` {"address"}, ``/api/unregister`` {"line"}, ``/api/runstate``
  {"state"}: each answers the control op's document.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from ..ops import (
    OpsContext,
    bans_doc,
    call_docs,
    registry_doc,
    runstate_doc,
    set_runstate,
    status_doc,
    unban,
    unregister,
)
from .access import COOKIE, Decision, cookie_value, decide, is_loopback, parse_cookies
from .history import History, run_sampler
from .http import HttpServer, Request, Response, json_response

try:
    from .. import metrics
except ImportError:  # prometheus-client missing: the page works, /metrics says why not
    metrics = None  # type: ignore[assignment]

__all__ = ["Web", "start_web", "POLL_SECONDS"]

log = logging.getLogger("sipyard.web")

POLL_SECONDS = 5
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_STATIC = ("index.html", "app.js", "style.css", "icon.svg")
_MAX_FIELD = 64
DocFn = Callable[[OpsContext], Awaitable[dict[str, Any]]]


def _load_static() -> dict[str, Response]:
    """The page's files, read once from package data (a missing one fails the start)."""
    root = resources.files("sipyard.web") / "static"
    out = {}
    for name in _STATIC:
        suffix = name[name.rfind("."):]
        out[name] = Response(200, (root / name).read_bytes(), _TYPES[suffix])
    return out


async def _calls(ctx: OpsContext) -> dict[str, Any]:
    return {"calls": (await call_docs(ctx))["calls"]}


async def _cdr(ctx: OpsContext) -> dict[str, Any]:
    return {"cdr": (await call_docs(ctx))["cdr"]}


async def _trunks(ctx: OpsContext) -> dict[str, Any]:
    return {"trunks": (await call_docs(ctx))["trunks"]}


async def _bans(ctx: OpsContext) -> dict[str, Any]:
    return bans_doc(ctx)


async def _status(ctx: OpsContext) -> dict[str, Any]:
    return await status_doc(ctx)


async def _runstate(ctx: OpsContext) -> dict[str, Any]:
    return await runstate_doc(ctx)


_DOCS: dict[str, DocFn] = {
    "status": _status, "bans": _bans, "runstate": _runstate,
    "calls": _calls, "cdr": _cdr, "trunks": _trunks,
}


def _error(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def _field(body: dict[str, Any], key: str, *, nullable: bool = False) -> str | None:
    value = body.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_FIELD:
        raise ValueError(f"{key} must be a string of 1-{_MAX_FIELD} characters")
    return value


class Web:
    """The page listener (``[web] listen``) and the metrics-only one (``[server] metrics``)."""

    def __init__(self, ctx: OpsContext) -> None:
        self.ctx = ctx
        self.history = History()
        self.page: HttpServer | None = None
        self.listen_host = ""
        self.address: tuple[str, int] | None = None
        self.metrics_server: Any = None
        self._sampler: asyncio.Task[None] | None = None
        self._static: dict[str, Response] = {}

    async def start(self) -> None:
        cfg = self.ctx.parts.current.config
        if cfg.server.metrics is not None:
            if metrics is None:
                raise RuntimeError("[server] metrics needs prometheus-client "
                                   "(pip install 'sipyard[metrics]')")
            self.metrics_server = await metrics.start_metrics(self.ctx, cfg.server.metrics)
        if cfg.web.listen is None:
            return
        self._static = _load_static()
        self.listen_host = cfg.web.listen[0]
        self.page = HttpServer(self.handle)
        self.address = await self.page.start(*cfg.web.listen)
        parts = self.ctx.parts
        self._sampler = asyncio.ensure_future(run_sampler(
            self.history, self.ctx.now, parts.store.count, lambda: parts.stats.requests))
        if metrics is not None:
            metrics.LAG.acquire()
        host, port = self.address
        if cfg.web.token is None and not is_loopback(host):
            log.warning("web: [web] listen %s has no token: only loopback clients are served",
                        host)
        log.info("status page on http://%s:%d/%s", f"[{host}]" if ":" in host else host, port,
                 "" if cfg.web.token is None else " (token required)")

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        page, self.page = self.page, None
        if page is not None:
            await page.close()
            if metrics is not None:
                metrics.LAG.release()
        server, self.metrics_server = self.metrics_server, None
        if server is not None:
            await server.close()

    # -- requests ---------------------------------------------------------------------------
    def access(self, req: Request) -> Decision:
        web = self.ctx.parts.current.config.web
        return decide(req.peer, token=web.token, actions=web.actions,
                      listen_host=self.listen_host, host=req.header("host"),
                      authorization=req.header("authorization"),
                      query_token=req.query.get("token"),
                      cookie=parse_cookies(req.header("cookie")).get(COOKIE))

    async def handle(self, req: Request) -> Response:
        decision = self.access(req)
        if not decision.read:
            headers = [("WWW-Authenticate", 'Bearer realm="sipyard"')] \
                if decision.status == 401 else []
            return Response(decision.status, (decision.reason + "\n").encode(), headers=headers)
        if req.method in ("GET", "HEAD"):
            return await self._get(req)
        if req.method == "POST":
            return await self._post(req, decision)
        return Response(405, b"method not allowed\n", headers=[("Allow", "GET, HEAD, POST")])

    async def _get(self, req: Request) -> Response:
        path = req.path
        if path in ("/", "/index.html"):
            token = self.ctx.parts.current.config.web.token
            if token is not None and "token" in req.query:
                # A bookmark with ?token=: trade it for a cookie and drop it from the URL.
                return Response(303, b"", headers=[
                    ("Location", "/"),
                    ("Set-Cookie", f"{COOKIE}={cookie_value(token)}; Path=/; HttpOnly; "
                                   "SameSite=Strict")])
            return self._static["index.html"]
        if path.startswith("/static/"):
            found = self._static.get(path[len("/static/"):])
            return found if found is not None else Response(404, b"not found\n")
        if path == "/metrics":
            if metrics is None:
                return Response(501, b"/metrics needs prometheus-client "
                                     b"(pip install 'sipyard[metrics]')\n")
            return await metrics.metrics_response(self.ctx)
        if not path.startswith("/api/"):
            return Response(404, b"not found\n")
        name = path[len("/api/"):]
        if name == "state":
            return json_response(await self.state())
        if name == "registry":
            doc = await registry_doc(self.ctx, req.query.get("line"))
            return json_response(doc, 404 if "error" in doc else 200)
        if name == "history":
            return json_response(await self.history_doc())
        fn = _DOCS.get(name)
        if fn is None:
            return _error(404, "no such document")
        return json_response(await fn(self.ctx))

    async def state(self) -> dict[str, Any]:
        """What the page polls: each document under the name of its own endpoint."""
        ctx = self.ctx
        web = ctx.parts.current.config.web
        calls = await call_docs(ctx)
        return {
            "status": await status_doc(ctx), "registry": await registry_doc(ctx),
            "bans": bans_doc(ctx), "runstate": await runstate_doc(ctx),
            "calls": {"calls": calls["calls"]}, "cdr": {"cdr": calls["cdr"]},
            "trunks": {"trunks": calls["trunks"]},
            "web": {"actions": web.actions and web.token is not None, "poll": POLL_SECONDS,
                    "now": ctx.now()},
        }

    async def history_doc(self) -> dict[str, Any]:
        now = self.ctx.now()
        parts = self.ctx.parts
        return self.history.doc(now, await parts.store.count(now), parts.stats.requests)

    async def _post(self, req: Request, decision: Decision) -> Response:
        if not decision.write:
            return _error(403, "actions need [web] actions = true and the token in an "
                               "Authorization: Bearer header")
        ctype = (req.header("content-type") or "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            return _error(415, "Content-Type must be application/json")
        try:
            body = json.loads(req.body or b"{}")
        except (ValueError, RecursionError):
            return _error(400, "malformed JSON")
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        ctx = self.ctx
        try:
            if req.path == "/api/unban":
                doc = unban(ctx, _field(body, "address") or "")
                status = 200 if doc["removed"] else 404
            elif req.path == "/api/unregister":
                doc = await unregister(ctx, _field(body, "line") or "")
                status = 400 if "error" in doc else 200
            elif req.path == "/api/runstate":
                doc = await set_runstate(ctx, _field(body, "state", nullable=True))
                status = 400 if "error" in doc else 200
            else:
                return _error(404, "no such action")
        except ValueError as exc:
            return _error(400, str(exc))
        doc.pop("ok", None)
        log.info("web: %s %s from %s", req.path, json.dumps(body)[:200], req.peer)
        return json_response(doc, status)


async def start_web(ctx: OpsContext) -> Web:
    """Start whatever of the two listeners the config asks for (maybe none)."""
    web = Web(ctx)
    if not ctx.primary:  # under a supervisor only worker 0 listens (one port, one page)
        return web
    try:
        await web.start()
    except BaseException:
        await web.close()
        raise
    return web
