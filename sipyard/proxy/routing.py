"""Route processing, next hop, Record-Route and the forwarded copy (RFC 3261 §16.4, §16.6, §16.12).

Pure functions over :class:`~sipyard.sip.message.Request`: each returns a new
message and leaves its argument alone, because a proxy forks one received
request into several copies (§16.6 step 1) and still answers the original
through its server transaction. Header values are copied as received (byte
faithful, RFC 4475 regescrt); only the values a step changes are rewritten.
Where a step rewrites a header that may hold a comma list (Route, Via,
Record-Route) the result has one value per line, placed where the first line
of that header was, so the headers a proxy reads stay near the top (§7.3.1).

The order a stateful proxy applies them::

    req = preprocess_routes(received, ours)                       # §16.4
    if loops.is_loop(req): 482                                    # §16.3 step 4
    h = loops.request_hash(req)
    for n, target in enumerate(targets):                          # §16.6
        fwd = forward_request(req, target=target.uri, via=out.via(loops.branch(h, n)),
                              max_forwards=next_max_forwards(req),
                              record_route=record_route_values(inbound, out)
                              if wants_record_route(req) else ())
        send fwd.request to fwd.next_hop                          # §16.6 step 7
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sipyard.sip.headers import parse_name_addr, split_values
from sipyard.sip.message import Message, Request, Response
from sipyard.sip.uri import SipUri, parse_uri

from .addresses import Interface, LocalAddresses

__all__ = [
    "DIALOG_CREATING",
    "Forward",
    "copy_request",
    "preprocess_routes",
    "next_hop",
    "forward_request",
    "record_route_values",
    "wants_record_route",
    "strip_top_via",
    "route_uri",
]

#: Requests that may create a dialog: the ones a record-routing proxy marks (§16.6 step 4).
#: NOTIFY is here because one may arrive before the 2xx of its SUBSCRIBE (RFC 6665 §4.1.2.4).
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})


class Forward(NamedTuple):
    """A request ready to send, and the URI whose address it goes to (§16.6 step 7)."""

    request: Request
    next_hop: str


def route_uri(value: str) -> str:
    """The URI inside one Route / Record-Route value (``<sip:p1;lr>;x=y`` → ``sip:p1;lr``)."""
    return parse_name_addr(value).uri


def _with_values(msg: Message, key: str, name: str, values: Sequence[str]
                 ) -> tuple[list[tuple[str, str]], list[str]]:
    """``msg``'s headers (and their canonical names) with every ``key`` line replaced
    by one line per value.

    The new lines go where the first old line was, or right after the Vias. The
    names come from the message's own list: no header name is canonicalised again.
    """
    headers = msg.headers
    out: list[tuple[str, str]] = []
    out_keys: list[str] = []
    placed = False
    last_via = -1
    for i, k in enumerate(msg.keys):
        if k == key:
            if not placed:
                for v in values:
                    out.append((name, v))
                    out_keys.append(key)
                placed = True
            continue
        out.append(headers[i])
        out_keys.append(k)
        if k == "via":
            last_via = len(out)
    if not placed:
        at = max(last_via, 0)
        out[at:at] = [(name, v) for v in values]
        out_keys[at:at] = [key] * len(values)
    return out, out_keys


def _request(req: Request, uri: str, headers: list[tuple[str, str]], keys: list[str]
             ) -> Request:
    return Request(req.method, uri, req.version, headers, keys, req.body)


def copy_request(req: Request) -> Request:
    """A copy that shares nothing mutable with ``req`` (§16.6 step 1)."""
    return _request(req, req.uri, list(req.headers), list(req.keys))


def preprocess_routes(req: Request, ours: LocalAddresses) -> Request:
    """§16.4: undo a strict router's rewrite, then pop the Route values that are ours.

    If the Request-URI is one of our Record-Route values (ours, no user part)
    and there is a Route, the previous hop was a strict router (RFC 2543):
    the real Request-URI is the last Route value, which is removed. Then, if the top Route names us, it is removed;
    a second one that names us too goes as well (our RFC 5658 double
    Record-Route comes back as two Route values).
    """
    routes = req.get_all("route")
    uri = req.uri
    changed = False
    if routes and ours.is_our_record_route(uri):
        uri = route_uri(routes.pop())
        changed = True
    for _ in range(2):
        if routes and ours.is_our_uri(route_uri(routes[0])):
            del routes[0]
            changed = True
    if not changed:
        return req
    return _request(req, uri, *_with_values(req, "route", "Route", routes))


def next_hop(req: Request) -> Forward:
    """§16.6 steps 6-7: where ``req`` goes, with a strict next hop (no ``;lr``) handled.

    A first Route with ``lr`` is a loose router: send to it, the
    Request-URI stays. Without ``lr`` it is a strict router (§16.12): the
    Request-URI goes to the end of the Route set and the strict router's URI
    becomes the Request-URI. No Route: send to the Request-URI.
    """
    routes = req.get_all("route")
    if not routes:
        return Forward(req, req.uri)
    first = route_uri(routes[0])
    parsed = parse_uri(first)
    if isinstance(parsed, SipUri) and parsed.has_param("lr"):
        return Forward(req, first)
    new_routes = routes[1:] + [f"<{req.uri}>"]
    return Forward(_request(req, first, *_with_values(req, "route", "Route", new_routes)), first)


def wants_record_route(req: Request) -> bool:
    """Whether to Record-Route ``req``: the dialog-creating methods (in-dialog ones too:
    harmless, §12.2 ignores Record-Route in mid-dialog requests)."""
    return req.method in DIALOG_CREATING


def record_route_values(inbound: Interface, outbound: Interface) -> list[str]:
    """Our Record-Route value(s), topmost first.

    One value when the request leaves by the interface and transport it came
    in on. Otherwise RFC 5658 double record-routing: the callee builds its
    route set top-first and the caller bottom-first (§12.1.1, §12.1.2), so the
    top value must be the one the callee reaches us on — the outbound side —
    and the one below it the inbound side, which the caller reaches first.
    """
    if inbound.same_leg(outbound):
        return [outbound.record_route()]
    return [outbound.record_route(), inbound.record_route()]


def forward_request(req: Request, *, via: str, max_forwards: int, target: str | None = None,
                    record_route: Sequence[str] = (), route_set: Sequence[str] = ()) -> Forward:
    """The copy of ``req`` to forward to one target (§16.6 steps 1-8), and its next hop.

    ``target`` replaces the Request-URI (None keeps it: in-dialog requests and
    requests routed by Route). ``record_route`` values go on top of any
    Record-Route (topmost first). ``route_set`` (e.g. a binding's Path, or a
    configured outbound proxy, §16.6 step 5) goes in front of the Route
    values. Then strict routes are handled (:func:`next_hop`) and ``via``
    (built with the branch of :class:`~sipyard.proxy.loop.LoopDetector`) goes
    on top.
    """
    # record_route and route_set read the received values: replacing Max-Forwards
    # leaves Record-Route and Route as they were
    headers, keys = _with_values(req, "max-forwards", "Max-Forwards", [str(max_forwards)])
    fwd = _request(req, target if target is not None else req.uri, headers, keys)
    if record_route:
        values = list(record_route) + req.get_all("record-route")
        fwd = _request(fwd, fwd.uri, *_with_values(fwd, "record-route", "Record-Route", values))
    if route_set:
        values = list(route_set) + req.get_all("route")
        fwd = _request(fwd, fwd.uri, *_with_values(fwd, "route", "Route", values))
    fwd, hop = next_hop(fwd)
    fwd.add_header("Via", via, first=True)  # fwd's lists are new: nothing else holds them
    return Forward(fwd, hop)


def strip_top_via(resp: Response) -> Response:
    """``resp`` without its topmost Via value (§16.7 step 3), for forwarding upstream."""
    headers: list[tuple[str, str]] = []
    keys: list[str] = []
    done = False
    hdrs = resp.headers
    for i, k in enumerate(resp.keys):
        if not done and k == "via":
            done = True
            n, v = hdrs[i]
            rest = split_values(v)[1:]
            if rest:
                headers.append((n, ", ".join(rest)))
                keys.append(k)
            continue
        headers.append(hdrs[i])
        keys.append(k)
    return Response(resp.status, resp.reason, resp.version, headers, keys, resp.body)
