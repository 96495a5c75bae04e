"""Operations of the control channel: what `sipyard status`, `registry` … ask.

Each op is a small coroutine over the app's parts; replies are plain JSON
objects whose keys are documented in the README ("JSON output") and kept stable.
The documents and actions the status page shows and offers too (``status_doc``,
``registry_doc``, ``bans_doc``, ``runstate_doc``, ``call_docs``, ``unban``,
``unregister``, ``set_runstate``) are public functions here, so the control
socket and the web answer with the very same JSON.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, sdnotify
from .calls import read_cdr
from .config import ConfigError, load_config
from .control import ControlServer, Peer
from .hooks import iso_time
from .messaging import Sender
from .parts import Parts, reconfigure
from .sip.transaction import TransactionLayer
from .transport import Transports

if TYPE_CHECKING:
    from .config import Config

__all__ = ["OpsContext", "Operations", "reload", "calls_doc", "cdr_doc", "status_doc",
           "registry_doc", "bans_doc", "runstate_doc", "call_docs", "unban", "unregister",
           "set_runstate", "CDR_KEEP", "trunks_doc"]

log = logging.getLogger("sipyard")

MAX_TEXT = 160
MAX_SUBJECT = 64

#: builds the redirect chain for a config (raises ConfigError), and installs one
ChainBuilder = Callable[["Config"], Any]
ChainSwap = Callable[["Config", Any], None]


@dataclass(eq=False)
class OpsContext:
    """What the control operations read and steer (the app fills it in)."""

    parts: Parts
    transports: Transports
    txl: TransactionLayer
    sender: Sender
    build_chain: ChainBuilder
    swap_chain: ChainSwap
    request_stop: Callable[[], None]
    now: Callable[[], float]
    config_path: Path | None = None
    #: CLI overrides (data_dir, listen) that a reload must apply again
    load_args: dict[str, Any] = field(default_factory=dict)
    control: ControlServer | None = None
    #: where the control socket goes (None: ``control.sock`` in the data dir); a worker
    #: under the supervisor gets a private one the supervisor fans out to
    control_path: Path | None = None
    #: this process runs the site-wide singletons (web page, metrics, trunk
    #: registrations): False in every worker but worker 0 of a supervisor
    primary: bool = True
    #: more of ``status`` from outside the app's parts (a worker's hand-off counters)
    status_extra: Callable[[], dict[str, Any]] | None = None
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: told about each config a reload installed (the trunk manager)
    reload_listeners: list[Callable[[Config], object]] = field(default_factory=list)
    #: the ``[server] mode`` the server started with (a reload cannot switch it)
    mode: str = ""


class Operations:
    """The control socket's server and its ops (``status``, ``registry``, ``reload`` …)."""

    def __init__(self, ctx: OpsContext) -> None:
        self.ctx = ctx

    async def start(self) -> None:
        ctx = self.ctx
        cfg = ctx.parts.current.config
        path = ctx.control_path or cfg.server.data_dir / "control.sock"
        server = ControlServer(path, mode=cfg.control.socket_mode, group=cfg.control.group,
                               request_timeout=cfg.control.request_timeout)
        ops = {
            "status": _status, "registry": _registry, "message": _message,
            "presence": _presence, "reload": _reload, "level": _level, "runstate": _runstate,
            "unregister": _unregister, "bans": _bans, "unban": _unban, "stop": _stop,
            "calls": _calls, "cdr": _cdr, "trunks": _trunks,
        }
        for name, fn in ops.items():
            server.register(name, _bind(ctx, fn))
        await server.start()
        ctx.control = server
        # The run state lives in the store; apply it if the config was loaded without it.
        state = await ctx.parts.store.get_state("runstate")
        if state and state != cfg.state:
            result = await reload(ctx, state=state)
            if not result.get("ok"):
                log.error("run state %s not applied: %s", state, result.get("error"))

    async def close(self) -> None:
        server, self.ctx.control = self.ctx.control, None
        if server is not None:
            await server.close()


