"""Loop detection through the Via branch (RFC 3261 §16.3 step 4, §16.6 step 8, §16.11).

The branch a proxy puts in its Via is ``z9hG4bK`` + a hash of what identifies
the request as it reached us + ``.`` + a per-branch counter. The hash inputs
are those §16.6 step 8 lists: the upstream element's top Via (its branch when
it has the magic cookie, else the whole via-parm, §16.11), the Request-URI
before translation, the To and From tags, Call-ID, the CSeq number, and the
Proxy-Require, Proxy-Authorization and Route values. The counter makes each
fork of one request unique, as a client transaction key must be.

When a request comes back carrying a Via with our sent-by, we recompute the
hash of that old hop — same fields of the request as it is now, with the Via
just below ours as the upstream Via — and compare it with the hash part of the
branch we wrote then. Equal means nothing that decides routing has changed
since we saw it: a loop (482). Different (typically the Request-URI was
retargeted downstream) is a spiral, which is legal.

Both :meth:`LoopDetector.request_hash` and :meth:`LoopDetector.is_loop` must
see the request after §16.4 route preprocessing (our own Route values
removed), so that a request that reached us through a Route to us and comes
back by its Request-URI alone still hashes the same.

Hashing is blake2b (stdlib, keyed with an optional per-deployment secret so a
peer cannot forge a "loop"): 80 bits in 20 hex characters.
"""

from __future__ import annotations

import hashlib

from sipyard.sip.headers import Via
from sipyard.sip.message import Request
from sipyard.sip.transaction import MAGIC_COOKIE

from .addresses import LocalAddresses

__all__ = ["LoopDetector"]

_COOKIE_LEN = len(MAGIC_COOKIE)


def _upstream_part(via: Via | None) -> str:
    if via is None:
        return ""
    branch = via.branch
    if branch is not None and len(branch) > _COOKIE_LEN and branch.startswith(MAGIC_COOKIE):
        return branch
    return via.raw  # RFC 2543 peer: sent-by and all params


class LoopDetector:
    """Computes our branch ids and recognises a request that loops back to us."""

    __slots__ = ("addresses", "_key")

    def __init__(self, addresses: LocalAddresses, secret: bytes = b"") -> None:
        self.addresses = addresses
        self._key = secret[:64]

    def _hash(self, req: Request, upstream: Via | None) -> str:
        to_tag = req.to.tag or ""
        from_tag = req.from_.tag or ""
        fields = (
            _upstream_part(upstream),
            req.uri,
            to_tag,
            from_tag,
            req.call_id,
            str(req.cseq[0]),
            "\x01".join(req.get_lines("proxy-require")),
            "\x01".join(req.get_lines("proxy-authorization")),
            "\x01".join(req.get_all("route")),
        )
        data = "\x00".join(fields).encode("utf-8", "surrogateescape")
        return hashlib.blake2b(data, digest_size=10, key=self._key).hexdigest()

    def request_hash(self, req: Request) -> str:
        """The loop-detection hash of a request as received (after §16.4): once per request."""
        return self._hash(req, req.top_via)

    @staticmethod
    def branch(request_hash: str, counter: int) -> str:
        """Our Via branch for fork ``counter`` of a request with that hash (§16.6 step 8)."""
        return f"{MAGIC_COOKIE}{request_hash}.{counter}"

    def is_loop(self, req: Request) -> bool:
        """Whether ``req`` carries a Via of ours whose hash matches the request now (→ 482).

        Every Via is checked, not only the top one: downstream elements add
        theirs above ours before the request comes back.
        """
        vias = req.vias
        for i, via in enumerate(vias):
            if not self.addresses.is_our_via(via):
                continue
            branch = via.branch or ""
            if not branch.startswith(MAGIC_COOKIE):
                continue
            old_hash = branch[_COOKIE_LEN:].partition(".")[0]
            upstream = vias[i + 1] if i + 1 < len(vias) else None
            if old_hash == self._hash(req, upstream):
                return True
        return False
