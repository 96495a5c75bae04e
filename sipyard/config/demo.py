"""The demo config ``make serve`` writes on first run, and the passwords it is given.

Why a template file with ``$pw_NN`` slots instead of a dict dumped as TOML: the demo is meant
to be read and edited by people, so it keeps its comments; each password is inserted as a
TOML basic string, escaped here, so no generated or chosen password can break the file.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from importlib import resources

from sipyard import __version__

__all__ = ["DEMO_LINES", "demo_config_text", "generate_password"]


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
