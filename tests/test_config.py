"""Tests for sipyard.config: defaults, layering with provenance, validation errors, tools."""

from __future__ import annotations

import ipaddress
import os
import pickle
import stat
import string
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sipyard import __version__
from sipyard.config import (
    DEFAULT_CHAIN,
    DEMO_LINES,
    Config,
    ConfigError,
    Listen,
    Ranges,
    demo_config_text,
    generate_password,
    load_config,
    parse_listen,
    parse_ranges,
    set_line_credentials,
)

MD5 = "0123456789abcdef" * 2
SHA = "fedcba9876543210" * 4
BASE = '[server]\nrealm = "pbx.test"\n'


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, **kwargs: object) -> Config:
    return load_config(write(tmp_path / "sipyard.toml", text), **kwargs)  # type: ignore[arg-type]


def fails(tmp_path: Path, text: str, **kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, **kwargs)
    return info.value


# ------------------------------------------------------------------------------- defaults

def test_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, BASE)
    s = cfg.server
    assert s.realm == "pbx.test" and s.domains == ()
    assert s.listen == (Listen("udp", "127.0.0.1", 5060), Listen("tcp", "127.0.0.1", 5060))
    assert s.data_dir == Path("/var/lib/sipyard") and s.hooks_dir == Path("/usr/libexec/sipyard")
    assert s.algorithms == ("MD5",) and str(s.extensions) == "10-89"
    assert (s.min_expires, s.max_expires, s.default_expires) == (60, 3600, 3600)
    assert (s.system, s.timezone, s.metrics) == ("system", "UTC", None)
    assert (s.max_message_size, s.nonce_ttl) == (65536, 300)
    assert s.server_header == f"sipyard/{__version__}"
    assert cfg.logging.level == "info"
    sec = cfg.security
    assert not sec.open_registration and sec.allow == () and sec.trusted == ()
    assert (sec.max_auth_failures, sec.failure_window, sec.ban_seconds, sec.register_rate) == (
        20, 60, 600, 500)
    assert cfg.store.url is None and cfg.store.synchronous == "full"
    assert (cfg.hooks.timeout, cfg.hooks.max_running, cfg.hooks.queue) == (10.0, 4, 1000)
    assert cfg.redirect.chain == DEFAULT_CHAIN == (
        "registrations", "aliases", "subscribe", "mapping", "fallback", "pickup",
        "directed_pickup", "join")
    assert cfg.redirect.require_auth and cfg.redirect.suspend_timeout == 30.0
    assert cfg.control.group is None and cfg.control.socket_mode == 0o660
    assert cfg.control.request_timeout == 5.0
    f = cfg.features
    assert (f.directed_pickup, f.join, f.global_pickup, f.pickup_agent, f.pickup_wait) == (
        "*78", "*79", None, None, 2.0)
    assert cfg.lines == {} and cfg.groups == {} and cfg.aliases == {} and cfg.permissions == {}
    assert cfg.mapping == () and cfg.fallback == () and cfg.line_numbers == ()
    assert cfg.source_files == (tmp_path / "sipyard.toml",) and cfg.state is None
    assert cfg.warnings == ()


def test_every_value_set(tmp_path: Path) -> None:
    cfg = load(tmp_path, """
[server]
realm = "pbx.test"
domains = ["PBX.example", "[2001:DB8::1]"]
listen = ["udp:[::1]:5070", "10.0.0.1:5080"]
data_dir = "data"
hooks_dir = "../hooks"
algorithms = ["sha-256", "MD5", "MD5"]
extensions = "100-699"
min_expires = 30
max_expires = 7200
default_expires = 600
system = "pbx"
timezone = "Europe/Berlin"
metrics = "127.0.0.1:9100"
max_message_size = 4096
nonce_ttl = 60
server_header = ""
[logging]
level = "DEBUG"
[security]
open_registration = true
allow = ["10.0.0.0/8", "2001:db8::/32"]
trusted = ["192.168.1.7/24"]
register_rate = 0
[store]
url = "redis://localhost/0"
synchronous = "Normal"
[hooks]
timeout = 2
max_running = 1
queue = 10
[redirect]
chain = ["registrations", "mapping"]
require_auth = false
suspend_timeout = 5
[control]
group = "sipyard"
socket_mode = "0640"
request_timeout = 1.5
[features]
directed_pickup = ""
join = "#9"
global_pickup = "*8"
pickup_agent = "100"
pickup_wait = 0.5
""")
    s = cfg.server
    assert s.domains == ("pbx.example", "[2001:db8::1]")
    assert s.listen == (Listen("udp", "::1", 5070), Listen("udp", "10.0.0.1", 5080),
                        Listen("tcp", "10.0.0.1", 5080))
    assert s.data_dir == tmp_path / "data" and s.hooks_dir == tmp_path.parent / "hooks"
    assert s.algorithms == ("SHA-256", "MD5") and 100 in s.extensions and 99 not in s.extensions
    assert (s.min_expires, s.max_expires, s.default_expires) == (30, 7200, 600)
    assert (s.system, s.timezone, s.metrics) == ("pbx", "Europe/Berlin", ("127.0.0.1", 9100))
    assert (s.max_message_size, s.nonce_ttl, s.server_header) == (4096, 60, "")
    assert cfg.logging.level == "debug"
    assert cfg.security.open_registration and cfg.security.register_rate == 0
    assert cfg.security.allow == (ipaddress.ip_network("10.0.0.0/8"),
                                  ipaddress.ip_network("2001:db8::/32"))
    assert cfg.security.trusted == (ipaddress.ip_network("192.168.1.0/24"),)
    assert cfg.store.url == "redis://localhost/0" and cfg.store.synchronous == "normal"
    assert (cfg.hooks.timeout, cfg.hooks.max_running, cfg.hooks.queue) == (2.0, 1, 10)
    assert cfg.redirect.chain == ("registrations", "mapping") and not cfg.redirect.require_auth
    assert cfg.control.group == "sipyard" and cfg.control.socket_mode == 0o640
    assert cfg.features.directed_pickup is None and cfg.features.global_pickup == "*8"
    assert cfg.features.pickup_agent == "100" and cfg.features.pickup_wait == 0.5


