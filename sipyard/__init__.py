"""sipyard: a small SIP registrar, redirect server and PBX control plane.

`scripts/build_core.py` may compile the SIP core and the REGISTER fast lane
with mypyc; the extension modules then sit beside their sources. One older
than its source would shadow an edit, so such stale builds are dropped here,
before any submodule is imported (with the shared group library, or the rest
would not load).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

_COMPILED_DIRS = ("", "sip", "store", "handlers", "proxy", "redirect", "redirect/redirectors")


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


_drop_stale_builds()


def _prefer_sources() -> None:
    """``SIPYARD_PURE=1``: import every sipyard module from its ``.py`` even where a
    compiled one sits beside it, so the pure-Python fallback is tested in a built tree
    (tests/test_pure_fallback.py) without removing the build."""
    import importlib.machinery
    import sys

    here = Path(__file__).resolve().parent
    sources = (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)

    class _SourcesFirst:
        """A meta-path finder that sees only ``.py`` files under the package."""

        @staticmethod
        def find_spec(fullname: str, path: Any = None, target: Any = None) -> Any:
            if not fullname.startswith("sipyard."):
                return None
            folder = here.joinpath(*fullname.split(".")[1:-1])
            return importlib.machinery.FileFinder(str(folder), sources).find_spec(fullname, target)

    sys.meta_path.insert(0, _SourcesFirst())


if os.environ.get("SIPYARD_PURE") == "1":
    _prefer_sources()


def core_kind() -> str:
    """``"compiled"`` when the SIP core runs as mypyc extension modules, else ``"pure Python"``.

    Why it looks at ``sipyard.sip.message``: the core is compiled as a whole or not at all
    (setup.py, scripts/build_core.py), and a stale build is dropped at import of
    ``sipyard.sip``; so the loader of one hot module after that import tells the truth about
    what is running, which a flag written at build time would not.
    """
    from importlib.machinery import ExtensionFileLoader

    from .sip import message

    compiled = isinstance(getattr(message, "__loader__", None), ExtensionFileLoader)
    return "compiled" if compiled else "pure Python"


def version_line() -> str:
    """What ``sipyard --version`` prints: ``sipyard 0.1.0 (core: compiled)``."""
    return f"sipyard {__version__} (core: {core_kind()})"
