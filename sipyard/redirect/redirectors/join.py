"""``join``: ``*79`` + line (``[features] join``) barges into that line's established call
(RFC 3911): a contact to the other party of the longest confirmed dialog with ``Join=…`` and
``Require=join``. Any direction counts (the line may have placed the call). No call → 404.
"""

from __future__ import annotations

from typing import ClassVar

from ._dialog import DialogFeature

__all__ = ["Join"]


class Join(DialogFeature):
    name = "join"
    feature: ClassVar[str] = "join"
    want_state: ClassVar[str] = "confirmed"
    recipient_only: ClassVar[bool] = False
    header: ClassVar[str] = "Join"
    require: ClassVar[str] = "join"
    early_only: ClassVar[bool] = False
