"""systemd's readiness protocol (``sd_notify``), without libsystemd.

Why: with ``Type=notify`` (examples/systemd/sipyard.service) systemd starts the units that
depend on sipyard only once it really listens, shows a reload as "reloading" until the new
config is in force, and knows a stop was asked for rather than a crash. The protocol is one
datagram of ``KEY=value`` lines to the AF_UNIX socket named in ``$NOTIFY_SOCKET`` (a path,
or an abstract name written with a leading ``@``); nothing here is worth a dependency.

Without ``$NOTIFY_SOCKET`` (not under systemd, or ``Type=simple``) every call does nothing.
A notification that cannot be sent is logged at debug level and otherwise ignored: the
server must never stop serving SIP because its supervisor went away.

What sipyard sends (see ``cli.cmd_serve``):

- ``READY=1`` once every socket listens and signals are handled, with a ``STATUS=`` line;
- ``RELOADING=1`` with ``MONOTONIC_USEC=`` (systemd >= 253 wants the time of the request)
  when a reload starts, then ``READY=1`` when it ended (applied or refused: either way a
  config is in force again);
- ``STOPPING=1`` when a stop was asked for (SIGTERM, SIGINT, ``sipyard stop``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator

__all__ = ["notify", "ready", "reloading", "stopping"]

log = logging.getLogger("sipyard.sdnotify")

#: a datagram to systemd never waits longer than this (its queue is full: it is busy)
SEND_TIMEOUT = 1.0


def _address(name: str) -> str | bytes | None:
    """The socket address for ``$NOTIFY_SOCKET``: a path, or ``\\0name`` for ``@name``."""
    if name.startswith("@"):
        return b"\0" + os.fsencode(name[1:])
    if name.startswith("/"):
        return name
    return None  # e.g. "vsock:…" (systemd >= 254, VMs): not for a service on the host


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=…"``) as one message; True when sent.

    False, silently, when there is no ``$NOTIFY_SOCKET``; False with a debug log line when
    the message could not be sent. ``$NOTIFY_SOCKET`` stays set: later states are sent too.
    """
    name = os.environ.get("NOTIFY_SOCKET", "")
    if not name or not fields:
        return False
    address = _address(name)
    if address is None:
        log.debug("sd_notify: unsupported NOTIFY_SOCKET %r", name)
        return False
    data = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto(data, address)
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", name, exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    """``READY=1`` (plus ``STATUS=``): the server listens and handles signals."""
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def stopping(status: str = "stopping") -> bool:
    """``STOPPING=1``: a stop was asked for; what follows is a clean shutdown."""
    return notify("STOPPING=1", f"STATUS={status}")


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


@contextlib.contextmanager
def reloading(status: str = "running") -> Iterator[None]:
    """``RELOADING=1`` + ``MONOTONIC_USEC=`` on entry, ``READY=1`` on exit, however it exits.

    For the reload path: ``with sdnotify.reloading(): …re-read the config…``. A refused or
    failed reload still ends with READY=1 because the old config keeps serving.
    """
    notify("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}", "STATUS=reloading")
    try:
        yield
    finally:
        ready(status)
