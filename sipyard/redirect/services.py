"""What the redirect server and its redirectors need from the app, as protocols.

Apart from :mod:`sipyard.redirect.pipeline` (which re-exports them) so a
redirector plug-in or a test double can implement them without the pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from sipyard.sip.uri import SipUri

if TYPE_CHECKING:
    from sipyard.config import Config

__all__ = ["BindingLike", "Services", "line_aor"]


class BindingLike(Protocol):
    """The fields of ``sipyard.store.base.Binding`` the redirectors read."""

    @property
    def aor(self) -> str: ...
    @property
    def binding_id(self) -> str: ...
    @property
    def contact(self) -> str: ...
    @property
    def q(self) -> float | None: ...
    @property
    def path(self) -> tuple[str, ...]: ...
    @property
    def source_ip(self) -> str: ...
    @property
    def source_port(self) -> int: ...
    @property
    def transport(self) -> str: ...


class Services(Protocol):
    """What the redirect server and its redirectors need from the app (the app implements it).

    * ``lookup(aor)``: unexpired bindings of an AOR (``sip:NN@realm``, see ``line_aor``);
      ``lookup_now(aor)`` the same without a coroutine, or None when that needs I/O.
    * ``line_for_uri(uri)``: the configured line whose AOR this URI is (local domain and a
      line's number as user), else None.
    * ``send_request(method, request_uri, dest=(ip, port, transport), headers, body)``: send an
      out-of-dialog request and return the final status (408 on timeout). ``headers`` carries
      From (with tag), To and Call-ID — the app must use these as given (NOTIFYs are routed by
      that Call-ID) — plus the method's own headers; the app adds Via, Max-Forwards, CSeq,
      Contact, User-Agent and Content-Length. A ``Route`` among them (a binding's Path) is
      followed as the app's own requests to bindings are: this host's own Path value is
      dropped, another host's or proxy's is the first hop (``messaging.Sender.route``).
    * ``register_notify(call_id, callback)`` / ``unregister_notify(call_id)``: the app answers
      in-dialog NOTIFYs with that Call-ID 200 and hands each to the callback.
    """

    @property
    def config(self) -> Config: ...
    @property
    def logger(self) -> logging.Logger: ...

    def now(self) -> float: ...
    async def lookup(self, aor: str) -> Sequence[BindingLike]: ...
    def lookup_now(self, aor: str) -> Sequence[BindingLike] | None: ...
    def line_for_uri(self, uri: SipUri) -> str | None: ...
    async def send_request(self, method: str, request_uri: str, *,
                           dest: tuple[str, int, str] | None,
                           headers: Sequence[tuple[str, str]], body: bytes = b"") -> int: ...
    def register_notify(self, call_id: str, callback: Callable[[Any], None]) -> None: ...
    def unregister_notify(self, call_id: str) -> None: ...


def line_aor(config: Config, line: str) -> str:
    """The AOR a line registers under: ``sip:NN@realm``."""
    return f"sip:{line}@{config.server.realm}"
