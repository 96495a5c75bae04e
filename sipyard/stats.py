"""Request and response counters whose keys never come from the network.

A method name is a token any peer can make up: counting each as its own key
let 50 000 junk methods grow the server and its ``status`` output without
bound. Known methods keep their own counter; everything else is ``other``.
"""

from __future__ import annotations

import time

__all__ = ["Stats", "KNOWN_METHODS", "OTHER"]

KNOWN_METHODS = frozenset({
    "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "SUBSCRIBE", "NOTIFY",
    "MESSAGE", "REFER", "INFO", "UPDATE", "PRACK", "PUBLISH",
})
OTHER = "other"
_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx")


class Stats:
    """Counters for ``status`` and ``/metrics``; every key set is fixed and small."""

    __slots__ = ("requests", "responses", "codes", "started", "auth_failures", "dropped")

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.responses: dict[str, int] = {}
        #: status codes are three digits we chose to send: at most 600 keys
        self.codes: dict[int, int] = {}
        self.started = time.time()
        self.auth_failures = 0
        self.dropped = 0

    def request(self, method: str) -> None:
        key = method if method in KNOWN_METHODS else OTHER
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1

    def response(self, status: int) -> None:
        key = _CLASSES[status // 100]
        responses = self.responses
        responses[key] = responses.get(key, 0) + 1
        codes = self.codes
        codes[status] = codes.get(status, 0) + 1
