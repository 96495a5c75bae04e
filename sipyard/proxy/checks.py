"""Max-Forwards (RFC 3261 §16.3 item 3, §16.6 step 3).

Kept apart from routing because it runs first: a request with no hops left is
refused (483, stateless, before any transaction) without looking any further.
"""

from __future__ import annotations

from enum import Enum

from sipyard.sip.message import Request

__all__ = ["MaxForwardsVerdict", "check_max_forwards", "next_max_forwards", "DEFAULT_MAX_FORWARDS",
           "MAX_ROUTE_VALUES", "route_set_too_large"]

#: What §16.6 step 3 says a proxy SHOULD add when the header is absent.
DEFAULT_MAX_FORWARDS = 70

#: Route or Record-Route values a request may carry through us. Real route sets have a
#: handful (Kamailio's and repro's defaults never add more than two per proxy); the cap
#: keeps a crafted request from making every forwarded copy, and every dialog's route
#: set downstream, as large as the message limit allows. Over it: 400 (RFC 3261 has no
#: closer code; 513 is about the message's size, which is within the limit).
MAX_ROUTE_VALUES = 32


class MaxForwardsVerdict(Enum):
    FORWARD = "forward"  # hops left: forward with next_max_forwards()
    TOO_MANY_HOPS = "483"  # Max-Forwards 0: answer 483 Too Many Hops
    ANSWER_HERE = "answer"  # Max-Forwards 0 on an OPTIONS to us: answer it ourselves (§11)


def check_max_forwards(req: Request, *, addressed_to_us: bool = False) -> MaxForwardsVerdict:
    """What to do with ``req`` as far as Max-Forwards goes.

    An absent header is fine (no limit was asked for). Zero means the request
    must not be forwarded: 483, except that §16.3 item 3 lets an element act as
    the final recipient of an OPTIONS — so when the caller says the request is
    addressed to us (its Request-URI is ours), an OPTIONS with 0 gets
    ANSWER_HERE and the caller answers it like any OPTIONS to the server (the
    "traceroute" use of Max-Forwards). A malformed value raises
    ``ParseError(400)`` from the message layer.
    """
    mf = req.max_forwards
    if mf is None or mf > 0:
        return MaxForwardsVerdict.FORWARD
    if addressed_to_us and req.method == "OPTIONS":
        return MaxForwardsVerdict.ANSWER_HERE
    return MaxForwardsVerdict.TOO_MANY_HOPS


def next_max_forwards(req: Request) -> int:
    """The Max-Forwards of the forwarded copy: 70 when absent, else one less (§16.6 step 3)."""
    mf = req.max_forwards
    if mf is None:
        return DEFAULT_MAX_FORWARDS
    if mf <= 0:
        raise ValueError("a request with Max-Forwards 0 is not forwarded (483)")
    return mf - 1


def route_set_too_large(req: Request) -> bool:
    """Whether ``req`` carries more than :data:`MAX_ROUTE_VALUES` Route or Record-Route values."""
    return (len(req.get_all("route")) > MAX_ROUTE_VALUES
            or len(req.get_all("record-route")) > MAX_ROUTE_VALUES)
