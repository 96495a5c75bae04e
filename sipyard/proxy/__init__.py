"""The forking proxy's sans-IO core (RFC 3261 §16): no sockets, no event loop, no clock.

- :mod:`.checks` — Max-Forwards (483, or answer an OPTIONS to us).
- :mod:`.addresses` — our interfaces; is this Via / URI ours.
- :mod:`.loop` — Via branch = hash of the request + counter; loop (482) vs spiral.
- :mod:`.routing` — §16.4 Route preprocessing, §16.12 strict/loose next hop,
  Record-Route (RFC 5658 doubling), the forwarded copy, stripping our Via.
- :mod:`.context` — the response context: forking by q, 3xx recursion, best
  response, CANCEL, timer C, as actions (:mod:`.actions`) for the driver.

The client transactions the driver runs per branch are
:mod:`sipyard.sip.client_transaction`.
"""

from __future__ import annotations

from .actions import (
    REASON_COMPLETED_ELSEWHERE,
    AbandonBranch,
    CancelBranch,
    ForwardResponse,
    GiveUp,
    ProxyAction,
    SendFinal,
    StartBranch,
    Target,
)
from .addresses import Interface, LocalAddresses
from .checks import MaxForwardsVerdict, check_max_forwards, next_max_forwards
from .context import Branch, BranchState, ResponseContext, group_by_q
from .loop import LoopDetector
from .routing import (
    Forward,
    copy_request,
    forward_request,
    next_hop,
    preprocess_routes,
    record_route_values,
    strip_top_via,
    wants_record_route,
)

__all__ = [
    "REASON_COMPLETED_ELSEWHERE",
    "AbandonBranch",
    "CancelBranch",
    "ForwardResponse",
    "GiveUp",
    "ProxyAction",
    "SendFinal",
    "StartBranch",
    "Target",
    "Interface",
    "LocalAddresses",
    "MaxForwardsVerdict",
    "check_max_forwards",
    "next_max_forwards",
    "Branch",
    "BranchState",
    "ResponseContext",
    "group_by_q",
    "LoopDetector",
    "Forward",
    "copy_request",
    "forward_request",
    "next_hop",
    "preprocess_routes",
    "record_route_values",
    "strip_top_via",
    "wants_record_route",
]
