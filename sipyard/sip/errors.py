"""Errors of the sans-IO core.

Every parse failure carries the status a server should answer with (as h11's
``error_status_hint``), so the single parse entry point can turn it into a
stateless response without knowing which rule failed.
"""

from __future__ import annotations

__all__ = ["SipError", "ParseError", "TransactionError"]


class SipError(Exception):
    """Base of the core's errors."""


class ParseError(SipError):
    """A message (or part of one) is malformed.

    ``status`` is the response a server should send (400, 416, 420, 505, 513 …);
    ``reason`` is a short reason phrase naming the fault; ``fatal`` means the
    framing of a stream is lost, so a TCP connection must be closed.
    """

    def __init__(self, status: int, reason: str, *, fatal: bool = False) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.fatal = fatal
        #: The message as far as it could be read (start line and headers), so a
        #: server can still address its 400 to the sender; None when unreadable.
        self.partial: object | None = None


class TransactionError(SipError):
    """An illegal (state, event) transition in a transaction state machine."""
