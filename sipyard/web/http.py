"""A small HTTP/1.1 server for the status page and ``/metrics``: one request per connection.

Why not a framework: the page needs a dozen routes, GET and a few small JSON POSTs, and
runs inside the SIP server's event loop, where a misbehaving client must cost little and
never stall SIP. So every limit is explicit and small: the request head (line + headers)
must arrive within ``head_timeout`` and fit in ``max_head`` bytes, a body is read only with
a ``Content-Length`` of at most ``max_body`` (no chunked uploads), at most ``max_clients``
connections are served at once, and every response says ``Connection: close`` (no
keep-alive bookkeeping, no pipelining). Every response, errors included, carries the
security headers (strict CSP, ``nosniff``, no framing, no referrer, no caching).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

__all__ = ["HttpServer", "Request", "Response", "SECURITY_HEADERS", "json_response"]

log = logging.getLogger("sipyard.web")

#: Sent with every response. The page loads its script and style from itself only; the
#: script builds every node with textContent, so even a CSP bypass finds no markup sink.
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy",
     "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
     "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
     "frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                         "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(slots=True)
class Request:
    """One parsed request. Header names are lower case; a repeated header keeps its first
    value (none of ours may legitimately repeat, and first-wins cannot be smuggled past)."""

    method: str
    target: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    peer: str  # the client's IP address, as the socket reports it

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]


def json_response(doc: object, status: int = 200) -> Response:
    import json

    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()
    return Response(status, body, "application/json")


def _plain(status: int, text: str | None = None) -> Response:
    return Response(status, ((text or HTTPStatus(status).phrase) + "\n").encode())


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class HttpServer:
    """Serve ``handler`` on one address; :meth:`close` stops listening and drops clients."""

    def __init__(self, handler: Handler, *, max_head: int = 16384, max_body: int = 4096,
                 head_timeout: float = 5.0, handler_timeout: float = 10.0,
                 max_clients: int = 64) -> None:
        self.handler = handler
        self.max_head = max_head
        self.max_body = max_body
        self.head_timeout = head_timeout
        self.handler_timeout = handler_timeout
        self.max_clients = max_clients
        self.server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the bound address (port 0 picks a free one)."""
        self.server = await asyncio.start_server(self._accept, host, port, limit=self.max_head)
        sock = self.server.sockets[0].getsockname()
        return str(sock[0]), int(sock[1])

    async def close(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        server.close()
        for task in list(self._clients):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._clients) >= self.max_clients or task is None:
            await self._send(writer, _plain(503), head_only=False)
            return
        self._clients.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            writer.close()
        finally:
            self._clients.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        try:
            async with asyncio.timeout(self.head_timeout):
                request = await self._read(reader, ip)
        except _BadRequest as exc:
            await self._send(writer, _plain(exc.status, exc.reason), head_only=False)
            return
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            writer.close()  # slow or gone: no answer owed
            return
        try:
            response = await asyncio.wait_for(self.handler(request), self.handler_timeout)
        except TimeoutError:
            response = _plain(503, "timed out")
        except Exception:
            log.exception("web: %s %s failed", request.method, request.path)
            response = _plain(500)
        await self._send(writer, response, head_only=request.method == "HEAD")

    async def _read(self, reader: asyncio.StreamReader, ip: str) -> Request:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "request head too large") from None
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0] \
                or not set(parts[0]) <= _TOKEN_CHARS:
            raise _BadRequest(400, "bad request line")
        method, target = parts[0], parts[1]
        if not target.startswith("/"):
            raise _BadRequest(400, "origin-form targets only")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or not set(name) <= _TOKEN_CHARS:
                raise _BadRequest(400, "bad header line")  # also rejects obs-fold
            headers.setdefault(name.lower(), value.strip(" \t"))
        if "transfer-encoding" in headers:
            raise _BadRequest(501, "chunked bodies are not supported")
        body = b""
        length_s = headers.get("content-length")
        if length_s is not None:
            if not length_s.isdigit() or len(length_s) > 9:
                raise _BadRequest(400, "bad Content-Length")
            length = int(length_s)
            if length > self.max_body:
                raise _BadRequest(413, "body too large")
            body = await reader.readexactly(length)
        split = urlsplit(target)
        query = dict(parse_qsl(split.query, keep_blank_values=True, max_num_fields=20))
        return Request(method, target, split.path, query, headers, body, ip)

    async def _send(self, writer: asyncio.StreamWriter, response: Response, *,
                    head_only: bool) -> None:
        status = response.status
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        head = [f"HTTP/1.1 {status} {phrase}", f"Content-Type: {response.content_type}",
                f"Content-Length: {len(response.body)}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in SECURITY_HEADERS]
        head += [f"{k}: {v}" for k, v in response.headers]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if not head_only:
            data += response.body
        try:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), self.head_timeout)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