def test_socket_mode_forms(tmp_path: Path) -> None:
    for text, mode in (("0o600", 0o600), ('"660"', 0o660), ('"0o644"', 0o644), ("416", 0o640)):
        assert load(tmp_path, BASE + f"[control]\nsocket_mode = {text}\n").control.socket_mode == mode


def test_is_our_domain(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[server]\nrealm = "PBX.test"\ndomains = ["192.0.2.1", "[2001:db8::1]",'
               ' "Other.Example"]\n')
    for host in ("pbx.test", "PBX.TEST", "pbx.test.", "192.0.2.1", "other.example",
                 "[2001:db8::1]", "2001:DB8:0::1", "[2001:0db8::0001]"):
        assert cfg.is_our_domain(host), host
    for host in ("example.com", "192.0.2.2", "[2001:db8::2]", "test"):
        assert not cfg.is_our_domain(host), host


def test_lines_groups_aliases_permissions(tmp_path: Path) -> None:
    cfg = load(tmp_path, BASE + f"""
[lines.20]
display = "Twenty"
ha1_md5 = "{MD5.upper()}"
ha1_sha256 = "{SHA}"
algorithms = ["SHA-256", "MD5"]
max_contacts = 2
overflow = "REJECT"
type = "softphone"
permissions = ["outside", "night"]
[lines.19]
secret = "s"
[lines.10]
secret = "s"
[groups.100]
display = "All"
members = [20, "19"]
[aliases]
reception = "sip:20@pbx.test"
team = ["20", "sip:10@pbx.test"]
[permissions]
20 = ["night", "intl"]
10 = ["local"]
""")
    assert cfg.line_numbers == ("10", "19", "20")
    line = cfg.line(20)
    assert line is not None and line is cfg.line("20")
    assert line.display == "Twenty" and line.secret is None and line.has_credentials
    assert line.ha1 == {"MD5": MD5, "SHA-256": SHA}
    assert line.algorithms == ("SHA-256", "MD5") and line.max_contacts == 2
    assert line.overflow == "reject" and line.type == "softphone"
    assert line.permissions == ("outside", "night", "intl")
    ten = cfg.line(10)
    assert ten is not None and ten.permissions == ("local",) and ten.type == "phone"
    assert ten.display is None and ten.overflow == "replace" and ten.max_contacts == 10
    assert "secret" not in repr(ten) and "ha1" not in repr(line)  # no secrets in logs
    assert cfg.line(11) is None and cfg.group(100) is cfg.groups["100"]
    assert cfg.groups["100"].members == ("20", "19") and cfg.groups["100"].display == "All"
    assert cfg.aliases == {"reception": ("sip:20@pbx.test",),
                           "team": ("20", "sip:10@pbx.test")}
    assert cfg.permissions == {"20": ("night", "intl"), "10": ("local",)}


def test_line_algorithms_narrowed_with_warning(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[server]\nrealm = "r"\nalgorithms = ["SHA-256", "MD5"]\n'
               f'[lines.10]\nha1_md5 = "{MD5}"\n[lines.11]\nsecret = "x"\n')
    assert cfg.lines["10"].algorithms == ("MD5",)
    assert cfg.lines["11"].algorithms == ("SHA-256", "MD5")
    assert len(cfg.warnings) == 1
    assert cfg.warnings[0].startswith(f"{tmp_path / 'sipyard.toml'}: lines.10: no digest for SHA-256")


def test_secret_may_hold_any_character(tmp_path: Path) -> None:
    cfg = load(tmp_path, BASE + '[lines.10]\nsecret = "tab\\there\\u0001"\n')
    assert cfg.lines["10"].secret == "tab\there\x01"


def test_open_registration_allows_lines_without_credentials(tmp_path: Path) -> None:
    cfg = load(tmp_path, BASE + "[security]\nopen_registration = true\n[lines.10]\n"
               'display = "x"\n')
    assert not cfg.lines["10"].has_credentials and cfg.lines["10"].algorithms == ("MD5",)


# ------------------------------------------------------------------------------- errors

ERRORS = [
    ("[server]\n", "server.realm", "is required"),
    ('[server]\nrealm = ""\n', "server.realm", "must not be empty"),
    ('[server]\nrealm = "a\\"b"\n', "server.realm", "quotes"),
    ("[server]\nrealm = 5\n", "server.realm", "must be a string"),
    ('[server]\nrealm = "r"\nrelam = "x"\n', "server.relam", "did you mean 'realm'"),
    ('server = "x"\n', "server", "must be a table"),
    ('realm = "x"\n[server]\nrealm = "r"\n', "realm", "top-level keys belong in a table"),
    (BASE + 'domains = "x"\n', "server.domains", "array of strings"),
    (BASE + 'domains = ["a", ""]\n', "server.domains[1]", "non-empty string"),
    (BASE + "listen = []\n", "server.listen", "must not be empty"),
    (BASE + 'listen = ["udp:127.0.0.1:5060", "tls:1.2.3.4:5061"]\n', "server.listen[1]",
     "transport must be udp or tcp"),
    (BASE + 'listen = ["udp:::1:5060"]\n', "server.listen[0]", "need brackets"),
    (BASE + 'listen = ["udp:127.0.0.1:99999"]\n', "server.listen[0]", "bad port"),
    (BASE + 'algorithms = ["SHA-1"]\n', "server.algorithms[0]", "unknown digest algorithm"),
    (BASE + "algorithms = []\n", "server.algorithms", "must not be empty"),
    (BASE + 'extensions = "89-10"\n', "server.extensions", "bad range"),
    (BASE + "min_expires = 0\n", "server.min_expires", "at least 1"),
    (BASE + "min_expires = 1.5\n", "server.min_expires", "must be an integer"),
    (BASE + "min_expires = true\n", "server.min_expires", "must be an integer"),
    (BASE + "max_expires = 30\n", "server.max_expires", "at least 60"),
    (BASE + "default_expires = 7200\n", "server.default_expires", "between 60 and 3600"),
    (BASE + 'timezone = "Mars/Olympus"\n', "server.timezone", "unknown time zone"),
    (BASE + 'metrics = "localhost"\n', "server.metrics", "HOST:PORT"),
    (BASE + "max_message_size = 10\n", "server.max_message_size", "between"),
    (BASE + "server_header = 1\n", "server.server_header", "must be a string"),
    (BASE + 'server_header = "x\\r\\nVia: evil"\n', "server.server_header", "control characters"),
    (BASE + '[lines.10]\nsecret = "x"\ndisplay = "a\\nb"\n', "lines.10.display",
     "control characters"),
    (BASE + '[aliases]\nfront = ["sip:a@b", "sip:c@d\\r\\n"]\n', "aliases.front[1]",
     "control characters"),
    (BASE + '[logging]\nlevel = "loud"\n', "logging.level", "debug, info, warning, error"),
    (BASE + '[security]\nopen_registration = "yes"\n', "security.open_registration",
     "true or false"),
    (BASE + '[security]\nallow = ["10.0.0.0/8", "10.0.0.300/8"]\n', "security.allow[1]",
     "bad network"),
    (BASE + '[security]\ntrusted = ["nonsense"]\n', "security.trusted[0]", "bad network"),
    (BASE + "[security]\nregister_rate = -1\n", "security.register_rate", "at least 0"),
    (BASE + '[store]\nurl = "mysql://x"\n', "store.url", "must start with"),
    (BASE + '[store]\nsynchronous = "off"\n', "store.synchronous", "full, normal"),
    (BASE + "[hooks]\ntimeout = 0\n", "hooks.timeout", "between"),
    (BASE + "[hooks]\nmax_running = 0\n", "hooks.max_running", "between 1"),
    (BASE + '[hooks]\ntimeout = "10"\n', "hooks.timeout", "must be a number"),
    (BASE + '[redirect]\nchain = ["a", "b", "a"]\n', "redirect.chain[2]", "listed twice"),
    (BASE + '[control]\nsocket_mode = "0990"\n', "control.socket_mode", "permission mode"),
    (BASE + "[control]\nsocket_mode = 4096\n", "control.socket_mode", "permission mode"),
    (BASE + '[features]\njoin = "*78"\n', "features.join", "already used"),
    (BASE + '[features]\nglobal_pickup = "*8a"\n', "features.global_pickup", "digits, * and #"),
    (BASE + '[lines.10]\nsecret = "x"\nsecert = "y"\n', "lines.10.secert",
     "did you mean 'secret'"),
    (BASE + '[lines.90]\nsecret = "x"\n', "lines.90", "outside server.extensions (10-89)"),
    (BASE + '[lines.010]\nsecret = "x"\n', "lines.010", "without leading zeros"),
    (BASE + '[lines.ab]\nsecret = "x"\n', "lines.ab", "decimal numbers"),
    (BASE + "[lines]\n10 = 5\n", "lines.10", "must be a table"),
    (BASE + '[lines.10]\ndisplay = "x"\n', "lines.10", "needs a secret or an ha1_* digest"),
    (BASE + '[lines.10]\nha1_md5 = "abc"\n', "lines.10.ha1_md5", "32 hexadecimal digits"),
    (BASE + f'[lines.10]\nha1_sha256 = "{MD5}"\n', "lines.10.ha1_sha256", "64 hexadecimal"),
    (BASE + f'[lines.10]\nha1_sha512_256 = "{SHA[:-1]}g"\n', "lines.10.ha1_sha512_256",
     "64 hexadecimal"),
    (BASE + f'[lines.10]\nsecret = "x"\nha1_md5 = "{MD5}"\n', "lines.10.ha1_md5", "not both"),
    (BASE + f'[lines.10]\nha1_md5 = "{MD5}"\nalgorithms = ["SHA-256"]\n', "lines.10",
     "no credential for its algorithms (SHA-256); add ha1_sha256"),
    (BASE + '[lines.10]\nsecret = "x"\noverflow = "drop"\n', "lines.10.overflow", "replace"),
    (BASE + '[lines.10]\nsecret = "x"\nmax_contacts = 0\n', "lines.10.max_contacts", "between"),
    (BASE + '[lines.10]\nsecret = "x"\npermissions = "a"\n', "lines.10.permissions",
     "array of strings"),
    (BASE + "[groups.99]\nmembers = []\n", "groups.99", "at least 100"),
    (BASE + '[lines.10]\nsecret = "x"\n[groups.100]\nmembers = [10, 11]\n',
     "groups.100.members[1]", "line 11 is not defined"),
    (BASE + '[lines.10]\nsecret = "x"\n[groups.100]\nmembers = [10, "10"]\n',
     "groups.100.members[1]", "listed twice"),
    (BASE + '[groups.100]\nmembers = [true]\n', "groups.100.members[0]", "line number"),
    (BASE + '[groups.100]\nmember = []\n', "groups.100.member", "did you mean 'members'"),
    (BASE + 'extensions = "10-200"\n[lines.100]\nsecret = "x"\n[groups.100]\n',
     "groups.100", "already a line"),
    (BASE + "[aliases]\nfront = []\n", "aliases.front", "must not be empty"),
    (BASE + '[aliases]\n"a.b" = 3\n', 'aliases."a.b"', "string or an array of strings"),
    (BASE + '[lines.10]\nsecret = "x"\n[aliases]\n10 = "sip:x@y"\n', "aliases.10",
     "hides the line"),
    (BASE + '[permissions]\n11 = ["x"]\n', "permissions.11", "line 11 is not defined"),
    ('mapping = "x"\n' + BASE, "mapping", "array of tables"),
    (BASE + '[[mapping]]\ncontacts = ["sip:a@b"]\n[[mapping]]\nusers = ["1"]\n',
     "mapping[1].contacts", "is required"),
    (BASE + '[[fallback]]\ncontacts = []\n', "fallback[0].contacts", "must not be empty"),
    (BASE + '[[fallback]]\ncontacts = ["x"]\nhost = "y"\n', "fallback[0].host",
     "did you mean 'hosts'"),
    (BASE + '[[mapping]]\ncontacts = ["x"]\nusers = [1]\n', "mapping[0].users[0]",
     "non-empty string"),
    (BASE + '[[mapping]]\ncontacts = ["x"]\ntimezone = "Nowhere"\n', "mapping[0].timezone",
     "unknown time zone"),
]


@pytest.mark.parametrize(("text", "key", "reason"), ERRORS, ids=[e[1] for e in ERRORS])
def test_error_names_file_and_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    err = fails(tmp_path, text)
    assert err.file == str(tmp_path / "sipyard.toml")
    assert err.key == key
    assert reason in err.reason
    assert str(err) == f"{err.file}: {key}: {err.reason}"


def test_config_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(ConfigError("f.toml", "server.realm", "is required")))
    assert (err.file, err.key, err.reason) == ("f.toml", "server.realm", "is required")
    assert str(err) == "f.toml: server.realm: is required"


