"""Tests of sipyard.sip.digest: RFC 7616 vectors, round trips, nonce life, replay, hostile input."""

from __future__ import annotations

import hashlib
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipyard.sip import digest
from sipyard.sip.digest import (
    ALGORITHMS,
    SESS_ALGORITHMS,
    DigestServer,
    Verdict,
    VerdictStatus,
    client_response,
    compute_ha1,
    parse_credentials,
)
from sipyard.sip.noncecount import PAGE, NonceCounts

OK = VerdictStatus.OK
MISSING = VerdictStatus.MISSING
INVALID = VerdictStatus.INVALID
STALE = VerdictStatus.STALE
REPLAY = VerdictStatus.REPLAY
UNSUPPORTED = VerdictStatus.UNSUPPORTED

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "example.com"
T0 = 1_700_000_000.0
USERS = {"alice": "alicepw", "bob": "bobpw"}

# RFC 7616 §3.9.1
RFC_USER = "Mufasa"
RFC_PASS = "Circle of Life"
RFC_REALM = "http-auth@example.org"
RFC_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


class Lookup:
    """A fake credential store that records what the server asked for."""

    def __init__(self, realm: str = REALM, users: dict[str, str] | None = None) -> None:
        self.realm = realm
        self.users = USERS if users is None else users
        self.calls: list[tuple[str, str]] = []

    def __call__(self, username: str, algorithm: str) -> str | None:
        self.calls.append((username, algorithm))
        pw = self.users.get(username)
        return None if pw is None else compute_ha1(username, self.realm, pw, algorithm)


def params_of(challenge: str) -> dict[str, str]:
    scheme, params = parse_credentials(challenge)
    assert scheme == "Digest"
    assert params is not None
    return params


def answer(challenge: str, user: str = "alice", password: str | None = None,
           method: str = "REGISTER", uri: str = "sip:example.com", nc: int = 1,
           cnonce: str = "c0ffee") -> str:
    """The independent client's answer to *challenge* (as a UA would build it)."""
    p = params_of(challenge)
    return client_response(user, p["realm"], USERS.get(user, "x") if password is None else password,
                           method, uri, p["nonce"], nc, cnonce, algorithm=p["algorithm"],
                           opaque=p.get("opaque"))


def server(**kw: object) -> DigestServer:
    return DigestServer(SECRET, REALM, **kw)  # type: ignore[arg-type]


# --- client_response against RFC 7616 §3.9.1 -------------------------------------------


