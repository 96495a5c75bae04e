"""Client-side HTTP Digest for SIP (RFC 3261 §22.2, RFC 7616, RFC 8760), sans-IO.

Used where sipyard itself must authenticate: a trunk's REGISTER to its provider and
the INVITEs it sends out through that trunk. No clock, no I/O: the caller hands in
the challenge values of a 401/407 and gets back the header to add.

Choices, and why:

* **Which challenge.** A response may carry one challenge per algorithm (RFC 8760
  §2.4); the strongest we support wins (SHA-512-256, SHA-256, MD5), ``-sess``
  variants included. A ``realm`` given to :class:`DigestClient` restricts the answer
  to challenges of that realm, so a provider's credentials are never handed to
  whoever else challenges on the way.
* **qop.** ``auth`` when offered (with ``cnonce`` and ``nc``); ``auth-int`` only is
  refused (we never sign bodies); no qop at all gives the RFC 2069 form, which old
  providers still send.
* **nc counting.** The nonce count is kept per nonce and grows with every answer
  that reuses it (a refresh REGISTER answering the same nonce sends ``nc=00000002``);
  a new nonce starts again at 1. A challenge with ``stale=true`` only renews the nonce.
* **HA1.** A configured HA1 is used as is (it is bound to the realm), else it is
  computed from the secret; the secret never leaves this object except hashed.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from .digest import parse_credentials

__all__ = ["Challenge", "DigestClient", "parse_challenges", "SUPPORTED"]

_HASHES = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}
#: strongest first; ``-sess`` variants rank with their base
SUPPORTED = ("SHA-512-256", "SHA-256", "MD5")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``Digest`` challenge of a ``WWW-Authenticate`` / ``Proxy-Authenticate`` value."""

    realm: str
    nonce: str
    algorithm: str  # canonical: MD5, SHA-256, SHA-512-256, optionally "-sess"
    qop: tuple[str, ...]  # offered, lower case; () = RFC 2069
    opaque: str | None = None
    stale: bool = False

    @property
    def base(self) -> str:
        return self.algorithm.removesuffix("-sess")

    @property
    def rank(self) -> int:
        return SUPPORTED.index(self.base)


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """The usable Digest challenges among header values, strongest first.

    Values that are not Digest, malformed, lack realm or nonce, name an algorithm we do
    not have, or offer only ``auth-int``, are skipped.
    """
    out: list[Challenge] = []
    for value in values:
        scheme, params = parse_credentials(value)
        if scheme.lower() != "digest" or not params:
            continue
        realm, nonce = params.get("realm"), params.get("nonce")
        if realm is None or not nonce:
            continue
        alg = (params.get("algorithm") or "MD5").strip().upper()
        if alg.removesuffix("-SESS") not in SUPPORTED:
            continue
        if alg.endswith("-SESS"):
            alg = alg[:-5] + "-sess"
        try:
            hashlib.new(_HASHES[alg.removesuffix("-sess")], b"")
        except ValueError:
            continue  # an OpenSSL without SHA-512/256
        qop_raw = params.get("qop")
        qop = tuple(q.strip().lower() for q in qop_raw.split(",")) if qop_raw else ()
        if qop and "auth" not in qop:
            continue
        out.append(Challenge(realm, nonce, alg, qop, params.get("opaque"),
                             (params.get("stale") or "").lower() == "true"))
    out.sort(key=lambda c: c.rank)
    return out


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(eq=False)
class DigestClient:
    """One account's credentials, and the nonce counts of the nonces it answered."""

    username: str
    secret: str | None = field(default=None, repr=False)
    ha1_md5: str | None = field(default=None, repr=False)
    realm: str | None = None
    _nc: dict[str, int] = field(default_factory=dict, repr=False)
    last: Challenge | None = None

    def pick(self, values: Iterable[str]) -> Challenge | None:
        """The challenge we would answer among these header values, or None."""
        for ch in parse_challenges(values):
            if self.realm is not None and ch.realm != self.realm:
                continue
            if self.secret is None and (ch.base != "MD5" or self.ha1_md5 is None):
                continue  # an HA1 serves MD5 only
            return ch
        return None

    def answer(self, challenge: Challenge, method: str, uri: str, *,
               cnonce: str | None = None) -> str:
        """The ``Authorization`` / ``Proxy-Authorization`` value for one request."""
        if len(self._nc) > 64:
            self._nc.clear()  # nonces of long ago: a provider minting one per request
        nc = self._nc.get(challenge.nonce, 0) + 1
        self._nc[challenge.nonce] = nc
        self.last = challenge
        name = _HASHES[challenge.base]

        def h(text: str) -> str:
            return hashlib.new(name, text.encode("utf-8")).hexdigest()

        if self.secret is not None:
            ha1 = h(f"{self.username}:{challenge.realm}:{self.secret}")
        else:
            assert self.ha1_md5 is not None
            ha1 = self.ha1_md5
        cn = cnonce or secrets.token_hex(8)
        if challenge.algorithm.endswith("-sess"):
            ha1 = h(f"{ha1}:{challenge.nonce}:{cn}")
        ha2 = h(f"{method}:{uri}")
        nc_text = f"{nc:08x}"
        parts = [f"username={_q(self.username)}", f"realm={_q(challenge.realm)}",
                 f"nonce={_q(challenge.nonce)}", f"uri={_q(uri)}"]
        if challenge.qop:
            response = h(f"{ha1}:{challenge.nonce}:{nc_text}:{cn}:auth:{ha2}")
            parts += [f"response={_q(response)}", f"algorithm={challenge.algorithm}",
                      f"cnonce={_q(cn)}", "qop=auth", f"nc={nc_text}"]
        else:
            response = h(f"{ha1}:{challenge.nonce}:{ha2}")
            parts += [f"response={_q(response)}", f"algorithm={challenge.algorithm}"]
        if challenge.opaque is not None:
            parts.append(f"opaque={_q(challenge.opaque)}")
        return "Digest " + ", ".join(parts)

    def again(self, method: str, uri: str) -> str | None:
        """An answer to the last challenge with the next nonce count (a refresh), or None."""
        if self.last is None:
            return None
        return self.answer(self.last, method, uri)
