"""``mypyc_attr`` when mypy_extensions is there (a compiled build always has it), else a no-op.

Why: a compiled class is native, and Python code can subclass a native class only when it
says so with ``@mypyc_attr(allow_interpreted_subclasses=True)``. ``Redirector`` is such a
class: third-party redirectors and tests subclass it. A pure-Python install need not carry
mypy_extensions, and there the decorator has nothing to do.
"""

from __future__ import annotations

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # pragma: no cover - exercised only without mypy installed
    from collections.abc import Callable
    from typing import TypeVar

    _T = TypeVar("_T")

    def mypyc_attr(*attrs: str, **kwattrs: object) -> Callable[[_T], _T]:
        def same(cls: _T) -> _T:
            return cls
        return same

__all__ = ["mypyc_attr"]
