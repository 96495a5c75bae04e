"""``sipyard …``: run the server and talk to a running one.

Every subcommand takes ``-c CONFIG`` and ``--data DIR`` anywhere after its name,
and ``--json`` where it prints data (one JSON document on stdout). Exit codes
(DESIGN §6): 0 ok, 1 invalid or refused, 2 timed out, 3 send failed, 4 server
not running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import getpass
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, clitext, sdnotify
from .clihelp import VersionAction, add_examples

if TYPE_CHECKING:
    from .config import Config, ConfigError

__all__ = ["main"]

DEFAULT_CONFIG = "/etc/sipyard/sipyard.toml"
LEVELS = ("debug", "info", "warning", "error")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 1 ("invalid argument"), not 2 ("timed out")."""

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def _common(p: argparse.ArgumentParser, *, json_out: bool = True) -> None:
    p.add_argument("-c", "--config", default=os.environ.get("SIPYARD_CONFIG", DEFAULT_CONFIG),
                   help=f"config file (default {DEFAULT_CONFIG}, or $SIPYARD_CONFIG)")
    p.add_argument("--data", help="data dir (overrides [server] data_dir)")
    if json_out:
        p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--timeout", type=float, default=5.0, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="sipyard", description="SIP registrar and redirect server",
                 epilog="`sipyard COMMAND --help` shows an example of each command.")
    ap.add_argument("--version", action=VersionAction)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the server in the foreground")
    _common(p, json_out=False)
    p.add_argument("--listen", action="append", default=None,
                   help="udp:HOST:PORT | tcp:HOST:PORT | HOST:PORT (repeatable)")
    p.add_argument("--log-level", type=str.lower, choices=LEVELS, default=None)
    p.add_argument("--workers", default=None,
                   help="worker processes: N or auto (overrides [server] workers)")

    p = sub.add_parser("check", help="validate the config (all layers)")
    _common(p)
    p.add_argument("--state", help="also check this run-state overlay")

    p = sub.add_parser("demo-init", help="write a demo config into DIR on first run")
    p.add_argument("dir", nargs="?", default="demo")

    p = sub.add_parser("passwd", help="set a line's password (asks, or --password / stdin)")
    _common(p)
    p.add_argument("line")
    p.add_argument("--password", help="the new password (else asked on the terminal)")
    p.add_argument("--ha1", action="store_true",
                   help="store HA1 digests (MD5, SHA-256, SHA-512-256) instead of the secret")

    p = sub.add_parser("status", help="server status")
    _common(p)
    p = sub.add_parser("registry", help="registered bindings, all lines or one")
    _common(p)
    p.add_argument("line", nargs="?")
    p = sub.add_parser("message", help="send a text message to a line, a group or all")
    _common(p)
    p.add_argument("--to", required=True, help="LINE | GROUP | all")
    p.add_argument("--subject")
    p.add_argument("text", nargs="+")
    p = sub.add_parser("presence", help="set a line's presence: here | away | dnd")
    _common(p)
    p.add_argument("line")
    p.add_argument("state", choices=("here", "away", "dnd"))
    p = sub.add_parser("reload", help="ask the server to re-read its config")
    _common(p)
    p = sub.add_parser("level", help="set the server's log level")
    _common(p)
    p.add_argument("level", type=str.lower, choices=LEVELS + ("0", "1", "2", "3"))
    p = sub.add_parser("runstate", help="show or select the run state (none clears it)")
    _common(p)
    p.add_argument("state", nargs="?")
    p = sub.add_parser("unregister", help="drop every binding of a line")
    _common(p)
    p.add_argument("line")
    p = sub.add_parser("bans", help="list banned source addresses")
    _common(p)
    p = sub.add_parser("unban", help="lift the ban on an address (or 'all')")
    _common(p)
    p.add_argument("address")
    p = sub.add_parser("stop", help="stop the running server")
    _common(p)
    p = sub.add_parser("calls", help="calls in flight (proxy mode)")
    _common(p)
    p = sub.add_parser("trunks", help="provider trunks and their registration")
    _common(p)
    p = sub.add_parser("cdr", help="call detail records (proxy mode)")
    _common(p)
    p.add_argument("--since", help="only calls started since TIME (ISO 8601, epoch seconds, "
                   "or an age such as 2h, 30m, 1d)")
    p.add_argument("--line", help="only calls from or to this line")
    p.add_argument("--limit", type=int, default=1000, help="at most this many (newest)")
    add_examples(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .config import ConfigError

    try:
        return int(_COMMANDS[args.cmd](args) or 0)
    except KeyboardInterrupt:
        return 130
    except _Failed as exc:
        return _fail(args, exc.message, exc.code, exc.extra)
    except ConfigError as exc:
        return _fail(args, str(exc), 1, _config_error_fields(exc))
    except OSError as exc:  # an unreadable file, a full disk: one line, never a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(args, f"{where}{exc.strerror or exc}", 1)


# -- helpers ------------------------------------------------------------------------

class _Failed(Exception):
    """Ends a command with a one-line message on stderr and an exit code."""

    def __init__(self, message: str, code: int = 1, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.extra = extra or {}


def _fail(args: argparse.Namespace, msg: str, code: int = 1,
          extra: dict[str, Any] | None = None) -> int:
    """Report a failure: stderr always; with ``--json`` also one JSON document on stdout."""
    print(f"sipyard {args.cmd}: {msg}", file=sys.stderr)
    if getattr(args, "json", False):
        doc = {"error": msg, "exit": code}
        doc.update({k: v for k, v in (extra or {}).items() if k not in ("ok", "error")})
        print(json.dumps(doc, indent=2, sort_keys=True))
    return code


def _config_error_fields(exc: ConfigError) -> dict[str, Any]:
    return {"file": exc.file, "key": exc.key, "reason": exc.reason}


def _load(args: argparse.Namespace, *, listen: Sequence[str] | None = None,
          state: str | None = None) -> Config:
    from .config import load_config

    return load_config(args.config, data_dir=args.data, listen=listen, state=state)


def _data_dir(args: argparse.Namespace) -> Path:
    """Where the control socket is: ``--data``, else the config's ``[server] data_dir``.

    A config that does not validate (someone is editing custom.toml and wants to see
    ``sipyard reload`` refuse it) must not stop the tools from reaching the server, so
    then the data dir is read from the raw TOML of the main file and custom.toml.
    """
    if args.data:
        return Path(os.path.abspath(args.data))
    from .config import ConfigError

    try:
        return Path(_load(args).server.data_dir)
    except ConfigError:
        found = _raw_data_dir(Path(args.config))
        if found is None:
            raise
        return found


def _raw_data_dir(main: Path) -> Path | None:
    import tomllib

    def server_value(path: Path) -> Any:
        with path.open("rb") as fh:
            server = tomllib.load(fh).get("server")
        return server.get("data_dir") if isinstance(server, dict) else None

    try:
        value = server_value(main)
    except (OSError, ValueError):
        return None
    custom = main.parent / "custom.toml"
    with contextlib.suppress(OSError, ValueError):
        value = server_value(custom) or value
    if not isinstance(value, str) or not value:
        value = "/var/lib/sipyard"
    base = Path(os.path.abspath(main.parent))
    return Path(os.path.normpath(base / Path(value).expanduser()))


def _call(args: argparse.Namespace, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the running server; a failure raises :class:`_Failed`."""
    from .control import EXIT_TIMEOUT, ControlClientError, call

    sock = _data_dir(args) / "control.sock"
    try:
        reply = call(sock, request, timeout=args.timeout)
    except ControlClientError as exc:
        raise _Failed(exc.message, exc.exit_code) from None
    if not reply.get("ok"):
        error = str(reply.get("error") or "refused")
        # The server's own deadline for an op ran out: that is a time-out, not a refusal.
        code = EXIT_TIMEOUT if error == "timed out" else 1
        raise _Failed(error, code, reply)
    return reply


def _emit(args: argparse.Namespace, reply: dict[str, Any], text: str) -> int:
    if getattr(args, "json", False):
        reply = {k: v for k, v in reply.items() if k != "ok"}
        print(json.dumps(reply, indent=2, sort_keys=True))
    elif text:
        print(text)
    return 0


# -- commands -------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    # SIGHUP's default action kills the process: ignore it until the reload handler is in
    # place (a config being loaded for the first time is fresh anyway).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    cfg = _load(args, listen=args.listen)
    from .logsetup import configure

    # Under systemd the journal stamps each line: no timestamps of our own there.
    configure(args.log_level or cfg.logging.level)
    for w in cfg.warnings:
        logging.getLogger("sipyard").warning("config: %s", w)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    from .cluster.worker import WorkerRole, from_env
    from .supervisor import SupervisorError, supervise, worker_count

    worker = from_env()
    if worker is None:
        try:
            count = worker_count(args.workers, cfg.server.workers)
            if count > 1:
                return supervise(args, cfg, count)
        except SupervisorError as exc:
            return _fail(args, str(exc))
    from .app import App

    app = App(cfg, config_path=Path(args.config))
    app.load_args = {"data_dir": args.data, "listen": args.listen}
    role = WorkerRole(app, *worker) if worker is not None else None
    if role is not None:
        role.prepare()
    shared = None
    url = cfg.store.url or ""
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .cluster.shared import SharedState

        shared = SharedState(app.ops.ctx, url)

    async def run() -> int:
        try:
            bound = await app.start()
            if role is not None:
                await role.start()
            if shared is not None:
                await shared.start()
        except OSError as exc:
            await app.stop()
            return _fail(args, f"cannot listen: {exc}")
        except Exception as exc:  # e.g. ControlServerError: another sipyard on the socket
            await app.stop()
            return _fail(args, str(exc) or type(exc).__name__)
        # Signals work from the moment "listening on" is printed (supervisors and tests
        # act on that line).
        app.install_signals()
        for b in bound:
            print(f"sipyard {__version__} listening on {b.transport}:{_hostport(b.host, b.port)}",
                  flush=True)
        sdnotify.ready("listening on " + ", ".join(
            f"{b.transport}:{_hostport(b.host, b.port)}" for b in bound))
        try:
            await app.serve_forever()
            sdnotify.stopping()
        finally:
            if role is not None:
                await role.close()
            if shared is not None:
                await shared.close()
            await app.stop()
        return 0

    profile = os.environ.get("SIPYARD_PROFILE")
    if profile:  # developer aid: cProfile of the whole serve, written at exit
        import cProfile

        prof = cProfile.Profile()
        try:
            return int(prof.runcall(asyncio.run, run()))
        finally:
            prof.dump_stats(profile)
    try:
        return asyncio.run(run())
    finally:
        # Everything is closed and flushed by now. What is left is the interpreter's own
        # exit, whose collections walk every binding and cached answer still in memory
        # (over a second with 100 000 bindings): frozen, they are skipped, and a restart
        # gets its port back sooner.
        gc.freeze()


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _OfflineServices:
    """Enough of the app for redirectors to be built (and rejected) without a server."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.logger = logging.getLogger("sipyard.check")

    def now(self) -> float:
        return time.time()

    def lookup_now(self, aor: str) -> list[Any] | None:
        return []

    async def lookup(self, aor: str) -> list[Any]:
        return []

    def line_for_uri(self, uri: Any) -> str | None:
        return None

    async def send_request(self, method: str, request_uri: str, *, dest: Any,
                           headers: Any, body: bytes = b"") -> int:
        return 503

    def register_notify(self, call_id: str, callback: Any) -> None:
        pass

    def unregister_notify(self, call_id: str) -> None:
        pass


def _check_chain(cfg: Config) -> None:
    """Build the redirect chain as a reload would: bad rules or names raise ConfigError."""
    from .redirect.loader import build_chain

    for redirector in build_chain(cfg, _OfflineServices(cfg)):
        with contextlib.suppress(Exception):
            redirector.close()


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args, state=args.state)
    _check_chain(cfg)
    # Without --state every run-state overlay is checked too: a broken states/night.toml
    # should show up now, not at night when `sipyard runstate night` is refused.
    states: list[str] = []
    if args.state is None and cfg.states_dir.is_dir():
        for f in sorted(cfg.states_dir.glob("*.toml")):
            _check_chain(_load(args, state=f.stem))
            states.append(f.stem)
    info: dict[str, Any] = {
        "files": [str(p) for p in cfg.source_files], "lines": len(cfg.lines),
        "groups": len(cfg.groups), "warnings": list(cfg.warnings), "state": cfg.state,
        "states": states}
    text = f"config ok: {', '.join(info['files'])} ({_n(len(cfg.lines), 'line')}, " \
           f"{_n(len(cfg.groups), 'group')})"
    if states:
        text += f"\nrun states ok: {', '.join(states)}"
    for w in cfg.warnings:
        text += f"\nwarning: {w}"
    return _emit(args, info, text)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def cmd_demo_init(args: argparse.Namespace) -> int:
    from .config import DEMO_LINES, demo_config_text, generate_password

    d = Path(args.dir)
    conf = d / "sipyard.toml"
    if conf.exists():
        print(f"demo config: {conf} (exists; passwords were printed when it was created)")
        return 0
    d.mkdir(parents=True, exist_ok=True)
    passwords = {n: generate_password() for n in DEMO_LINES}
    conf.write_text(demo_config_text(passwords), encoding="utf-8")
    os.chmod(conf, 0o600)
    _install_demo_extras(d)
    print(f"demo config written to {conf}; line passwords (shown once):")
    for n in DEMO_LINES:
        print(f"  line {n}: {passwords[n]}")
    return 0


def _install_demo_extras(d: Path) -> None:
    """Example hooks and the night run state, so the demo shows every feature."""
    import shutil
    from importlib import resources

    root = resources.files("sipyard").joinpath("data")
    states = root.joinpath("states")
    if states.is_dir():
        (d / "states").mkdir(exist_ok=True)
        for f in states.iterdir():
            (d / "states" / f.name).write_text(f.read_text("utf-8"), encoding="utf-8")
    if (d / "hooks").exists():
        return
    repo_hooks = Path(__file__).resolve().parent.parent / "examples" / "hooks"
    packaged = Path(str(root.joinpath("hooks")))
    for hooks in (repo_hooks, packaged):  # a checkout, else what pip installed
        if hooks.is_dir():
            shutil.copytree(hooks, d / "hooks")
            break


def cmd_passwd(args: argparse.Namespace) -> int:
    from .config import set_line_credentials
    from .sip.digest import compute_ha1

    cfg = _load(args)
    if args.line not in cfg.server.extensions:
        raise _Failed(f"line {args.line} is outside [server] extensions ({cfg.server.extensions})")
    pw = args.password
    if pw is None:
        if sys.stdin.isatty():
            pw = getpass.getpass(f"new password for line {args.line}: ")
            if getpass.getpass("again: ") != pw:
                raise _Failed("passwords differ")
        else:
            pw = sys.stdin.readline().rstrip("\n")
    if not pw:
        raise _Failed("empty password")
    try:
        if args.ha1:
            realm = cfg.server.realm
            ha1 = {a: compute_ha1(args.line, realm, pw, a)
                   for a in ("MD5", "SHA-256", "SHA-512-256")}
            set_line_credentials(args.config, args.line, ha1=ha1)
        else:
            set_line_credentials(args.config, args.line, secret=pw)
    except ValueError as exc:
        raise _Failed(str(exc)) from None
    return _emit(args, {"line": args.line, "file": str(args.config),
                        "form": "ha1" if args.ha1 else "secret"},
                 f"line {args.line}: credentials updated in {args.config}"
                 " (run `sipyard reload` to apply)")


def cmd_status(args: argparse.Namespace) -> int:
    r = _call(args, {"op": "status"})
    return _emit(args, r, clitext.status_text(r))


def _kv(d: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(d.items())) or "-"


def cmd_registry(args: argparse.Namespace) -> int:
    req: dict[str, Any] = {"op": "registry"}
    if args.line:
        req["line"] = args.line
    r = _call(args, req)
    return _emit(args, r, clitext.registry_text(r))


MAX_TEXT = 160
MAX_SUBJECT = 64


def cmd_message(args: argparse.Namespace) -> int:
    """Exit 0 when some target got it, else 3 (failed or not registered anywhere)."""
    text = " ".join(args.text)
    if len(text) > MAX_TEXT:
        raise _Failed(f"text is {len(text)} characters; at most {MAX_TEXT}")
    if args.subject is not None and len(args.subject) > MAX_SUBJECT:
        raise _Failed(f"subject is longer than {MAX_SUBJECT} characters")
    req: dict[str, Any] = {"op": "message", "to": args.to, "text": text}
    if args.subject:
        req["subject"] = args.subject
    # The server bounds delivery by its own request_timeout; wait a little longer.
    args.timeout = max(args.timeout, 40.0)
    r = _call(args, req)
    results = r.get("results", [])
    rows = [[x["target"], x["status"], x.get("detail", "")] for x in results]
    _emit(args, r, clitext.table(rows, ["TARGET", "RESULT", "DETAIL"]))
    if not any(x["status"] == "delivered" for x in results):
        if not getattr(args, "json", False):
            print(f"sipyard message: not delivered to {args.to}", file=sys.stderr)
        return 3
    return 0


def cmd_presence(args: argparse.Namespace) -> int:
    r = _call(args, {"op": "presence", "line": args.line, "state": args.state})
    return _emit(args, r, f"line {args.line}: {args.state}")


def cmd_reload(args: argparse.Namespace) -> int:
    r = _call(args, {"op": "reload"})
    return _emit(args, r, clitext.reload_text(r))


def cmd_level(args: argparse.Namespace) -> int:
    level = {"0": "error", "1": "warning", "2": "info", "3": "debug"}.get(args.level, args.level)
    r = _call(args, {"op": "level", "level": level})
    return _emit(args, r, f"log level {r.get('level')}")


def cmd_runstate(args: argparse.Namespace) -> int:
    """Show or select the run state; with the server stopped, read or record it in the store."""
    from .control import EXIT_NOT_RUNNING, ControlClientError, call

    req: dict[str, Any] = {"op": "runstate"}
    if args.state is not None:
        req["state"] = args.state
        _load(args, state=args.state)  # validate the overlay before recording it anywhere
    sock = _data_dir(args) / "control.sock"
    try:
        reply = call(sock, req, timeout=args.timeout)
    except ControlClientError as exc:
        if exc.exit_code != EXIT_NOT_RUNNING:
            raise _Failed(exc.message, exc.exit_code) from None
        state = asyncio.run(_offline_state(args, args.state))
        reply = {"ok": True, "state": state, "running": False}
    if not reply.get("ok"):
        raise _Failed(str(reply.get("error")), 1, reply)
    return _emit(args, reply, clitext.runstate_text(reply, args.state))


async def _offline_state(args: argparse.Namespace, new: str | None) -> str | None:
    from .store import StoreError, open_store

    cfg = _load(args)
    data_dir = Path(cfg.server.data_dir)
    value = None if new is None or new.strip().lower() in ("", "none") else new.strip()
    if new is None and cfg.store.url in (None, "") and not data_dir.is_dir():
        return None  # never started here: nothing recorded, and nothing to create
    data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(cfg.store.url, data_dir)
    try:
        await store.open()
        try:
            if new is not None:
                await store.set_state("runstate", value)
                return value
            return await store.get_state("runstate")
        finally:
            await store.close()
    except StoreError as exc:
        raise _Failed(f"store: {exc}") from None


def cmd_unregister(args: argparse.Namespace) -> int:
    r = _call(args, {"op": "unregister", "line": args.line})
    return _emit(args, r, f"line {args.line}: {r.get('removed', 0)} binding(s) removed")


def cmd_bans(args: argparse.Namespace) -> int:
    r = _call(args, {"op": "bans"})
    now = time.time()
    rows = [[b["address"], str(b["failures"]), f"{max(0, int(b['until'] - now))}s"]
            for b in r.get("bans", [])]
    return _emit(args, r, clitext.table(rows, ["ADDRESS", "FAILURES", "REMAINING"]) or "no bans")


def cmd_unban(args: argparse.Namespace) -> int:
    """Exit 1 when the address was not banned; ``unban all`` always succeeds."""
    r = _call(args, {"op": "unban", "address": args.address})
    if args.address == "all":
        n = int(r.get("removed") or 0)
        return _emit(args, r, f"unbanned {n} address" + ("" if n == 1 else "es"))
    if not r.get("removed"):
        raise _Failed(f"{args.address} was not banned", 1, r)
    return _emit(args, r, f"unbanned {args.address}")


def cmd_stop(args: argparse.Namespace) -> int:
    """Ask the server to stop and wait until its control socket is gone (bounded)."""
    sock = _data_dir(args) / "control.sock"
    r = _call(args, {"op": "stop"})
    deadline = time.monotonic() + args.timeout
    while sock.exists():
        if time.monotonic() > deadline:
            raise _Failed(f"timed out waiting for the server to stop ({sock} still there)", 2)
        time.sleep(0.05)
    return _emit(args, r, "stopped")


def _since(text: str) -> float:
    """``--since``: epoch seconds, an ISO 8601 time (UTC if no zone) or an age (90s, 2h, 1d)."""
    t = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if t[-1:] in units and t[:-1].replace(".", "", 1).isdigit():
            return time.time() - float(t[:-1]) * units[t[-1]]
        return float(t)
    except ValueError:
        pass
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise _Failed(f"--since: cannot read {text!r} (ISO time, epoch or 2h/30m/1d)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def cmd_calls(args: argparse.Namespace) -> int:
    r = _call(args, {"op": "calls"})
    return _emit(args, r, clitext.calls_text(r))


def cmd_trunks(args: argparse.Namespace) -> int:
    r = _call(args, {"op": "trunks"})
    return _emit(args, r, clitext.trunks_text(r))


def cmd_cdr(args: argparse.Namespace) -> int:
    req: dict[str, Any] = {"op": "cdr", "limit": args.limit}
    if args.since:
        req["since"] = _since(args.since)
    if args.line:
        req["line"] = args.line
    r = _call(args, req)
    rows = [[c.get("start") or "", c.get("caller_line") or c.get("caller") or "",
             c.get("callee_line") or c.get("target") or "", c.get("disposition") or "",
             str(c.get("status") or ""), str(c.get("duration")), str(c.get("billsec")),
             c.get("hangup") or "", c.get("trunk") or ""] for c in r.get("cdr", [])]
    text = clitext.table(rows, ["START", "CALLER", "CALLEE", "DISPOSITION", "STATUS", "DURATION",
                         "BILLSEC", "HANGUP", "TRUNK"])
    return _emit(args, r, text or "no calls recorded")


_COMMANDS = {
    "serve": cmd_serve, "check": cmd_check, "demo-init": cmd_demo_init, "passwd": cmd_passwd,
    "status": cmd_status, "registry": cmd_registry, "message": cmd_message,
    "presence": cmd_presence, "reload": cmd_reload, "level": cmd_level,
    "runstate": cmd_runstate, "unregister": cmd_unregister, "bans": cmd_bans,
    "unban": cmd_unban, "stop": cmd_stop, "calls": cmd_calls, "cdr": cmd_cdr,
    "trunks": cmd_trunks,
}

if __name__ == "__main__":
    sys.exit(main())
