"""SIP messages: the model, reading and writing, under one name.

The parts live in :mod:`sipyard.sip.model` (the lazy message objects),
:mod:`sipyard.sip.reader` (``parse_message``) and :mod:`sipyard.sip.writer`
(``build_response``); most callers want one of each, so they are re-exported
here.
"""

from __future__ import annotations

from .model import (
    COMPACT_FORMS,
    DEFAULT_LIMITS,
    STAR,
    Limits,
    Message,
    Request,
    Response,
    _simple_name_addr,
    canonical_name,
)
from .reader import parse_message
from .uri import AbsoluteUri, SipUri, TelUri, Uri
from .writer import build_response

__all__ = [
    "COMPACT_FORMS", "Message", "Request", "Response", "STAR", "Limits", "DEFAULT_LIMITS",
    "parse_message", "build_response", "canonical_name", "is_sip_uri", "SipUri", "TelUri",
    "AbsoluteUri", "_simple_name_addr",
]


def is_sip_uri(uri: Uri) -> bool:
    return isinstance(uri, SipUri)


__all__ += ["is_sip_uri", "SipUri", "TelUri", "AbsoluteUri", "DEFAULT_LIMITS"]
