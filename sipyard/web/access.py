"""Who may read the status page and who may act on it: one pure function, tested alone.

The rules, and why:

* No ``[web] token``: only loopback clients (``127.0.0.0/8``, ``::1``, and their IPv4-mapped
  forms), and only with a ``Host`` that names loopback or the listen address. The Host check
  stops DNS rebinding: a web site whose name suddenly resolves to 127.0.0.1 would otherwise
  read the page from a visitor's browser, because the browser thinks it is that site's
  own origin. Nothing can be changed without a token.
* With a token: every client must present it -- loopback too, since on a shared machine
  loopback is every local user. ``Authorization: Bearer TOKEN`` (scrapers, scripts),
  ``?token=TOKEN`` (a bookmark; the server answers with a cookie and a redirect that drops
  it from the address bar), or that cookie. The cookie holds an HMAC of the token, not the
  token, and is ``HttpOnly; SameSite=Strict``.
* Write actions (``POST``) additionally need ``[web] actions = true`` and the token *in a
  header*: a browser attaches cookies to cross-site requests, never a header a page set
  itself without a CORS preflight we never grant -- that is the CSRF defence. They also need
  ``Content-Type: application/json``, which a plain HTML form cannot send.

Tokens are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Decision", "decide", "is_loopback", "cookie_value", "COOKIE"]

COOKIE = "sipyard_token"


@dataclass(frozen=True, slots=True)
class Decision:
    """``read``: may see the page and the API; ``write``: may also act. ``status`` is the
    HTTP status to refuse with when not ``read`` (401 asks for a token, 403 never will)."""

    read: bool
    write: bool
    status: int = 200
    reason: str = ""


def is_loopback(ip: str) -> bool:
    """Whether a peer address (as a socket reports it, maybe ``%zone``-suffixed) is loopback."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def _host_of(host_header: str) -> str:
    """The host part of a ``Host`` header, lower case, without port or brackets."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else ""
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _host_is_local(host_header: str | None, listen_host: str) -> bool:
    if host_header is None:
        return True  # HTTP/1.0 clients (curl -0, some scrapers); browsers always send one
    host = _host_of(host_header)
    if host in ("localhost", listen_host.lower()) or host.endswith(".localhost"):
        return True
    return is_loopback(host)


def cookie_value(token: str) -> str:
    """What the cookie carries: an HMAC of the token (a stolen cookie is not the token)."""
    return hmac.new(token.encode(), b"sipyard-web-cookie", hashlib.sha256).hexdigest()


def _same(a: str | None, b: str) -> bool:
    return a is not None and hmac.compare_digest(a.encode(), b.encode())


def bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def parse_cookies(header: str | None) -> Mapping[str, str]:
    out: dict[str, str] = {}
    for part in (header or "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name not in out:
            out[name] = value.strip()
    return out


def decide(peer: str, *, token: str | None, actions: bool, listen_host: str,
           host: str | None = None, authorization: str | None = None,
           query_token: str | None = None, cookie: str | None = None) -> Decision:
    """May this client read, and may it act? ``peer`` is the socket's address, never a
    forwarded-for header (there is no proxy we would trust)."""
    if token is None:
        if not is_loopback(peer):
            return Decision(False, False, 403, "loopback clients only (no [web] token set)")
        if not _host_is_local(host, listen_host):
            return Decision(False, False, 403, "Host must name this server by address")
        return Decision(True, False)
    in_header = _same(bearer(authorization), token)
    if in_header or _same(query_token, token) or _same(cookie, cookie_value(token)):
        return Decision(True, in_header and actions)
    return Decision(False, False, 401, "token required")
