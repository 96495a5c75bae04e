"""``mapping``: ``[[mapping]]`` dial rules → contact templates (sipX Mapping, our syntax).

The first rule whose hosts, users, time windows and permissions all match wins; its
templates are rendered into contacts (syntax below). Errors in a
rule are ConfigErrors naming the file and rule (``FILE: mapping[2].users: …``), raised when
the chain is built, i.e. at load and on reload (the old chain keeps running then).

A rule that needs permissions, matched by a request without an authenticated caller, answers
``NEEDS_AUTH``: the app challenges, and the retried request is evaluated with the caller.
An authenticated caller without the permissions simply does not match the rule.

Rule syntax (compiled by ``_rules``)::

    [[mapping]]
    name = "outside line"                 # for logs
    hosts = ["example.com", "*.corp.example"]
    users = ["9.", "re:^00(\\d+)$"]
    permissions = ["outside"]
    when = ["Mon-Fri 08:00-18:00"]
    timezone = "Europe/Berlin"            # default: [server] timezone
    contacts = ["<sip:{vdigits}@gw.example.net>;q=0.5"]

User patterns (sipX dial-plan syntax, anchored at both ends)
  ``X`` / ``x`` one digit; ``[1-5]`` / ``[135]`` one character of the class; a trailing ``.``
  the rest (any run, possibly empty); ``\\`` makes the next character literal; anything
  else is literal (``*78``, ``#``, ``+``). ``.`` is allowed only at the end: with one
  variable-length element at the end a match is a single left-to-right scan.
  ``{vdigits}`` is the part from the first variable element to the end (``9XXX`` on
  ``9123`` → ``123``).
  ``re:<regex>``: a Python regex, full match. Nested or more than two unbounded
  quantifiers, alternation inside an unbounded quantifier and backreferences are refused
  at load (they are how a regex backtracks exponentially on a hostile user part), and
  only user parts up to 128 characters are matched against a regex.
  ``{vdigits}`` is the group named ``vdigits``, else group 1, else the whole user.
Hosts
  empty: any of our domains. ``example.com`` exact (case-insensitive), ``*.example.com``
  any subdomain *and* ``example.com`` itself (as sipX's DnsWildcard).
Permissions
  the caller (authenticated line) must hold all of them; with no authenticated caller a
  rule that otherwise matches answers NEEDS_AUTH (the app challenges).
When
  ``"Mon-Fri 08:00-18:00"``, ``"Sat,Sun"``, ``"12:00-13:30"``, ``"Fri 22:00-06:00"`` (past
  midnight: into the next day); any listed window matches; start inclusive, end exclusive;
  evaluated in the rule's ``timezone`` (default ``[server] timezone``).
Contacts (templates)
  Contact header values with ``{user}`` / ``{digits}`` (the whole user part), ``{vdigits}``,
  ``{host}`` (the Request-URI host). The plain forms are %-escaped for a URI user part (``;``,
  ``?`` and ``,`` too, so a template without ``<>`` cannot be split by the caller's input); the
  ``-escaped`` forms (``{user-escaped}`` …) escape everything but unreserved characters, for
  use inside URI parameters or headers. A contact that is not a valid URI after substitution
  is skipped with a logged error, never sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from sipyard.config import Config, ConfigError, RuleConfig

from ..pipeline import NEEDS_AUTH, ErrorDescriptor, RedirectContext, Redirector, Result, Services
from ._rules import Rule, RuleError, compile_rule, trunk_of

__all__ = ["Mapping"]

_NONE: frozenset[str] = frozenset()
#: a line without the permission of a rule that leaves through a trunk
_FORBIDDEN = ErrorDescriptor(403, "Forbidden")


class Mapping(Redirector):
    name = "mapping"
    #: The config attribute holding the rules (``[[mapping]]``).
    section: ClassVar[str] = "mapping"
    #: Run only while no contact has been found (``fallback``).
    only_when_empty: ClassVar[bool] = False

    def __init__(self, config: Config, services: Services) -> None:
        super().__init__(config, services)
        zone = config.server.timezone or "UTC"
        # ``config.mapping`` / ``config.fallback``; plain dicts are accepted too (see _compile)
        rules: Sequence[RuleConfig | dict[str, Any]] = getattr(config, self.section, None) or ()
        self.rules: tuple[Rule, ...] = tuple(
            self._compile(raw, i, zone) for i, raw in enumerate(rules))
        perms: dict[str, set[str]] = {}
        for number, line in config.lines.items():
            perms.setdefault(number, set()).update(line.permissions)
        for number, granted in config.permissions.items():
            perms.setdefault(number, set()).update(granted)
        self._perms = {n: frozenset(p) for n, p in perms.items()}

    def _compile(self, raw: RuleConfig | dict[str, Any], i: int, zone: str) -> Rule:
        index = getattr(raw, "index", None)
        if index is None and isinstance(raw, dict):
            index = raw.get("_index", i)
        index = i if index is None else int(index)
        try:
            return compile_rule(raw, self.section, index, zone)
        except RuleError as exc:
            if hasattr(raw, "error"):
                raise raw.error(exc.key, exc.reason) from None
            file = raw.get("_file") if isinstance(raw, dict) else None
            file = file or str(self.config.path)
            raise ConfigError(str(file), f"{self.section}[{index}].{exc.key}",
                              exc.reason) from None

    def process(self, ctx: RedirectContext) -> Result | ErrorDescriptor:
        contacts = ctx.contacts
        if self.only_when_empty and (contacts or contacts.sealed):
            return Result.SUCCESS
        rules = self.rules
        if not rules:
            return Result.SUCCESS
        target = ctx.target
        user = ctx.user or ""
        host = target.host_lower
        ours: bool | None = None  # is the target host one of ours? asked once, if needed
        for rule in rules:
            hosts = rule.hosts
            if hosts.ours:
                if ours is None:
                    ours = self.config.is_our_domain(host)
                if not ours:
                    continue
            elif not hosts.match(host):
                continue
            vdigits = rule.match_user(user)
            if vdigits is None:
                continue
            if rule.when is not None and not rule.when.match(ctx.now):
                continue
            if rule.permissions:
                if ctx.caller is None:
                    return NEEDS_AUTH
                if not rule.permissions <= self._perms.get(ctx.caller, _NONE):
                    if rule.trunk:  # a paid way out: say no, do not fall through
                        return _FORBIDDEN
                    continue
            values = {"user": user, "digits": user, "vdigits": vdigits, "host": target.host}
            for item in rule.render(values, self.name):
                if isinstance(item, str):
                    self.log.error("%s: %s: %s; skipped", self.name, rule.label, item)
                elif trunk_of(item) is not None and self.config.server.mode != "proxy":
                    self.log.warning("%s: %s: trunk contacts need proxy mode; skipped",
                                     self.name, rule.label)
                else:
                    contacts.add(item)
            return Result.SUCCESS
        return Result.SUCCESS
