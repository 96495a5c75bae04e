"""Chat commands: a MESSAGE from an authenticated line to the system identity."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from ..auth import Authenticator
from ..sip.errors import ParseError
from ..sip.message import Request
from ..sip.source import Source
from ..sip.transaction import ServerTransaction
from ..stats import Stats

if TYPE_CHECKING:
    from ..messaging import Sender
    from ..parts import Parts
    from .base import Responder

__all__ = ["ChatHandler", "caller_line"]


def caller_line(auth: Authenticator, stats: Stats, out: Responder, req: Request, src: Source,
                tx: ServerTransaction, required: bool) -> tuple[bool, str | None]:
    """(answered, caller line): the line whose credentials the request carries.

    Challenges with 401 when authentication is required and missing or wrong;
    without ``required`` a request with no Authorization is simply anonymous.
    """
    if not required and not req.has("authorization"):
        return False, None
    try:
        result = auth.check(req, src.ip, out.now())
    except ParseError as exc:
        out.respond(tx, req, exc.status, exc.reason)
        return True, None
    if result.line is not None:
        return False, result.line
    if required:
        stats.auth_failures += 1
        out.respond(tx, req, 401, "Unauthorized", result.challenge)
        return True, None
    return False, None


class ChatHandler:
    """Answers 202, runs the command, and sends the reply lines back to the caller's phones."""

    __slots__ = ("current", "auth", "stats", "chat", "sender", "out")

    def __init__(self, parts: Parts, sender: Sender, out: Responder) -> None:
        self.current = parts.current
        self.auth = parts.auth
        self.stats = parts.stats
        self.chat = parts.chat
        self.sender = sender
        self.out = out

    def handle(self, req: Request, src: Source, tx: ServerTransaction) -> Awaitable[None] | None:
        answered, caller = caller_line(self.auth, self.stats, self.out, req, src, tx, True)
        if answered or caller is None:
            return None
        ctype = (req.get("content-type") or "text/plain").split(";")[0].strip().lower()
        if ctype != "text/plain":
            self.out.respond(tx, req, 415, "Unsupported Media Type", (("Accept", "text/plain"),))
            return None
        self.out.respond(tx, req, 202, "Accepted")
        return self._run(req.body.decode("utf-8", "replace"), caller)

    async def _run(self, text: str, caller: str) -> None:
        cfg = self.current.config
        lc = cfg.lines.get(caller)
        display = lc.display if lc is not None and lc.display else ""
        replies = await self.chat.handle(text, line=caller, display=display)
        system = f"sip:{cfg.server.system}@{cfg.server.realm}"
        await self.sender.send_replies(caller, replies, system, self.out.now())
