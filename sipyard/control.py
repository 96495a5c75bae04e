"""The local control channel: a unix-socket JSON server and its client (DESIGN §6).

The CLI tools (``sipyard status``, ``reload``, ``level`` …) talk to a running server
over ``<data_dir>/control.sock``. This module is only the channel; the app registers
the operations with :meth:`ControlServer.register` and owns their meaning.

Wire protocol: newline-delimited JSON. A request is one line holding a JSON object
with a string ``"op"``; each request gets exactly one reply line,
``{"ok":true,...}`` or ``{"ok":false,"error":"..."}`` (compact, keys sorted so
replies are byte-stable for scripts and tests). A connection may carry several
requests, also pipelined; they are answered in order. Blank lines are ignored.

Robustness, because the control side shares the event loop with the SIP side and
must never stall it:

* everything is asyncio, handlers are coroutines; nothing here blocks the loop
  (except resolving a group *name* once at start);
* a request line is bounded by ``max_request`` bytes (oversize: error reply, then
  the connection is closed, because the line framing is lost);
* a handler is bounded by ``request_timeout`` (``{"ok":false,"error":"timed out"}``);
* a client that does not complete a request line (or does not read its replies)
  within ``idle_timeout`` is disconnected, so slow or stuck clients cannot pin
  resources; at most ``max_clients`` connections are served at once;
* malformed JSON, a non-object, a missing or unknown op each get an error reply
  and the connection stays usable; a handler exception becomes an error reply
  carrying its message and is logged, the server keeps going.

Access control. The kernel enforces it when a client connects: the socket file is
created with ``mode`` (default 0660) and, if ``group`` is given, chowned to that
group, so only the owner (the user running sipyard), members of that group and
root can connect at all (root always passes). The permissions are set on a
temporary name before the socket is renamed into place, so there is no window
in which the socket is reachable with looser permissions. Once connected, every
registered op may be called; handlers receive the peer's credentials (``Peer``,
read with ``SO_PEERCRED`` on Linux) for audit logs and for ops that want a
stricter rule — e.g. a ``stop``/``reload`` handler can require
:meth:`ControlServer.privileged` (root, the server's own uid, or primary gid
equal to the socket group; supplementary groups are not visible through
``SO_PEERCRED``).

Client exit codes follow DESIGN §6: 4 not running, 2 timed out, 3 send failed,
1 refused (permission denied, invalid request). ``{"ok":false}`` replies are
returned to the caller, which maps them to exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import grp
import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EXIT_REFUSED",
    "EXIT_TIMEOUT",
    "EXIT_SEND_FAILED",
    "EXIT_NOT_RUNNING",
    "Peer",
    "Handler",
    "ControlServer",
    "ControlServerError",
    "ControlClientError",
    "call",
    "acall",
    "encode",
]

EXIT_REFUSED = 1
EXIT_TIMEOUT = 2
EXIT_SEND_FAILED = 3
EXIT_NOT_RUNNING = 4

#: sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SUN_PATH = 107
#: Replies can be large (a full registry listing); bound them anyway so a broken
#: server cannot make the CLI eat all memory.
_MAX_REPLY = 64 * 1024 * 1024
_PEERCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }

log = logging.getLogger("sipyard.control")

# The connection task currently serving a request, so close() called from inside
# a handler (a "stop" op) does not cancel the very connection that must carry the
# reply, nor wait for itself.
_current_conn: contextvars.ContextVar[asyncio.Task[None] | None] = contextvars.ContextVar(
    "sipyard_control_conn", default=None
)


@dataclass(frozen=True, slots=True)
class Peer:
    """Credentials of the connected client (``None`` where the OS does not say)."""

    uid: int | None
    gid: int | None
    pid: int | None

    @property
    def is_root(self) -> bool:
        return self.uid == 0


Handler = Callable[[dict[str, Any], Peer], Awaitable[dict[str, Any]]]


class ControlServerError(Exception):
    """The control server cannot start (socket in use, bad group, bad path …)."""


class ControlClientError(Exception):
    """A control request could not be completed; ``exit_code`` is the CLI's exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def encode(obj: dict[str, Any]) -> bytes:
    """One wire line: compact, sorted keys, ASCII-only, newline-terminated."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("ascii") + b"\n"


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _peer_of(writer: asyncio.StreamWriter) -> Peer:
    sock = writer.get_extra_info("socket")
    opt = getattr(socket, "SO_PEERCRED", None)
    if sock is None or opt is None:
        return Peer(None, None, None)
    try:
        pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, opt, _PEERCRED.size))
    except OSError:
        return Peer(None, None, None)
    return Peer(uid=uid, gid=gid, pid=pid)


def _resolve_group(group: str | int) -> int:
    if isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ControlServerError(f"control socket group {group!r} does not exist") from None


class ControlServer:
    """Serves registered ops on a unix stream socket; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        mode: int = 0o660,
        group: str | int | None = None,
        max_request: int = 65536,
        request_timeout: float = 5.0,
        idle_timeout: float = 10.0,
        max_clients: int = 64,
        logger: logging.Logger | None = None,
    ) -> None:
        self.path = Path(path)
        self.mode = mode
        self.group = group
        self.max_request = max_request
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.max_clients = max_clients
        self.log = logger or log
        self._handlers: dict[str, Handler] = {}
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._closing = False
        self._gid: int | None = None
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file

    # -- registration -------------------------------------------------------------

    def register(self, op: str, handler: Handler) -> None:
        """Serve ``op`` with ``handler``; registering an op twice is a wiring bug."""
        if not op or not isinstance(op, str):
            raise ValueError("op must be a non-empty string")
        if op in self._handlers:
            raise ValueError(f"control op {op!r} already registered")
        self._handlers[op] = handler

    @property
    def ops(self) -> list[str]:
        return sorted(self._handlers)

    @property
    def clients(self) -> int:
        """Connections being served right now."""
        return len(self._conns)

    def privileged(self, peer: Peer) -> bool:
        """A stricter check for ops like stop/reload: root, our own uid, or the socket group."""
        if peer.uid is None:
            return False
        if peer.uid == 0 or peer.uid == os.geteuid():
            return True
        return self._gid is not None and peer.gid == self._gid

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Bind, set mode and group, then listen; refuses if another server answers."""
        if self._server is not None:
            raise ControlServerError("control server already started")
        path = self.path
        if len(os.fsencode(path)) > _MAX_SUN_PATH:
            raise ControlServerError(
                f"control socket path too long ({len(os.fsencode(path))} bytes, "
                f"max {_MAX_SUN_PATH}): {path}"
            )
        if not path.parent.is_dir():
            raise ControlServerError(f"control socket directory {path.parent} does not exist")
        # "" means the server's own group, as config's [control] group default.
        self._gid = None if self.group in (None, "") else _resolve_group(self.group)
        await self._clear_stale(path)
        sock = self._bind(path)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, sock=sock, limit=self.max_request
            )
        except BaseException:
            sock.close()
            self._unlink_own()
            raise
        self._closing = False
        self.log.info("control socket listening on %s (mode %o)", path, self.mode)

    async def _clear_stale(self, path: Path) -> None:
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlServerError(f"{path} exists and is not a socket; not replacing it")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2.0)
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # nobody listening: a leftover of a crashed server
        except (TimeoutError, OSError) as exc:
            # A server that accepts too slowly is still a server; never steal its socket.
            raise ControlServerError(
                f"another sipyard may be running on {path} (probe failed: {str(exc) or 'timed out'})"
            ) from None
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            raise ControlServerError(f"another sipyard is running on {path}")
        self.log.info("removing stale control socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def _bind(self, path: Path) -> socket.socket:
        # Bind on a temporary name, fix mode/group, then rename into place, so the
        # socket never exists at `path` with umask-derived permissions.
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        if len(os.fsencode(tmp)) > _MAX_SUN_PATH:
            tmp = path.with_name(f".cs{os.getpid()}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            try:
                sock.bind(str(tmp))
            except OSError as exc:
                raise ControlServerError(f"cannot bind control socket {path}: {exc}") from None
            try:
                os.chmod(tmp, self.mode)
                if self._gid is not None:
                    os.chown(tmp, -1, self._gid)
            except OSError as exc:
                raise ControlServerError(
                    f"cannot set mode {self.mode:o} / group {self.group!r} on control socket "
                    f"{path}: {exc.strerror}"
                ) from None
            sock.listen(64)
            sock.setblocking(False)
            os.rename(tmp, path)
            st = path.lstat()
            self._ident = (st.st_dev, st.st_ino)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return sock

    def _unlink_own(self) -> None:
        """Remove the socket file, but only if it is still ours (not a successor's)."""
        if self._ident is None:
            return
        try:
            st = self.path.lstat()
            if (st.st_dev, st.st_ino) == self._ident:
                self.path.unlink()
        except OSError:
            pass
        self._ident = None

    async def close(self) -> None:
        """Stop listening, drop clients, remove the socket file.

        Safe to await from inside a handler (a "stop" op): that request's connection
        is spared so its reply still goes out, and is closed right after it.
        """
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._unlink_own()
        me = _current_conn.get()
        others = [t for t in self._conns if t is not me]
        for task in others:
            task.cancel()
        if others:
            await asyncio.gather(*others, return_exceptions=True)
        if server is not None and me is None:
            await server.wait_closed()

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- connections --------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing or len(self._conns) >= self.max_clients:
            why = "shutting down" if self._closing else "too many control clients"
            with contextlib.suppress(Exception):
                writer.write(encode(_error(why)))
                writer.close()
            return
        self._conns.add(task)
        _current_conn.set(task)
        peer = _peer_of(writer)
        try:
            await self._conversation(reader, writer, peer)
        except (ConnectionError, TimeoutError):
            pass  # client went away, or stopped reading its replies
        except asyncio.CancelledError:
            if not self._closing:
                raise
        except Exception:  # never let one client take the server down
            self.log.exception("control connection from uid %s failed", peer.uid)
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _conversation(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer
    ) -> None:
        while not self._closing:
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), self.idle_timeout)
            except asyncio.IncompleteReadError:
                return  # EOF (possibly mid-line: the partial request is dropped)
            except asyncio.LimitOverrunError:
                await self._send(
                    writer, _error(f"request too large (max {self.max_request} bytes)")
                )
                return
            except TimeoutError:
                self.log.debug("control client uid %s idle, disconnecting", peer.uid)
                return
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            reply = await self._dispatch(line, peer)
            await self._send(writer, reply)

    async def _send(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        try:
            data = encode(reply)
        except (TypeError, ValueError) as exc:
            self.log.error("control reply not serialisable: %s", exc)
            data = encode(_error(f"internal error: reply not serialisable: {exc}"))
        writer.write(data)
        # A client that never reads its replies must not hold us forever.
        await asyncio.wait_for(writer.drain(), self.idle_timeout)

    async def _dispatch(self, line: bytes, peer: Peer) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (ValueError, RecursionError) as exc:
            return _error(f"malformed JSON: {exc}")
        if not isinstance(request, dict):
            return _error("request must be a JSON object")
        op = request.get("op")
        if op is None:
            return _error("missing op")
        if not isinstance(op, str):
            return _error("op must be a string")
        handler = self._handlers.get(op)
        if handler is None:
            return _error(f"unknown op: {op!r}")
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(handler(request, peer), self.request_timeout)
        except TimeoutError:
            self.log.warning("control op %s timed out after %.1fs", op, self.request_timeout)
            return _error("timed out")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.exception("control op %s failed", op)
            return _error(str(exc) or type(exc).__name__)
        self.log.debug("control op %s by uid %s in %.3fs", op, peer.uid, time.monotonic() - started)
        if not isinstance(result, dict):
            self.log.error("control op %s returned %s, not a dict", op, type(result).__name__)
            return _error(f"internal error: op {op} returned {type(result).__name__}")
        reply: dict[str, Any] = {"ok": True}
        reply.update(result)  # a handler may refuse with {"ok": False, "error": ...}
        return reply


# -- client -----------------------------------------------------------------------


def _not_running(path: Path, stale: bool) -> ControlClientError:
    what = "nobody listening on control socket" if stale else "no control socket"
    return ControlClientError(f"sipyard is not running ({what} at {path})", EXIT_NOT_RUNNING)


def _connect_error(path: Path, exc: OSError) -> ControlClientError:
    if isinstance(exc, FileNotFoundError):
        return _not_running(path, stale=False)
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ENOTSOCK:
        return _not_running(path, stale=True)
    if isinstance(exc, PermissionError):
        return ControlClientError(
            f"permission denied on {path} (are you in the control socket's group?)",
            EXIT_REFUSED,
        )
    if isinstance(exc, TimeoutError):
        return ControlClientError(f"timed out connecting to {path}", EXIT_TIMEOUT)
    return ControlClientError(f"cannot connect to {path}: {exc.strerror or exc}", EXIT_NOT_RUNNING)


def _encode_request(request: dict[str, Any]) -> bytes:
    try:
        return encode(request)
    except (TypeError, ValueError) as exc:
        raise ControlClientError(f"invalid request: {exc}", EXIT_REFUSED) from None


def _decode_reply(line: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise ControlClientError(f"bad reply from sipyard: {exc}", EXIT_SEND_FAILED) from None
    if not isinstance(reply, dict):
        raise ControlClientError("bad reply from sipyard: not a JSON object", EXIT_SEND_FAILED)
    return reply


def _timed_out(path: Path) -> ControlClientError:
    return ControlClientError(f"timed out waiting for sipyard on {path}", EXIT_TIMEOUT)


def _io_failed(path: Path, exc: OSError) -> ControlClientError:
    """A socket error while sending the request or reading the reply (exit 3)."""
    return ControlClientError(f"send failed on {path}: {exc.strerror or exc}", EXIT_SEND_FAILED)


def _closed(path: Path) -> ControlClientError:
    return ControlClientError(
        f"send failed: sipyard closed {path} before replying", EXIT_SEND_FAILED
    )


def call(path: Path, request: dict[str, Any], *, timeout: float = 5.0) -> dict[str, Any]:
    """Send one request and return the reply (blocking; for the CLI).

    ``timeout`` bounds the whole exchange. ``{"ok": false}`` replies are returned;
    transport failures raise :class:`ControlClientError` with the exit code.
    """
    path = Path(path)
    data = _encode_request(request)
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _timed_out(path)
        return left

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(remaining())
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise _connect_error(path, exc) from None
        try:
            sock.settimeout(remaining())
            sock.sendall(data)
        except TimeoutError:
            raise _timed_out(path) from None
        except OSError as exc:
            raise _io_failed(path, exc) from None
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                sock.settimeout(remaining())
                chunk = sock.recv(65536)
            except TimeoutError:
                raise _timed_out(path) from None
            except OSError as exc:
                raise _io_failed(path, exc) from None
            if not chunk:
                raise _closed(path)
            nl = chunk.find(b"\n")
            if nl >= 0:
                chunks.append(chunk[:nl])
                return _decode_reply(b"".join(chunks))
            chunks.append(chunk)
            size += len(chunk)
            if size > _MAX_REPLY:
                raise ControlClientError("reply from sipyard too large", EXIT_SEND_FAILED)


async def acall(path: Path, request: dict[str, Any], *, timeout: float = 5.0) -> dict[str, Any]:
    """The asyncio twin of :func:`call` (same errors, same exit codes)."""
    path = Path(path)
    data = _encode_request(request)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_unix_connection(str(path), limit=_MAX_REPLY)
            except OSError as exc:
                raise _connect_error(path, exc) from None
            try:
                writer.write(data)
                await writer.drain()
            except OSError as exc:
                raise _io_failed(path, exc) from None
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                raise _closed(path) from None
            except asyncio.LimitOverrunError:
                raise ControlClientError("reply from sipyard too large", EXIT_SEND_FAILED) from None
            except OSError as exc:
                raise _io_failed(path, exc) from None
            return _decode_reply(line)
    except TimeoutError:
        raise _timed_out(path) from None
    finally:
        if writer is not None:
            writer.close()