def _bind(ctx: OpsContext, fn: Any) -> Any:
    async def handler(req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return dict(await fn(ctx, req, peer))
    return handler


def _err(msg: str) -> dict[str, Any]:
    return {"ok": False, "error": msg}


async def _status(ctx: OpsContext, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
    return await status_doc(ctx)


async def status_doc(ctx: OpsContext) -> dict[str, Any]:
    """``sipyard status --json``."""
    now = ctx.now()
    store = ctx.parts.store
    bindings = await store.all(now)
    redirect = ctx.parts.current.redirect
    guard = ctx.parts.guard
    return {
        "version": __version__, "pid": os.getpid(), "uptime": round(now - ctx.parts.stats.started, 1),
        "realm": ctx.parts.current.config.server.realm,
        "listen": [f"{b.transport}:{b.host}:{b.port}" for b in ctx.transports.bound],
        "state": ctx.parts.current.config.state, "log_level": logging.getLevelName(
            logging.getLogger().getEffectiveLevel()).lower(),
        "bindings": len(bindings), "lines_registered": len({b.aor for b in bindings}),
        "transactions": len(ctx.txl),
        "suspended": redirect.suspended if redirect is not None else 0,
        "redirect_in_flight": redirect.in_flight if redirect is not None else 0,
        "redirect_storage_slots": redirect.storage_slots if redirect is not None else 0,
        "requests": dict(ctx.parts.stats.requests), "responses": dict(ctx.parts.stats.responses),
        "auth_failures": guard.total_failures, "bans": len(guard.bans(now)),
        "hooks": ctx.parts.hooks.stats(),
        "tcp_connections": ctx.transports.connections,
        "mode": ctx.mode or ctx.parts.current.config.server.mode,
        "calls": len(ctx.parts.calls), "cdr_written": ctx.parts.cdr.written,
        "trunks": ctx.parts.trunks.docs(now),
        **(ctx.status_extra() if ctx.status_extra is not None else {}),
    }


async def _trunks(ctx: OpsContext, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
    return trunks_doc(ctx)


def trunks_doc(ctx: OpsContext) -> dict[str, Any]:
    """``sipyard trunks --json``: each trunk's registration (never its credentials)."""
    return {"trunks": ctx.parts.trunks.docs(ctx.now())}


def calls_doc(parts: Parts, now: float) -> dict[str, Any]:
    """``{"calls": [...]}``: the calls in flight (for ``sipyard calls`` and the web page)."""
    return parts.calls.doc(now)


async def cdr_doc(parts: Parts, *, since: float | None = None, line: str | None = None,
                  limit: int = 1000) -> dict[str, Any]:
    """``{"cdr": [...]}``: the newest CDRs, oldest first (read in a thread: files may be big)."""
    data_dir = parts.current.config.server.data_dir
    records = await asyncio.to_thread(read_cdr, data_dir, since=since, line=line, limit=limit)
    return {"cdr": records}


async def _calls(ctx: OpsContext, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
    return calls_doc(ctx.parts, ctx.now())


async def _cdr(ctx: OpsContext, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
    since, line, limit = req.get("since"), req.get("line"), req.get("limit", 1000)
    if since is not None and not isinstance(since, int | float):
        return _err("since: expected epoch seconds")
    if line is not None and not isinstance(line, str):
        return _err("line: expected a line number")
    if not isinstance(limit, int) or limit < 1:
        return _err("limit: expected a positive integer")
    return await cdr_doc(ctx.parts, since=since, line=line, limit=min(limit, 100000))


async def _registry(ctx: OpsContext, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
    return await registry_doc(ctx, req.get("line"))


async def registry_doc(ctx: OpsContext, want: Any = None) -> dict[str, Any]:
    """``sipyard registry [LINE] --json``: every line (or one) with its bindings."""
    cfg = ctx.parts.current.config
    now = ctx.now()
    store = ctx.parts.store
    if want is not None:
        want = str(want)
        if want not in cfg.lines:
            return _err(f"no line {want}")
        numbers = [want]
    else:
        numbers = list(cfg.line_numbers)
    presence = await _presence_map(ctx)
    lines = []
    for n in numbers:
        lc = cfg.lines[n]
        bs = await store.lookup(f"sip:{n}@{cfg.server.realm}", now)
        lines.append({
            "line": n, "display": lc.display, "type": lc.type, "presence": presence.get(n, "here"),
            "bindings": [{
                "contact": b.contact, "source": f"{b.source_ip}:{b.source_port}/{b.transport}",
                "user_agent": b.user_agent, "expires_in": max(0, int(b.expires_at - now)),
                "q": b.q, "path": list(b.path)} for b in bs]})
    return {"lines": lines}


async def _presence_map(ctx: OpsContext) -> dict[str, str]:
    store = ctx.parts.store
    out = {}
    for n in ctx.parts.current.config.line_numbers:
        v = await store.get_state(f"presence:{n}")
        if v:
            out[n] = v
    return out


async def _presence(ctx: OpsContext, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
    line = str(req.get("line", ""))
    state = str(req.get("state", ""))
    if line not in ctx.parts.current.config.lines:
        return _err(f"no line {line}")
    if state not in ("here", "away", "dnd"):
        return _err("state must be here, away or dnd")
    await ctx.parts.store.set_state(f"presence:{line}", None if state == "here" else state)
    return {"line": line, "state": state}


def _targets(ctx: OpsContext, to: str) -> list[str] | str:
    cfg = ctx.parts.current.config
    if to == "all":
        return list(cfg.line_numbers)
    if to in cfg.lines:
        return [to]
    group = cfg.groups.get(to)
    if group is not None:
        return list(group.members)
    return f"no line or group {to}"


async def _message(ctx: OpsContext, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
    text = req.get("text")
    if not isinstance(text, str) or not text:
        return _err("text is required")
    if len(text) > MAX_TEXT:
        return _err(f"text is {len(text)} characters; at most {MAX_TEXT}")
    subject = req.get("subject")
    if subject is not None and (not isinstance(subject, str) or len(subject) > MAX_SUBJECT):
        return _err(f"subject must be at most {MAX_SUBJECT} characters")
    targets = _targets(ctx, str(req.get("to", "")))
    if isinstance(targets, str):
        return _err(targets)
    only_registered = req.get("to") == "all"
    # Finish inside the control channel's own deadline, so a phone that never answers is
    # reported as "failed" (408) rather than the whole op as "timed out".
    timeout = max(0.5, min(32.0, ctx.parts.current.config.control.request_timeout - 0.5))
    results = await ctx.sender.send_text(targets, text, subject=subject, timeout=timeout,
                                         now=ctx.now())
    if only_registered:
        results = [r for r in results if r["status"] != "not registered"] or results
    return {"results": results}


_UNSET: Any = object()


def _reload_lock(ctx: OpsContext) -> asyncio.Lock:
    """One reload at a time: SIGHUP, ``sipyard reload`` and ``runstate`` may race."""
    return ctx.reload_lock


def _state_name(raw: Any) -> str | None:
    if raw is None:
        return None
    text = str(raw).strip()
    return None if text.lower() in ("", "none") else text


async def reload(ctx: OpsContext, *, state: str | None = _UNSET) -> dict[str, Any]:
    """Re-read every layer and swap atomically, or keep the running config.

    ``state`` defaults to the run state recorded in the store. A refusal is
    ``{"ok": false, "error": "reload refused: FILE: KEY: REASON", "file", "key",
    "reason"}`` and changes nothing.
    """
    async with _reload_lock(ctx):
        with sdnotify.reloading():  # RELOADING=1 … READY=1 to systemd, however it ends
            return await _reload_locked(ctx, state)


async def _reload_locked(ctx: OpsContext, state: str | None) -> dict[str, Any]:
    old = ctx.parts.current.config
    args = ctx.load_args
    if state is _UNSET:
        state = await ctx.parts.store.get_state("runstate")
    path = ctx.config_path or old.path
    try:
        cfg = await asyncio.to_thread(load_config, path, data_dir=args.get("data_dir"),
                                      listen=args.get("listen"), state=state)
        chain = ctx.build_chain(cfg)
    except ConfigError as exc:
        log.error("reload refused, old config kept: %s", exc)
        reply = _err(f"reload refused: {exc}")
        reply.update(file=exc.file, key=exc.key, reason=exc.reason)
        return reply
    except OSError as exc:
        log.error("reload refused, old config kept: %s", exc)
        reply = _err(f"reload refused: {exc}")
        reply.update(file=str(exc.filename or path), key="(file)",
                     reason=exc.strerror or str(exc))
        return reply
    notes = _unapplied(old, cfg)
    reconfigure(ctx.parts, cfg)
    ctx.swap_chain(cfg, chain)
    for listener in ctx.reload_listeners:
        listener(cfg)
    removed = await _drop_removed_lines(ctx, old, cfg)
    level = cfg.logging.level.upper()
    logging.getLogger().setLevel(level)
    log.info("config reloaded from %s (run state %s)", ", ".join(map(str, cfg.source_files)),
             cfg.state or "none")
    for note in notes:
        log.warning("reload: %s", note)
    ctx.parts.hooks.fire("reload", {"event": "reload", "state": cfg.state or "none",
                                          "time": iso_time(ctx.now())})
    if (old.state or None) != (cfg.state or None):
        ctx.parts.hooks.fire("state", {"event": "state", "state": cfg.state or "none",
                                             "previous": old.state or "none",
                                             "time": iso_time(ctx.now())})
    return {"files": [str(p) for p in cfg.source_files], "state": cfg.state,
            "removed_lines": removed, "notes": notes}


def _unapplied(old: Any, new: Any) -> list[str]:
    """Settings a reload cannot change in a running server (they need a restart)."""
    out = []
    pairs = [("server.mode", old.server.mode, new.server.mode),
             ("server.listen", old.server.listen, new.server.listen),
             ("server.data_dir", old.server.data_dir, new.server.data_dir),
             ("server.metrics", old.server.metrics, new.server.metrics),
             ("store", old.store, new.store),
             ("control", old.control, new.control),
             ("web.listen", old.web.listen, new.web.listen)]
    for key, a, b in pairs:
        if a != b:
            out.append(f"{key} changed: takes effect at the next start")
    return out


async def _drop_removed_lines(ctx: OpsContext, old: Any, new: Any) -> list[str]:
    if new.security.open_registration:
        return []
    gone = [n for n in old.lines if n not in new.lines]
    store = ctx.parts.store
    for n in gone:
        await store.remove_aor(f"sip:{n}@{old.server.realm}")
    return gone


async def _reload(ctx: OpsContext, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
    return await reload(ctx)


async def _level(ctx: OpsContext, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
    level = str(req.get("level", "")).lower()
    if level not in ("debug", "info", "warning", "error"):
        return _err("level must be debug, info, warning or error")
    logging.getLogger().setLevel(level.upper())
    return {"level": level}


async def _runstate(ctx: OpsContext, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
    if "state" not in req:
        return await runstate_doc(ctx)
    return await set_runstate(ctx, req.get("state"))


async def runstate_doc(ctx: OpsContext) -> dict[str, Any]:
    """``sipyard runstate --json`` while the server runs."""
    return {"state": await ctx.parts.store.get_state("runstate"), "running": True,
            "active": ctx.parts.current.config.state}


async def set_runstate(ctx: OpsContext, raw: Any) -> dict[str, Any]:
    """Select a run state (``None``/``"none"``: no overlay); refused when it does not load."""
    store = ctx.parts.store
    new = _state_name(raw)
    # Apply first, record after: a state whose overlay does not load is refused and the
    # store keeps the old one, so the next start does not come up in a broken state.
    # Both under the reload lock, so a concurrent reload cannot read the old state between.
    async with _reload_lock(ctx):
        result = await _reload_locked(ctx, new)
        if not result.get("ok", True):
            return result
        await store.set_state("runstate", new)
    return {"state": new, "running": True, "active": ctx.parts.current.config.state,
            "files": result.get("files")}


async def _unregister(ctx: OpsContext, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
    return await unregister(ctx, str(req.get("line", "")))


async def unregister(ctx: OpsContext, line: str) -> dict[str, Any]:
    """Drop every binding of a line (fires ``release`` when there were any)."""
    cfg = ctx.parts.current.config
    if line not in cfg.lines and not cfg.security.open_registration:
        return _err(f"no line {line}")
    removed = await ctx.parts.store.remove_aor(f"sip:{line}@{cfg.server.realm}")
    if removed:
        lc = cfg.lines.get(line)
        ctx.parts.hooks.fire("release", {
            "event": "release", "line": line, "display": lc.display if lc and lc.display else "",
            "reason": "removed", "time": iso_time(ctx.now())})
    return {"line": line, "removed": len(removed)}


async def _bans(ctx: OpsContext, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
    return bans_doc(ctx)


def bans_doc(ctx: OpsContext) -> dict[str, Any]:
    """``sipyard bans --json``."""
    guard = ctx.parts.guard
    return {"bans": [{"address": b.address, "until": b.until, "failures": b.failures}
                     for b in guard.bans(ctx.now())]}


async def _unban(ctx: OpsContext, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
    return unban(ctx, str(req.get("address", "")))


def unban(ctx: OpsContext, addr: str) -> dict[str, Any]:
    """Lift one ban, or every ban with ``"all"`` (then ``removed`` is a count)."""
    guard = ctx.parts.guard
    if addr == "all":
        return {"address": addr, "removed": guard.unban_all()}
    return {"address": addr, "removed": guard.unban(addr)}


async def _stop(ctx: OpsContext, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
    server = ctx.control
    if server is not None and not server.privileged(peer):
        return _err("permission denied")
    asyncio.get_running_loop().call_later(0.05, ctx.request_stop)
    return {"stopping": True, "at": time.time()}


#: at most this many finished calls are kept for ``call_docs``'s ``cdr`` list
CDR_KEEP = 50


async def call_docs(ctx: OpsContext) -> dict[str, list[dict[str, Any]]]:
    """Active calls, the last CDRs and the trunks, shaped for the status page's "Calls",
    "Recent calls" and "Trunks" sections and the ``sipyard_calls`` metric.

    Shapes (times are epoch seconds, durations seconds, ``None`` when not reached)::

        {"calls":  [{"id", "from", "to", "from_line", "to_line", "state"
                     ("ringing" | "answered"), "started", "answered", "duration"}],
         "cdr":    [{"id", "from", "to", "from_line", "to_line", "started", "answered",
                     "ended", "duration", "status" (final SIP code, int), "reason"
                     (the CDR's disposition: "answered" | "busy" | "no-answer" |
                     "cancelled" | "failed" | "expired")}],
         "trunks": [{"name", "registrar", "state", "expires_in", "last_error"}]}

    The calls come from the proxy's call table, the CDRs from ``cdr.jsonl`` (newest
    first, at most ``CDR_KEEP``); trunks from the trunk board (``trunks_doc``). Every
    string in them may come from the network: readers escape them.
    """
    now = ctx.now()
    calls = [{"id": c.id, "from": c.caller, "to": c.target, "from_line": c.caller_line,
              "to_line": c.callee_line, "state": c.state, "started": c.start,
              "answered": c.answer, "duration": round(now - c.start, 1)}
             for c in sorted(ctx.parts.calls, key=lambda c: c.start)]
    records = (await cdr_doc(ctx.parts, limit=CDR_KEEP))["cdr"]
    cdr = []
    for r in reversed(records):
        started = r.get("start_epoch")
        duration = r.get("duration")
        billsec = r.get("billsec") or 0
        ended = started + duration if started is not None and duration is not None else None
        answered = ended - billsec if ended is not None and r.get("answer") else None
        cdr.append({"id": r.get("id"), "from": r.get("caller"), "to": r.get("target"),
                    "from_line": r.get("caller_line"), "to_line": r.get("callee_line"),
                    "started": started, "answered": answered, "ended": ended,
                    "duration": duration, "status": r.get("status"),
                    "reason": r.get("disposition")})
    return {"calls": calls, "cdr": cdr, "trunks": trunks_doc(ctx)["trunks"]}
