"""Compile the sans-IO SIP core (sipyard/sip) and the REGISTER fast lane with mypyc, in place.

    .venv/bin/python scripts/build_core.py [--clean]

The core is mypy --strict and free of dynamic tricks (DESIGN §8) so mypyc can
compile it unchanged; the extension modules sit beside the sources and are
imported in their place (an extension module wins over a .py of the same name).
Without a C compiler or Python headers the build fails and the pure-Python
modules are used: `make` treats that as a warning, not an error. A compiled
module older than its source is removed at import (sipyard/sip/__init__.py), so
an edit is never shadowed by a stale build.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "sipyard"
#: compiled, in dependency order: the sans-IO core, then the REGISTER fast lane above it
#: (framing.py gains little; asyncio-heavy modules stay Python)
MODULES = [
    "sip/_abnf", "sip/errors", "sip/uri", "sip/headers", "sip/model", "sip/reader",
    "sip/writer", "sip/message", "sip/validate", "sip/noncecount", "sip/digest",
    "sip/transaction", "sip/client_transaction", "sip/source", "stats", "store/binding",
    "store/cache", "store/sqlite_writer", "store/sqlite", "transport", "registrar",
    "security", "auth",
    "redirect/contacts", "redirect/pipeline", "redirect/redirectors/registrations",
    "redirect/redirectors/aliases", "redirect/redirectors/subscribe",
    "redirect/redirectors/_rules", "redirect/redirectors/mapping",
    "redirect/redirectors/fallback", "redirect/redirectors/_dialog",
    "redirect/redirectors/pickup", "redirect/redirectors/directed_pickup",
    "redirect/redirectors/join",
    "handlers/base", "handlers/register", "handlers/redirect", "handlers/chat",
    "handlers/admin", "nat", "proxy/actions", "proxy/addresses", "proxy/checks", "proxy/loop",
    "proxy/routing", "proxy/context", "forwarder", "calls", "handlers/calls", "handlers/proxy",
    "app",
]
# eager.py stays Python: its resume_started must be a real generator-based coroutine
# (types.coroutine), which a compiled generator is not.
#: mypy options for the compile: the third-party packages some of these modules reach
#: (tomlkit, redis, prometheus-client) are not in an isolated `pip install` build
#: environment; what the compiled code gets from them is typed Any, as at run time.
#: The project's own strict settings stay for `make lint`; under them a missing stub turns
#: into errors (subclassing Any, returning Any, unused ignores) that say nothing about
#: whether the code compiles.
MYPY_FLAGS = ["--config-file", os.devnull, "--ignore-missing-imports"]
#: directories that may hold compiled modules (sipyard/__init__.py drops stale ones)
DIRS = ["", "sip", "store", "handlers", "proxy", "redirect", "redirect/redirectors"]


def clean() -> None:
    for d in DIRS:
        for path in (PKG / d).glob("*.so"):
            path.unlink()
    shutil.rmtree(ROOT / "build" / "mypyc-core", ignore_errors=True)


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    os.chdir(ROOT)
    clean()
    setup(
        name="sipyard-core",
        ext_modules=mypycify([*MYPY_FLAGS, *(f"sipyard/{m}.py" for m in MODULES)],
                             group_name="sipyard._core", opt_level="3"),
        script_args=["build_ext", "--inplace", "--build-temp", "build/mypyc-core/temp",
                     "--build-lib", "build/mypyc-core/lib", "-q"],
    )


if __name__ == "__main__":
    if "--clean" in sys.argv:
        clean()
    else:
        try:
            build()
        except BaseException as exc:  # noqa: BLE001 - any failure means: stay pure Python
            clean()
            print(f"build_core: mypyc build failed ({exc!r}); using the pure-Python core",
                  file=sys.stderr)
            sys.exit(1)
