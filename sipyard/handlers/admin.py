"""Control over SIP: ``/status`` … from an admin line, answered with the CLI's text.

Why inside the chat handler's door: the seed's control manager is "special SIP requests
for permitted users"; a MESSAGE to the system identity is already how lines talk to the
server (chat commands), so the admin words are chat words that only an authenticated
line holding the ``admin`` permission gets. Everyone else gets the chat's ordinary
"unknown command" reply for them, never a hint that they exist.

Rules: over TCP only (a UDP MESSAGE from an admin is refused 403: answers can be large
and a datagram's source is easy to forge); the answer is one MESSAGE, sent back on the
connection the command came in on, to the request's Contact; every command is logged
with line and source.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..sip.errors import ParseError
from ..sip.message import Request
from ..sip.source import Source
from ..sip.transaction import ServerTransaction
from .chat import ChatHandler, caller_line

if TYPE_CHECKING:
    from ..messaging import Sender
    from ..parts import Parts
    from .base import Responder

__all__ = ["AdminChatHandler", "ADMIN_PERMISSION"]

log = logging.getLogger("sipyard.admin")

ADMIN_PERMISSION = "admin"
#: (word, args) -> the text to answer
AdminRun = Callable[[str, str], Awaitable[str]]


def command_of(body: bytes) -> tuple[str, str]:
    """``("status", "args")`` for a ``/status args`` body; ``("", "")`` for anything else."""
    text = body.decode("utf-8", "replace").lstrip().rstrip("\r\n")
    if not text.startswith("/"):
        return "", ""
    word, _, args = text[1:].partition(" ")
    return word.strip().lower(), args


class AdminChatHandler(ChatHandler):
    """The chat handler, with the admin words taken out of the chat's hands."""

    __slots__ = ("run", "words")

    def __init__(self, parts: Parts, sender: Sender, out: Responder, run: AdminRun,
                 words: frozenset[str]) -> None:
        super().__init__(parts, sender, out)
        self.run = run
        self.words = words

    def handle(self, req: Request, src: Source, tx: ServerTransaction) -> Awaitable[None] | None:
        word, args = command_of(req.body)
        if word not in self.words:
            return super().handle(req, src, tx)
        answered, caller = caller_line(self.auth, self.stats, self.out, req, src, tx, True)
        if answered or caller is None:
            return None
        lc = self.current.config.lines.get(caller)
        if lc is None or ADMIN_PERMISSION not in lc.permissions:
            self.out.respond(tx, req, 202, "Accepted")  # as the chat answers any command
            return self._unknown(word, caller)
        if src.transport != "tcp":
            log.warning("admin command /%s from line %s at %s:%d/%s refused: TCP only", word,
                        caller, src.ip, src.port, src.transport)
            self.out.respond(tx, req, 403, "Forbidden",
                             (("Warning", '399 - "control commands need TCP"'),))
            return None
        self.out.respond(tx, req, 202, "Accepted")
        log.info("admin command /%s%s from line %s at %s:%d/%s", word,
                 f" {args[:64]}" if args else "", caller, src.ip, src.port, src.transport)
        return self._answer(word, args, req, src)

    async def _unknown(self, word: str, caller: str) -> None:
        """The chat's own reply to a word it does not know (the credentials were checked
        once already: checking them again would look like a replayed nonce)."""
        cfg = self.current.config
        await self.sender.send_replies(caller, self.chat.unknown(word),
                                       f"sip:{cfg.server.system}@{cfg.server.realm}",
                                       self.out.now())

    async def _answer(self, word: str, args: str, req: Request, src: Source) -> None:
        try:
            text = await self.run(word, args)
        except Exception as exc:  # an op failing must still answer the admin
            log.error("admin command /%s failed: %r", word, exc)
            text = f"/{word} failed: {type(exc).__name__}"
        cfg = self.current.config
        try:
            contacts = req.contacts
            target = contacts[0].uri if isinstance(contacts, list) and contacts else req.from_.uri
            from_uri = req.from_.uri
        except (ParseError, IndexError):
            return
        result = await self.sender.uac.request(
            "MESSAGE", target, src, from_uri=f"sip:{cfg.server.system}@{cfg.server.realm}",
            to_uri=from_uri, headers=[("Content-Type", "text/plain;charset=UTF-8")],
            body=text.encode("utf-8"))
        if not result.ok:
            log.info("admin answer to %s not delivered: %d", from_uri, result.status)