@pytest.mark.parametrize(("algorithm", "expected"), [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_client_response_rfc7616_vectors(algorithm: str, expected: str) -> None:
    value = client_response(RFC_USER, RFC_REALM, RFC_PASS, "GET", "/dir/index.html", RFC_NONCE,
                            1, RFC_CNONCE, "auth", algorithm, opaque=RFC_OPAQUE)
    scheme, p = parse_credentials(value)
    assert scheme == "Digest"
    assert p is not None
    assert p["response"] == expected
    assert p["nc"] == "00000001"
    assert p["qop"] == "auth"
    assert p["algorithm"] == algorithm
    assert p["opaque"] == RFC_OPAQUE
    assert p["uri"] == "/dir/index.html"
    assert 'nc=00000001' in value and "qop=auth" in value  # unquoted, as RFC 7616 writes them


def test_compute_ha1_matches_rfc_example_and_plain_hashes() -> None:
    assert compute_ha1(RFC_USER, RFC_REALM, RFC_PASS, "MD5") == "3d78807defe7de2157e2b0b6573a855f"
    assert compute_ha1(RFC_USER, RFC_REALM, RFC_PASS, "sha-256") == hashlib.sha256(
        b"Mufasa:http-auth@example.org:Circle of Life").hexdigest()
    assert compute_ha1("u", "r", "p", "SHA-512-256") == hashlib.new(
        "sha512_256", b"u:r:p").hexdigest()
    assert compute_ha1("u", "r", "p", "MD5-sess") == compute_ha1("u", "r", "p", "MD5")
    with pytest.raises(ValueError):
        compute_ha1("u", "r", "p", "SHA-1")


def test_client_response_rfc2069_form_has_no_qop() -> None:
    value = client_response("u", "r", "p", "GET", "/", "n", qop=None)
    p = params_of(value)
    assert "qop" not in p and "nc" not in p and "cnonce" not in p
    ha1 = hashlib.md5(b"u:r:p").hexdigest()
    ha2 = hashlib.md5(b"GET:/").hexdigest()
    assert p["response"] == hashlib.md5(f"{ha1}:n:{ha2}".encode()).hexdigest()


# --- challenge format ------------------------------------------------------------------


def test_default_challenge_is_single_conventional_md5() -> None:
    [value] = server().challenge(T0)
    p = params_of(value)
    assert value == (f'Digest realm="{REALM}", nonce="{p["nonce"]}", opaque="{p["opaque"]}", '
                     'algorithm=MD5, qop="auth"')
    assert len(p["nonce"]) == 40 and "=" not in p["nonce"]
    assert all(c.isalnum() or c in "-_" for c in p["nonce"])
    # naive strstr-style clients (sipsak, SIPp) find each name exactly once
    for name in ("realm=", "nonce=", "opaque=", "algorithm=", "qop="):
        assert value.count(name) == 1


def test_challenge_strongest_first_and_stale() -> None:
    s = server(algorithms=("MD5", "SHA-256", "SHA-512-256"))
    values = s.challenge(T0, stale=True)
    assert [params_of(v)["algorithm"] for v in values] == list(ALGORITHMS)
    assert len({params_of(v)["nonce"] for v in values}) == 1
    for v in values:
        assert ", stale=true, algorithm=" in v
    assert s.algorithms == ALGORITHMS
    # per-call override
    assert [params_of(v)["algorithm"] for v in s.challenge(T0, algorithms=["md5", "sha-256"])] \
        == ["SHA-256", "MD5"]
    assert "stale" not in server().challenge(T0)[0]


def test_challenge_options_and_errors() -> None:
    assert "opaque" not in server(opaque="").challenge(T0)[0]
    assert 'opaque="abc"' in server(opaque="abc").challenge(T0)[0]
    quoted = DigestServer(SECRET, 'we"ird\\realm').challenge(T0)[0]
    assert params_of(quoted)["realm"] == 'we"ird\\realm'
    with pytest.raises(ValueError):
        server(algorithms=("SHA-1",))
    with pytest.raises(ValueError):
        server(algorithms=())
    with pytest.raises(ValueError):
        server().challenge(T0, algorithms=("AKAv1-MD5",))
    with pytest.raises(ValueError):
        DigestServer(b"", REALM)


def test_nonces_are_unique_and_secret_bound() -> None:
    s = server()
    nonces = {params_of(s.challenge(T0)[0])["nonce"] for _ in range(2000)}
    assert len(nonces) == 2000
    other = DigestServer(SECRET, REALM)
    assert params_of(other.challenge(T0)[0])["nonce"] not in nonces


# --- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS + SESS_ALGORITHMS)
def test_round_trip_every_algorithm(algorithm: str) -> None:
    s = server(algorithms=(algorithm,))
    lookup = Lookup()
    [ch] = s.challenge(T0)
    assert params_of(ch)["algorithm"] == algorithm
    v = s.verify(answer(ch), "REGISTER", T0 + 1, lookup)
    assert v == Verdict(OK, "alice", algorithm)
    assert v.ok
    assert lookup.calls == [("alice", algorithm.replace("-sess", ""))]
    # next request on the same nonce with a higher nc
    assert s.verify(answer(ch, nc=2, method="INVITE", uri="sip:bob@example.com"), "INVITE",
                    T0 + 2, lookup).status is OK


def test_round_trip_rfc_example_realm_with_independent_client() -> None:
    s = DigestServer(SECRET, RFC_REALM, algorithms=("SHA-256", "MD5"))
    lookup = Lookup(RFC_REALM, {RFC_USER: RFC_PASS})
    for i, ch in enumerate(s.challenge(T0)):
        p = params_of(ch)
        value = client_response(RFC_USER, RFC_REALM, RFC_PASS, "GET", "/dir/index.html",
                                p["nonce"], i + 1, RFC_CNONCE, "auth", p["algorithm"],
                                opaque=p["opaque"])
        assert s.verify(value, "GET", T0 + i, lookup) == Verdict(OK, RFC_USER, p["algorithm"])


def test_client_may_pick_any_offered_algorithm_but_nothing_else() -> None:
    s = server(algorithms=("SHA-256", "MD5"))
    sha, md5 = s.challenge(T0)
    nonce = params_of(sha)["nonce"]
    assert s.verify(answer(md5), "REGISTER", T0, Lookup()).status is OK
    # SHA-512-256 / -sess with this nonce: never offered
    for alg in ("SHA-512-256", "SHA-256-sess"):
        value = client_response("alice", REALM, "alicepw", "REGISTER", "sip:x", nonce, 5,
                                "c", algorithm=alg)
        assert s.verify(value, "REGISTER", T0, Lookup()).status is UNSUPPORTED
    # MD5-only server: SHA-256 answer unsupported
    [ch] = server().challenge(T0)
    value = client_response("alice", REALM, "alicepw", "REGISTER", "sip:x",
                            params_of(ch)["nonce"], algorithm="SHA-256")
    assert server().verify(value, "REGISTER", T0, Lookup()).status is UNSUPPORTED


def test_per_account_offer_is_enforced_statelessly() -> None:
    s = server()  # default MD5 only
    [ch] = s.challenge(T0, algorithms=("SHA-256",))
    assert s.verify(answer(ch), "REGISTER", T0, Lookup()).status is OK


def test_case_insensitive_scheme_and_algorithm_and_hex() -> None:
    s = server()
    [ch] = s.challenge(T0)
    value = answer(ch).replace("Digest ", "dIgEsT ", 1).replace("algorithm=MD5", "algorithm=md5")
    p = parse_credentials(value)[1]
    assert p is not None
    value = value.replace(p["response"], p["response"].upper())
    assert s.verify(value, "REGISTER", T0, Lookup()).status is OK


def test_uppercase_stored_ha1_is_accepted() -> None:
    s = server()
    [ch] = s.challenge(T0)

    def lookup(user: str, alg: str) -> str | None:
        return compute_ha1(user, REALM, USERS[user], alg).upper()

    assert s.verify(answer(ch), "REGISTER", T0, lookup).status is OK


def test_uri_need_not_equal_request_uri_but_must_be_present() -> None:
    s = server()
    [ch] = s.challenge(T0)
    assert s.verify(answer(ch, uri="sip:10.0.0.1:5060"), "REGISTER", T0, Lookup()).status is OK
    value = answer(ch, nc=2).replace('uri="sip:example.com", ', "")
    assert s.verify(value, "REGISTER", T0, Lookup()).status is INVALID


def test_method_is_bound() -> None:
    s = server()
    [ch] = s.challenge(T0)
    assert s.verify(answer(ch, method="REGISTER"), "INVITE", T0, Lookup()).status is INVALID


def test_opaque_echo_optional_but_must_match() -> None:
    s = server()
    [ch] = s.challenge(T0)
    p = params_of(ch)
    no_opaque = client_response("alice", REALM, "alicepw", "REGISTER", "sip:x", p["nonce"], 1)
    assert s.verify(no_opaque, "REGISTER", T0, Lookup()).status is OK
    wrong = client_response("alice", REALM, "alicepw", "REGISTER", "sip:x", p["nonce"], 2,
                            opaque="nope")
    assert s.verify(wrong, "REGISTER", T0, Lookup()).status is INVALID


def test_username_star_and_escaped_username() -> None:
    users = {"Jäsøn": "pw", 'a"b\\c': "pw2"}
    s = server()
    lookup = Lookup(users=users)
    [ch] = s.challenge(T0)
    p = params_of(ch)
    plain = client_response("Jäsøn", REALM, "pw", "REGISTER", "sip:x", p["nonce"], 1)
    star = plain.replace('username="Jäsøn"', "username*=UTF-8''J%C3%A4s%C3%B8n")
    assert "username*=" in star
    assert s.verify(star, "REGISTER", T0, lookup) == Verdict(OK, "Jäsøn", "MD5")
    both = star.replace("Digest ", 'Digest username="x", ')
    assert s.verify(both, "REGISTER", T0, lookup).status is INVALID
    bad = star.replace("UTF-8", "KOI8-R")
    assert s.verify(bad, "REGISTER", T0, lookup).status is INVALID
    escaped = client_response('a"b\\c', REALM, "pw2", "REGISTER", "sip:x", p["nonce"], 2)
    assert 'username="a\\"b\\\\c"' in escaped
    assert s.verify(escaped, "REGISTER", T0, lookup) == Verdict(OK, 'a"b\\c', "MD5")


# --- failures --------------------------------------------------------------------------


def test_wrong_password_invalid() -> None:
    s = server()
    [ch] = s.challenge(T0)
    assert s.verify(answer(ch, password="guess"), "REGISTER", T0, Lookup()) == \
        Verdict(INVALID, "alice", "MD5")


def test_unknown_user_indistinguishable_from_wrong_password() -> None:
    s = server(algorithms=("SHA-256", "MD5"))
    for ch in s.challenge(T0):
        lookup = Lookup()
        wrong = s.verify(answer(ch, "alice", password="guess"), "REGISTER", T0, lookup)
        ghost = s.verify(answer(ch, "mallory", password="guess", nc=2), "REGISTER", T0, lookup)
        assert wrong.status is ghost.status is INVALID
        assert (wrong.algorithm, ghost.algorithm) == (params_of(ch)["algorithm"],) * 2
        assert wrong.username == "alice" and ghost.username == "mallory"
        # the store was consulted both times: same work whether the user exists or not
        assert [c[0] for c in lookup.calls] == ["alice", "mallory"]


def test_unknown_user_cannot_pass_even_with_dummy_ha1() -> None:
    s = server()
    [ch] = s.challenge(T0)
    p = params_of(ch)
    dummy = s._dummy["MD5"]  # white-box: the value an unknown user is checked against
    nc, cnonce, uri = "00000001", "cc", "sip:x"
    ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
    resp = hashlib.md5(f"{dummy}:{p['nonce']}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
    value = (f'Digest username="ghost", realm="{REALM}", nonce="{p["nonce"]}", uri="{uri}", '
             f'response="{resp}", qop=auth, nc={nc}, cnonce="{cnonce}"')
    assert s.verify(value, "REGISTER", T0, Lookup()).status is INVALID
    # a store returning garbage for a user is treated as unknown
    assert s.verify(answer(ch), "REGISTER", T0, lambda u, a: "not-hex").status is INVALID


def test_stale_nonce_with_right_credentials() -> None:
    s = server(nonce_ttl=60.0)
    [ch] = s.challenge(T0)
    assert s.verify(answer(ch), "REGISTER", T0 + 61, Lookup()) == Verdict(STALE, "alice", "MD5")
    # stale but wrong password stays INVALID (no oracle for expired nonces)
    assert s.verify(answer(ch, password="x"), "REGISTER", T0 + 61, Lookup()).status is INVALID
    # still fresh at the boundary
    assert s.verify(answer(ch), "REGISTER", T0 + 60, Lookup()).status is OK


def test_nonce_from_the_future() -> None:
    s = server(max_skew=5.0)
    [ch] = s.challenge(T0 + 100)
    assert s.verify(answer(ch), "REGISTER", T0, Lookup()).status is STALE
    [ch] = s.challenge(T0 + 3)
    assert s.verify(answer(ch), "REGISTER", T0, Lookup()).status is OK


def test_replay_same_header_twice_and_lower_nc() -> None:
    s = server()
    [ch] = s.challenge(T0)
    first = answer(ch, nc=1)
    assert s.verify(first, "REGISTER", T0, Lookup()).status is OK
    assert s.verify(first, "REGISTER", T0 + 1, Lookup()) == Verdict(REPLAY, "alice", "MD5")
    assert s.verify(answer(ch, nc=5), "REGISTER", T0 + 2, Lookup()).status is OK
    assert s.verify(answer(ch, nc=3), "REGISTER", T0 + 3, Lookup()).status is REPLAY
    assert s.verify(answer(ch, nc=5), "REGISTER", T0 + 3, Lookup()).status is REPLAY
    assert s.verify(answer(ch, nc=6), "REGISTER", T0 + 4, Lookup()).status is OK
    # a failed attempt does not consume an nc
    assert s.verify(answer(ch, nc=7, password="x"), "REGISTER", T0, Lookup()).status is INVALID
    assert s.verify(answer(ch, nc=7), "REGISTER", T0 + 5, Lookup()).status is OK
    assert s.verify(answer(ch, nc=0), "REGISTER", T0 + 5, Lookup()).status is INVALID


def test_replay_table_is_pruned_by_age() -> None:
    s = server(nonce_ttl=10.0)
    for i in range(5):
        [ch] = s.challenge(T0 + i)
        assert s.verify(answer(ch), "REGISTER", T0 + i, Lookup()).status is OK
    assert s.tracked == 5
    [ch] = s.challenge(T0 + 100)
    assert s.verify(answer(ch), "REGISTER", T0 + 100, Lookup()).status is OK
    assert s.tracked == 1


def test_replay_table_cap_evicts_oldest_and_never_reopens_it() -> None:
    # The table drops whole pages of consecutive nonces, oldest first (noncecount.py).
    cap = 2 * PAGE
    s = server(max_tracked=cap)
    challenges = [s.challenge(T0 + i / 100)[0] for i in range(4 * PAGE + 1)]
    for i, ch in enumerate(challenges[:-1]):
        assert s.verify(answer(ch), "REGISTER", T0 + 10 + i / 100, Lookup()).status is OK
        assert s.tracked <= cap
    assert s.tracked >= cap - PAGE
    # the evicted nonce cannot be replayed: it is treated as stale (client re-challenged)
    assert s.verify(answer(challenges[0]), "REGISTER", T0 + 20, Lookup()).status is STALE
    # still-tracked nonces keep their counts
    assert s.verify(answer(challenges[-2]), "REGISTER", T0 + 20, Lookup()).status is REPLAY
    # a newer, never used nonce is fine
    assert s.verify(answer(challenges[-1]), "REGISTER", T0 + 20, Lookup()).status is OK
    assert s.tracked <= cap


def test_replay_table_is_compact_and_swept_without_traffic() -> None:
    # A registrar at 150 authenticated REGISTERs/s keeps 45 000 nonces for nonce_ttl:
    # they must cost pages of 32-bit counts, not an object each (issue #16, make soak).
    s = server(nonce_ttl=300.0)
    n = 4000
    for i in range(n):
        [used] = s.challenge(T0 + i / 300)
        s.challenge(T0 + i / 300)  # the unanswered challenge of a plain REGISTER
        assert s.verify(answer(used), "REGISTER", T0 + i / 300, Lookup()).status is OK
    assert s.tracked == n
    assert s._counts.pages <= 2 * n // PAGE + 2  # white-box: half of each page used
    s.sweep(T0 + 299)
    assert s.tracked == n
    s.sweep(T0 + n / 300 + 301)  # nobody authenticated since: the table empties anyway
    assert s.tracked == 0 and s._counts.pages == 0


def test_clock_jumping_back_does_not_reopen_pruned_nonce() -> None:
    s = server(nonce_ttl=10.0)
    [old] = s.challenge(T0)
    assert s.verify(answer(old), "REGISTER", T0, Lookup()).status is OK
    [new] = s.challenge(T0 + 50)
    assert s.verify(answer(new), "REGISTER", T0 + 50, Lookup()).status is OK  # prunes `old`
    assert s.verify(answer(old), "REGISTER", T0 + 1, Lookup()).status is STALE


def test_nonce_minted_in_the_millisecond_of_the_start_is_not_stale() -> None:
    """A server built at T (``not_before``) and asked within the same millisecond:
    its nonce must pass (the flaky 401 stale=true of test_registrar_redis), while a
    predecessor's nonce of that same millisecond stays stale (no replay across a restart)."""
    start = T0 + 0.0003  # not_before has sub-millisecond precision, nonces do not
    before = server(not_before=start - 10)
    [old] = before.challenge(start - 0.0002)  # the predecessor, same millisecond
    s = server(not_before=start)
    [ch] = s.challenge(start + 0.0004)  # still millisecond T0 + 0.000
    assert s.verify(answer(ch), "REGISTER", start + 0.001, Lookup()).status is OK
    assert s.verify(answer(old), "REGISTER", start + 0.001, Lookup()).status is STALE
    [late] = s.challenge(start + 2)
    assert s.verify(answer(late), "REGISTER", start + 2, Lookup()).status is OK


def test_forged_and_garbled_nonces_invalid() -> None:
    s = server()
    [ch] = s.challenge(T0)
    nonce = params_of(ch)["nonce"]
    other = DigestServer(b"another secret", REALM)
    forged = answer(other.challenge(T0)[0])
    assert s.verify(forged, "REGISTER", T0, Lookup()).status is INVALID
    other_realm = DigestServer(SECRET, "other.example")
    value = answer(other_realm.challenge(T0)[0]).replace("other.example", REALM)
    assert s.verify(value, "REGISTER", T0, Lookup()).status is INVALID  # nonce bound to realm
    flipped = nonce[:5] + ("A" if nonce[5] != "A" else "B") + nonce[6:]
    variants = [flipped, nonce[:-1], nonce + "A", "", "x" * 40, nonce.replace("-", "+"),
                "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "é" * 40]
    for bad in variants:
        if bad == nonce:
            continue
        value = client_response("alice", REALM, "alicepw", "REGISTER", "sip:x", bad, 1)
        assert s.verify(value, "REGISTER", T0, Lookup()).status is INVALID, bad


def test_lookup_not_called_for_requests_failing_on_their_own() -> None:
    s = server()
    [ch] = s.challenge(T0)
    lookup = Lookup()
    forged = client_response("alice", REALM, "alicepw", "REGISTER", "sip:x", "x" * 40, 1)
    for value in (forged, answer(ch).replace("nc=00000001", "nc=1")):
        assert s.verify(value, "REGISTER", T0, lookup).status is INVALID
    assert lookup.calls == []


def test_unknown_scheme_and_other_realm_are_missing() -> None:
    s = server()
    regaut01 = "NoOneKnowsThisScheme opaque-data=here"
    assert s.verify(regaut01, "REGISTER", T0, Lookup()) == Verdict(MISSING)
    assert s.verify("Basic YWxpY2U6YWxpY2Vwdw==", "REGISTER", T0, Lookup()).status is MISSING
    assert s.verify("", "REGISTER", T0, Lookup()).status is MISSING
    assert s.verify("   ", "REGISTER", T0, Lookup()).status is MISSING
    theirs = DigestServer(SECRET, "other.example")
    v = s.verify(answer(theirs.challenge(T0)[0]), "REGISTER", T0, Lookup())
    assert v == Verdict(MISSING, "alice")


def test_qop_rules() -> None:
    s = server()
    [ch] = s.challenge(T0)
    p = params_of(ch)
    rfc2069 = client_response("alice", REALM, "alicepw", "REGISTER", "sip:x", p["nonce"],
                              qop=None)
    assert s.verify(rfc2069, "REGISTER", T0, Lookup()).status is INVALID
    auth_int = client_response("alice", REALM, "alicepw", "REGISTER", "sip:x", p["nonce"],
                               qop="auth-int")
    assert s.verify(auth_int, "REGISTER", T0, Lookup()).status is UNSUPPORTED
    quoted = answer(ch).replace("qop=auth", 'qop="auth"').replace("nc=00000001", 'nc="00000001"')
    assert s.verify(quoted, "REGISTER", T0, Lookup()).status is OK


def test_userhash_and_unknown_algorithm_unsupported() -> None:
    s = server()
    [ch] = s.challenge(T0)
    base = answer(ch)
    assert s.verify(base + ", userhash=true", "REGISTER", T0, Lookup()).status is UNSUPPORTED
    assert s.verify(base + ", userhash=false", "REGISTER", T0, Lookup()).status is OK
    aka = base.replace("algorithm=MD5", "algorithm=AKAv1-MD5")
    assert s.verify(aka, "REGISTER", T0, Lookup()).status is UNSUPPORTED
    no_alg = answer(ch, nc=2).replace("algorithm=MD5, ", "")  # RFC default is MD5
    assert s.verify(no_alg, "REGISTER", T0, Lookup()).status is OK


@pytest.mark.parametrize("mutate", [
    lambda v: v.replace('username="alice", ', ""),
    lambda v: v.replace('username="alice"', 'username=""'),
    lambda v: v.replace('realm="example.com", ', ""),
    lambda v: v.replace('cnonce="c0ffee", ', ""),
    lambda v: v.replace('cnonce="c0ffee"', 'cnonce=""'),
    lambda v: v.replace("nc=00000001, ", ""),
    lambda v: v.replace("nc=00000001", "nc=0x000001"),
    lambda v: v.replace("nc=00000001", "nc=+0000001"),
    lambda v: v.replace("nc=00000001", "nc=0000_001"),
    lambda v: v.replace("nc=00000001", "nc=000000001"),
    lambda v: v[: v.index("response=")] + 'response="zz"',
    lambda v: v.replace('response="', 'response="0'),
    lambda v: v.replace('response="', 'response="g')[:-2] + '"',
    lambda v: v + ', realm="example.com"',  # duplicated parameter
    lambda v: v + ", junk",
    lambda v: v.replace('realm="example.com"', 'realm="example.com"x'),
    lambda v: v.replace('realm="example.com"', 'realm="example.com'),
    lambda v: "Digest",
    lambda v: "Digest ,,,",
])
def test_malformed_credentials_invalid(mutate: object) -> None:
    s = server()
    [ch] = s.challenge(T0)
    value = mutate(answer(ch))  # type: ignore[operator]
    assert s.verify(value, "REGISTER", T0, Lookup()).status is INVALID


# --- the parser --------------------------------------------------------------------------


def test_parse_credentials() -> None:
    assert parse_credentials('Digest a=b, C="d, e" ,f = "g\\"h\\\\" ') == (
        "Digest", {"a": "b", "c": "d, e", "f": 'g"h\\'})
    assert parse_credentials("Digest\tusername=\"x\"") == ("Digest", {"username": "x"})
    assert parse_credentials("NoOneKnowsThisScheme opaque-data=here") == (
        "NoOneKnowsThisScheme", {"opaque-data": "here"})
    assert parse_credentials("Digest") == ("Digest", {})
    assert parse_credentials("") == ("", {})
    for bad in ('Digest a="b', "Digest a", 'Digest a="b" c', "Digest a=b, a=c", 'Digest a=b"c',
                'Digest "a"=b', 'Digest a="\\'):
        assert parse_credentials(bad)[1] is None, bad


def test_parser_is_linear_on_pathological_input() -> None:
    s = server()
    nasty = ['Digest a="' + "\\x" * 200_000 + '"', "Digest " + "a=b," * 100_000,
             'Digest a="' + '\\"' * 200_000, "Digest " + " " * 400_000 + "a",
             "Digest " + "=" * 400_000]
    start = time.perf_counter()
    for value in nasty:
        s.verify(value, "REGISTER", T0, Lookup())
    assert time.perf_counter() - start < 10.0  # quadratic would take hours


_param_text = st.text(alphabet=st.sampled_from(list('ab =,"\\\t')), max_size=40)


@settings(max_examples=800, deadline=None)
@given(_param_text)
def test_fast_split_agrees_with_full_scan(text: str) -> None:
    """The split fast path either defers or gives exactly what the scanner gives."""
    fast = digest._params_split(text)
    if fast is not digest._SLOW:
        assert fast == digest._params_scan(text)
    params = parse_credentials("Digest " + text)[1]
    assert params is not digest._SLOW
    assert params == digest._params_scan(text)


# --- hypothesis: nothing raises -----------------------------------------------------------

_FUZZ = server(algorithms=ALGORITHMS)
_FUZZ_CH = _FUZZ.challenge(T0)


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    v = _FUZZ.verify(text, "REGISTER", T0, Lookup())
    assert isinstance(v, Verdict)
    assert v.status in (MISSING, INVALID, UNSUPPORTED)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('Digest ,="\\\\abcnoqrsu*\'%0123456789\t\r\n')) |
               st.characters()))
def test_digestish_text_never_raises(text: str) -> None:
    v = _FUZZ.verify("Digest " + text, "REGISTER", T0, Lookup())
    assert v.status is not OK


_names = st.sampled_from(["username", "username*", "realm", "nonce", "uri", "response", "qop",
                          "nc", "cnonce", "algorithm", "opaque", "userhash", "x"])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_names, st.text(max_size=80)), st.booleans())
