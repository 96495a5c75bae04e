"""Build hooks for ``pip install .`` and wheels: compile the SIP core with mypyc if possible.

Everything declarative lives in pyproject.toml; this file only decides, at build time,
whether the sans-IO core (``sipyard/sip``) ships as mypyc extension modules (about 1.8x
faster) or as plain Python. The compiled build needs mypy (a build requirement) plus a C
compiler and the Python headers. When any of that is missing, or mypyc fails for any other
reason, the build warns and goes on with the pure-Python modules: an install never fails
for want of a compiler.

Why the work happens in ``build_ext`` and not at import of this file: setuptools runs this
file for metadata and sdists too, and a mypy run there would cost a minute for nothing.

Why an editable install (``pip install -e``, as the Makefile does) stays pure Python here:
`scripts/build_core.py` compiles in place for it, and rebuilds after edits; a second
compile on every editable install would only double the wait.

Why a compiled wheel leaves out the ``.py`` files of the compiled modules:
``sipyard/__init__.py`` drops extension modules older than their source (so that an
edit in a checkout is never shadowed by a stale build). pip does not keep the mtimes of a
wheel's files, and the wheel lists ``uri.cpython-311-….so`` before ``uri.py``, so every
installed ``.py`` would look newer than its extension and the compiled core would be
deleted at its first import.

Why ``examples/hooks`` is copied into the package (``sipyard/data/hooks``): ``sipyard
demo-init`` installs the example hooks into a demo dir, and an installed sipyard has no
repository beside it to take them from.

``SIPYARD_PURE=1`` in the environment forces the pure-Python build.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution


def _core_modules() -> Any:
    """The modules `scripts/build_core.py` compiles (one list for `make core` and pip)."""
    path = Path(__file__).resolve().parent / "scripts" / "build_core.py"
    spec = importlib.util.spec_from_file_location("_sipyard_build_core", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_BUILD_CORE = _core_modules()
#: compiled, in dependency order
MODULES: list[str] = list(_BUILD_CORE.MODULES)
#: mypy options for the compile (see scripts/build_core.py)
MYPY_FLAGS: list[str] = list(_BUILD_CORE.MYPY_FLAGS)
GROUP = "sipyard._core"


#: the setup.py commands that build something to install; not egg_info/dist_info (metadata),
#: sdist (would list the generated C files) or editable_wheel/develop (`pip install -e`)
_BUILDS = {"bdist_wheel", "bdist", "build", "build_ext", "install"}


def _wants_compiled() -> bool:
    if os.environ.get("SIPYARD_PURE", "") not in ("", "0"):
        return False
    return bool(_BUILDS & set(sys.argv))


def _warn(message: str) -> None:
    print(f"sipyard setup: {message}; installing the pure-Python SIP core", file=sys.stderr)


class _MaybeBinary(Distribution):
    """Says it has extension modules so that ``build_ext`` runs and the wheel gets a platform
    tag; which modules they are is found out only in ``build_ext``."""

    def has_ext_modules(self) -> bool:
        return _wants_compiled() or super().has_ext_modules()


class _BuildCore(build_ext):
    """mypycify the core, compile it, or leave the build pure Python on any failure."""

    def finalize_options(self) -> None:
        if _wants_compiled() and not self.distribution.ext_modules:
            self.distribution.ext_modules = self._mypycify()
        super().finalize_options()

    def _mypycify(self) -> list[Any]:
        try:
            from mypyc.build import mypycify
        except ImportError as exc:
            _warn(f"mypyc is not available ({exc})")
            return []
        try:
            return list(mypycify(
                # an isolated build has none of the runtime dependencies (redis, tomlkit):
                # what the compiled modules reach of them is typed Any, as at run time
                [*MYPY_FLAGS, *(f"sipyard/{m}.py" for m in MODULES)],
                group_name=GROUP, opt_level="3",
                target_dir=os.path.join("build", "mypyc-setup"),
            ))
        except BaseException as exc:  # noqa: BLE001 - mypy exits via SystemExit on errors
            _warn(f"mypyc could not translate the core ({exc!r})")
            return []

    def run(self) -> None:
        if not self.extensions:
            return
        try:
            super().run()
        except BaseException as exc:  # noqa: BLE001 - no compiler, no headers, …
            _warn(f"compiling the core failed ({exc!r})")
            self._forget_outputs()
            return
        self._drop_compiled_sources()

    def _forget_outputs(self) -> None:
        for ext in self.extensions:
            path = self.get_ext_fullpath(ext.name)
            if os.path.exists(path):
                os.unlink(path)
        self.extensions = []
        self.distribution.ext_modules = []

    def _drop_compiled_sources(self) -> None:
        """See the module docstring: a ``.py`` beside its extension would get it deleted."""
        if self.inplace:
            return
        pkg = Path(self.build_lib, "sipyard")
        for name in MODULES:
            src = pkg / f"{name}.py"
            if src.exists() and any(src.parent.glob(f"{src.stem}.*.so")):
                src.unlink()


class _BuildPy(build_py):
    """The package plus the example hooks as package data (modes kept: they are scripts)."""

    def run(self) -> None:
        super().run()
        hooks = Path("examples", "hooks")
        if hooks.is_dir() and not self.editable_mode:
            target = Path(self.build_lib, "sipyard", "data", "hooks")
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(hooks, target, ignore=shutil.ignore_patterns("__pycache__"))


setup(distclass=_MaybeBinary, cmdclass={"build_ext": _BuildCore, "build_py": _BuildPy})