def test_missing_main_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert info.value.file == str(tmp_path / "nope.toml") and info.value.key == "(file)"
    assert "cannot read" in info.value.reason


def test_syntax_error_names_line(tmp_path: Path) -> None:
    err = fails(tmp_path, '[server]\nrealm = "x"\nlisten = ]\n')
    assert err.file == str(tmp_path / "sipyard.toml")
    assert err.key == "line 3, column 10" and err.reason == "TOML syntax: Invalid value"
    assert fails(tmp_path, '[server]\nrealm = "x"\nlisten = [\n').key == "end of document"


def test_bad_utf8(tmp_path: Path) -> None:
    (tmp_path / "sipyard.toml").write_bytes(b'[server]\nrealm = "\xff"\n')
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(tmp_path / "sipyard.toml")


def test_unknown_top_level_table_is_a_warning(tmp_path: Path) -> None:
    cfg = load(tmp_path, BASE + "[rooms]\nkitchen = 1\n")
    assert cfg.warnings == (f"{tmp_path / 'sipyard.toml'}: rooms: unknown table, ignored",)


# ------------------------------------------------------------------------------- layering

MAIN = f"""# main
[server]
realm = "pbx.test"
min_expires = 30
listen = ["udp:127.0.0.1:5060"]
[lines.10]
display = "Ten"
secret = "a"
[lines.11]
ha1_md5 = "{MD5}"
[groups.100]
members = [10, 11]
[[mapping]]
users = ["1x"]
contacts = ["sip:main@x"]
[[mapping]]
contacts = ["sip:main2@x"]
[[fallback]]
contacts = ["sip:gw@x"]
"""


