"""Configuration: layered TOML files, validated once into frozen records.

Why validate everything up front: a reload with a bad file must keep the running config
(DESIGN §4), so every check happens here, before anything is swapped in, and the rest of the
server reads plain typed fields. Typos are the most common config bug, so unknown keys in known
tables are errors, and every error names the file that set the key:
``/etc/sipyard/states/night.toml: groups.100.members: line 42 is not defined``.

Layers (later wins)
  1. the main file (``-c``, default ``/etc/sipyard/sipyard.toml``);
  2. ``custom.toml`` beside it, when present (site overrides that tools never rewrite);
  3. ``states/<state>.toml`` beside the main file for the active run state (``None`` or
     ``"none"``: no overlay; a missing state file is an error naming it);
  4. the command line: ``--data`` replaces ``server.data_dir`` (relative to the working
     directory), ``--listen`` replaces ``server.listen`` as a whole (an empty list = not given).

Tables merge key by key at any depth. Arrays are values: a later layer's array replaces the
earlier one whole; this includes the arrays of tables ``[[mapping]]`` and ``[[fallback]]``, so a
state file that has any ``[[fallback]]`` states the complete fallback list. A layer cannot delete
a key (TOML has no null); set a list to ``[]`` to empty it. Rules are numbered from 0 in file
order (``mapping[2].users``). Unknown top-level tables are ignored with a note in
``Config.warnings``; unknown keys anywhere else are errors. No string except ``secret`` may
hold control characters (they would end up in SIP headers). Lists come back as tuples.

Keys (type = default)
``[server]``
  realm: str, required -- digest realm; always one of our domains. Changing it invalidates
      every stored ``ha1_*`` digest (the realm is hashed in).
  domains: [str] = [] -- further hosts/addresses served as ours (case-insensitive, IPv6 with or
      without brackets).
  listen: [str] = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"] -- ``udp:HOST:PORT``,
      ``tcp:HOST:PORT``, or ``HOST:PORT`` for both; IPv6 as ``udp:[::1]:5060``; port 0 = any.
  data_dir: str = "/var/lib/sipyard" -- database and control socket; relative to the main file.
  hooks_dir: str = "/usr/libexec/sipyard" -- hook executables; relative to the main file.
  algorithms: [str] = ["MD5"] -- digest algorithms offered: MD5, SHA-256, SHA-512-256.
  extensions: str = "10-89" -- line numbers allowed, e.g. "100-699,1000-1999".
  min_expires = 60, max_expires = 3600, default_expires = 3600 -- registration bounds (s).
  system: str = "system" -- user part the server sends MESSAGEs from.
  timezone: str = "UTC" -- IANA zone for time rules.
  metrics: str = "" -- "HOST:PORT" of the metrics endpoint; "" = off.
  max_message_size = 65536 -- bytes; larger requests are answered 513.
  nonce_ttl = 300 -- seconds a digest nonce stays fresh.
  tcp_idle = 300 -- seconds a TCP connection may stay silent before it is closed.
  max_tcp_connections = 4096 -- TCP connections in all; a new inbound one beyond it closes
      the connection idle longest (one that never sent a message first).
  max_tcp_per_source = 32 -- TCP connections from one source address.
  tcp_handshakes_per_net = 32 -- TCP connections from one /24 (IPv4) or /64 (IPv6) that have
      not sent a complete SIP message yet; more are refused.
  tcp_handshake_timeout = 10.0 -- seconds a new TCP connection has to send its first message.
  server_header: str = "sipyard/<version>" -- Server/User-Agent value; "" = send none.
``[logging]`` level: str = "info" -- debug, info, warning or error (any case).
``[security]``
  open_registration = false -- any user of our domains registers without authentication
      (labs, benchmarks); warns at start.
  max_auth_failures = 20, failure_window = 60, ban_seconds = 600 -- N failed
      authentications from one source within the window ban it (0 = never ban).
  allow: [str] = [] -- networks never banned nor rate-limited (loopback is not implied).
  trusted: [str] = [] -- networks whose redirected requests need no authentication.
  register_rate = 500 -- REGISTERs per second per source; 0 = unlimited.
  sweep_interval = 10.0 -- seconds between sweeps of the failure, ban and rate tables
      (entries older than failure_window / their ban / one second go).
``[store]`` url: str = "" (sqlite in data_dir; or "sqlite:PATH", "redis://…");
  synchronous: "full" | "normal" = "full" (sqlite durability).
``[hooks]`` timeout = 10.0 (s per run), max_running = 4, queue = 1000 (waiting events).
``[redirect]`` chain: [str] = registrations, aliases, subscribe, mapping, fallback, pickup,
  directed_pickup, join -- redirectors in order; require_auth = true (callers must
  authenticate); suspend_timeout = 30.0 (s, server-side cap on a suspended request).
``[control]`` group: str = "" (socket group; "" = the server's); socket_mode = 0o660 (int, or an
  octal string "0660"); request_timeout = 5.0 (s).
``[lines.NN]`` (NN in server.extensions) display: str; secret: str, or one or more of ha1_md5
  (32 hex), ha1_sha256 (64 hex), ha1_sha512_256 (64 hex) -- not both forms; at least one unless
  open_registration; algorithms: [str] (overrides server.algorithms; narrowed to the algorithms
  the line has a credential for, with a warning); max_contacts = 10; overflow: "replace"
  (drop the oldest binding) | "reject" = "replace"; type: str = "phone" ("phone", "door",
  "softphone" or free text); permissions: [str] = [] (merged with ``[permissions]``).
``[groups.NNN]`` (numeric, >= 100, not a line) display: str; members: [line] = [] (ints or
  strings; every member must be a line).
``[aliases]`` NAME = "target" | ["target", …] -- extra user names (not a line or group
  number); targets are URIs or numbers, resolved by the ``aliases`` redirector.
``[[mapping]]``, ``[[fallback]]`` rules with keys name, hosts, users (str or [str]), permissions
  ([str]), when (str or [str]), timezone (default server.timezone), contacts ([str], required,
  non-empty). Only types are checked here; ``sipyard.redirect`` compiles the patterns and can
  report with ``RuleConfig.error()``.
``[permissions]`` LINE = [str] -- permissions granted to a line.
``[features]`` codes use digits, * and #, and differ from each other ("" = feature off):
  directed_pickup = "*78", join = "*79", global_pickup = ""; pickup_agent: str = "" (identity
  the pickup SUBSCRIBE is sent as; "" = system); pickup_wait = 2.0 (s, 0.001-100).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import ipaddress
import os
import secrets
import string
import tomllib
import zoneinfo
from collections.abc import Callable, Collection, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomlkit

from sipyard import __version__

__all__ = [
    "ALGORITHMS", "Config", "ConfigError", "ControlConfig", "FeaturesConfig", "GroupConfig",
    "HooksConfig", "LineConfig", "Listen", "LoggingConfig", "Ranges", "RedirectConfig",
    "RuleConfig", "SecurityConfig", "ServerConfig", "StoreConfig", "demo_config_text",
    "generate_password", "load_config", "parse_listen", "parse_ranges", "set_line_credentials",
]

#: Digest algorithm name -> (line key holding its HA1, hex length).
ALGORITHMS: Mapping[str, tuple[str, int]] = {
    "MD5": ("ha1_md5", 32), "SHA-256": ("ha1_sha256", 64), "SHA-512-256": ("ha1_sha512_256", 64),
}
_CREDENTIAL_KEYS = ("secret", *(key for key, _ in ALGORITHMS.values()))
DEFAULT_CHAIN = ("registrations", "aliases", "subscribe", "mapping", "fallback", "pickup",
                 "directed_pickup", "join")
CLI = "<command line>"
_MISSING: Any = object()
_Path = tuple[str | int, ...]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A config file is unreadable or invalid; ``str()`` is ``"FILE: KEY: REASON"``."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        super().__init__(file, key, reason)
        self.file = file
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.reason}"


# ---------------------------------------------------------------------------------- records

@dataclass(frozen=True, slots=True)
class Listen:
    """One socket to open. ``host`` carries no brackets; ``str()`` gives the spec back."""

    transport: str  # "udp" | "tcp"
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Ranges:
    """Sorted, merged number ranges; ``"42" in r`` wants a canonical decimal (no leading 0)."""

    spans: tuple[tuple[int, int], ...]

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            if not _is_number(item):
                return False
            n = int(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            n = item
        else:
            return False
        return any(lo <= n <= hi for lo, hi in self.spans)

    def __str__(self) -> str:
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.spans)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    realm: str
    domains: tuple[str, ...]
    listen: tuple[Listen, ...]
    data_dir: Path
    hooks_dir: Path
    algorithms: tuple[str, ...]
    extensions: Ranges
    min_expires: int
    max_expires: int
    default_expires: int
    system: str
    timezone: str
    metrics: tuple[str, int] | None
    max_message_size: int
    nonce_ttl: int
    tcp_idle: float
    server_header: str
    max_tcp_connections: int
    max_tcp_per_source: int
    tcp_handshakes_per_net: int
    tcp_handshake_timeout: float
    #: realm + domains, normalised (lower case, no brackets, no trailing dot): for is_our_domain.
    our_domains: frozenset[str] = field(repr=False)


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    open_registration: bool = False
    max_auth_failures: int = 20
    failure_window: int = 60
    ban_seconds: int = 600
    allow: tuple[Network, ...] = ()
    trusted: tuple[Network, ...] = ()
    register_rate: int = 500
    sweep_interval: float = 10.0


@dataclass(frozen=True, slots=True)
class StoreConfig:
    url: str | None = None
    synchronous: str = "full"


@dataclass(frozen=True, slots=True)
class HooksConfig:
    timeout: float = 10.0
    max_running: int = 4
    queue: int = 1000


@dataclass(frozen=True, slots=True)
class RedirectConfig:
    chain: tuple[str, ...] = DEFAULT_CHAIN
    require_auth: bool = True
    suspend_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class ControlConfig:
    group: str | None = None
    socket_mode: int = 0o660
    request_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class FeaturesConfig:
    directed_pickup: str | None = "*78"
    join: str | None = "*79"
    global_pickup: str | None = None
    pickup_agent: str | None = None
    pickup_wait: float = 2.0


@dataclass(frozen=True, slots=True)
class LineConfig:
    number: str
    display: str | None
    secret: str | None = field(repr=False)
    #: algorithm name ("MD5", …) -> lower-case hex HA1, as configured.
    ha1: Mapping[str, str] = field(repr=False)
    #: effective algorithms: the line's or the server's, narrowed to those it can verify.
    algorithms: tuple[str, ...]
    max_contacts: int
    overflow: str
    type: str
    #: ``[lines.NN] permissions`` then ``[permissions] NN``, without duplicates.
    permissions: tuple[str, ...]

    @property
    def has_credentials(self) -> bool:
        return self.secret is not None or bool(self.ha1)


@dataclass(frozen=True, slots=True)
class GroupConfig:
    number: str
    display: str | None
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """A ``[[mapping]]`` / ``[[fallback]]`` rule, type-checked but not compiled."""

    kind: str  # "mapping" | "fallback"
    index: int
    source: str  # the file the rule came from
    name: str | None
    hosts: tuple[str, ...]
    users: tuple[str, ...]
    permissions: tuple[str, ...]
    when: tuple[str, ...]
    timezone: str
    contacts: tuple[str, ...]
    raw: Mapping[str, Any] = field(repr=False)

    def error(self, key: str, reason: str) -> ConfigError:
        """An error for the compiler to raise: ``FILE: mapping[2].users: REASON``."""
        return ConfigError(self.source, f"{self.kind}[{self.index}].{key}", reason)


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    server: ServerConfig
    logging: LoggingConfig
    security: SecurityConfig
    store: StoreConfig
    hooks: HooksConfig
    redirect: RedirectConfig
    control: ControlConfig
    features: FeaturesConfig
    lines: Mapping[str, LineConfig]
    groups: Mapping[str, GroupConfig]
    aliases: Mapping[str, tuple[str, ...]]
    mapping: tuple[RuleConfig, ...]
    fallback: tuple[RuleConfig, ...]
    permissions: Mapping[str, tuple[str, ...]]
    line_numbers: tuple[str, ...]  # numeric order
    source_files: tuple[Path, ...]  # every file read, in layer order
    state: str | None  # run state whose overlay was applied
    warnings: tuple[str, ...]  # "FILE: KEY: note" for things ignored

    def is_our_domain(self, host: str) -> bool:
        """Whether a Request-URI / To host is served here (realm or one of ``domains``)."""
        ours = self.server.our_domains
        return host in ours or _norm_host(host) in ours

    def line(self, number: str | int) -> LineConfig | None:
        return self.lines.get(str(number))

    def group(self, number: str | int) -> GroupConfig | None:
        return self.groups.get(str(number))

    @property
    def states_dir(self) -> Path:
        """Where run-state overlays live (``states/<name>.toml`` beside the main file)."""
        return self.path.parent / "states"


# ---------------------------------------------------------------------------------- parsing

def parse_listen(spec: str) -> list[Listen]:
    """``udp:HOST:PORT`` / ``tcp:HOST:PORT`` -> one entry; ``HOST:PORT`` -> udp and tcp.

    Always a list, so callers need no type test. ValueError names what is wrong.
    """
    transports = ["udp", "tcp"]
    head, sep, rest = spec.strip().partition(":")
    text = spec.strip()
    if sep and (head.lower() in transports or (head.isalpha() and ":" in rest)):
        if head.lower() not in transports:
            raise ValueError(f"bad listen address {spec!r}: transport must be udp or tcp")
        transports, text = [head.lower()], rest
    try:
        host, port = _host_port(text)
    except ValueError as exc:
        raise ValueError(f"bad listen address {spec!r}: {exc}") from None
    return [Listen(t, host, port) for t in transports]


def parse_ranges(spec: str) -> Ranges:
    """``"10-89"``, ``"100-699,1000-1999"``, ``"42"`` -> Ranges (overlaps merged)."""
    spans: list[tuple[int, int]] = []
    for part in spec.split(","):
        lo_s, dash, hi_s = part.strip().partition("-")
        hi_s = hi_s if dash else lo_s
        if not (_is_number(lo_s.strip()) and _is_number(hi_s.strip())):
            raise ValueError(f"bad range {part.strip()!r}: expected N or N-M (decimal numbers)")
        lo, hi = int(lo_s), int(hi_s)
        if lo > hi or hi >= 10**9:
            raise ValueError(f"bad range {part.strip()!r}: need N <= M < 1000000000")
        spans.append((lo, hi))
    spans.sort()
    merged = [spans[0]]
    for lo, hi in spans[1:]:
        if lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return Ranges(tuple(merged))


def _host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("unclosed '['")
        host, port_s = text[1:end], text[end + 1:]
        if not port_s.startswith(":"):
            raise ValueError("expected :PORT after ']'")
        port_s = port_s[1:]
        try:
            host = ipaddress.IPv6Address(host).compressed
        except ValueError:
            raise ValueError(f"bad IPv6 address {host!r}") from None
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise ValueError("expected HOST:PORT")
        if ":" in host:
            raise ValueError("IPv6 addresses need brackets, as in udp:[::1]:5060")
        host = _check_hostname(host)
    if not _is_number(port_s) or int(port_s) > 65535:
        raise ValueError(f"bad port {port_s!r}")
    return host, int(port_s)


def _check_hostname(host: str) -> str:
    if host.replace(".", "").isdigit():
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(f"bad IPv4 address {host!r}") from None
    labels = host.lower().split(".")
    if not host or len(host) > 253 or not all(
        0 < len(lb) < 64 and lb.isascii() and lb.replace("-", "").isalnum() for lb in labels
    ):
        raise ValueError(f"bad host name {host!r}")
    return host.lower()


def _is_number(text: str) -> bool:
    """Canonical decimal: ASCII digits, no sign, no leading zero (SIP users are strings)."""
    return text.isascii() and text.isdigit() and (text == "0" or text[0] != "0")


def _norm_host(host: str) -> str:
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    h = h.removesuffix(".")
    if ":" in h:
        with contextlib.suppress(ValueError):
            h = ipaddress.IPv6Address(h).compressed
    return h


# ---------------------------------------------------------------------------------- loading

def load_config(path: str | Path, *, data_dir: str | Path | None = None,
                listen: Sequence[str] | None = None, state: str | None = None) -> Config:
    """Read the layers, merge them, validate, and return the Config (or raise ConfigError)."""
    main = Path(path)
    layers = [main]
    custom = main.parent / "custom.toml"
    if custom.is_file() and not _same_file(custom, main):
        layers.append(custom)
    run_state = None if state is None or state.strip().lower() in ("", "none") else state.strip()
    if run_state is not None:
        if not run_state.replace("-", "").replace("_", "").isalnum() or not run_state.isascii():
            raise ConfigError(CLI, "state", f"bad run state name {run_state!r} "
                              "(letters, digits, - and _)")
        state_file = main.parent / "states" / f"{run_state}.toml"
        if not state_file.is_file():
            raise ConfigError(str(state_file), "(file)", f"run state {run_state!r} has no file")
        layers.append(state_file)
    merged: dict[str, Any] = {}
    prov: dict[_Path, str] = {(): str(main)}
    for layer in layers:
        _merge(merged, _read(layer), prov, (), str(layer))
    ctx = _Ctx(merged, prov, main)
    return _build(ctx, layers, run_state, data_dir, listen)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(str(path), "(file)", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "(file)", "not valid UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        reason, _, where = str(exc).rpartition(" (at ")
        if not reason:
            raise ConfigError(str(path), "(syntax)", str(exc)) from None
        raise ConfigError(str(path), where.rstrip(")"), f"TOML syntax: {reason}") from None


def _merge(dst: dict[str, Any], src: Mapping[str, Any], prov: dict[_Path, str],
           path: _Path, file: str) -> None:
    """Deep-merge ``src`` into ``dst``, recording the file behind every table and value."""
    for key, value in src.items():
        sub = (*path, key)
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, prov, sub, file)
            continue
        if key in dst:  # replaced: forget where the old value and its children came from
            n = len(sub)
            for p in [p for p in prov if p[:n] == sub]:
                del prov[p]
        dst[key] = value
        _record(value, prov, sub, file)


def _record(value: Any, prov: dict[_Path, str], path: _Path, file: str) -> None:
    prov[path] = file
    if isinstance(value, dict):
        for k, v in value.items():
            _record(v, prov, (*path, k), file)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, dict):
                _record(v, prov, (*path, i), file)


def _keystr(path: _Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            bare = part and part.isascii() and part.replace("-", "").replace("_", "").isalnum()
            name = part if bare else '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
            out += f".{name}" if out else name
    return out


class _Ctx:
    """Merged data plus provenance; turns a key path into a ConfigError naming its file."""

    def __init__(self, data: dict[str, Any], prov: dict[_Path, str], main: Path) -> None:
        self.data, self.prov, self.main = data, prov, main
        self.base = Path(os.path.abspath(main.parent))
        self.warnings: list[str] = []

    def file_of(self, path: _Path) -> str:
        for n in range(len(path), -1, -1):
            file = self.prov.get(path[:n])
            if file is not None:
                return file
        return str(self.main)  # pragma: no cover - () is always recorded

    def error(self, path: _Path, reason: str) -> ConfigError:
        return ConfigError(self.file_of(path), _keystr(path), reason)

    def warn(self, path: _Path, note: str) -> None:
        self.warnings.append(f"{self.file_of(path)}: {_keystr(path)}: {note}")

    def table(self, name: str, known: Collection[str] | None) -> _Table:
        node: Any = self.data.get(name, {})
        if not isinstance(node, dict):
            raise self.error((name,), "must be a table")
        return _Table(self, (name,), node, known)


class _Table:
    """Typed, error-reporting access to one table; unknown keys fail on construction."""

    def __init__(self, ctx: _Ctx, path: _Path, data: dict[str, Any],
                 known: Collection[str] | None) -> None:
        self.ctx, self.path, self.data = ctx, path, data
        if known is None:
            return
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.error(key, f"unknown key{hint}")

    def error(self, key: str | int, reason: str) -> ConfigError:
        return self.ctx.error((*self.path, key), reason)

    def get(self, key: str) -> Any:
        return self.data.get(key, _MISSING)

    def string(self, key: str, default: str | None, *, empty_is_none: bool = False,
               printable: bool = True) -> str | None:
        """A string; control characters (CR, LF: header injection) only where ``printable``
        is off, which is only for secrets."""
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            raise self.error(key, "must be a string")
        if printable and not value.isprintable():
            raise self.error(key, "must not contain control characters")
        if empty_is_none and not value.strip():
            return None
        if not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def required(self, key: str) -> str:
        value = self.string(key, None)
        if value is None:
            raise self.error(key, "is required")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false")
        return value

    def integer(self, key: str, default: int, lo: int, hi: int | None = None) -> int:
        value = self.data.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, "must be an integer")
        if value < lo or (hi is not None and value > hi):
            raise self.error(key, f"must be between {lo} and {hi}" if hi is not None
                             else f"must be at least {lo}")
        return value

    def number(self, key: str, default: float, lo: float, hi: float) -> float:
        value = self.data.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
            raise self.error(key, "must be a number")
        if not lo <= value <= hi:
            raise self.error(key, f"must be between {lo:g} and {hi:g}")
        return float(value)

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self.string(key, default)
        assert value is not None
        if value.lower() not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}")
        return value.lower()

    def strings(self, key: str, default: Sequence[str] = (), *, one: bool = False,
                nonempty: bool = False) -> tuple[str, ...]:
        """An array of non-empty strings (or one string when ``one``)."""
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            return tuple(default)
        if one and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.error(key, "must be a string or an array of strings" if one
                             else "must be an array of strings")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip() or not item.isprintable():
                raise self.ctx.error((*self.path, key, i),
                                     "must be a non-empty string without control characters")
        if nonempty and not value:
            raise self.error(key, "must not be empty")
        return tuple(value)


_TOP = ("server", "logging", "security", "store", "hooks", "redirect", "control", "lines",
        "groups", "aliases", "mapping", "fallback", "permissions", "features")


def _build(ctx: _Ctx, layers: list[Path], state: str | None, data_dir: str | Path | None,
           listen: Sequence[str] | None) -> Config:
    for key, value in ctx.data.items():
        if key not in _TOP:
            if not isinstance(value, dict):
                raise ctx.error((key,), "unknown key (top-level keys belong in a table, "
                                "such as [server])")
            ctx.warn((key,), "unknown table, ignored")
    server = _server(ctx, data_dir, listen)
    security = _security(ctx)
    lines = _lines(ctx, server, security)
    groups = _groups(ctx, lines)
    return Config(
        path=layers[0], server=server, logging=_logging(ctx),
        security=security, store=_store(ctx), hooks=_hooks(ctx), redirect=_redirect(ctx),
        control=_control(ctx), features=_features(ctx), lines=lines, groups=groups,
        aliases=_aliases(ctx, lines, groups),
        mapping=_rules(ctx, "mapping", server.timezone),
        fallback=_rules(ctx, "fallback", server.timezone),
        permissions=_permissions_table(ctx, lines),
        line_numbers=tuple(sorted(lines, key=int)), source_files=tuple(layers), state=state,
        warnings=tuple(ctx.warnings),
    )


def _server(ctx: _Ctx, data_dir: str | Path | None, listen: Sequence[str] | None) -> ServerConfig:
    t = ctx.table("server", _fields(ServerConfig)[:-1])  # all but our_domains
    realm = t.required("realm").strip()
    if any(c in realm for c in '"\\'):
        raise t.error("realm", "must not contain quotes or backslashes")
    domains = tuple(d.strip().lower() for d in t.strings("domains"))
    if listen:  # an empty command-line list means "not given"
        sockets = _listens(listen, lambda i, reason: ConfigError(CLI, "--listen", reason))
    else:
        specs = t.strings("listen", ("udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"), nonempty=True)
        sockets = _listens(specs, lambda i, reason: ctx.error(("server", "listen", i), reason))
    algorithms = _algorithms(t, "algorithms", ("MD5",))
    try:
        extensions = parse_ranges(t.string("extensions", "10-89") or "")
    except ValueError as exc:
        raise t.error("extensions", str(exc)) from None
    min_e = t.integer("min_expires", 60, 1)
    max_e = t.integer("max_expires", 3600, min_e)
    default_e = t.integer("default_expires", 3600, min_e, max_e)
    timezone = t.string("timezone", "UTC") or "UTC"
    if not _valid_zone(timezone):
        raise t.error("timezone", f"unknown time zone {timezone!r}")
    metrics_s = t.string("metrics", None, empty_is_none=True)
    metrics = None
    if metrics_s is not None:
        try:
            metrics = _host_port(metrics_s.strip())
        except ValueError as exc:
            raise t.error("metrics", f"expected HOST:PORT: {exc}") from None
    header = t.string("server_header", f"sipyard/{__version__}", empty_is_none=True)
    ours = frozenset(_norm_host(h) for h in (realm, *domains))
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
        server_header="" if header is None else header.strip(),
        max_tcp_connections=t.integer("max_tcp_connections", 4096, 1, 1_000_000),
        max_tcp_per_source=t.integer("max_tcp_per_source", 32, 1, 1_000_000),
        tcp_handshakes_per_net=t.integer("tcp_handshakes_per_net", 32, 1, 1_000_000),
        tcp_handshake_timeout=t.number("tcp_handshake_timeout", 10.0, 0.1, 3600.0),
        our_domains=ours,
    )


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


def _dir(ctx: _Ctx, t: _Table, key: str, default: str, override: str | Path | None) -> Path:
    value = t.string(key, default) or default
    if override is not None:
        return Path(os.path.abspath(override))
    return Path(os.path.normpath(ctx.base / Path(value).expanduser()))


def _algorithms(t: _Table, key: str, default: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for i, name in enumerate(t.strings(key, default, nonempty=True)):
        canonical = name.strip().upper()
        if canonical not in ALGORITHMS:
            raise t.ctx.error((*t.path, key, i), f"unknown digest algorithm {name!r} "
                              f"(use {', '.join(ALGORITHMS)})")
        if canonical not in out:
            out.append(canonical)
    return tuple(out)


def _valid_zone(name: str) -> bool:
    if name == "UTC":
        return True  # valid even on a host without tzdata
    try:
        zoneinfo.ZoneInfo(name)
    except (KeyError, ValueError, OSError):
        return False
    return True


def _fields(cls: type) -> tuple[str, ...]:
    """A section's keys are its record's fields, so key lists and defaults live in one place."""
    return tuple(f.name for f in dataclasses.fields(cls))


def _logging(ctx: _Ctx) -> LoggingConfig:
    t = ctx.table("logging", _fields(LoggingConfig))
    return LoggingConfig(t.choice("level", LoggingConfig().level,
                                  ("debug", "info", "warning", "error")))


def _networks(t: _Table, key: str) -> tuple[Network, ...]:
    out = []
    for i, text in enumerate(t.strings(key)):
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise t.ctx.error((*t.path, key, i), f"bad network {text!r}") from None
    return tuple(out)


def _security(ctx: _Ctx) -> SecurityConfig:
    t, d = ctx.table("security", _fields(SecurityConfig)), SecurityConfig()
    return SecurityConfig(
        open_registration=t.boolean("open_registration", d.open_registration),
        max_auth_failures=t.integer("max_auth_failures", d.max_auth_failures, 0),
        failure_window=t.integer("failure_window", d.failure_window, 1),
        ban_seconds=t.integer("ban_seconds", d.ban_seconds, 0),
        allow=_networks(t, "allow"), trusted=_networks(t, "trusted"),
        register_rate=t.integer("register_rate", d.register_rate, 0),
        sweep_interval=t.number("sweep_interval", d.sweep_interval, 0.1, 3600.0),
    )


def _store(ctx: _Ctx) -> StoreConfig:
    t = ctx.table("store", _fields(StoreConfig))
    url = t.string("url", None, empty_is_none=True)
    if url is not None:
        url = url.strip()
        if url.partition(":")[0].lower() not in ("sqlite", "redis", "rediss", "unix"):
            raise t.error("url", "must start with sqlite, sqlite:PATH, redis://, rediss:// "
                          "or unix://")
    return StoreConfig(url, t.choice("synchronous", StoreConfig().synchronous, ("full", "normal")))


def _hooks(ctx: _Ctx) -> HooksConfig:
    t, d = ctx.table("hooks", _fields(HooksConfig)), HooksConfig()
    return HooksConfig(timeout=t.number("timeout", d.timeout, 0.001, 86400),
                       max_running=t.integer("max_running", d.max_running, 1, 1024),
                       queue=t.integer("queue", d.queue, 1))


def _redirect(ctx: _Ctx) -> RedirectConfig:
    t, d = ctx.table("redirect", _fields(RedirectConfig)), RedirectConfig()
    chain = t.strings("chain", d.chain)
    for i, name in enumerate(chain):
        if name in chain[:i]:
            raise ctx.error(("redirect", "chain", i), f"redirector {name!r} listed twice")
    return RedirectConfig(chain=chain, require_auth=t.boolean("require_auth", d.require_auth),
                          suspend_timeout=t.number("suspend_timeout", d.suspend_timeout,
                                                   0.001, 3600))


def _control(ctx: _Ctx) -> ControlConfig:
    t, d = ctx.table("control", _fields(ControlConfig)), ControlConfig()
    mode: Any = t.data.get("socket_mode", d.socket_mode)
    if isinstance(mode, str):
        text = mode.strip().lower().removeprefix("0o")
        mode = int(text, 8) if text and all(c in "01234567" for c in text) else None
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
        raise t.error("socket_mode", 'must be a permission mode such as 0o660 or "0660"')
    return ControlConfig(group=t.string("group", d.group, empty_is_none=True), socket_mode=mode,
                         request_timeout=t.number("request_timeout", d.request_timeout,
                                                  0.001, 3600))


def _features(ctx: _Ctx) -> FeaturesConfig:
    t, d = ctx.table("features", _fields(FeaturesConfig)), FeaturesConfig()
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


_LINE_KEYS = ("display", *_CREDENTIAL_KEYS, "algorithms", "max_contacts", "overflow", "type",
              "permissions")


def _lines(ctx: _Ctx, server: ServerConfig, security: SecurityConfig) -> dict[str, LineConfig]:
    top = ctx.table("lines", None)
    extra = _permissions_table(ctx, None)
    out: dict[str, LineConfig] = {}
    for number, entry in top.data.items():
        path: _Path = ("lines", number)
        if not _is_number(number):
            raise ctx.error(path, "line numbers are decimal numbers without leading zeros")
        if number not in server.extensions:
            raise ctx.error(path, f"line {number} is outside server.extensions "
                            f"({server.extensions})")
        if not isinstance(entry, dict):
            raise ctx.error(path, "must be a table")
        t = _Table(ctx, path, entry, _LINE_KEYS)
        secret = t.string("secret", None, printable=False)
        ha1: dict[str, str] = {}
        for algorithm, (key, length) in ALGORITHMS.items():
            value = t.string(key, None)
            if value is not None:
                try:
                    ha1[algorithm] = _check_hex(value, length)
                except ValueError as exc:
                    raise t.error(key, str(exc)) from None
        if secret is not None and ha1:
            raise t.error(next(k for k in _CREDENTIAL_KEYS[1:] if k in entry),
                          "set either secret or ha1_* digests, not both")
        wanted = _algorithms(t, "algorithms", server.algorithms)
        algorithms = tuple(a for a in wanted if secret is not None or a in ha1)
        if not ha1 and secret is None:
            if not security.open_registration:
                raise ctx.error(path, "needs a secret or an ha1_* digest "
                                "(or [security] open_registration = true)")
            algorithms = wanted
        elif not algorithms:
            raise ctx.error(path, f"no credential for its algorithms ({', '.join(wanted)}); "
                            f"add {', '.join(ALGORITHMS[a][0] for a in wanted)} or a secret")
        elif algorithms != wanted:
            ctx.warn(path, f"no digest for {', '.join(a for a in wanted if a not in ha1)}; "
                     f"offering only {', '.join(algorithms)}")
        perms = list(t.strings("permissions"))
        perms += [p for p in extra.get(number, ()) if p not in perms]
        out[number] = LineConfig(
            number=number, display=t.string("display", None, empty_is_none=True),
            secret=secret, ha1=ha1, algorithms=algorithms,
            max_contacts=t.integer("max_contacts", 10, 1, 1000),
            overflow=t.choice("overflow", "replace", ("replace", "reject")),
            type=(t.string("type", "phone") or "phone").strip(),
            permissions=tuple(dict.fromkeys(perms)),
        )
    return out


def _check_hex(value: str, length: int) -> str:
    text = value.strip().lower()
    if len(text) != length or not all(c in "0123456789abcdef" for c in text):
        raise ValueError(f"must be {length} hexadecimal digits")
    return text


def _groups(ctx: _Ctx, lines: Mapping[str, LineConfig]) -> dict[str, GroupConfig]:
    out: dict[str, GroupConfig] = {}
    for number, entry in ctx.table("groups", None).data.items():
        path: _Path = ("groups", number)
        if not _is_number(number) or int(number) < 100:
            raise ctx.error(path, "group numbers are decimal numbers of at least 100")
        if number in lines:
            raise ctx.error(path, f"{number} is already a line")
        if not isinstance(entry, dict):
            raise ctx.error(path, "must be a table")
        t = _Table(ctx, path, entry, ("display", "members"))
        raw = t.get("members")
        raw = [] if raw is _MISSING else raw
        if not isinstance(raw, list):
            raise t.error("members", "must be an array of line numbers")
        members: list[str] = []
        for i, item in enumerate(raw):
            member = str(item) if isinstance(item, int | str) and not isinstance(item, bool) else ""
            if member not in lines:
                reason = f"line {member} is not defined" if member else "must be a line number"
                raise ctx.error((*path, "members", i), reason)
            if member in members:
                raise ctx.error((*path, "members", i), f"line {member} is listed twice")
            members.append(member)
        out[number] = GroupConfig(number, t.string("display", None, empty_is_none=True),
                                  tuple(members))
    return out


def _aliases(ctx: _Ctx, lines: Mapping[str, LineConfig],
             groups: Mapping[str, GroupConfig]) -> dict[str, tuple[str, ...]]:
    t = ctx.table("aliases", None)
    out: dict[str, tuple[str, ...]] = {}
    for name in t.data:
        if not name.strip() or not name.isprintable():
            raise t.error(name, "alias names must be non-empty, without control characters")
        if name in lines or name in groups:
            raise t.error(name, f"alias {name!r} hides the line or group of that number")
        out[name] = t.strings(name, one=True, nonempty=True)
    return out


def _permissions_table(ctx: _Ctx, lines: Mapping[str, LineConfig] | None
                       ) -> dict[str, tuple[str, ...]]:
    t = ctx.table("permissions", None)
    out: dict[str, tuple[str, ...]] = {}
    for number in t.data:
        if lines is not None and number not in lines:
            raise t.error(number, f"line {number} is not defined")
        out[number] = t.strings(number)
    return out


_RULE_KEYS = ("name", "hosts", "users", "permissions", "when", "timezone", "contacts")


def _rules(ctx: _Ctx, kind: str, timezone: str) -> tuple[RuleConfig, ...]:
    raw = ctx.data.get(kind, [])
    if not isinstance(raw, list):
        raise ctx.error((kind,), f"must be an array of tables ([[{kind}]])")
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ctx.error((kind, i), "must be a table")
        t = _Table(ctx, (kind, i), entry, _RULE_KEYS)
        if "contacts" not in entry:
            raise t.error("contacts", "is required (a non-empty array of contact templates)")
        zone = t.string("timezone", timezone) or timezone
        if not _valid_zone(zone):
            raise t.error("timezone", f"unknown time zone {zone!r}")
        out.append(RuleConfig(
            kind=kind, index=i, source=ctx.file_of((kind, i)), name=t.string("name", None),
            hosts=t.strings("hosts", one=True), users=t.strings("users", one=True),
            permissions=t.strings("permissions"), when=t.strings("when", one=True),
            timezone=zone, contacts=t.strings("contacts", nonempty=True), raw=entry,
        ))
    return tuple(out)


# ---------------------------------------------------------------------------------- tools

def generate_password() -> str:
    """16 URL-safe characters (96 bits) from ``secrets``."""
    return secrets.token_urlsafe(12)


DEMO_LINES = tuple(str(n) for n in range(10, 20))


def demo_config_text(passwords: Mapping[str, str]) -> str:
    """The demo config (``make serve``): lines 10–19 with the given passwords."""
    missing = [n for n in DEMO_LINES if not passwords.get(n)]
    if missing:
        raise ValueError(f"no password for line(s) {', '.join(missing)}")
    template = resources.files("sipyard").joinpath("data/demo.toml.in").read_text("utf-8")
    values = {f"pw_{n}": _toml_string(passwords[n]) for n in DEMO_LINES}
    return string.Template(template).substitute(values, version=__version__)


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def set_line_credentials(path: str | Path, line: str, *, secret: str | None = None,
                         ha1: Mapping[str, str] | None = None) -> None:
    """Set ``[lines.LINE]`` credentials in the main file, keeping its comments and layout.

    Give a ``secret`` or ``ha1`` ({"MD5": hex, …}; keys may also be "ha1_md5" …). Every other
    credential key of the line is removed, so no digest of an old password survives. The file
    is replaced atomically with its mode kept.
    """
    if (secret is None) == (ha1 is None):
        raise ValueError("give exactly one of secret or ha1")
    if not _is_number(line):
        raise ValueError(f"bad line number {line!r}")
    values: dict[str, str] = {}
    if secret is not None:
        if not secret:
            raise ValueError("the secret must not be empty")
        values["secret"] = secret
    else:
        assert ha1 is not None
        by_key = {key: length for key, length in ALGORITHMS.values()}
        for name, digest in ha1.items():
            key = ALGORITHMS[name.upper()][0] if name.upper() in ALGORITHMS else name.lower()
            if key not in by_key:
                raise ValueError(f"unknown digest algorithm {name!r}")
            try:
                values[key] = _check_hex(digest, by_key[key])
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        if not values:
            raise ValueError("ha1 must hold at least one digest")
    file = Path(os.path.realpath(path))
    try:
        doc = tomlkit.parse(file.read_text("utf-8"))
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(str(path), "(syntax)", str(exc)) from None
    lines: Any = doc.get("lines")
    if lines is not None and not isinstance(lines, MutableMapping):
        raise ConfigError(str(path), "lines", "must be a table")
    entry: Any = None if lines is None else lines.get(line)
    if entry is None:
        entry = tomlkit.table()
        for key, value in values.items():
            entry[key] = value
        entry.add(tomlkit.nl())
        if lines is None:
            lines = tomlkit.table(is_super_table=True)
            lines[line] = entry
            doc["lines"] = lines
        else:
            lines[line] = entry
    elif not isinstance(entry, MutableMapping):
        raise ConfigError(str(path), f"lines.{line}", "must be a table")
    else:
        for key in _CREDENTIAL_KEYS:
            if key in entry and key not in values:
                del entry[key]
        for key, value in values.items():
            entry[key] = value
    _write_atomic(file, doc.as_string())


def _write_atomic(file: Path, text: str) -> None:
    st = file.stat()
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, st.st_mode & 0o7777)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, st.st_mode & 0o7777)  # umask may have narrowed it
        if hasattr(os, "chown") and (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
            with contextlib.suppress(OSError):
                os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
