"""The proxy core and the client transactions stay sans-IO (DESIGN §2): no sockets, no loop, no clock.

Two checks: a fresh interpreter imports them and must not have pulled in an
I/O or event-loop module (anything already loaded at start-up, like ``time``
by ``site``, does not count); and their sources import none of those, nor
``time``, directly.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = ["sipyard.sip.client_transaction", "sipyard.proxy"]
FORBIDDEN = {"asyncio", "socket", "selectors", "threading", "ssl", "time", "subprocess"}

_SCRIPT = """
import sys
before = set(sys.modules)
import importlib
for name in {modules!r}:
    importlib.import_module(name)
new = {{m.split(".")[0] for m in set(sys.modules) - before}}
print(" ".join(sorted(new & {forbidden!r})))
"""


def test_fresh_import_loads_no_io_modules() -> None:
    script = _SCRIPT.format(modules=MODULES, forbidden=FORBIDDEN)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout.split() == []


def _sources() -> list[Path]:
    return [ROOT / "sipyard/sip/client_transaction.py", *sorted((ROOT / "sipyard/proxy").glob("*.py"))]


def test_sources_import_no_io_or_clock() -> None:
    for path in _sources():
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for a in node.names}
        names |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.level == 0}
        assert not names & FORBIDDEN, (path.name, names & FORBIDDEN)


def test_files_stay_small() -> None:
    for path in _sources():
        assert len(path.read_text().splitlines()) < 700, path.name