def test_custom_and_state_layers(tmp_path: Path) -> None:
    main = write(tmp_path / "sipyard.toml", MAIN)
    custom = write(tmp_path / "custom.toml",
                   '[server]\nmax_expires = 600\ndefault_expires = 300\n'
                   '[lines.10]\ndisplay = "Reception"\n[lines.12]\nsecret = "c"\n')
    night = write(tmp_path / "states" / "night.toml",
                  '[groups.100]\nmembers = [12]\n[[mapping]]\ncontacts = ["sip:night@x"]\n')
    day = load_config(main)
    assert day.source_files == (main, custom) and day.state is None
    assert day.server.min_expires == 30 and day.server.max_expires == 600
    assert day.lines["10"].display == "Reception" and day.lines["10"].secret == "a"
    assert day.line_numbers == ("10", "11", "12")
    assert day.groups["100"].members == ("10", "11")
    assert [r.contacts for r in day.mapping] == [("sip:main@x",), ("sip:main2@x",)]
    assert [(r.source, r.index) for r in day.mapping] == [(str(main), 0), (str(main), 1)]

    cfg = load_config(main, state="night")
    assert cfg.source_files == (main, custom, night) and cfg.state == "night"
    assert cfg.groups["100"].members == ("12",)
    # [[mapping]] from a later layer replaces the whole list; [[fallback]] is untouched.
    assert len(cfg.mapping) == 1 and cfg.mapping[0].contacts == ("sip:night@x",)
    assert cfg.mapping[0].source == str(night) and cfg.mapping[0].users == ()
    assert cfg.fallback[0].source == str(main) and cfg.fallback[0].kind == "fallback"
    assert cfg.mapping[0].timezone == "UTC"
    for none in (None, "none", "NONE", ""):
        assert load_config(main, state=none).state is None


