"""What ``sipyard --help`` and ``sipyard COMMAND --help`` print beyond the options.

Why a module of its own: an example per command is text, not logic, and keeping it out of
cli.py keeps that file about running commands. ``add_examples`` is called once by
``cli.build_parser``; a command without an example here fails the tests, so a new command
cannot ship without one.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

__all__ = ["EXAMPLES", "VersionAction", "add_examples", "epilog"]

#: command -> (example command lines, one sentence on what they do)
EXAMPLES: dict[str, tuple[tuple[str, ...], str]] = {
    "serve": (
        ("sipyard serve -c /etc/sipyard/sipyard.toml",
         "sipyard serve -c demo/sipyard.toml --listen udp:0.0.0.0:5060 --log-level debug"),
        "Runs in the foreground until SIGTERM; SIGHUP re-reads the config. Under systemd see "
        "examples/systemd/sipyard.service.",
    ),
    "check": (
        ("sipyard check -c /etc/sipyard/sipyard.toml",
         "sipyard check -c /etc/sipyard/sipyard.toml --state night --json"),
        "Validates the main file, custom.toml and every states/*.toml; exit 1 names file, key "
        "and reason.",
    ),
    "demo-init": (
        ("sipyard demo-init demo", "sipyard serve -c demo/sipyard.toml"),
        "Writes demo/sipyard.toml with lines 10-19 and prints their passwords once; does "
        "nothing when the file exists.",
    ),
    "passwd": (
        ("sipyard passwd -c /etc/sipyard/sipyard.toml 12",
         "echo 'new secret' | sipyard passwd -c /etc/sipyard/sipyard.toml 12 --ha1"),
        "Updates line 12 in the main file (comments kept); `sipyard reload` applies it.",
    ),
    "status": (
        ("sipyard status -c /etc/sipyard/sipyard.toml",),
        "Version, uptime, listen addresses, run state and counters of the running server.",
    ),
    "registry": (
        ("sipyard registry -c /etc/sipyard/sipyard.toml",
         "sipyard registry -c /etc/sipyard/sipyard.toml 11 --json"),
        "Every binding (contact, source, user agent, expiry), or those of line 11.",
    ),
    "message": (
        ("sipyard message -c /etc/sipyard/sipyard.toml --to 11 'lunch is ready'",
         "sipyard message -c /etc/sipyard/sipyard.toml --to all --subject door 'parcel at the door'"),
        "Sends a SIP MESSAGE to each binding; exit 3 when nobody got it.",
    ),
    "presence": (
        ("sipyard presence -c /etc/sipyard/sipyard.toml 12 dnd",),
        "Marks line 12 as do-not-disturb (here | away | dnd).",
    ),
    "reload": (
        ("sipyard reload -c /etc/sipyard/sipyard.toml", "systemctl reload sipyard"),
        "Re-reads every config layer; a bad file is refused (exit 1) and the old config stays.",
    ),
    "level": (
        ("sipyard level -c /etc/sipyard/sipyard.toml debug",),
        "Changes the log level of the running server until the next start (0-3 work too).",
    ),
    "runstate": (
        ("sipyard runstate -c /etc/sipyard/sipyard.toml night",
         "sipyard runstate -c /etc/sipyard/sipyard.toml none"),
        "Selects states/night.toml on top of the config, or clears it; works with the server "
        "stopped too.",
    ),
    "unregister": (
        ("sipyard unregister -c /etc/sipyard/sipyard.toml 14",),
        "Drops every binding of line 14 (the release hook runs).",
    ),
    "bans": (
        ("sipyard bans -c /etc/sipyard/sipyard.toml",),
        "Sources banned after too many failed authentications, with the time left.",
    ),
    "unban": (
        ("sipyard unban -c /etc/sipyard/sipyard.toml 192.0.2.7",
         "sipyard unban -c /etc/sipyard/sipyard.toml all"),
        "Lifts a ban; exit 1 when that address was not banned.",
    ),
    "stop": (
        ("sipyard stop -c /etc/sipyard/sipyard.toml",),
        "Stops the server (bindings are kept) and returns once it is gone; under systemd use "
        "`systemctl stop sipyard`.",
    ),
    "calls": (
        ("sipyard calls", "sipyard calls --json"),
        "Calls the proxy is carrying now (proxy mode): caller, callee, state and since when.",
    ),
    "trunks": (
        ("sipyard trunks", "sipyard trunks --json"),
        "Provider trunks ([trunks.NAME]): registrar, state (registered, failed + the last "
        "status, disabled), transport, expiry, when the next try is due. Never credentials.",
    ),
    "cdr": (
        ("sipyard cdr --since 2h", "sipyard cdr --line 10 --since 2026-12-01 --json"),
        "Finished calls from cdr.jsonl in the data dir, newest last; one JSON object per call "
        "with --json.",
    ),
}


def epilog(command: str) -> str:
    """The ``example:`` block shown under ``sipyard COMMAND --help``."""
    lines, what = EXAMPLES[command]
    return "example:\n" + "".join(f"  {line}\n" for line in lines) + "\n" + textwrap.fill(what, 78)


def add_examples(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Give every subcommand its example; KeyError for a command without one (on purpose)."""
    for name, parser in subparsers.choices.items():
        parser.epilog = epilog(name)
        # keep the example's line breaks; descriptions and options still wrap as before
        parser.formatter_class = argparse.RawDescriptionHelpFormatter


class VersionAction(argparse.Action):
    """``--version``, resolved when asked: finding out which core runs imports the core,
    which no other command should pay for at parse time."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:  # noqa: A002
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0,
                         help=help or "print the version and which SIP core runs, then exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from . import version_line

        print(version_line(), file=sys.stdout, flush=True)
        parser.exit(0)
