"""The frozen records a validated config is made of, and the error that refuses one.

Why records and not the parsed TOML: the rest of the server reads typed fields that are known
to be valid (``config.server.realm`` is a non-empty ``str``), and a reload swaps one immutable
``Config`` for another, so a request in flight never sees half of each. Section records carry
their defaults as field defaults; ``validate`` reads the key lists and defaults from here, so
they live in one place.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._text import is_number, norm_host

__all__ = [
    "ALGORITHMS", "CLI", "DEFAULT_CHAIN", "Config", "ConfigError", "ControlConfig",
    "FeaturesConfig", "GroupConfig", "HooksConfig", "LineConfig", "Listen", "LoggingConfig",
    "Network", "ProxyConfig", "Ranges", "RedirectConfig", "RuleConfig", "SecurityConfig",
    "ServerConfig", "StoreConfig", "TrunkConfig", "WebConfig",
]

#: Digest algorithm name -> (line key holding its HA1, hex length).
ALGORITHMS: Mapping[str, tuple[str, int]] = {
    "MD5": ("ha1_md5", 32), "SHA-256": ("ha1_sha256", 64), "SHA-512-256": ("ha1_sha512_256", 64),
}
#: Keys of ``[lines.NN]`` that hold a credential (internal to the package).
CREDENTIAL_KEYS = ("secret", *(key for key, _ in ALGORITHMS.values()))
DEFAULT_CHAIN = ("registrations", "aliases", "subscribe", "mapping", "fallback", "pickup",
                 "directed_pickup", "join")
#: The "file" named by errors in ``--listen`` / ``--state``: they came from no file.
CLI = "<command line>"
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
            if not is_number(item):
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
    #: TCP connections in all; a new inbound one beyond it closes the idlest (issue #16)
    max_tcp_connections: int
    #: TCP connections from one source address
    max_tcp_per_source: int
    #: connections from one /24 (/64) that have not sent a complete message yet
    tcp_handshakes_per_net: int
    #: seconds a new TCP connection has to send its first message
    tcp_handshake_timeout: float
    #: "redirect" (answer 302) or "proxy" (fork to the targets, keep calls and CDRs)
    mode: str
    #: worker processes (1 = no supervisor; ``"auto"`` in the file = one per core)
    workers: int
    #: pin worker i to CPU i (mod the CPUs this process may use)
    pin_workers: bool
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
    #: seconds between sweeps of the failure, ban and rate tables (and the parse caches)
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
class ProxyConfig:
    """``[proxy]``: only read in ``[server] mode = "proxy"``."""

    #: seconds a q-group rings before the next (lower q) group starts too; 0 = only when done
    fork_group_timeout: float = 20.0
    #: RFC 3261 timer C per INVITE branch (> 3 min, §16.6 step 11)
    timer_c: float = 181.0
    #: a call whose BYE never comes ends as "expired" after this long (4 h)
    max_call_seconds: float = 14400.0
    #: OPTIONS pings to bindings behind NAT every N seconds; 0 = off
    nat_ping_interval: float = 0.0
    #: branches one request may fork to, 3xx recursion included
    max_branches: int = 16
    #: bytes cdr.jsonl may reach before it is rotated to cdr.jsonl.1
    cdr_max_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ControlConfig:
    group: str | None = None
    socket_mode: int = 0o660
    request_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class WebConfig:
    """The status page. Off unless ``listen`` is set; without a ``token`` only loopback
    clients may read it, and ``actions`` (unban, unregister, run state) need the token."""

    listen: tuple[str, int] | None = None
    token: str | None = field(default=None, repr=False)
    actions: bool = False


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
    #: simultaneous calls from or to the line in proxy mode; 0 = unlimited
    max_calls: int = 0

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
class TrunkConfig:
    """``[trunks.NAME]``: a provider we register with and route calls through.

    ``transport`` is None when the registrar URI names none: TCP is tried first, then UDP
    (the seed's "sip over tcp" preference). Secrets are kept out of ``repr`` so a logged
    record never shows them.
    """

    name: str
    registrar: str  # the SIP URI as configured
    host: str  # registrar host (no brackets)
    port: int | None
    transport: str | None  # "tcp" | "udp" | None (TCP first)
    username: str
    secret: str | None = field(repr=False)
    ha1: str | None = field(repr=False)  # MD5 HA1 (needs realm)
    realm: str | None
    expires: int
    contact_user: str
    from_user: str
    from_domain: str
    outbound_proxy: str | None  # a SIP URI; requests go there instead of the registrar
    proxy_host: str | None
    proxy_port: int | None
    proxy_transport: str | None
    #: dialled number the provider sends -> a line, group or any user the chain resolves
    dids: Mapping[str, str]
    pai: str | None  # P-Asserted-Identity value on outgoing calls
    register: bool = True
    keepalive: float = 0.0  # s between CRLF keep-alives over TCP; 0 = 95-120 s (RFC 5626)
    retry_min: float = 30.0  # first back-off after a failure (doubles)
    retry_max: float = 600.0  # back-off ceiling


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    server: ServerConfig
    logging: LoggingConfig
    security: SecurityConfig
    store: StoreConfig
    hooks: HooksConfig
    redirect: RedirectConfig
    proxy: ProxyConfig
    control: ControlConfig
    features: FeaturesConfig
    web: WebConfig
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
    trunks: Mapping[str, TrunkConfig] = field(default_factory=dict)

    def is_our_domain(self, host: str) -> bool:
        """Whether a Request-URI / To host is served here (realm or one of ``domains``)."""
        ours = self.server.our_domains
        return host in ours or norm_host(host) in ours

    def line(self, number: str | int) -> LineConfig | None:
        return self.lines.get(str(number))

    def group(self, number: str | int) -> GroupConfig | None:
        return self.groups.get(str(number))

    @property
    def states_dir(self) -> Path:
        """Where run-state overlays live (``states/<name>.toml`` beside the main file)."""
        return self.path.parent / "states"