def test_error_in_state_file_names_state_file(tmp_path: Path) -> None:
    main = write(tmp_path / "sipyard.toml", MAIN)
    night = write(tmp_path / "states" / "night.toml", "[groups.100]\nmembers = [10, 42]\n")
    with pytest.raises(ConfigError) as info:
        load_config(main, state="night")
    assert str(info.value) == f"{night}: groups.100.members[1]: line 42 is not defined"
    write(night, '[[mapping]]\ncontacts = ["a"]\n[[mapping]]\ncontacts = ["b"]\nusers = 5\n')
    with pytest.raises(ConfigError) as info:
        load_config(main, state="night")
    assert (info.value.file, info.value.key) == (str(night), "mapping[1].users")
    write(night, "[server]\nmin_expires = 7200\n")  # now main's max_expires (3600) is too low
    with pytest.raises(ConfigError) as info:
        load_config(main, state="night")
    assert info.value.file == str(main) and info.value.key == "server.max_expires"


def test_error_in_custom_names_custom_and_replaced_key_forgets_old_file(tmp_path: Path) -> None:
    main = write(tmp_path / "sipyard.toml", MAIN)
    custom = write(tmp_path / "custom.toml", '[lines.11]\nha1_md5 = "xyz"\n')
    with pytest.raises(ConfigError) as info:
        load_config(main)
    assert (info.value.file, info.value.key) == (str(custom), "lines.11.ha1_md5")
    # A line added by custom.toml without credentials: the table's file is custom.toml.
    write(custom, '[lines.13]\ndisplay = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(main)
    assert (info.value.file, info.value.key) == (str(custom), "lines.13")
    # A layer replacing a table by a scalar: the error is the replacing file's.
    write(custom, "lines = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(main)
    assert (info.value.file, info.value.key) == (str(custom), "lines")
    # Credentials from two layers clash: named where the digest came from.
    write(custom, f'[lines.10]\nha1_md5 = "{MD5}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(main)
    assert (info.value.file, info.value.key) == (str(custom), "lines.10.ha1_md5")


def test_rule_error_helper(tmp_path: Path) -> None:
    main = write(tmp_path / "sipyard.toml", MAIN)
    rule = load_config(main).mapping[1]
    assert str(rule.error("users", "bad pattern")) == f"{main}: mapping[1].users: bad pattern"
    assert rule.raw == {"contacts": ["sip:main2@x"]}


def test_missing_or_bad_state(tmp_path: Path) -> None:
    main = write(tmp_path / "sipyard.toml", MAIN)
    with pytest.raises(ConfigError) as info:
        load_config(main, state="night")
    assert info.value.file == str(tmp_path / "states" / "night.toml")
    assert "night" in info.value.reason
    with pytest.raises(ConfigError) as info:
        load_config(main, state="../sipyard")
    assert info.value.key == "state"


def test_command_line_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main = write(tmp_path / "etc" / "sipyard.toml", MAIN.replace("min_expires = 30\n",
                                                                  'data_dir = "var"\n'))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(main)
    assert cfg.server.data_dir == tmp_path / "etc" / "var"  # the file's dir, not the cwd
    cfg = load_config(main, data_dir="run", listen=["127.0.0.1:0", "udp:[::1]:5062"])
    assert cfg.server.data_dir == tmp_path / "run"  # the cwd for the command line
    assert cfg.server.listen == (Listen("udp", "127.0.0.1", 0), Listen("tcp", "127.0.0.1", 0),
                                 Listen("udp", "::1", 5062))
    assert load_config(main, listen=[]).server.listen == (Listen("udp", "127.0.0.1", 5060),)
    assert cfg.states_dir == tmp_path / "etc" / "states"
    with pytest.raises(ConfigError) as info:
        load_config(main, listen=["nowhere"])
    assert (info.value.file, info.value.key) == ("<command line>", "--listen")


# ------------------------------------------------------------------------------- parsers

@pytest.mark.parametrize(("spec", "expected"), [
    ("udp:127.0.0.1:5060", ["udp:127.0.0.1:5060"]),
    ("TCP:0.0.0.0:5061", ["tcp:0.0.0.0:5061"]),
    ("127.0.0.1:5060", ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]),
    ("localhost:0", ["udp:localhost:0", "tcp:localhost:0"]),
    ("udp:[::1]:5060", ["udp:[::1]:5060"]),
    ("[2001:DB8:0::1]:5070", ["udp:[2001:db8::1]:5070", "tcp:[2001:db8::1]:5070"]),
    ("tcp:[::]:5060", ["tcp:[::]:5060"]),
    ("udp:Sip.Example.COM:5060", ["udp:sip.example.com:5060"]),
])
def test_parse_listen(spec: str, expected: list[str]) -> None:
    assert [str(x) for x in parse_listen(spec)] == expected


def test_parse_listen_fields() -> None:
    assert parse_listen("udp:[::1]:5060") == [Listen("udp", "::1", 5060)]


@pytest.mark.parametrize("spec", [
    "", "127.0.0.1", "udp:127.0.0.1", "tls:127.0.0.1:5061", "sctp:[::1]:5060",
    "udp:::1:5060", "udp:[::1]5060", "udp:[::1:5060", "udp:[zz::1]:5060", "1.2.3.4:65536",
    "1.2.3.4:-1", "1.2.3.4:05060", "300.1.1.1:5060", "bad_host:5060", "a..b:5060",
    "udp:5060",
])
def test_parse_listen_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match="bad listen address"):
        parse_listen(spec)


def test_parse_ranges() -> None:
    assert parse_ranges("10-89").spans == ((10, 89),)
    r = parse_ranges(" 1000-1999 , 100-699")
    assert r.spans == ((100, 699), (1000, 1999)) and str(r) == "100-699,1000-1999"
    assert parse_ranges("1000-99999").spans == ((1000, 99999),)
    assert parse_ranges("10-20,15-30,31,40").spans == ((10, 31), (40, 40))
    assert str(parse_ranges("7")) == "7"
    assert "10" in parse_ranges("10-89") and 100 in r and "699" in r and 1500 in r
    for outside in ("99", 700, "0100", "1e3", "", "١٠٠", True, 100.0, None):
        assert outside not in r, outside


@pytest.mark.parametrize("spec", ["", "a-b", "10-", "-10", "20-10", "1-2-3", "010-20",
                                  "10,,20", "1-1000000000", "+5", "²"])
def test_parse_ranges_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match="bad range"):
        parse_ranges(spec)


