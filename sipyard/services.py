"""What the redirectors may ask of the server (``redirect.pipeline.Services``).

Kept apart from the handlers: the pipeline is built (and rebuilt on reload)
with these services, and the NOTIFY routes they register are read by the
NOTIFY handler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .messaging import Sender
from .sip.headers import split_values
from .sip.message import Request
from .sip.source import Source
from .sip.uri import SipUri
from .store.base import Binding

if TYPE_CHECKING:
    from .config import Config
    from .parts import Parts

__all__ = ["RedirectServices", "NotifyRoutes"]

log = logging.getLogger("sipyard.redirect")


class NotifyRoutes:
    """In-dialog NOTIFYs of the server's own subscriptions (pick-up), by Call-ID.

    Only Call-IDs the server itself generated are registered, so the table
    holds at most one entry per pending pick-up.
    """

    __slots__ = ("_routes",)

    def __init__(self) -> None:
        self._routes: dict[str, Callable[[Request], None]] = {}

    def register(self, call_id: str, callback: Callable[[Request], None]) -> None:
        self._routes[call_id] = callback

    def unregister(self, call_id: str) -> None:
        self._routes.pop(call_id, None)

    def get(self, call_id: str) -> Callable[[Request], None] | None:
        return self._routes.get(call_id)


class RedirectServices:
    """The pipeline's view of the server: bindings, lines, outgoing requests."""

    def __init__(self, parts: Parts, sender: Sender, routes: NotifyRoutes,
                 now: Callable[[], float]) -> None:
        self.parts = parts
        self.sender = sender
        self.routes = routes
        self.logger = log
        self._now = now

    @property
    def config(self) -> Config:
        return self.parts.current.config

    def now(self) -> float:
        return self._now()

    async def lookup(self, aor: str) -> Sequence[Binding]:
        found: Sequence[Binding] = await self.parts.store.lookup(aor, self._now())
        return found

    def lookup_now(self, aor: str) -> Sequence[Binding] | None:
        return self.parts.store.lookup_now(aor, self._now())

    def line_for_uri(self, uri: SipUri) -> str | None:
        cfg = self.parts.current.config
        if not cfg.is_our_domain(uri.host_lower):
            return None
        user = uri.user_unescaped
        if user in cfg.lines:
            return user
        # Open registration accepts any user of the realm, so any user may have bindings.
        return user if user and cfg.security.open_registration else None

    async def send_request(self, method: str, request_uri: str, *,
                           dest: tuple[str, int, str] | None,
                           headers: Sequence[tuple[str, str]], body: bytes = b"") -> int:
        if dest is None:
            return 503
        tr = self.sender.transports
        ip, port, transport = dest
        # A Route from a binding's Path: our own value goes, another host's is the first hop
        path = [v for n, v in headers if n.lower() == "route" for v in split_values(v)]
        hop: Source | None = None
        if path:
            hop, routes = self.sender.route(path)
            headers = [*(h for h in headers if h[0].lower() != "route"),
                       *(("Route", v) for v in routes)]
        try:
            if hop is not None:
                src = hop
            elif transport.lower() == "udp":
                src = Source("udp", ip, port, None, tr.udp_local(ip))
            else:
                # reuses the phone's own connection (the flow it registered over) while it lives
                src = await tr.connect_tcp(ip, port)
        except (TimeoutError, OSError):
            return 503
        result = await self.sender.uac.request(method, request_uri, src, headers=headers,
                                               body=body)
        return result.status

    def register_notify(self, call_id: str, callback: Callable[[Any], None]) -> None:
        self.routes.register(call_id, callback)

    def unregister_notify(self, call_id: str) -> None:
        self.routes.unregister(call_id)
