"""The numbered sections: ``[lines.NN]``, ``[groups.NNN]``, ``[aliases]``, ``[permissions]``
and the ``[[mapping]]`` / ``[[fallback]]`` rules.

Why apart from the server-wide sections: they refer to each other (a group's members must be
lines, an alias must not hide a number, ``[permissions]`` merges into the lines), so their
checks share one vocabulary of numbers and are read after ``[server]`` fixed the extensions.
Rules are only type-checked here; ``sipyard.redirect`` compiles their patterns.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._text import check_hex, is_number, valid_zone
from .records import (
    ALGORITHMS,
    CREDENTIAL_KEYS,
    GroupConfig,
    LineConfig,
    RuleConfig,
    SecurityConfig,
    ServerConfig,
)
from .tables import MISSING, Context, KeyPath, Table, read_algorithms

__all__ = ["read_aliases", "read_groups", "read_lines", "read_permissions", "read_rules"]


_LINE_KEYS = ("display", *CREDENTIAL_KEYS, "algorithms", "max_contacts", "overflow", "type",
              "permissions", "max_calls")


def read_lines(ctx: Context, server: ServerConfig,
               security: SecurityConfig) -> dict[str, LineConfig]:
    top = ctx.table("lines", None)
    extra = read_permissions(ctx, None)
    out: dict[str, LineConfig] = {}
    for number, entry in top.data.items():
        path: KeyPath = ("lines", number)
        if not is_number(number):
            raise ctx.error(path, "line numbers are decimal numbers without leading zeros")
        if number not in server.extensions:
            raise ctx.error(path, f"line {number} is outside server.extensions "
                            f"({server.extensions})")
        if not isinstance(entry, dict):
            raise ctx.error(path, "must be a table")
        t = Table(ctx, path, entry, _LINE_KEYS)
        secret = t.string("secret", None, printable=False)
        ha1: dict[str, str] = {}
        for algorithm, (key, length) in ALGORITHMS.items():
            value = t.string(key, None)
            if value is not None:
                try:
                    ha1[algorithm] = check_hex(value, length)
                except ValueError as exc:
                    raise t.error(key, str(exc)) from None
        if secret is not None and ha1:
            raise t.error(next(k for k in CREDENTIAL_KEYS[1:] if k in entry),
                          "set either secret or ha1_* digests, not both")
        wanted = read_algorithms(t, "algorithms", server.algorithms)
        algorithms = tuple(a for a in wanted if secret is not None or a in ha1)
        if not ha1 and secret is None:
            if not security.open_registration:
                raise ctx.error(path, "needs a secret or an ha1_* digest "
                                "(or [security] open_registration = true)")
            algorithms = wanted
        elif not algorithms:
            raise ctx.error(path, f"no credential for its algorithms ({', '.join(wanted)}); "
                            f"add {', '.join(ALGORITHMS[a][0] for a in wanted)} or a secret")
        elif algorithms != wanted:
            ctx.warn(path, f"no digest for {', '.join(a for a in wanted if a not in ha1)}; "
                     f"offering only {', '.join(algorithms)}")
        perms = list(t.strings("permissions"))
        perms += [p for p in extra.get(number, ()) if p not in perms]
        out[number] = LineConfig(
            number=number, display=t.string("display", None, empty_is_none=True),
            secret=secret, ha1=ha1, algorithms=algorithms,
            max_contacts=t.integer("max_contacts", 10, 1, 1000),
            overflow=t.choice("overflow", "replace", ("replace", "reject")),
            type=(t.string("type", "phone") or "phone").strip(),
            permissions=tuple(dict.fromkeys(perms)),
            max_calls=t.integer("max_calls", 0, 0, 100000),
        )
    return out


def read_groups(ctx: Context, lines: Mapping[str, LineConfig]) -> dict[str, GroupConfig]:
    out: dict[str, GroupConfig] = {}
    for number, entry in ctx.table("groups", None).data.items():
        path: KeyPath = ("groups", number)
        if not is_number(number) or int(number) < 100:
            raise ctx.error(path, "group numbers are decimal numbers of at least 100")
        if number in lines:
            raise ctx.error(path, f"{number} is already a line")
        if not isinstance(entry, dict):
            raise ctx.error(path, "must be a table")
        t = Table(ctx, path, entry, ("display", "members"))
        raw = t.get("members")
        raw = [] if raw is MISSING else raw
        if not isinstance(raw, list):
            raise t.error("members", "must be an array of line numbers")
        members: list[str] = []
        for i, item in enumerate(raw):
            member = str(item) if isinstance(item, int | str) and not isinstance(item, bool) else ""
            if member not in lines:
                reason = f"line {member} is not defined" if member else "must be a line number"
                raise ctx.error((*path, "members", i), reason)
            if member in members:
                raise ctx.error((*path, "members", i), f"line {member} is listed twice")
            members.append(member)
        out[number] = GroupConfig(number, t.string("display", None, empty_is_none=True),
                                  tuple(members))
    return out


def read_aliases(ctx: Context, lines: Mapping[str, LineConfig],
                 groups: Mapping[str, GroupConfig]) -> dict[str, tuple[str, ...]]:
    t = ctx.table("aliases", None)
    out: dict[str, tuple[str, ...]] = {}
    for name in t.data:
        if not name.strip() or not name.isprintable():
            raise t.error(name, "alias names must be non-empty, without control characters")
        if name in lines or name in groups:
            raise t.error(name, f"alias {name!r} hides the line or group of that number")
        out[name] = t.strings(name, one=True, nonempty=True)
    return out


def read_permissions(ctx: Context, lines: Mapping[str, LineConfig] | None
                     ) -> dict[str, tuple[str, ...]]:
    t = ctx.table("permissions", None)
    out: dict[str, tuple[str, ...]] = {}
    for number in t.data:
        if lines is not None and number not in lines:
            raise t.error(number, f"line {number} is not defined")
        out[number] = t.strings(number)
    return out


_RULE_KEYS = ("name", "hosts", "users", "permissions", "when", "timezone", "contacts")


def read_rules(ctx: Context, kind: str, timezone: str) -> tuple[RuleConfig, ...]:
    raw = ctx.data.get(kind, [])
    if not isinstance(raw, list):
        raise ctx.error((kind,), f"must be an array of tables ([[{kind}]])")
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ctx.error((kind, i), "must be a table")
        t = Table(ctx, (kind, i), entry, _RULE_KEYS)
        if "contacts" not in entry:
            raise t.error("contacts", "is required (a non-empty array of contact templates)")
        zone = t.string("timezone", timezone) or timezone
        if not valid_zone(zone):
            raise t.error("timezone", f"unknown time zone {zone!r}")
        out.append(RuleConfig(
            kind=kind, index=i, source=ctx.file_of((kind, i)), name=t.string("name", None),
            hosts=t.strings("hosts", one=True), users=t.strings("users", one=True),
            permissions=t.strings("permissions"), when=t.strings("when", one=True),
            timezone=zone, contacts=t.strings("contacts", nonempty=True), raw=entry,
        ))
    return tuple(out)