def test_ranges_is_hashable_and_frozen() -> None:
    assert hash(parse_ranges("1-2")) == hash(Ranges(((1, 2),)))


# ------------------------------------------------------------------------------- tools

def test_generate_password() -> None:
    words = {generate_password() for _ in range(50)}
    assert len(words) == 50
    allowed = set(string.ascii_letters + string.digits + "-_")
    assert all(len(w) == 16 and set(w) <= allowed for w in words)


def demo_passwords() -> dict[str, str]:
    return {str(n): generate_password() for n in range(10, 20)}


def test_demo_config_loads(tmp_path: Path) -> None:
    passwords = demo_passwords()
    passwords["12"] = 'tricky "quote" \\ back\tslash\x7f'
    cfg = load(tmp_path, demo_config_text(passwords))
    s = cfg.server
    assert s.realm == "sipyard.local" and s.domains == ("127.0.0.1", "localhost")
    assert [str(x) for x in s.listen] == ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
    assert s.data_dir == tmp_path and s.hooks_dir == tmp_path / "hooks"
    assert cfg.line_numbers == tuple(str(n) for n in range(10, 20))
    assert all(cfg.lines[n].secret == pw for n, pw in passwords.items())
    assert cfg.lines["10"].display == "Line 10" and cfg.lines["18"].display == "Line 18"
    assert cfg.lines["19"].display == "Door" and cfg.lines["19"].type == "door"
    assert cfg.groups["100"].display == "Door bell" and cfg.groups["100"].members == ("10", "11")
    assert cfg.aliases == {"reception": ("sip:10@sipyard.local",)}
    assert cfg.features.directed_pickup == "*78" and cfg.features.join == "*79"
    assert cfg.mapping == () and cfg.warnings == ()
    assert s.mode == "proxy"  # a newcomer's phones work whatever their outbound-proxy setting
    text = demo_config_text(passwords)
    assert "# [[mapping]]" in text  # the example rule is there, commented out
    uncommented = "\n".join(line.removeprefix("# ") if line.startswith("# ") and "=" in line
                            or line == "# [[mapping]]" else line for line in text.splitlines())
    rule = tomllib.loads(uncommented)["mapping"][0]
    assert set(rule) <= {"name", "hosts", "users", "permissions", "contacts"}


