"""``[trunks.NAME]``: provider trunks, read and checked like every other section.

Why checked here and not when the registration starts: a trunk with a bad registrar URI
or no credential would only fail at the provider, minutes later and far from the file;
a reload with such a trunk is refused and the running trunks keep going. Mapping rules
that name a trunk (``"trunk:NAME"``) are checked against the trunks here as well.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from sipyard.sip.errors import ParseError
from sipyard.sip.uri import SipUri, parse_uri

from .records import GroupConfig, LineConfig, RuleConfig, TrunkConfig
from .tables import MISSING, Context, KeyPath, Table, fields_of

__all__ = ["read_trunks", "check_trunk_rules", "TRUNK_PREFIX"]

#: a ``[[mapping]]`` contact starting with this names a trunk: ``trunk:NAME[:TEMPLATE]``
TRUNK_PREFIX = "trunk:"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_USER = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]{1,64}")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")


def _sip_uri(t: Table, key: str, text: str) -> tuple[str, int | None, str | None]:
    try:
        uri = parse_uri(text.strip())
    except ParseError as exc:
        raise t.error(key, f"not a SIP URI: {exc.reason}") from None
    if not isinstance(uri, SipUri) or uri.scheme.lower() != "sip":
        raise t.error(key, "must be a sip: URI (no TLS in sipyard)")
    transport = uri.param("transport")
    if transport is not None:
        transport = transport.lower()
        if transport not in ("udp", "tcp"):
            raise t.error(key, "transport must be tcp or udp")
    return uri.host.strip("[]"), uri.port, transport


def read_trunks(ctx: Context, lines: Mapping[str, LineConfig],
                groups: Mapping[str, GroupConfig]) -> dict[str, TrunkConfig]:
    out: dict[str, TrunkConfig] = {}
    known = [f for f in fields_of(TrunkConfig) if f not in (
        "name", "host", "port", "transport", "proxy_host", "proxy_port", "proxy_transport")]
    for name, entry in ctx.table("trunks", None).data.items():
        path: KeyPath = ("trunks", name)
        if not _NAME.fullmatch(name):
            raise ctx.error(path, "trunk names are 1-32 letters, digits, - or _")
        if not isinstance(entry, dict):
            raise ctx.error(path, "must be a table")
        t = Table(ctx, path, entry, known)
        registrar = t.required("registrar").strip()
        host, port, transport = _sip_uri(t, "registrar", registrar)
        username = t.required("username").strip()
        if not _USER.fullmatch(username):
            raise t.error("username", "must be a SIP user name (no spaces or quotes)")
        secret = t.string("secret", None, empty_is_none=True)
        ha1 = t.string("ha1", None, empty_is_none=True)
        realm = t.string("realm", None, empty_is_none=True)
        if realm is not None and any(c in realm for c in '"\\'):
            raise t.error("realm", "must not contain quotes or backslashes")
        if secret is not None and ha1 is not None:
            raise t.error("ha1", "give secret or ha1, not both")
        if secret is None and ha1 is None:
            raise t.error("secret", "a trunk needs secret or ha1")
        if ha1 is not None:
            if not _HEX32.fullmatch(ha1.strip()):
                raise t.error("ha1", "must be an MD5 HA1: 32 hex digits")
            if realm is None:
                raise t.error("ha1", "ha1 needs realm (the HA1 is bound to it)")
            ha1 = ha1.strip().lower()
        users = {}
        for key in ("contact_user", "from_user"):
            value = (t.string(key, username) or username).strip()
            if not _USER.fullmatch(value):
                raise t.error(key, "must be a SIP user name (no spaces or quotes)")
            users[key] = value
        from_domain = (t.string("from_domain", host) or host).strip()
        if not re.fullmatch(r"[A-Za-z0-9.\-:\[\]]+", from_domain):
            raise t.error("from_domain", "must be a host name or address")
        proxy = t.string("outbound_proxy", None, empty_is_none=True)
        p_host = p_port = p_tr = None
        if proxy is not None:
            proxy = proxy.strip()
            p_host, p_port, p_tr = _sip_uri(t, "outbound_proxy", proxy)
        dids = _dids(t, lines, groups)
        pai = t.string("pai", None, empty_is_none=True)
        if pai is not None:
            pai = pai.strip()
            try:
                parse_uri(pai.strip().lstrip("<").split(">", 1)[0])
            except ParseError:
                raise t.error("pai", "must be a SIP or tel URI (optionally in <>)") from None
        retry_min = t.number("retry_min", 30.0, 0.1, 3600)
        out[name] = TrunkConfig(
            name=name, registrar=registrar, host=host, port=port, transport=transport,
            username=username, secret=secret, ha1=ha1, realm=realm,
            expires=t.integer("expires", 600, 10, 86400), contact_user=users["contact_user"],
            from_user=users["from_user"], from_domain=from_domain, outbound_proxy=proxy,
            proxy_host=p_host, proxy_port=p_port, proxy_transport=p_tr, dids=dids, pai=pai,
            register=t.boolean("register", True),
            keepalive=t.number("keepalive", 0.0, 0.0, 3600),
            retry_min=retry_min, retry_max=t.number("retry_max", 600.0, retry_min, 86400))
    return out


def _dids(t: Table, lines: Mapping[str, LineConfig],
          groups: Mapping[str, GroupConfig]) -> dict[str, str]:
    raw = t.get("dids")
    if raw is MISSING:
        return {}
    if not isinstance(raw, dict):
        raise t.error("dids", 'must be a table: { "5551000" = "10" }')
    out: dict[str, str] = {}
    for number, target in raw.items():
        if not _USER.fullmatch(number):
            raise t.ctx.error((*t.path, "dids", number), "a DID is a SIP user part")
        if isinstance(target, int) and not isinstance(target, bool):
            target = str(target)
        if not isinstance(target, str) or not _USER.fullmatch(target.strip()):
            raise t.ctx.error((*t.path, "dids", number),
                              "must name a line, a group or a user (a string)")
        out[number] = target.strip()
    return out


def check_trunk_rules(ctx: Context, rules: Sequence[RuleConfig],
                      trunks: Mapping[str, TrunkConfig]) -> None:
    """Every ``trunk:NAME`` contact of a rule must name a configured trunk."""
    for rule in rules:
        for i, text in enumerate(rule.contacts):
            if not text.startswith(TRUNK_PREFIX):
                continue
            name = text[len(TRUNK_PREFIX):].partition(":")[0]
            if name not in trunks:
                raise rule.error(f"contacts[{i}]", f"no trunk {name!r} ([trunks.{name}])")
