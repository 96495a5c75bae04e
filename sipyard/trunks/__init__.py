"""Provider trunks: the office registers upstream and calls in and out through it.

``board`` (state everybody reads) ← ``registration`` (one trunk's REGISTER loop) ←
``manager`` (all loops, started only where the app says so) ; ``routing`` is the proxy's
side (inbound recognition, outbound targets, answering the provider's challenge).
"""

from .board import TrunkBoard, TrunkState

__all__ = ["TrunkBoard", "TrunkState"]
