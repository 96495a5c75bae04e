"""``directed_pickup``: ``*78`` + line (``[features] directed_pickup``) answers a call ringing
on that line: a contact to the caller with ``Replaces=…;early-only`` and ``Require=replaces``
(so a phone without Replaces support fails instead of ringing back). The search machinery is
in ``_dialog``; no ringing call → 404, never a dial rule (the set is sealed).
"""

from __future__ import annotations

from typing import ClassVar

from ._dialog import DialogFeature

__all__ = ["DirectedPickup"]


class DirectedPickup(DialogFeature):
    name = "directed_pickup"
    feature: ClassVar[str] = "directed_pickup"
