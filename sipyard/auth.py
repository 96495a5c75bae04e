"""Who is asking: digest authentication of requests against configured lines.

One place decides, for REGISTER, redirected requests and chat alike, so the
answers are the same everywhere: an unknown line and a wrong password give the
same 401 (status, reason phrase and header set), and every failure is counted
by the :class:`~sipyard.security.Guard` against the source address.

What counts as what:

* No credentials for our realm (none at all, another realm, an unknown scheme
  as in RFC 4475 regaut01): a plain challenge, not a failure.
* A ``Digest`` header that cannot be read at all (broken quoting, no
  ``username``): ``ParseError(400, "Bad Authorization header")``, counted as a
  failure (``reason=malformed``) so that garbage is no free probe.
* Wrong password, unknown user, forged nonce, algorithm not offered: 401 with
  a fresh challenge, counted.
* Right password on an expired nonce, or a replayed nonce count: 401 with
  ``stale=true``, not counted (the phone retries on its own).
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from .security import Guard
from .sip.digest import DigestServer, VerdictStatus, compute_ha1
from .sip.errors import ParseError
from .sip.message import Request

if TYPE_CHECKING:
    from .config import Config

__all__ = ["Authenticator", "AuthResult", "load_secret"]


@dataclass(slots=True, init=False, unsafe_hash=True)
class AuthResult:
    """One per authenticated request: ``Final`` fields, a written-out ``__init__``."""

    line: Final[str | None]
    #: headers of the 401 to send when ``line`` is None
    challenge: Final[tuple[tuple[str, str], ...]]

    def __init__(self, line: str | None, challenge: tuple[tuple[str, str], ...] = ()) -> None:
        self.line = line
        self.challenge = challenge


def load_secret(data_dir: Path) -> bytes:
    """The nonce key, kept in the data dir so nonces survive a restart and
    several workers sharing a store can share it (copy the file)."""
    path = data_dir / "nonce.key"
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    data = secrets.token_bytes(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return data


class Authenticator:
    def __init__(self, config: Config, secret: bytes, guard: Guard) -> None:
        self.guard = guard
        self._secret = secret
        #: issuer id in our nonces when several processes share the secret (cluster)
        self._node: int | None = None
        self._digest_params: tuple[str, float, tuple[str, ...]] | None = None
        self.configure(config)

    def configure(self, config: Config) -> None:
        srv = config.server
        self.config = config
        self.realm = srv.realm
        params = (srv.realm, float(srv.nonce_ttl), tuple(srv.algorithms))
        if self._digest_params != params:
            # A reload that leaves these alone keeps the server and so its table of
            # nonce counts: a new one would accept one replay of any recent header.
            self.digest = DigestServer(self._secret, srv.realm, nonce_ttl=params[1],
                                       algorithms=params[2], not_before=time.time(),
                                       node=self._node)
            self._digest_params = params
        self._ha1: dict[tuple[str, str], str | None] = {}

    @property
    def secret(self) -> bytes:
        """The nonce secret (shared by the cluster once :meth:`share` ran); flow tokens
        are keyed from it too (:mod:`sipyard.flowtoken`)."""
        return self._secret

    def share(self, secret: bytes, node: int) -> None:
        """Join processes that share ``secret`` (from the shared store) as ``node``.

        Every host and worker must accept each other's nonces as *ours* (a
        foreign MAC would count as a wrong password), while each nonce count
        is checked only by its issuer (see :class:`DigestServer` ``node``)."""
        self._secret, self._node = secret, node
        self._digest_params = None
        self.configure(self.config)

    def sweep(self, now: float) -> None:
        """Forget nonce counts older than ``nonce_ttl`` (housekeeping calls this)."""
        self.digest.sweep(now)

    def _lookup(self, username: str, algorithm: str) -> str | None:
        key = (username, algorithm)
        try:
            return self._ha1[key]
        except KeyError:
            pass
        line = self.config.lines.get(username)
        value: str | None = None
        if line is not None:
            if line.secret:
                value = compute_ha1(username, self.realm, line.secret, algorithm)
            else:
                value = line.ha1.get(algorithm) or None
        # Only configured lines are cached: an unknown name costs one dict miss
        # anyway, and caching scanners' made-up names kept up to 10 000 of them
        # for good (issue #16).
        if line is not None:
            self._ha1[key] = value
        return value

    def challenge_for(self, line: str | None, now: float, stale: bool = False, *,
                      proxy: bool = False) -> tuple[tuple[str, str], ...]:
        algs = None
        cfg_line = self.config.lines.get(line) if line else None
        if cfg_line is not None and cfg_line.algorithms:
            algs = tuple(cfg_line.algorithms)
        values = self.digest.challenge(now, algorithms=algs, stale=stale)
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        return tuple((name, v) for v in values)

    def check(self, req: Request, src_ip: str, now: float, *, target_line: str | None = None,
              proxy: bool = False) -> AuthResult:
        """Authenticate ``req``; on failure the challenge to send (401).

        ``target_line`` selects per-line algorithm overrides for the challenge
        (REGISTER's To user); it changes nothing for lines without overrides,
        so the answer for an unknown line equals that of a default line.
        Raises ``ParseError(400, "Bad Authorization header")`` for a Digest
        header that cannot be parsed (see the module doc). ``proxy``: a proxy's
        challenge (RFC 3261 §22.3): credentials come in Proxy-Authorization and
        the challenge goes out as Proxy-Authenticate (407); nonces, algorithms
        and bans are the same.
        """
        values = req.get_lines("proxy-authorization" if proxy else "authorization")
        verdict = None
        for value in values:
            v = self.digest.verify(value, req.method, now, self._lookup)
            if v.status is VerdictStatus.MISSING:
                continue  # another realm or scheme (RFC 4475 regaut01): ignore
            verdict = v
            break
        if verdict is None:
            return AuthResult(None, self.challenge_for(target_line, now, proxy=proxy))
        if verdict.ok and verdict.username in self.config.lines:
            self.guard.success(src_ip)
            return AuthResult(verdict.username)
        if verdict.status is VerdictStatus.INVALID and verdict.username is None:
            # Unreadable (bad quoting, duplicate or missing parameters, no username).
            self.guard.failure(src_ip, None, "malformed", now)
            raise ParseError(400, "Bad Authorization header")
        if verdict.status in (VerdictStatus.STALE, VerdictStatus.REPLAY):
            # The password was right: a fresh nonce with stale=true lets the client
            # retry silently; a replayed header never authenticates twice.
            return AuthResult(None, self.challenge_for(target_line, now, stale=True, proxy=proxy))
        reason = {
            VerdictStatus.INVALID: "wrong-credentials",
            VerdictStatus.UNSUPPORTED: "unsupported-algorithm",
        }.get(verdict.status, verdict.status.value)
        self.guard.failure(src_ip, verdict.username, reason, now)
        return AuthResult(None, self.challenge_for(target_line, now, proxy=proxy))
