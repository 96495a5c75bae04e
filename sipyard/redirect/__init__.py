"""The redirect server (DESIGN §3): a chain of redirectors builds the contact set for a request.

``RedirectServer`` (``pipeline``) runs the chain, ``ContactSet`` (``contacts``) is what the
redirectors edit, ``build_chain`` (``loader``) makes the chain from ``[redirect] chain``.
"""

from __future__ import annotations

from .contacts import Contact, ContactSet
from .pipeline import (
    NEEDS_AUTH,
    ErrorDescriptor,
    RedirectContext,
    Redirector,
    RedirectOutcome,
    RedirectServer,
    Result,
    ResumeHandle,
    Services,
    Slot,
    line_aor,
)

__all__ = [
    "Contact", "ContactSet", "ErrorDescriptor", "NEEDS_AUTH", "RedirectContext",
    "RedirectOutcome", "RedirectServer", "Redirector", "Result", "ResumeHandle", "Services",
    "Slot", "line_aor",
]
