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
  mode: "redirect" | "proxy" = "redirect" -- answer requests that need a target with 302
      (redirect), or fork them to the targets as a stateful proxy, keeping calls and CDRs.
  workers: int | "auto" = 1 -- worker processes sharing the listening ports (SO_REUSEPORT)
      under a supervisor; > 1 needs ``[store] url = "redis://…"``; "auto" = one per CPU.
  pin_workers = false -- pin worker i to CPU i (also env SIPYARD_PIN_WORKERS=1).
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
``[proxy]`` (read in proxy mode) fork_group_timeout = 20.0 (s a q-group rings alone before the
  next lower-q group joins; 0 = only when it ended); timer_c = 181.0 (s, > 180, RFC 3261
  §16.6); max_call_seconds = 14400.0 (a call without BYE ends "expired"); nat_ping_interval =
  0.0 (s between OPTIONS pings to bindings behind NAT; 0 = off); max_branches = 16 (forks per
  request, recursion included); cdr_max_bytes = 16777216 (cdr.jsonl rotates past it).
``[control]`` group: str = "" (socket group; "" = the server's); socket_mode = 0o660 (int, or an
  octal string "0660"); request_timeout = 5.0 (s).
``[web]`` listen: str = "" -- "HOST:PORT" of the status page (and ``/metrics``); "" = off.
  token: str = "" -- when set, every client (loopback too) must send it: ``Authorization:
  Bearer TOKEN``, ``?token=`` (sets a cookie) or that cookie; at least 16 visible ASCII
  characters without ``; , " \\``. "" = loopback clients only, no token.
  actions = false -- allow the page's write actions (unban, unregister, run state); needs
  ``token``, and each action must carry it in a header (not the cookie: CSRF).
``[lines.NN]`` (NN in server.extensions) display: str; secret: str, or one or more of ha1_md5
  (32 hex), ha1_sha256 (64 hex), ha1_sha512_256 (64 hex) -- not both forms; at least one unless
  open_registration; algorithms: [str] (overrides server.algorithms; narrowed to the algorithms
  the line has a credential for, with a warning); max_contacts = 10; overflow: "replace"
  (drop the oldest binding) | "reject" = "replace"; type: str = "phone" ("phone", "door",
  "softphone" or free text); permissions: [str] = [] (merged with ``[permissions]``);
  max_calls = 0 (simultaneous calls from or to the line in proxy mode; 0 = unlimited).
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

``[trunks.NAME]`` (a provider; NAME: letters, digits, ``-``, ``_``) registrar: str, required
  (``sip:HOST[:PORT][;transport=tcp|udp]``; no transport = TCP first, then UDP); username: str,
  required; secret: str, or ha1: str (MD5 HA1, 32 hex; needs realm); realm: str = "" (answer
  only challenges of this realm; "" = any); expires = 600 (s asked for; refreshed at half the
  granted time); contact_user: str = username; from_user: str = username; from_domain: str =
  the registrar host; outbound_proxy: str = "" (a SIP URI requests go to instead);
  dids = {} (number -> line, group or user: calls from the provider to that number go
  there); pai: str = "" (P-Asserted-Identity on outgoing calls); register = true (false: an
  IP-authenticated trunk); keepalive = 0 (s between CRLF keep-alives on TCP; 0 = 95-120 s
  as RFC 5626 §4.4.1); retry_min = 30, retry_max = 600 (s of back-off after a failure,
  doubling). A ``[[mapping]]`` contact ``"trunk:NAME"`` sends {vdigits} through the trunk,
  ``"trunk:NAME:TEMPLATE"`` a template (``"trunk:provider:+1{vdigits}"``).

Modules (imports go down this list only)
  ``layering`` -- ``load_config``: which files, merged how, with provenance;
  ``validate`` -- the server-wide sections, and the order every section is read in;
  ``dialplan`` -- lines, groups, aliases, permissions, mapping/fallback rules;
  ``tables`` -- typed readers whose errors name the file that set a key;
  ``specs`` -- ``parse_listen`` / ``parse_ranges`` (also used for ``--listen``);
  ``records`` -- ``Config`` and its section records, ``ConfigError``;
  ``edit`` -- ``set_line_credentials`` (tomlkit, comments kept); ``demo`` -- the demo config;
  ``_text`` -- string checks shared by all of them.
This package imports neither asyncio nor socket: the CLI tools load configs without them.
"""

from __future__ import annotations

from .demo import DEMO_LINES, demo_config_text, generate_password
from .edit import set_line_credentials
from .layering import load_config
from .records import (
    ALGORITHMS,
    CLI,
    DEFAULT_CHAIN,
    Config,
    ConfigError,
    ControlConfig,
    FeaturesConfig,
    GroupConfig,
    HooksConfig,
    LineConfig,
    Listen,
    LoggingConfig,
    Network,
    ProxyConfig,
    Ranges,
    RedirectConfig,
    RuleConfig,
    SecurityConfig,
    ServerConfig,
    StoreConfig,
    TrunkConfig,
    WebConfig,
)
from .specs import parse_listen, parse_ranges
from .trunks import TRUNK_PREFIX, check_trunk_rules, read_trunks

__all__ = [
    "TRUNK_PREFIX", "check_trunk_rules", "read_trunks",
    "ALGORITHMS", "CLI", "DEFAULT_CHAIN", "DEMO_LINES", "Config", "ConfigError", "ControlConfig",
    "FeaturesConfig", "GroupConfig", "HooksConfig", "LineConfig", "Listen", "LoggingConfig",
    "Network", "ProxyConfig", "Ranges", "RedirectConfig", "RuleConfig", "SecurityConfig",
    "ServerConfig", "StoreConfig", "TrunkConfig", "WebConfig", "demo_config_text", "generate_password",
    "load_config", "parse_listen",
    "parse_ranges", "set_line_credentials",
]