def test_proxy_settings(tmp_path: Path) -> None:
    cfg = load(tmp_path, BASE)
    assert cfg.server.mode == "redirect"  # existing configs keep their behaviour
    p = cfg.proxy
    assert (p.fork_group_timeout, p.timer_c, p.max_call_seconds) == (20.0, 181.0, 14400.0)
    assert (p.nat_ping_interval, p.max_branches) == (0.0, 16)
    cfg = load(tmp_path, BASE + 'mode = "proxy"\n[proxy]\ntimer_c = 200\nmax_branches = 4\n'
               '[lines.10]\nsecret = "x"\nmax_calls = 1\n')
    assert cfg.server.mode == "proxy" and cfg.proxy.timer_c == 200.0
    assert cfg.proxy.max_branches == 4 and cfg.lines["10"].max_calls == 1
    assert "server.mode" in str(fails(tmp_path, BASE + 'mode = "b2bua"\n'))
    assert "proxy.timer_c" in str(fails(tmp_path, BASE + "[proxy]\ntimer_c = 60\n"))
    assert "proxy.nope" in str(fails(tmp_path, BASE + "[proxy]\nnope = 1\n"))


def test_demo_config_needs_every_password() -> None:
    passwords = demo_passwords()
    del passwords["15"]
    with pytest.raises(ValueError, match="15"):
        demo_config_text(passwords)


