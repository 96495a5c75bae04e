"""Targets and the actions a response context asks its driver to carry out.

Frozen, slotted records, one module for the layer (DESIGN §9). The context
decides, the driver (the async proxy handler) executes: it builds and sends
requests, runs client transactions and answers upstream; the context never
touches a socket or a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sipyard.sip.message import Response

__all__ = [
    "Target",
    "StartBranch",
    "CancelBranch",
    "AbandonBranch",
    "ForwardResponse",
    "SendFinal",
    "GiveUp",
    "ProxyAction",
    "REASON_COMPLETED_ELSEWHERE",
]

#: The Reason of the CANCELs a 2xx causes (RFC 3326; what phones show as "answered elsewhere").
REASON_COMPLETED_ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"'


class Target:
    """One member of the target set (§16.5): a URI to fork to.

    ``q`` orders serial forking (higher first, equal in parallel); ``depth``
    counts the 3xx recursions that produced it; ``data`` is the driver's own
    (the binding's Path, flow, received address …), carried untouched and not
    compared. A plain slotted class, not a dataclass: mypyc cannot compile a
    dataclass field declared with ``field(compare=False)``, and this record is
    made per branch on the proxy's hot path.
    """

    __slots__ = ("uri", "q", "depth", "data")

    def __init__(self, uri: str, q: float = 1.0, depth: int = 0, data: object = None) -> None:
        self.uri = uri
        self.q = q
        self.depth = depth
        self.data = data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Target):
            return NotImplemented
        return (self.uri, self.q, self.depth) == (other.uri, other.q, other.depth)

    def __hash__(self) -> int:
        return hash((self.uri, self.q, self.depth))

    def __repr__(self) -> str:
        return f"Target(uri={self.uri!r}, q={self.q!r}, depth={self.depth!r})"


@dataclass(slots=True, init=False, unsafe_hash=True)
class StartBranch:
    """Forward the request to ``target`` as branch ``branch_id`` (a new client transaction).

    ``branch_id`` doubles as the per-branch counter of the Via branch
    (:meth:`~sipyard.proxy.loop.LoopDetector.branch`).
    """

    branch_id: Final[int]
    target: Final[Target]

    def __init__(self, branch_id: int, target: Target) -> None:
        self.branch_id = branch_id
        self.target = target


@dataclass(slots=True, init=False, unsafe_hash=True)
class CancelBranch:
    """Send a CANCEL for branch ``branch_id`` (``build_cancel`` of its request, §9.1).

    Only issued once the branch had a provisional response. ``reason`` is
    the Reason header value, or None.
    """

    branch_id: Final[int]
    reason: Final[str | None]

    def __init__(self, branch_id: int, reason: str | None) -> None:
        self.branch_id = branch_id
        self.reason = reason


@dataclass(slots=True, init=False, unsafe_hash=True)
class AbandonBranch:
    """The context wants nothing more from ``branch_id``: terminate its client transaction.

    Issued when timer C fires before any provisional, or when a CANCELed
    branch never answered within the CANCEL guard time.
    """

    branch_id: Final[int]

    def __init__(self, branch_id: int) -> None:
        self.branch_id = branch_id


@dataclass(slots=True, init=False, unsafe_hash=True)
class ForwardResponse:
    """Send ``response`` upstream on the server transaction; our Via is already removed."""

    branch_id: Final[int]
    response: Final[Response]

    def __init__(self, branch_id: int, response: Response) -> None:
        self.branch_id = branch_id
        self.response = response


@dataclass(slots=True, init=False, unsafe_hash=True)
class SendFinal:
    """Answer upstream with a response of our own (build it from the original request)."""

    status: Final[int]
    reason: Final[str]
    headers: Final[tuple[tuple[str, str], ...]]

    def __init__(self, status: int, reason: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers


@dataclass(frozen=True, slots=True)
class GiveUp:
    """A non-INVITE ended in 408: send nothing (RFC 4320 §4.2), just end the server transaction."""


ProxyAction = StartBranch | CancelBranch | AbandonBranch | ForwardResponse | SendFinal | GiveUp