def test_structured_garbage_never_passes(params: dict[str, str], quote_all: bool) -> None:
    def q(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    body = ", ".join(f"{k}={q(v) if quote_all else v}" for k, v in params.items())
    v = _FUZZ.verify("Digest " + body, "REGISTER", T0, Lookup())
    assert v.status is not OK


SIGNIFICANT = {"username", "realm", "uri", "algorithm", "nonce", "nc", "cnonce", "qop", "response"}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(3)), st.integers(0, 400), st.sampled_from(range(400)))
def test_single_character_corruption_never_passes(which: int, pos: int, char: int) -> None:
    s = server(algorithms=ALGORITHMS)
    ch = s.challenge(T0)[which]
    good = answer(ch)
    i = pos % len(good)
    bad = good[:i] + chr(char) + good[i + 1:]
    if bad == good:
        return
    v = s.verify(bad, "REGISTER", T0, Lookup())
    assert v.status in (OK, MISSING, INVALID, UNSUPPORTED)
    if v.status is OK:
        # only an insignificant change may pass: case of a token or hex digit, whitespace, or
        # a renamed (so ignored) opaque, whose echo is optional, or algorithm=MD5
        def norm(value: str) -> tuple[str, dict[str, str]]:
            scheme, params = parse_credentials(value)
            assert params is not None
            params.setdefault("algorithm", "MD5")  # a renamed MD5 algorithm= is the default
            return scheme.lower(), {k: val.lower() if k in ("algorithm", "qop", "response")
                                    else val for k, val in params.items() if k in SIGNIFICANT}
        assert norm(bad) == norm(good)


