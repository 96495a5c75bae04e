"""The request handlers and background jobs the app installs at start.

Kept apart from :mod:`sipyard.app` so the request path there stays short; this
module is still part of the wiring (it knows registrar, store, auth, hooks).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .auth import Authenticator, load_secret
from .hooks import ChatService, HookRunner, iso_time
from .registrar import Registrar, Reject
from .security import Guard, log_safe
from .sip.errors import ParseError
from .sip.message import Request
from .sip.transaction import ServerTransaction
from .store import StoreError, open_store
from .transport import Source

if TYPE_CHECKING:
    from .app import App

__all__ = ["install", "uninstall"]

log = logging.getLogger("sipyard")


async def install(app: App) -> None:
    cfg = app.config
    data_dir = cfg.server.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    url = cfg.store.url or f"sqlite:?synchronous={cfg.store.synchronous}"
    store = open_store(url, data_dir)
    await store.open()
    app.eager_handlers = not store.needs_task
    sec = cfg.security
    guard = Guard(max_failures=sec.max_auth_failures, window=sec.failure_window,
                  ban_seconds=sec.ban_seconds, allow=[str(n) for n in sec.allow],
                  register_rate=sec.register_rate)
    if sec.open_registration:
        log.warning("open_registration is on: any user of realm %s registers without "
                    "authentication", cfg.server.realm)
    auth = Authenticator(cfg, load_secret(data_dir), guard)
    hooks = HookRunner(cfg.server.hooks_dir, timeout=cfg.hooks.timeout,
                       max_running=cfg.hooks.max_running, queue=cfg.hooks.queue,
                       env_extra={"SIPYARD_DATA": str(data_dir),
                                  "SIPYARD_CONTROL": str(data_dir / "control.sock")})
    await hooks.start()
    app.features.update(store=store, guard=guard, auth=auth, hooks=hooks,
                        registrar=Registrar(cfg, store), chat=ChatService(hooks))
    app.handlers["REGISTER"] = on_register
    app.features["sweeper"] = asyncio.ensure_future(_sweep(app))
    from . import redirecting

    await redirecting.install(app)
    from . import ops

    await ops.install(app)


async def uninstall(app: App) -> None:
    from . import ops, redirecting

    await ops.uninstall(app)
    await redirecting.uninstall(app)
    sweeper = app.features.get("sweeper")
    if sweeper is not None:
        sweeper.cancel()
    hooks = app.features.get("hooks")
    if hooks is not None:
        await hooks.close()
    store = app.features.get("store")
    if store is not None:
        await store.close()


def reconfigure(app: App, cfg: Any) -> None:
    """Apply a new config to the long-lived parts (reload)."""
    sec = cfg.security
    f = app.features
    f["guard"].configure(max_failures=sec.max_auth_failures, window=sec.failure_window,
                         ban_seconds=sec.ban_seconds, allow=[str(n) for n in sec.allow],
                         register_rate=sec.register_rate)
    f["auth"].configure(cfg)
    f["registrar"].config = cfg
    f["hooks"].update(cfg.server.hooks_dir, cfg.hooks.timeout, cfg.hooks.max_running,
                      cfg.hooks.queue)


# -- REGISTER -------------------------------------------------------------------

def on_register(app: App, req: Request, src: Source, tx: ServerTransaction) -> Any:
    guard: Guard = app.features["guard"]
    now = app.now()
    if guard.banned(src.ip, now):
        app.stats.dropped += 1
        app.txl.terminate(tx)
        return None
    if not guard.rate_ok(src.ip, now):
        app.respond(tx, req, 503, "Service Unavailable", [("Retry-After", "1")])
        return None
    return _register(app, req, src, tx, now)


async def _register(app: App, req: Request, src: Source, tx: ServerTransaction,
                    now: float) -> None:
    cfg = app.config
    registrar: Registrar = app.features["registrar"]
    try:
        user = registrar.target_line(req)
        if cfg.security.open_registration:
            line = user
        else:
            auth: Authenticator = app.features["auth"]
            result = auth.check(req, src.ip, now, target_line=user)
            if result.line is None:
                app.stats.auth_failures += 1
                app.respond(tx, req, 401, "Unauthorized", result.challenge)
                return
            line = result.line
            if line != user and not _may_register_for(cfg, line, user):
                log.warning("sipyard register refused: src=%s line=%s target=%s",
                            src.ip, line, log_safe(user))
                app.respond(tx, req, 403, "Forbidden")
                return
            if user not in cfg.lines:
                app.respond(tx, req, 404, "Not Found")
                return
        reply = await registrar.register(req, line, src, now)
    except Reject as rej:
        app.respond(tx, req, rej.status, rej.reason, rej.headers)
        return
    except ParseError as exc:
        app.respond(tx, req, exc.status, exc.reason)
        return
    except StoreError as exc:
        log.error("store error on REGISTER for %s: %s", req.get("to"), exc)
        app.respond(tx, req, 500, "Server Internal Error", [("Retry-After", "5")])
        return
    headers = list(reply.headers)
    headers.append(("Date", _http_date(now)))
    app.respond(tx, req, 200, "OK", headers)
    _binding_events(app, reply.line, reply.before, reply.after, reply.added, src, now)


def _may_register_for(cfg: Any, line: str, user: str) -> bool:
    perms = set(cfg.permissions.get(line, ()))
    cl = cfg.lines.get(line)
    if cl is not None:
        perms.update(cl.permissions)
    return "register-any" in perms or f"register:{user}" in perms


def _binding_events(app: App, line: str, before: int, after: int, added: Any, src: Source,
                    now: float) -> None:
    hooks: HookRunner = app.features["hooks"]
    if before == 0 and after > 0:
        event = "activate"
    elif before > 0 and after == 0:
        event = "release"
    else:
        return
    if hooks.find(event) is None:  # the usual case: no record to build for nobody
        return
    lc = app.config.lines.get(line)
    display = lc.display if lc is not None and lc.display else ""
    if event == "activate":
        b = added[0] if added else None
        hooks.fire("activate", {
            "event": "activate", "line": line, "display": display,
            "contact": b.contact if b else "", "source": f"{src.ip}:{src.port}/{src.transport}",
            "user_agent": b.user_agent if b else "",
            "expires": int(b.expires_at - now) if b else 0, "time": iso_time(now)})
    else:
        hooks.fire("release", {"event": "release", "line": line, "display": display,
                               "reason": "unregistered", "time": iso_time(now)})


async def _sweep(app: App) -> None:
    """Remove expired bindings every second; a line whose last one went fires release."""
    store = app.features["store"]
    hooks: HookRunner = app.features["hooks"]
    while True:
        await asyncio.sleep(1.0)
        now = app.now()
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
                lc = app.config.lines.get(line)
                hooks.fire("release", {
                    "event": "release", "line": line,
                    "display": lc.display if lc is not None and lc.display else "",
                    "reason": "expired", "time": iso_time(now)})


_date_cache: list[Any] = [-1, ""]


def _http_date(now: float) -> str:
    """The Date header value, formatted once per second (formatdate is slow)."""
    sec = int(now)
    if _date_cache[0] != sec:
        from email.utils import formatdate

        _date_cache[0] = sec
        _date_cache[1] = formatdate(sec, usegmt=True)
    return str(_date_cache[1])
