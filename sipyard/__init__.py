"""sipyard: a small SIP registrar, redirect server and PBX control plane.

`scripts/build_core.py` may compile the SIP core and the REGISTER fast lane
with mypyc; the extension modules then sit beside their sources. One older
than its source would shadow an edit, so such stale builds are dropped here,
before any submodule is imported (with the shared group library, or the rest
would not load).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

__version__ = "0.1.0"

_COMPILED_DIRS = ("", "sip", "store", "handlers")


def _drop_stale_builds() -> None:
    here = Path(__file__).resolve().parent
    built = [so for d in _COMPILED_DIRS for so in (here / d).glob("*.so")]
    if not built:
        return
    stale = False
    for so in built:
        src = so.parent / (so.name.split(".", 1)[0] + ".py")
        if src.exists() and src.stat().st_mtime > so.stat().st_mtime:
            stale = True
    if stale:
        for so in built:
            with contextlib.suppress(OSError):
                so.unlink()


def core_kind() -> str:
    """``compiled`` when the SIP core runs as mypyc extension modules, else ``pure Python``."""
    from .sip import message

    return "compiled" if not message.__file__ or not message.__file__.endswith(".py") \
        else "pure Python"


_drop_stale_builds()