COMMENTED = f"""# sipyard main config -- hand-written
[server]
realm = "pbx.test"   # do not change: hashed into digests
algorithms = ["SHA-256", "MD5"]

# the boss
[lines.10]
display = "Boss"  # keep this comment
secret = "old"
permissions = ["outside"]

[lines.11]
ha1_md5 = "{MD5}"
ha1_sha256 = "{SHA}"   # old sha

[groups.100]
members = [10, 11]  # both
"""


def test_set_line_credentials_keeps_comments(tmp_path: Path) -> None:
    path = write(tmp_path / "sipyard.toml", COMMENTED)
    os.chmod(path, 0o640)
    set_line_credentials(path, "10", ha1={"MD5": MD5.upper(), "ha1_sha256": SHA})
    text = path.read_text()
    assert "# sipyard main config -- hand-written" in text and "# the boss" in text
    assert 'display = "Boss"  # keep this comment' in text
    assert "# do not change: hashed into digests" in text and "members = [10, 11]  # both" in text
    assert 'secret = "old"' not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    line = load_config(path).lines["10"]
    assert line.secret is None and line.ha1 == {"MD5": MD5, "SHA-256": SHA}
    assert line.permissions == ("outside",)
    assert [p.name for p in tmp_path.iterdir()] == ["sipyard.toml"]  # no temp file left

    set_line_credentials(path, "11", secret="new pw")  # removes both stale digests
    text = path.read_text()
    assert "ha1_sha256" not in text.split("[lines.11]")[1].split("[groups")[0]
    assert load_config(path).lines["11"].secret == "new pw"
    assert load_config(path).lines["11"].ha1 == {}

    set_line_credentials(path, "10", ha1={"SHA-256": SHA})  # stale MD5 digest removed
    assert load_config(path).lines["10"].ha1 == {"SHA-256": SHA}
    assert 'display = "Boss"  # keep this comment' in path.read_text()


def test_set_line_credentials_new_line_and_new_table(tmp_path: Path) -> None:
    path = write(tmp_path / "sipyard.toml", COMMENTED)
    set_line_credentials(path, "12", secret="twelve")
    cfg = load_config(path)
    assert cfg.lines["12"].secret == "twelve" and cfg.groups["100"].members == ("10", "11")
    assert "[lines.12]" in path.read_text()
    path = write(tmp_path / "bare.toml", "# nothing yet\n[server]\nrealm = 'r'\n")
    set_line_credentials(path, "10", secret="x")
    assert load_config(path).lines["10"].secret == "x"
    assert path.read_text().startswith("# nothing yet\n")


def test_set_line_credentials_inline_table(tmp_path: Path) -> None:
    path = write(tmp_path / "sipyard.toml",
                 BASE + '[lines]\n10 = { display = "x", secret = "a" }  # inline\n')
    set_line_credentials(path, "10", ha1={"md5": MD5})
    assert "# inline" in path.read_text()
    line = load_config(path).lines["10"]
    assert line.ha1 == {"MD5": MD5} and line.secret is None and line.display == "x"


def test_set_line_credentials_rejects(tmp_path: Path) -> None:
    path = write(tmp_path / "sipyard.toml", COMMENTED)
    before = path.read_text()
    cases: list[dict[str, Any]] = [
        {}, {"secret": "a", "ha1": {"MD5": MD5}}, {"secret": ""}, {"ha1": {}},
        {"ha1": {"MD5": "abc"}}, {"ha1": {"SHA-1": MD5}}]
    for kwargs in cases:
        with pytest.raises(ValueError):
            set_line_credentials(path, "10", **kwargs)
    with pytest.raises(ValueError):
        set_line_credentials(path, "010", secret="x")
    write(tmp_path / "broken.toml", "[server\n")
    with pytest.raises(ConfigError):
        set_line_credentials(tmp_path / "broken.toml", "10", secret="x")
    assert path.read_text() == before


def test_demo_night_state_overlay(tmp_path: Path) -> None:
    """The shipped night overlay (sipyard/data/states/night.toml) re-routes the door bell."""
    from importlib import resources

    main = tmp_path / "sipyard.toml"
    main.write_text(demo_config_text({n: f"pw-{n}" for n in DEMO_LINES}))
    (tmp_path / "states").mkdir()
    night = resources.files("sipyard").joinpath("data/states/night.toml").read_text("utf-8")
    (tmp_path / "states" / "night.toml").write_text(night)
    day = load_config(main)
    assert day.groups["100"].members == ("10", "11")
    cfg = load_config(main, state="night")
    assert cfg.state == "night"
    assert cfg.groups["100"].members == ("12",)
    assert cfg.groups["100"].display == "Door bell"
