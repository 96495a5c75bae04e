"""The server's parts, built once from the config and handed to whoever uses them.

``build_parts`` makes every long-lived part (store, registrar, authenticator,
guard, hooks, chat) from a :class:`~sipyard.config.Config`; handlers and
control operations receive the parts they use, never the app. What a reload
replaces — the config and the redirect chain built from it — lives in
:class:`Current`, the one mutable holder, so every part sees the new config
at once and nothing keeps a stale copy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .auth import Authenticator, load_secret
from .calls import CallTable, CdrLog
from .hooks import ChatService, HookRunner
from .registrar import Registrar
from .security import Guard
from .stats import Stats
from .store import LocationStore, open_store
from .trunks.board import TrunkBoard

if TYPE_CHECKING:
    from .config import Config
    from .redirect.pipeline import RedirectServer

__all__ = ["Current", "Parts", "build_parts", "open_parts", "close_parts", "reconfigure"]

log = logging.getLogger("sipyard")


@dataclass(slots=True, eq=False)
class Current:
    """What a reload swaps: the running config and the redirect chain built from it."""

    config: Config
    redirect: RedirectServer | None = None


@dataclass(frozen=True, slots=True, eq=False)
class Parts:
    """Every long-lived part of one server (the store is opened by :func:`open_parts`)."""

    current: Current
    store: LocationStore
    guard: Guard
    auth: Authenticator
    hooks: HookRunner
    registrar: Registrar
    chat: ChatService
    stats: Stats
    #: calls the proxy routes right now, and the CDR file they end in
    calls: CallTable
    cdr: CdrLog
    #: provider trunks as their registration loops last saw them (no secrets)
    trunks: TrunkBoard


def _guard_settings(cfg: Config) -> dict[str, object]:
    sec = cfg.security
    return {"max_failures": sec.max_auth_failures, "window": sec.failure_window,
            "ban_seconds": sec.ban_seconds, "allow": [str(n) for n in sec.allow],
            "register_rate": sec.register_rate, "sweep_interval": sec.sweep_interval}


def build_parts(cfg: Config) -> Parts:
    """Make the parts (no I/O beyond creating the data dir and reading its secret)."""
    data_dir = cfg.server.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    url = cfg.store.url or f"sqlite:?synchronous={cfg.store.synchronous}"
    store = open_store(url, data_dir)
    guard = Guard(**_guard_settings(cfg))  # type: ignore[arg-type]
    if cfg.security.open_registration:
        log.warning("open_registration is on: any user of realm %s registers without "
                    "authentication", cfg.server.realm)
    hooks = HookRunner(cfg.server.hooks_dir, timeout=cfg.hooks.timeout,
                       max_running=cfg.hooks.max_running, queue=cfg.hooks.queue,
                       env_extra={"SIPYARD_DATA": str(data_dir),
                                  "SIPYARD_CONTROL": str(data_dir / "control.sock")})
    return Parts(current=Current(cfg), store=store, guard=guard,
                 auth=Authenticator(cfg, load_secret(data_dir), guard), hooks=hooks,
                 registrar=Registrar(cfg, store), chat=ChatService(hooks), stats=Stats(),
                 calls=CallTable(), cdr=CdrLog(data_dir, cfg.proxy.cdr_max_bytes),
                 trunks=TrunkBoard())


async def open_parts(parts: Parts) -> None:
    await parts.store.open()
    await parts.hooks.start()


async def close_parts(parts: Parts) -> None:
    parts.guard.close()
    await parts.hooks.close()
    await parts.store.close()


def reconfigure(parts: Parts, cfg: Config) -> None:
    """Apply a new config to the long-lived parts (reload)."""
    parts.current.config = cfg
    parts.guard.configure(**_guard_settings(cfg))  # type: ignore[arg-type]
    parts.auth.configure(cfg)
    parts.registrar.config = cfg
    parts.cdr.max_bytes = cfg.proxy.cdr_max_bytes
    parts.hooks.update(cfg.server.hooks_dir, cfg.hooks.timeout, cfg.hooks.max_running,
                       cfg.hooks.queue)
