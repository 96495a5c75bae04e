"""Layout rules of sipyard.config that a reviewer would otherwise have to remember.

The package was split from one 1 100-line module; these checks keep it from growing back
(every module under 700 lines) and keep it usable by the CLI tools without an event loop or
a socket (``sipyard check`` and ``passwd`` load configs in a plain process).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import sipyard.config

PACKAGE = Path(sipyard.config.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))
MAX_LINES = 700


def test_the_package_has_its_modules() -> None:
    names = {p.stem for p in MODULES}
    assert {"__init__", "records", "layering", "validate", "edit"} <= names


def test_every_module_stays_under_the_line_limit() -> None:
    too_long = {p.name: n for p in MODULES
                if (n := len(p.read_text("utf-8").splitlines())) >= MAX_LINES}
    assert not too_long, f"split these modules (>= {MAX_LINES} lines): {too_long}"


def test_importing_the_package_pulls_in_no_asyncio_or_socket() -> None:
    # A fresh interpreter: this test process has long imported asyncio (pytest plugins).
    code = ("import json, sys; import sipyard.config; "
            "print(json.dumps(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('asyncio', 'socket', '_socket', 'selectors'))))")
    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent.parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, timeout=60).stdout
    assert json.loads(out) == []


def test_the_subprocess_imports_this_checkout() -> None:
    """Guards the test above: an installed copy elsewhere would make it vacuous."""
    code = "import sipyard.config; print(sipyard.config.__file__)"
    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent.parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, timeout=60).stdout.strip()
    assert Path(out).resolve() == (PACKAGE / "__init__.py").resolve()


def test_the_package_reexports_every_public_name_of_its_modules() -> None:
    """Importers use ``sipyard.config`` only, so a name made public in a module must be
    re-exported (the modules' own ``__all__`` lists say what is public)."""
    internal = {"validate", "dialplan", "tables"}  # steps of load_config
    missing = []
    for path in MODULES:
        if path.stem.startswith("_") or path.stem in internal:
            continue
        module = importlib.import_module(f"sipyard.config.{path.stem}")
        for name in getattr(module, "__all__", ()):
            if getattr(sipyard.config, name, None) is not getattr(module, name):
                missing.append(f"{path.stem}.{name}")
    assert not missing
