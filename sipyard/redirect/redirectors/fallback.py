"""``fallback``: ``[[fallback]]`` rules, same syntax as ``mapping``, used only when nothing
else found a target (sipX Fallback; typically the PSTN gateway). A sealed set (a pick-up code
that found no call) is final even when empty, so a feature code never leaks to a gateway.
"""

from __future__ import annotations

from typing import ClassVar

from .mapping import Mapping

__all__ = ["Fallback"]


class Fallback(Mapping):
    name = "fallback"
    section: ClassVar[str] = "fallback"
    only_when_empty: ClassVar[bool] = True