# --- the nonce-count table ----------------------------------------------------------------

def test_nonce_counts_pages_by_sequence_and_age() -> None:
    t = NonceCounts(ttl=10.0, max_tracked=1000)
    base = 7 * PAGE
    assert t.seen(base, T0) == 0
    t.accept(base, T0, 1, T0)
    t.accept(base + 1, T0, 3, T0)
    t.accept(base + 1, T0, 4, T0)  # a higher nc of a tracked nonce: no new entry
    t.accept(base + PAGE, T0 + 5, 1, T0 + 5)
    assert (len(t), t.pages) == (3, 2)
    assert (t.seen(base, T0), t.seen(base + 1, T0), t.seen(base + 2, T0)) == (1, 4, 0)
    assert t.sweep(T0 + 10) == 0  # at the ttl boundary a nonce is still fresh
    assert t.sweep(T0 + 10.5) == 1
    assert (len(t), t.pages, t.floor) == (1, 1, T0)
    # forgotten, and never used nonces as old as the forgotten page: stale, not reopened
    assert t.seen(base + 1, T0) is None and t.seen(base + 9, T0 - 1) is None
    assert t.seen(base + PAGE, T0 + 5) == 1
    assert t.seen(base + PAGE + 1, T0 + 5) == 0


def test_nonce_counts_cap_drops_oldest_page_and_raises_floor() -> None:
    t = NonceCounts(ttl=300.0, max_tracked=PAGE)
    for i in range(PAGE):
        t.accept(i, T0 + i, 1, T0 + i)
    assert len(t) == PAGE
    t.accept(PAGE, T0 + PAGE, 1, T0 + PAGE)
    assert (len(t), t.pages, t.floor) == (1, 1, T0 + PAGE - 1)
    assert t.seen(3, T0 + 3) is None
    assert t.seen(PAGE, T0 + PAGE) == 1
    assert t.seen(PAGE + 1, T0 + PAGE + 1) == 0


def test_nonce_counts_hold_any_nc() -> None:
    t = NonceCounts(ttl=300.0, max_tracked=10)
    t.accept(5, T0, 0xFFFFFFFF, T0)
    assert t.seen(5, T0) == 0xFFFFFFFF
