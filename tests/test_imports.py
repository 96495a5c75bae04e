"""The import rules of docs/ARCHITECTURE.md, checked on the sources and in fresh interpreters.

Why: the layering (sans-IO core at the bottom, ``app.py`` on top) is what lets the core be
compiled with mypyc, tested with a fake clock and reused by the proxy engine; it erodes one
convenient import at a time. The graph is built statically with :mod:`ast`, so it counts
what a reader of the code sees: imports inside functions and under ``if TYPE_CHECKING:``
are edges too (a type-only cycle is still a cycle in the design, and the next runtime
import along it breaks). The no-I/O checks import modules in a fresh interpreter, so a
package ``__init__`` that pulls in a backend is caught as well.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "sipyard"

#: Cycles known today, each to be removed by the module's owner; any other cycle fails, and
#: so does an entry here that no longer is a cycle (so the list only shrinks).
#: redirect.pipeline ↔ redirect.loader: ``RedirectServer.__init__`` imports ``build_chain``
#: (pipeline.py, inside the function) when no chain is given, and loader.py imports
#: ``Redirector``/``Services`` from pipeline. Fix: the callers (app.py, two tests) pass
#: ``chain=build_chain(...)`` and the default goes.
KNOWN_CYCLES: set[frozenset[str]] = set()

#: modules that must not import I/O or an event loop, not even through a package __init__
SANS_IO = ["sipyard.sip", "sipyard.proxy", "sipyard.registrar", "sipyard.store.base"]
IO_MODULES = {"asyncio", "socket", "selectors", "ssl", "redis", "sqlite3", "_sqlite3"}
#: layers below the app that must not reach the transport or the app
BELOW_TRANSPORT = ["sipyard.redirect", "sipyard.store"]


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name → (file, is a package) for every module of the package."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts.pop()
        out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _targets(module: str, is_pkg: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The sipyard modules one import statement names (``from . import x``: ``x`` if it is
    a module, else the package)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_pkg else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        names = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target
                 for a in node.names]
    out = []
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """module → {imported module: line of the first import}, every import counted."""
    graph: dict[str, dict[str, int]] = {}
    for module, (path, is_pkg) in MODULES.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(module, is_pkg, node):
                    if target != module:
                        edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.add(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(frozenset(comp))
    return found


def _describe(comp: frozenset[str], graph: dict[str, dict[str, int]]) -> str:
    lines = [" ↔ ".join(sorted(comp))]
    for a in sorted(comp):
        for b, line in sorted(graph[a].items()):
            if b in comp:
                lines.append(f"  {MODULES[a][0].relative_to(ROOT)}:{line} imports {b}")
    return "\n".join(lines)


def test_graph_sees_relative_function_level_and_type_checking_imports() -> None:
    graph = import_graph()
    assert "sipyard.sip.message" in graph["sipyard.registrar"]  # from .sip.message import …
    assert "sipyard.app" in graph["sipyard.cli"]  # inside a function
    assert "sipyard.config" in graph["sipyard.parts"]  # under if TYPE_CHECKING:
    assert "sipyard.store.base" in graph["sipyard.store"]  # from .base import … in __init__


def test_no_import_cycle() -> None:
    graph = import_graph()
    new = [c for c in cycles(graph) if c not in KNOWN_CYCLES]
    assert not new, "import cycle(s):\n" + "\n".join(_describe(c, graph) for c in new)


def test_known_cycles_still_exist() -> None:
    """A cycle that was fixed leaves KNOWN_CYCLES, so it cannot come back unnoticed."""
    found = set(cycles(import_graph()))
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in found]
    assert not gone, f"no longer cycles, remove them from KNOWN_CYCLES: {gone}"


def test_app_is_on_top() -> None:
    """Nothing in the package imports the app but the command line that runs it."""
    graph = import_graph()
    importers = sorted(m for m, edges in graph.items() if "sipyard.app" in edges)
    assert importers == ["sipyard.cli"], importers


_FRESH = """
import importlib, sys
before = set(sys.modules)
importlib.import_module({module!r})
print(" ".join(sorted(set(sys.modules) - before)))
"""


def _fresh_import(module: str) -> set[str]:
    """The modules a fresh interpreter loads to import ``module`` (start-up ones excluded)."""
    out = subprocess.run([sys.executable, "-c", _FRESH.format(module=module)], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=60)
    return set(out.stdout.split())


def _sans_io_modules() -> list[str]:
    subs = [m for m in MODULES if m.startswith(("sipyard.sip.", "sipyard.proxy."))]
    return SANS_IO + sorted(subs)


@pytest.mark.parametrize("module", _sans_io_modules())
def test_sans_io_layers_load_no_io(module: str) -> None:
    loaded = {m.split(".")[0] for m in _fresh_import(module)}
    assert not loaded & IO_MODULES, (module, sorted(loaded & IO_MODULES))


@pytest.mark.parametrize("module", BELOW_TRANSPORT)
def test_redirect_and_store_reach_neither_transport_nor_app(module: str) -> None:
    loaded = _fresh_import(module)
    assert not loaded & {"sipyard.transport", "sipyard.app"}, module
    graph = import_graph()
    for name, edges in graph.items():
        if name == module or name.startswith(module + "."):
            assert not set(edges) & {"sipyard.transport", "sipyard.app"}, name
