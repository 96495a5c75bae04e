"""Per-section validation: the merged TOML becomes a ``Config`` or a ``ConfigError``.

Why everything is checked here, before anything is swapped in: a reload with a bad file must
keep the running config (DESIGN §4), so the server never meets a value it has to doubt. The
numbered sections (lines, groups, aliases, rules) are in ``dialplan``; this module holds the
server-wide sections and the order they are read in.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sipyard import __version__

from ._text import host_port, norm_host, valid_zone
from .dialplan import read_aliases, read_groups, read_lines, read_permissions, read_rules
from .records import (
    CLI,
    Config,
    ConfigError,
    ControlConfig,
    FeaturesConfig,
    HooksConfig,
    Listen,
    LoggingConfig,
    Network,
    ProxyConfig,
    RedirectConfig,
    SecurityConfig,
    ServerConfig,
    StoreConfig,
    WebConfig,
)
from .specs import parse_listen, parse_ranges
from .tables import Context, Table, fields_of, read_algorithms
from .trunks import check_trunk_rules, read_trunks

__all__ = ["build"]

_TOP = ("server", "logging", "security", "store", "hooks", "redirect", "proxy", "control", "lines",
        "groups", "aliases", "mapping", "fallback", "permissions", "features", "web", "trunks")


def build(ctx: Context, layers: list[Path], state: str | None, data_dir: str | Path | None,
          listen: Sequence[str] | None) -> Config:
    """Every section in dependency order (lines need the server's extensions, groups the
    lines …), so each check can name what it depends on."""
    for key, value in ctx.data.items():
        if key not in _TOP:
            if not isinstance(value, dict):
                raise ctx.error((key,), "unknown key (top-level keys belong in a table, "
                                "such as [server])")
            ctx.warn((key,), "unknown table, ignored")
    server = _server(ctx, data_dir, listen)
    security = _security(ctx)
    lines = read_lines(ctx, server, security)
    groups = read_groups(ctx, lines)
    trunks = read_trunks(ctx, lines, groups)
    mapping = read_rules(ctx, "mapping", server.timezone)
    fallback = read_rules(ctx, "fallback", server.timezone)
    check_trunk_rules(ctx, (*mapping, *fallback), trunks)
    return Config(
        path=layers[0], server=server, logging=_logging(ctx),
        security=security, store=_store(ctx), hooks=_hooks(ctx), redirect=_redirect(ctx),
        proxy=_proxy(ctx), control=_control(ctx), features=_features(ctx), web=_web(ctx),
        lines=lines, groups=groups,
        aliases=read_aliases(ctx, lines, groups),
        mapping=mapping, fallback=fallback,
        permissions=read_permissions(ctx, lines),
        line_numbers=tuple(sorted(lines, key=int)), source_files=tuple(layers), state=state,
        warnings=tuple(ctx.warnings), trunks=trunks,
    )


def _server(ctx: Context, data_dir: str | Path | None,
            listen: Sequence[str] | None) -> ServerConfig:
    t = ctx.table("server", fields_of(ServerConfig)[:-1])  # all but our_domains
    realm = t.required("realm").strip()
    if any(c in realm for c in '"\\'):
        raise t.error("realm", "must not contain quotes or backslashes")
    domains = tuple(d.strip().lower() for d in t.strings("domains"))
    if listen:  # an empty command-line list means "not given"
        sockets = _listens(listen, lambda i, reason: ConfigError(CLI, "--listen", reason))
    else:
        specs = t.strings("listen", ("udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"), nonempty=True)
        sockets = _listens(specs, lambda i, reason: ctx.error(("server", "listen", i), reason))
    algorithms = read_algorithms(t, "algorithms", ("MD5",))
    try:
        extensions = parse_ranges(t.string("extensions", "10-89") or "")
    except ValueError as exc:
        raise t.error("extensions", str(exc)) from None
    min_e = t.integer("min_expires", 60, 1)
    max_e = t.integer("max_expires", 3600, min_e)
    default_e = t.integer("default_expires", 3600, min_e, max_e)
    timezone = t.string("timezone", "UTC") or "UTC"
    if not valid_zone(timezone):
        raise t.error("timezone", f"unknown time zone {timezone!r}")
    metrics_s = t.string("metrics", None, empty_is_none=True)
    metrics = None
    if metrics_s is not None:
        try:
            metrics = host_port(metrics_s.strip())
        except ValueError as exc:
            raise t.error("metrics", f"expected HOST:PORT: {exc}") from None
    header = t.string("server_header", f"sipyard/{__version__}", empty_is_none=True)
    ours = frozenset(norm_host(h) for h in (realm, *domains))
    return ServerConfig(
        realm=realm, domains=domains, listen=sockets,
        data_dir=_dir(ctx, t, "data_dir", "/var/lib/sipyard", data_dir),
        hooks_dir=_dir(ctx, t, "hooks_dir", "/usr/libexec/sipyard", None),
        algorithms=algorithms, extensions=extensions, min_expires=min_e, max_expires=max_e,
        default_expires=default_e, system=t.string("system", "system") or "system",
        timezone=timezone, metrics=metrics,
        max_message_size=t.integer("max_message_size", 65536, 1024, 16 * 1024 * 1024),
        nonce_ttl=t.integer("nonce_ttl", 300, 1, 86400),
        tcp_idle=t.number("tcp_idle", 300.0, 0.1, 86400.0),
        max_tcp_connections=t.integer("max_tcp_connections", 4096, 1, 1_000_000),
        max_tcp_per_source=t.integer("max_tcp_per_source", 32, 1, 1_000_000),
        tcp_handshakes_per_net=t.integer("tcp_handshakes_per_net", 32, 1, 1_000_000),
        tcp_handshake_timeout=t.number("tcp_handshake_timeout", 10.0, 0.1, 3600.0),
        server_header="" if header is None else header.strip(),
        mode=t.choice("mode", "redirect", ("redirect", "proxy")),
        workers=_workers(t), pin_workers=t.boolean("pin_workers", False),
        our_domains=ours,
    )


def _workers(t: Table) -> int:
    """``workers``: a count, or "auto" = one per CPU this process may run on."""
    raw = t.get("workers")
    if raw == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
    return t.integer("workers", 1, 1, 256)


def _listens(specs: Sequence[str], err: Callable[[int, str], ConfigError]
             ) -> tuple[Listen, ...]:
    out: list[Listen] = []
    for i, spec in enumerate(specs):
        try:
            parsed = parse_listen(spec)
        except ValueError as exc:
            raise err(i, str(exc)) from None
        out.extend(s for s in parsed if s not in out)
    return tuple(out)


def _dir(ctx: Context, t: Table, key: str, default: str,
         override: str | Path | None) -> Path:
    """Relative paths are relative to the main file, not the working directory, so `serve`
    and the tools agree wherever they are started; `--data` is the exception (typed there)."""
    value = t.string(key, default) or default
    if override is not None:
        return Path(os.path.abspath(override))
    return Path(os.path.normpath(ctx.base / Path(value).expanduser()))


def _logging(ctx: Context) -> LoggingConfig:
    t = ctx.table("logging", fields_of(LoggingConfig))
    return LoggingConfig(t.choice("level", LoggingConfig().level,
                                  ("debug", "info", "warning", "error")))


def _networks(t: Table, key: str) -> tuple[Network, ...]:
    out = []
    for i, text in enumerate(t.strings(key)):
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise t.ctx.error((*t.path, key, i), f"bad network {text!r}") from None
    return tuple(out)


def _security(ctx: Context) -> SecurityConfig:
    t, d = ctx.table("security", fields_of(SecurityConfig)), SecurityConfig()
    return SecurityConfig(
        open_registration=t.boolean("open_registration", d.open_registration),
        max_auth_failures=t.integer("max_auth_failures", d.max_auth_failures, 0),
        failure_window=t.integer("failure_window", d.failure_window, 1),
        ban_seconds=t.integer("ban_seconds", d.ban_seconds, 0),
        allow=_networks(t, "allow"), trusted=_networks(t, "trusted"),
        register_rate=t.integer("register_rate", d.register_rate, 0),
        sweep_interval=t.number("sweep_interval", d.sweep_interval, 0.1, 3600.0),
    )


def _store(ctx: Context) -> StoreConfig:
    t = ctx.table("store", fields_of(StoreConfig))
    url = t.string("url", None, empty_is_none=True)
    if url is not None:
        url = url.strip()
        if url.partition(":")[0].lower() not in ("sqlite", "redis", "rediss", "unix"):
            raise t.error("url", "must start with sqlite, sqlite:PATH, redis://, rediss:// "
                          "or unix://")
    return StoreConfig(url, t.choice("synchronous", StoreConfig().synchronous, ("full", "normal")))


def _hooks(ctx: Context) -> HooksConfig:
    t, d = ctx.table("hooks", fields_of(HooksConfig)), HooksConfig()
    return HooksConfig(timeout=t.number("timeout", d.timeout, 0.001, 86400),
                       max_running=t.integer("max_running", d.max_running, 1, 1024),
                       queue=t.integer("queue", d.queue, 1))


def _redirect(ctx: Context) -> RedirectConfig:
    t, d = ctx.table("redirect", fields_of(RedirectConfig)), RedirectConfig()
    chain = t.strings("chain", d.chain)
    for i, name in enumerate(chain):
        if name in chain[:i]:
            raise ctx.error(("redirect", "chain", i), f"redirector {name!r} listed twice")
    return RedirectConfig(chain=chain, require_auth=t.boolean("require_auth", d.require_auth),
                          suspend_timeout=t.number("suspend_timeout", d.suspend_timeout,
                                                   0.001, 3600))


def _proxy(ctx: Context) -> ProxyConfig:
    t, d = ctx.table("proxy", fields_of(ProxyConfig)), ProxyConfig()
    return ProxyConfig(
        fork_group_timeout=t.number("fork_group_timeout", d.fork_group_timeout, 0.0, 3600),
        # §16.6 step 11: timer C MUST be greater than 3 minutes
        timer_c=t.number("timer_c", d.timer_c, 180.001, 86400),
        max_call_seconds=t.number("max_call_seconds", d.max_call_seconds, 1.0, 30 * 86400),
        nat_ping_interval=t.number("nat_ping_interval", d.nat_ping_interval, 0.0, 86400),
        max_branches=t.integer("max_branches", d.max_branches, 1, 256),
        cdr_max_bytes=t.integer("cdr_max_bytes", d.cdr_max_bytes, 4096),
    )


def _web(ctx: Context) -> WebConfig:
    """A token is a shared secret sent in headers and cookies: it must be long enough not to
    be guessed and plain enough (visible ASCII, no ``;`` or ``,``) to travel in either."""
    t, d = ctx.table("web", fields_of(WebConfig)), WebConfig()
    listen_s = t.string("listen", None, empty_is_none=True)
    listen = None
    if listen_s is not None:
        try:
            listen = host_port(listen_s.strip())
        except ValueError as exc:
            raise t.error("listen", f"expected HOST:PORT: {exc}") from None
    token = t.string("token", d.token, empty_is_none=True)
    if token is not None:
        if len(token) < 16:
            raise t.error("token", "must be at least 16 characters")
        if not all("!" <= c <= "~" and c not in ';,"\\' for c in token):
            raise t.error("token", 'visible ASCII only, without ; , " or \\')
    actions = t.boolean("actions", d.actions)
    if actions and token is None:
        raise t.error("actions", "write actions need [web] token")
    return WebConfig(listen=listen, token=token, actions=actions)


def _control(ctx: Context) -> ControlConfig:
    t, d = ctx.table("control", fields_of(ControlConfig)), ControlConfig()
    mode: Any = t.data.get("socket_mode", d.socket_mode)
    if isinstance(mode, str):
        text = mode.strip().lower().removeprefix("0o")
        mode = int(text, 8) if text and all(c in "01234567" for c in text) else None
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
        raise t.error("socket_mode", 'must be a permission mode such as 0o660 or "0660"')
    return ControlConfig(group=t.string("group", d.group, empty_is_none=True), socket_mode=mode,
                         request_timeout=t.number("request_timeout", d.request_timeout,
                                                  0.001, 3600))


def _features(ctx: Context) -> FeaturesConfig:
    t, d = ctx.table("features", fields_of(FeaturesConfig)), FeaturesConfig()
    codes: dict[str, str | None] = {}
    for key in ("directed_pickup", "join", "global_pickup"):
        code = t.string(key, getattr(d, key), empty_is_none=True)
        if code is not None:
            code = code.strip()
            if not all(c in "0123456789*#" for c in code):
                raise t.error(key, "feature codes use only digits, * and #")
            if code in codes.values():
                raise t.error(key, f"code {code!r} is already used by another feature")
        codes[key] = code
    return FeaturesConfig(
        **codes, pickup_agent=t.string("pickup_agent", d.pickup_agent, empty_is_none=True),
        pickup_wait=t.number("pickup_wait", d.pickup_wait, 0.001, 100))
