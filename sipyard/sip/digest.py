"""Server-side HTTP Digest for SIP (RFC 3261 §22, RFC 7616, RFC 8760), sans-IO.

The server issues challenges and checks credentials; it never reads a clock
(``now`` comes in) and never does I/O (``lookup_ha1`` is the caller's).

Decisions, and why:

* **Challenge format.** One ``WWW-Authenticate`` value per algorithm, strongest
  first (RFC 8760 §2.4), each
  ``Digest realm="r", nonce="n", opaque="o", algorithm=MD5, qop="auth"``
  (``stale=true`` goes before ``algorithm`` when asked). Every value is on one
  line, ``algorithm`` is an unquoted token and ``qop`` a quoted list, which is
  what the naive ``strstr``-style parsers of sipsak and SIPp and libre's parser
  (baresip) expect. No parameter name occurs inside another parameter's value
  (the nonce is base64url without ``=`` padding, the opaque is hex), so those
  substring searches cannot be fooled. The default is MD5 only: baresip 1.0
  rejects a challenge set that contains SHA-256 at all, sipsak rejects SHA-256
  when it comes first and SIPp 3.6 knows only MD5.
* **Stateless nonces.** ``base64url(ts_ms[6] | offered-algorithms[1] |
  counter[7] | HMAC-SHA256(secret, realm | those 14 bytes)[:16])``: 40 chars.
  Verification recomputes the MAC (constant time); nothing is stored per
  challenge, so a flood of unauthenticated requests costs no memory. The
  bitmask of offered algorithms rides in the nonce, so a per-account policy
  passed to :meth:`DigestServer.challenge` is enforced by :meth:`verify`
  without server state. The counter starts at a random value per instance so
  two nodes sharing the secret do not mint the same nonce in the same
  millisecond. ``now`` may be wall-clock or monotonic; nodes that share a
  secret must share the clock (wall-clock). A nonce older than ``nonce_ttl``, or
  more than ``max_skew`` seconds in the future (clock jumped back, another
  node's clock ahead), gives ``STALE`` when the credentials are otherwise right,
  so the client retries silently on ``stale=true`` instead of reporting a bad
  password (baresip#717).
* **qop.** We always offer ``qop="auth"`` and therefore *require*
  ``qop=auth`` with ``nc``/``cnonce``: an RFC 2069 response (no qop) gives
  ``INVALID`` (it has no nonce count, so it cannot be protected against replay,
  and accepting it would be a downgrade); ``auth-int`` gives ``UNSUPPORTED``.
* **Replay.** Per nonce the highest accepted ``nc`` is kept; ``nc`` at or below
  it gives ``REPLAY`` (so the same Authorization sent twice is refused; SIP
  retransmissions never reach us, the transaction layer absorbs them). Only
  nonces that authenticated someone are tracked, by their counter, in the
  compact pages of :class:`~sipyard.sip.noncecount.NonceCounts` (a few bytes a
  nonce: a busy registrar uses one per REGISTER). Pages are dropped once their
  nonces are older than ``nonce_ttl`` (they would be STALE anyway) and, oldest
  first, when more than ``max_tracked`` nonces are held. Every dropped page
  raises a *floor*: a nonce not in the table whose timestamp is at or below the
  floor is treated as stale, so eviction under a flood (or a clock jumping
  back) can never reopen a nonce for replay; the honest client just gets a
  fresh nonce. The table is per process: several nodes sharing a secret each
  check replays only for what they saw.
* **Which credentials count.** Another realm's credentials are not ours
  (RFC 3261 §22.4): ``MISSING``, like an unknown scheme (RFC 4475 regaut01),
  so the caller simply challenges. The ``uri`` parameter must be present but is
  not compared with the Request-URI: NATs, SBCs and proxies rewrite the
  Request-URI, and the response hash already binds the ``uri`` the client used;
  replay is stopped by nonce + nc. ``opaque``, when echoed, must be ours; a
  client that omits it is tolerated (several old UAs do; it carries no secret).
  ``userhash=true`` is not supported (we never offer it): ``UNSUPPORTED``.
  ``username*`` (RFC 7616 §3.4.4, RFC 8187 encoding) is accepted.
* **No user enumeration.** For an unknown user the response is computed
  against a dummy HA1 derived from the secret, and the verdict is the same
  ``INVALID`` as for a wrong password; all checks that can fail early depend on
  the request only, never on the user's existence. Comparisons use
  :func:`hmac.compare_digest`.
* **Hostile input.** :func:`parse_credentials` uses no regular expressions:
  a ``split(",")`` fast path for the usual header, else one forward scan with
  ``str.find``; both linear in the input. Any malformed header gives
  ``INVALID`` (or ``MISSING`` when it is not Digest at all);
  :meth:`DigestServer.verify` raises only what ``lookup_ha1`` raises.

What the caller does with a :class:`Verdict`: ``OK`` → proceed as
``verdict.username``; ``STALE`` and ``REPLAY`` → 401 with
``challenge(now, stale=True)`` (the credentials were right, so the UA may retry
without asking its user); ``MISSING``, ``INVALID``, ``UNSUPPORTED`` → 401 with
``challenge(now)``; count ``INVALID`` as a failed attempt.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_to_bytes

from .noncecount import NonceCounts

__all__ = [
    "ALGORITHMS",
    "SESS_ALGORITHMS",
    "DigestServer",
    "Verdict",
    "VerdictStatus",
    "client_response",
    "compute_ha1",
    "parse_credentials",
]

ALGORITHMS = ("SHA-512-256", "SHA-256", "MD5")  # strongest first
SESS_ALGORITHMS = ("SHA-512-256-sess", "SHA-256-sess", "MD5-sess")

_B64URL_TO_STD = bytes.maketrans(b"-_", b"+/")
_HEX = "0123456789abcdefABCDEF"
_WS = " \t\r\n"
_NONCE_LEN = 40  # base64url of 30 bytes, no padding
_BODY_LEN = 14  # ts_ms[6] | mask[1] | counter[7]
_MAC_LEN = 16
_MAX_MS = (1 << 48) - 1
_CTR_MASK = (1 << 56) - 1
#: with a node id, the counter's top 16 bits are the node
_NODE_SHIFT = 40
_NODE_LOW = (1 << 40) - 1


def _bytes(text: str) -> bytes:
    """UTF-8 bytes of *text*; surrogate-escaped raw bytes come back as they were.

    Header text decoded with ``surrogateescape`` must hash to the client's
    original bytes; any other lone surrogate cannot match anything, but must
    not raise either.
    """
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha512_256(data: bytes) -> str:
    # FIPS 180-4 SHA-512/256 (own IVs), not a truncated SHA-512: RFC 7616 §3.2.
    return hashlib.new("sha512_256", data).hexdigest()


@dataclass(frozen=True, slots=True)
class _Alg:
    """One algorithm token of RFC 8760 and how to compute with it."""

    name: str  # canonical token as sent in challenges
    base: str  # the non-sess name: the key the stored HA1 is looked up under
    sess: bool
    bit: int  # its bit in the nonce's offered-algorithms mask
    rank: int  # 0 = strongest
    hexlen: int
    hash: Callable[[bytes], str]


def _make_algs() -> dict[str, _Alg]:
    try:
        hashlib.new("sha512_256", b"")
        have_512_256 = True
    except ValueError:  # an OpenSSL without SHA-512/256: offer the rest
        have_512_256 = False
    table: list[tuple[str, int, Callable[[bytes], str]]] = [
        ("SHA-512-256", 64, _sha512_256),
        ("SHA-256", 64, _sha256),
        ("MD5", 32, _md5),
    ]
    algs: dict[str, _Alg] = {}
    for i, (base, hexlen, fn) in enumerate(table):
        if base == "SHA-512-256" and not have_512_256:
            continue
        for sess in (False, True):
            name = base + "-sess" if sess else base
            algs[name.lower()] = _Alg(name, base, sess, 1 << (2 * i + sess), 2 * i + sess,
                                      hexlen, fn)
    return algs


_ALGS = _make_algs()


def _alg(name: str) -> _Alg:
    alg = _ALGS.get(name.lower())
    if alg is None:
        raise ValueError(f"unsupported digest algorithm: {name!r}")
    return alg


def compute_ha1(username: str, realm: str, password: str, algorithm: str) -> str:
    """The stored secret ``H(username ":" realm ":" password)`` as lower-case hex.

    A ``-sess`` name gives the same value as its base algorithm: the session
    HA1 is derived per request from this one (RFC 7616 §3.4.2), so one stored
    value serves both. ``ValueError`` for an unknown algorithm.
    """
    return _alg(algorithm).hash(_bytes(f"{username}:{realm}:{password}"))


class VerdictStatus(enum.Enum):
    OK = "ok"
    MISSING = "missing"  # no Digest credentials for our realm: just challenge
    INVALID = "invalid"  # malformed, forged nonce, wrong password, unknown user
    STALE = "stale"  # right credentials, nonce expired: challenge with stale=true
    REPLAY = "replay"  # right credentials, nc already seen for this nonce
    UNSUPPORTED = "unsupported"  # algorithm not offered, qop=auth-int, userhash


@dataclass(slots=True, init=False, unsafe_hash=True)
class Verdict:
    """Outcome of :meth:`DigestServer.verify`.

    ``username`` is the one the client claimed whenever it could be read, also
    for failures (per-user failure counters, logs); it is set identically for
    known and unknown users. ``algorithm`` is the canonical token used. One per
    digest request: ``Final`` fields and a written-out ``__init__`` (a frozen
    dataclass's sets each field through ``object.__setattr__``).
    """

    status: Final[VerdictStatus]
    username: Final[str | None]
    algorithm: Final[str | None]

    def __init__(self, status: VerdictStatus, username: str | None = None,
                 algorithm: str | None = None) -> None:
        self.status = status
        self.username = username
        self.algorithm = algorithm

    @property
    def ok(self) -> bool:
        return self.status is VerdictStatus.OK


_MISSING = Verdict(VerdictStatus.MISSING)
_INVALID = Verdict(VerdictStatus.INVALID)


def parse_credentials(value: str) -> tuple[str, dict[str, str] | None]:
    """Split ``scheme auth-param *("," auth-param)`` (RFC 7235 §2.1).

    Returns the scheme as written and the parameters (names lower-cased,
    quoted values unquoted and unescaped), or ``None`` for the parameters when
    they are malformed: a name without ``=``, an unterminated quote, junk after
    a quoted value, a duplicated name. Linear in the input whatever it holds:
    no regular expressions, only ``str`` methods.
    """
    s = value.strip(_WS)
    i = len(s)
    for ws in _WS:
        j = s.find(ws, 0, i)
        if j >= 0:
            i = j
    rest = s[i:]
    params = _params_split(rest)
    if params is _SLOW:
        params = _params_scan(rest)
    return s[:i], params


_SLOW: dict[str, str] = {}  # sentinel: "the fast path cannot decide"


def _params_split(s: str) -> dict[str, str] | None:
    """The common case, a few C-level calls per parameter: no quoted commas,
    no backslash escapes. Returns ``_SLOW`` for anything else, so that
    :func:`_params_scan` alone decides what is malformed."""
    params: dict[str, str] = {}
    for piece in s.split(","):
        name, eq, val = piece.partition("=")
        if not eq:
            if piece.strip(_WS):
                return _SLOW
            continue
        name = name.strip(_WS).lower()
        if (not name or '"' in name or " " in name or "\\" in val or not name.isascii()
                or not name.isprintable()):
            return _SLOW
        val = val.strip(_WS)
        if val[:1] == '"':
            if len(val) < 2 or val[-1] != '"' or val.count('"') != 2:
                return _SLOW
            val = val[1:-1]
        elif '"' in val:
            return _SLOW
        if name in params:
            return None
        params[name] = val
    return params


def _params_scan(s: str) -> dict[str, str] | None:
    """The general case: one forward scan with ``str.find``, handling quoted
    commas and backslash escapes; each character is looked at O(1) times."""
    params: dict[str, str] = {}
    n = len(s)
    pos = 0
    while True:
        while pos < n and (s[pos] in _WS or s[pos] == ","):
            pos += 1
        if pos >= n:
            return params
        eq = s.find("=", pos)
        if eq < 0:
            return None
        name = s[pos:eq].strip(_WS).lower()
        if (not name or '"' in name or "," in name or " " in name or not name.isascii()
                or not name.isprintable()):  # not a token; isprintable() refuses CTLs, tab
            return None
        pos = eq + 1
        while pos < n and s[pos] in _WS:
            pos += 1
        if pos < n and s[pos] == '"':
            pos += 1
            parts: list[str] = []
            quote = s.find('"', pos)
            while True:
                if quote < 0:
                    return None
                bs = s.find("\\", pos, quote)
                if bs < 0:
                    parts.append(s[pos:quote])
                    pos = quote + 1
                    break
                parts.append(s[pos:bs])
                parts.append(s[bs + 1])  # bs < quote, so bs + 1 < n
                pos = bs + 2
                if pos > quote:  # the quote found was escaped: find the next one
                    quote = s.find('"', pos)
            val = "".join(parts)
            while pos < n and s[pos] in _WS:
                pos += 1
            if pos < n and s[pos] != ",":
                return None
        else:
            comma = s.find(",", pos)
            end = n if comma < 0 else comma
            val = s[pos:end].strip(_WS)
            if '"' in val:
                return None
            pos = end
        if name in params:
            return None
        params[name] = val


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and text.isascii() and not text.strip(_HEX)


def _decode_ext_value(text: str) -> str | None:
    """RFC 8187 ``charset'lang'pct-encoded`` (the ``username*`` form)."""
    parts = text.split("'", 2)
    if len(parts) != 3:
        return None
    charset = parts[0].lower()
    if charset not in ("utf-8", "iso-8859-1"):
        return None
    try:
        return unquote_to_bytes(parts[2]).decode(charset)
    except UnicodeDecodeError:
        return None


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class DigestServer:
    """Issues Digest challenges for one realm and verifies the answers.

    ``secret`` keys the nonce MAC (use ≥ 32 random bytes; nodes that must
    accept each other's nonces share it). ``algorithms`` is the default offer;
    ``challenge(algorithms=…)`` overrides it per account. ``opaque`` defaults
    to a value derived from the secret; ``""`` leaves the parameter out.
    """

    __slots__ = (
        "realm", "nonce_ttl", "max_skew", "max_tracked", "_algs", "_mask", "_mac",
        "_prefix", "_suffixes", "_opaque", "_dummy", "_ctr", "_counts",
        "_offer_cache", "node", "_min_ms",
    )

    def __init__(self, secret: bytes, realm: str, *, nonce_ttl: float = 300.0,
                 algorithms: Sequence[str] = ("MD5",), opaque: str | None = None,
                 max_skew: float = 5.0, max_tracked: int = 100_000,
                 not_before: float | None = None, node: int | None = None) -> None:
        """``not_before``: nonces issued earlier are stale. A server that starts
        (or is rebuilt) without the nonce-count table of its predecessor passes its
        start time, so a header captured before a restart cannot be replayed.

        ``node`` (0-65535): one of several processes sharing the secret. Its nonces
        carry it, and a nonce of another node is answered STALE (a fresh nonce of
        this node, which the client uses silently): each nonce count is checked by
        the one process that issued the nonce, so replay protection needs no
        shared table and no round trip to one."""
        if not secret:
            raise ValueError("digest secret must not be empty")
        if not nonce_ttl > 0:
            raise ValueError("nonce_ttl must be positive")
        if max_tracked < 1:
            raise ValueError("max_tracked must be at least 1")
        self.realm = realm
        self.nonce_ttl = float(nonce_ttl)
        self.max_skew = float(max_skew)
        self.max_tracked = max_tracked
        self._mac = hmac.new(secret, b"sipyard-nonce\0" + _bytes(realm) + b"\0", "sha256")
        if opaque is None:
            opaque = hmac.new(secret, b"sipyard-opaque\0" + _bytes(realm),
                              "sha256").hexdigest()[:16]
        self._opaque = opaque
        self._prefix = f"Digest realm={_quoted(realm)}, nonce=\""
        self._suffixes: dict[tuple[str, bool], str] = {}
        self._dummy: dict[str, str] = {
            alg.base: hmac.new(secret, b"sipyard-dummy-ha1\0" + alg.base.encode(),
                               "sha256").hexdigest()[: alg.hexlen]
            for alg in _ALGS.values()
        }
        self._offer_cache: dict[tuple[str, ...], tuple[tuple[_Alg, ...], int]] = {}
        self._algs, self._mask = self._offer(algorithms)
        self.node = node
        self._ctr = secrets.randbits(56)
        # nonce counter -> highest nc accepted; its floor starts at our start time
        self._counts = NonceCounts(self.nonce_ttl, max_tracked,
                                   -math.inf if not_before is None else float(not_before))
        # Our nonces carry milliseconds, ``not_before`` does not: one minted in the
        # millisecond we were built in would read as issued at or before the floor and
        # be answered STALE at once (a phone registering 1 ms after a (re)start, or
        # after the secret became the cluster's). So they are stamped no earlier than the
        # next millisecond; the predecessor's nonces of that millisecond stay stale.
        self._min_ms = 0 if not_before is None else min(
            _MAX_MS, max(0, math.floor(float(not_before) * 1000.0) + 1))

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The default offer, strongest first."""
        return tuple(alg.name for alg in self._algs)

    @property
    def tracked(self) -> int:
        """Number of nonces whose nonce count is being remembered."""
        return len(self._counts)

    def sweep(self, now: float) -> None:
        """Forget the counts of nonces older than ``nonce_ttl``.

        Verifying does this too; a periodic call also empties the table when
        nobody authenticates any more (after a burst of registrations)."""
        self._counts.sweep(now)

    def _offer(self, algorithms: Sequence[str]) -> tuple[tuple[_Alg, ...], int]:
        key = tuple(algorithms)
        hit = self._offer_cache.get(key)
        if hit is not None:
            return hit
        algs = {_alg(name).name: _alg(name) for name in key}
        if not algs:
            raise ValueError("at least one digest algorithm is needed")
        ordered = tuple(sorted(algs.values(), key=lambda a: a.rank))
        mask = 0
        for alg in ordered:
            mask |= alg.bit
        if len(self._offer_cache) < 64:
            self._offer_cache[key] = (ordered, mask)
        return ordered, mask

    def _suffix(self, alg: _Alg, stale: bool) -> str:
        key = (alg.name, stale)
        suffix = self._suffixes.get(key)
        if suffix is None:
            opaque = f", opaque={_quoted(self._opaque)}" if self._opaque else ""
            flag = ", stale=true" if stale else ""
            suffix = f'"{opaque}{flag}, algorithm={alg.name}, qop="auth"'
            self._suffixes[key] = suffix
        return suffix

    def _nonce(self, now: float, mask: int) -> str:
        ms = int(now * 1000.0) if math.isfinite(now) else 0
        ms = self._min_ms if ms < self._min_ms else min(ms, _MAX_MS)
        self._ctr = (self._ctr + 1) & _CTR_MASK
        if self.node is not None:
            self._ctr = (self.node << _NODE_SHIFT) | (self._ctr & _NODE_LOW)
        body = ms.to_bytes(6, "big") + bytes((mask,)) + self._ctr.to_bytes(7, "big")
        mac = self._mac.copy()
        mac.update(body)
        return base64.urlsafe_b64encode(body + mac.digest()[:_MAC_LEN]).decode("ascii")

    def _open_nonce(self, nonce: str) -> tuple[float, int, int] | None:
        """(timestamp s, offered mask, counter) of a nonce we minted, else None.

        The counter identifies the nonce: one issuer never mints it twice (56
        bits from a random start), and the MAC says it was minted with our secret."""
        if len(nonce) != _NONCE_LEN or not nonce.isascii() or "+" in nonce or "/" in nonce:
            return None  # "+" and "/" would decode like "-" and "_": one spelling only
        try:
            raw = binascii.a2b_base64(nonce.encode("ascii").translate(_B64URL_TO_STD),
                                      strict_mode=True)
        except binascii.Error:
            return None
        if len(raw) != _BODY_LEN + _MAC_LEN:
            return None
        body, tag = raw[:_BODY_LEN], raw[_BODY_LEN:]
        mac = self._mac.copy()
        mac.update(body)
        if not hmac.compare_digest(mac.digest()[:_MAC_LEN], tag):
            return None
        seq = int.from_bytes(body[7:], "big")
        if self.node is not None and seq >> _NODE_SHIFT != self.node:
            return -math.inf, body[6], seq  # another node's nonce: stale here
        return int.from_bytes(body[:6], "big") / 1000.0, body[6], seq

    def challenge(self, now: float, *, algorithms: Sequence[str] | None = None,
                  stale: bool = False) -> list[str]:
        """``WWW-Authenticate`` / ``Proxy-Authenticate`` values, strongest first.

        All values share one nonce that records which algorithms were offered.
        ``ValueError`` for an unknown algorithm name.
        """
        algs, mask = (self._algs, self._mask) if algorithms is None else self._offer(algorithms)
        head = self._prefix + self._nonce(now, mask)
        return [head + self._suffix(alg, stale) for alg in algs]

    def verify(self, header_value: str, method: str, now: float,
               lookup_ha1: Callable[[str, str], str | None]) -> Verdict:
        """Check one ``Authorization`` / ``Proxy-Authorization`` value.

        ``lookup_ha1(username, base_algorithm)`` returns the stored hex HA1
        (``compute_ha1``; the base name, e.g. "MD5" for MD5-sess) or ``None``;
        a value that is not hex of the algorithm's length counts as ``None``.
        It is called once for every request that gets that far, known user or
        not, and may raise (a store failure): that is the only exception.
        A successful verify records the nonce count: call it once per request.
        """
        scheme, params = parse_credentials(header_value)
        if scheme.lower() != "digest":
            return _MISSING
        if params is None:
            return _INVALID

        username = params.get("username")
        ext = params.get("username*")
        if ext is not None:
            if username is not None:
                return _INVALID
            username = _decode_ext_value(ext)
        if not username:
            return _INVALID

        realm = params.get("realm")
        if realm is None:
            return Verdict(VerdictStatus.INVALID, username)
        if realm != self.realm:
            return Verdict(VerdictStatus.MISSING, username)

        alg = _ALGS.get(params.get("algorithm", "MD5").lower())
        if alg is None:
            return Verdict(VerdictStatus.UNSUPPORTED, username)
        if params.get("userhash", "false").lower() != "false":
            return Verdict(VerdictStatus.UNSUPPORTED, username, alg.name)
        qop = params.get("qop")
        if qop is None:
            return Verdict(VerdictStatus.INVALID, username, alg.name)
        if qop.lower() != "auth":
            return Verdict(VerdictStatus.UNSUPPORTED, username, alg.name)

        nonce = params.get("nonce")
        uri = params.get("uri")
        nc = params.get("nc")
        cnonce = params.get("cnonce")
        response = params.get("response")
        if nonce is None or uri is None or nc is None or not cnonce or response is None:
            return Verdict(VerdictStatus.INVALID, username, alg.name)
        if not _is_hex(nc, 8) or not _is_hex(response, alg.hexlen):
            return Verdict(VerdictStatus.INVALID, username, alg.name)
        count = int(nc, 16)
        if count == 0:
            return Verdict(VerdictStatus.INVALID, username, alg.name)
        opaque = params.get("opaque")
        if opaque is not None and opaque != self._opaque:
            return Verdict(VerdictStatus.INVALID, username, alg.name)
        opened = self._open_nonce(nonce)
        if opened is None:
            return Verdict(VerdictStatus.INVALID, username, alg.name)
        issued, mask, seq = opened
        if not mask & alg.bit:
            return Verdict(VerdictStatus.UNSUPPORTED, username, alg.name)

        # From here on the work is the same for known and unknown users.
        stored = lookup_ha1(username, alg.base)
        known = stored is not None and _is_hex(stored, alg.hexlen)
        ha1 = stored.lower() if known and stored is not None else self._dummy[alg.base]
        h = alg.hash
        if alg.sess:
            ha1 = h(_bytes(f"{ha1}:{nonce}:{cnonce}"))
        ha2 = h(_bytes(f"{method}:{uri}"))
        expected = h(_bytes(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}"))
        matches = hmac.compare_digest(expected, response.lower())
        if not (matches and known):
            return Verdict(VerdictStatus.INVALID, username, alg.name)

        age = now - issued
        if age > self.nonce_ttl or age < -self.max_skew:
            return Verdict(VerdictStatus.STALE, username, alg.name)
        seen = self._counts.seen(seq, issued)
        if seen is None:
            return Verdict(VerdictStatus.STALE, username, alg.name)
        if count <= seen:
            return Verdict(VerdictStatus.REPLAY, username, alg.name)
        self._counts.accept(seq, issued, count, now)
        return Verdict(VerdictStatus.OK, username, alg.name)


def client_response(username: str, realm: str, password: str, method: str, uri: str,
                    nonce: str, nc: int = 1, cnonce: str = "0a4f113b",
                    qop: str | None = "auth", algorithm: str = "MD5", *,
                    opaque: str | None = None) -> str:
    """An ``Authorization`` value as a client builds it (RFC 7616 §3.4).

    Written for tests and tools independently of the server code path above
    (its own hash table, its own formatting) so that a round trip checks one
    reading of the RFC against another. ``qop=None`` gives the RFC 2069 form.
    """
    hashes = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}
    token = algorithm.upper().replace("-SESS", "")
    sess = algorithm.lower().endswith("-sess")

    def hx(text: str) -> str:
        return hashlib.new(hashes[token], text.encode("utf-8")).hexdigest()

    nc_text = f"{nc:08x}"
    ha1 = hx(f"{username}:{realm}:{password}")
    if sess:
        ha1 = hx(f"{ha1}:{nonce}:{cnonce}")
    ha2 = hx(f"{method}:{uri}")
    if qop is None:
        response = hx(f"{ha1}:{nonce}:{ha2}")
    else:
        response = hx(f"{ha1}:{nonce}:{nc_text}:{cnonce}:{qop}:{ha2}")

    def q(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    out = [f"username={q(username)}", f"realm={q(realm)}", f"uri={q(uri)}",
           f"algorithm={algorithm}", f"nonce={q(nonce)}"]
    if qop is not None:
        out += [f"nc={nc_text}", f"cnonce={q(cnonce)}", f"qop={qop}"]
    out.append(f"response={q(response)}")
    if opaque is not None:
        out.append(f"opaque={q(opaque)}")
    return "Digest " + ", ".join(out)
