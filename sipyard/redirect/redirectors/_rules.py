"""Compiling and evaluating ``[[mapping]]`` / ``[[fallback]]`` rules (shared by both).

Everything is compiled once at load, so a syntax error is a ``ConfigError`` naming the rule
(``FILE: mapping[2].users: …``) and a request only runs precompiled matchers.

The rule syntax (users, hosts, permissions, when, contact templates) is documented for
administrators in ``mapping.py``; this module implements it.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from sipyard.sip._abnf import USER_CHARS
from sipyard.sip.uri import escape

from ..contacts import Contact

try:  # the regex parser, for the safety check (private API; the check is skipped if it moves)
    _sre_c: Any = importlib.import_module("re._constants")
    _sre_p: Any = importlib.import_module("re._parser")
except ImportError:  # pragma: no cover
    _sre_c = _sre_p = None

__all__ = [
    "UserPattern", "compile_user_pattern", "HostMatcher", "compile_hosts", "TimeWindows",
    "compile_when", "Template", "compile_template", "Rule", "compile_rule", "MAX_REGEX_INPUT",
    "RuleError",
]

MAX_REGEX_INPUT: Final = 128
#: Kept as is by the plain tokens: user-unreserved minus the characters that would end an
#: addr-spec URI early (``;`` ``?`` ``,``) and ``%`` / ``#`` (always escaped).
_USER_SAFE: Final = "".join(sorted(set(USER_CHARS) - set("%#;?,")))
_DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEK: Final = 7 * 1440
_TOKENS: Final = frozenset({"user", "digits", "vdigits", "host"})


class RuleError(ValueError):
    """A syntax error in one part of a rule; ``key`` is that part (``users``, ``when`` …)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason


# ------------------------------------------------------------------------------ user patterns

class UserPattern:
    """A compiled user pattern; ``match(user)`` → vdigits text, or None when it does not match."""

    __slots__ = ("text", "_re", "_group", "_limit")

    def __init__(self, text: str, regex: re.Pattern[str], group: int | str | None,
                 limit: int | None) -> None:
        self.text = text
        self._re = regex
        #: vdigits: a group; None = no variable part (digit pattern) → "".
        self._group = group
        #: longest user matched (regexes only).
        self._limit = limit

    def match(self, user: str) -> str | None:
        limit = self._limit
        if limit is not None and len(user) > limit:
            return None
        m = self._re.fullmatch(user)
        if m is None:
            return None
        group = self._group
        return "" if group is None else (m.group(group) or "")

    def __repr__(self) -> str:
        return f"UserPattern({self.text!r})"


def compile_user_pattern(text: str) -> UserPattern:
    """Compile one ``users`` entry; ValueError with a reason when it is malformed."""
    if text.startswith("re:"):
        return _compile_regex(text)
    if not text:
        raise ValueError("empty pattern")
    parts: list[str] = []
    first_var: int | None = None
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        var = True
        if c in "Xx":
            parts.append("[0-9]")
        elif c == "[":
            end = text.find("]", i + 1)
            if end < 0:
                raise ValueError(f"unclosed '[' at position {i + 1} in {text!r}")
            parts.append(_char_class(text[i + 1:end], text))
            i = end
        elif c == ".":
            if i != n - 1:
                raise ValueError(f"'.' (the rest) may only end a pattern: {text!r}")
            parts.append(".*")
        elif c == "]":
            raise ValueError(f"unmatched ']' in {text!r}")
        elif c == "\\":
            if i + 1 >= n:
                raise ValueError(f"trailing '\\' in {text!r}")
            i += 1
            parts.append(re.escape(text[i]))
            var = False
        elif c.isspace() or not c.isprintable():
            raise ValueError(f"whitespace or control character in {text!r}")
        else:
            parts.append(re.escape(c))
            var = False
        if var and first_var is None:
            first_var = len(parts) - 1
        i += 1
    group: int | None = None
    if first_var is not None:
        parts.insert(first_var, "(")
        parts.append(")")
        group = 1
    return UserPattern(text, re.compile("".join(parts), re.DOTALL), group, None)


def _char_class(body: str, text: str) -> str:
    if not body:
        raise ValueError(f"empty class '[]' in {text!r}")
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c.isspace() or not c.isprintable() or c in "[\\":
            raise ValueError(f"bad character {c!r} in class [{body}] of {text!r}")
        if i + 2 < n and body[i + 1] == "-":
            hi = body[i + 2]
            if hi < c:
                raise ValueError(f"reversed range {c}-{hi} in {text!r}")
            out.append(f"{re.escape(c)}-{re.escape(hi)}")
            i += 3
        else:
            out.append(re.escape(c))
            i += 1
    return "[" + "".join(out) + "]"


def _compile_regex(text: str) -> UserPattern:
    source = text[3:]
    try:
        regex = re.compile(source, re.DOTALL)
    except re.error as exc:
        raise ValueError(f"bad regex {source!r}: {exc}") from None
    _check_regex(source)
    group: int | str
    if "vdigits" in regex.groupindex:
        group = "vdigits"
    elif regex.groups >= 1:
        group = 1
    else:
        group = 0  # the whole user
    return UserPattern(text, regex, group, MAX_REGEX_INPUT)


def _check_regex(source: str) -> None:
    """Refuse the shapes that backtrack badly (see the module docstring)."""
    if _sre_p is None:  # pragma: no cover
        return
    c = _sre_c
    repeats = (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", c.MAX_REPEAT))
    unbounded = 0

    def walk(items: Any, in_repeat: bool) -> None:
        nonlocal unbounded
        for op, av in items:
            if op in repeats:
                _lo, hi, sub = av
                big = hi is c.MAXREPEAT or hi > 16
                if big:
                    unbounded += 1
                    if in_repeat:
                        raise ValueError(f"nested quantifiers in regex {source!r}")
                walk(sub, in_repeat or big)
            elif op is c.SUBPATTERN:
                walk(av[-1], in_repeat)
            elif op is c.BRANCH:
                if in_repeat:
                    raise ValueError(f"alternation inside a repeat in regex {source!r}; "
                                     "use a character class")
                for sub in av[1]:
                    walk(sub, in_repeat)
            elif op in (c.ASSERT, c.ASSERT_NOT):
                walk(av[1], in_repeat)
            elif op in (c.GROUPREF, c.GROUPREF_EXISTS):
                raise ValueError(f"backreference in regex {source!r}")
            elif op is getattr(c, "ATOMIC_GROUP", None):
                walk(av, in_repeat)

    walk(_sre_p.parse(source), False)
    if unbounded > 2:
        raise ValueError(f"more than two unbounded quantifiers in regex {source!r}")


# ------------------------------------------------------------------------------------- hosts

class HostMatcher:
    """``match(host_lower)``; no patterns (``ours``) means "one of our domains"."""

    __slots__ = ("_exact", "_suffixes", "ours")

    def __init__(self, exact: frozenset[str], suffixes: tuple[str, ...], ours: bool) -> None:
        self._exact = exact
        self._suffixes = suffixes
        #: True: the rule has no hosts; the caller checks our domains (once per request).
        self.ours = ours

    def match(self, host: str) -> bool:
        if host in self._exact:
            return True
        return any(host.endswith(s) for s in self._suffixes)


def _norm_host(host: str) -> str:
    h = host.strip().lower().rstrip(".")
    inner = h[1:-1] if h.startswith("[") and h.endswith("]") else h
    if ":" in inner:
        try:
            return f"[{ipaddress.IPv6Address(inner).compressed}]"
        except ValueError:
            raise ValueError(f"bad IPv6 address {host!r}") from None
    return h


def compile_hosts(patterns: Sequence[str]) -> HostMatcher:
    if not patterns:
        return HostMatcher(frozenset(), (), True)
    exact: set[str] = set()
    suffixes: list[str] = []
    for p in patterns:
        if not p.strip():
            raise ValueError("empty host pattern")
        if p.startswith("*."):
            base = _norm_host(p[2:])
            if not base or "*" in base:
                raise ValueError(f"bad wildcard {p!r} (use *.example.com)")
            exact.add(base)
            suffixes.append("." + base)
        elif "*" in p or any(ch.isspace() for ch in p.strip()):
            raise ValueError(f"bad host pattern {p!r} (exact host or *.example.com)")
        else:
            exact.add(_norm_host(p))
    return HostMatcher(frozenset(exact), tuple(suffixes), False)


# -------------------------------------------------------------------------------- time windows

class TimeWindows:
    """Minutes-of-the-week intervals in one time zone."""

    __slots__ = ("spans", "zone")

    def __init__(self, spans: tuple[tuple[int, int], ...], zone: ZoneInfo) -> None:
        self.spans = spans
        self.zone = zone

    def match(self, now: float) -> bool:
        t = datetime.fromtimestamp(now, self.zone)
        minute = t.weekday() * 1440 + t.hour * 60 + t.minute
        return any(lo <= minute < hi for lo, hi in self.spans)


def _day(text: str, window: str) -> int:
    key = text.strip().lower()[:3]
    if key not in _DAYS or not text.strip().lower().startswith(key) or len(text.strip()) < 3:
        raise ValueError(f"unknown day {text.strip()!r} in {window!r} (Mon … Sun)")
    return _DAYS.index(key)


def _minute(text: str, window: str) -> int:
    hh, sep, mm = text.partition(":")
    if not sep or not hh.isdigit() or not mm.isdigit() or len(mm) != 2 or len(hh) > 2:
        raise ValueError(f"bad time {text!r} in {window!r} (HH:MM)")
    value = int(hh) * 60 + int(mm)
    if int(mm) > 59 or value > 1440:
        raise ValueError(f"bad time {text!r} in {window!r}")
    return value


def _parse_window(window: str) -> list[tuple[int, int]]:
    days: list[int] = list(range(7))
    start, end = 0, 1440
    fields = window.split()
    if not fields or len(fields) > 2:
        raise ValueError(f"bad time window {window!r} (e.g. \"Mon-Fri 08:00-18:00\")")
    if ":" in fields[-1]:
        a, sep, b = fields.pop().partition("-")
        if not sep:
            raise ValueError(f"bad time range in {window!r} (HH:MM-HH:MM)")
        start, end = _minute(a, window), _minute(b, window)
        if start == end or start == 1440:
            raise ValueError(f"empty time range in {window!r}")
    if fields:
        days = []
        for item in fields[0].split(","):
            a, sep, b = item.partition("-")
            first = _day(a, window)
            last = _day(b, window) if sep else first
            d = first
            while True:
                if d not in days:
                    days.append(d)
                if d == last:
                    break
                d = (d + 1) % 7
    spans: list[tuple[int, int]] = []
    for d in days:
        lo = d * 1440 + start
        hi = d * 1440 + end if end > start else (d + 1) * 1440 + end
        if hi <= _WEEK:
            spans.append((lo, hi))
        else:  # Sunday night into Monday morning
            spans.append((lo, _WEEK))
            spans.append((0, hi - _WEEK))
    return spans


def compile_when(windows: Sequence[str], zone: str) -> TimeWindows | None:
    if not windows:
        return None
    spans: list[tuple[int, int]] = []
    for w in windows:
        spans.extend(_parse_window(w))
    try:
        tz = ZoneInfo(zone)
    except Exception:
        raise ValueError(f"unknown time zone {zone!r}") from None
    return TimeWindows(tuple(sorted(spans)), tz)


# --------------------------------------------------------------------------------- templates

class Template:
    """A contact template split into literal text and ``(token, escaped)`` parts."""

    __slots__ = ("text", "_parts")

    def __init__(self, text: str, parts: tuple[str | tuple[str, bool], ...]) -> None:
        self.text = text
        self._parts = parts

    def render(self, values: dict[str, str]) -> str:
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
            else:
                name, escaped = part
                value = values[name]
                out.append(escape(value, "") if escaped else
                           value if name == "host" else escape(value, _USER_SAFE))
        return "".join(out)


def compile_template(text: str) -> Template:
    parts: list[str | tuple[str, bool]] = []
    i = 0
    while True:
        j = text.find("{", i)
        close = text.find("}", i)
        if close >= 0 and (j < 0 or close < j):
            raise ValueError(f"unmatched '}}' in {text!r}")
        if j < 0:
            if i < len(text):
                parts.append(text[i:])
            break
        if j > i:
            parts.append(text[i:j])
        k = text.find("}", j)
        if k < 0:
            raise ValueError(f"unclosed '{{' in {text!r}")
        token = text[j + 1:k]
        name, escaped = (token[:-8], True) if token.endswith("-escaped") else (token, False)
        if name not in _TOKENS:
            raise ValueError(f"unknown token {{{token}}} in {text!r} (known: {{user}}, {{digits}}, "
                             "{vdigits}, {host} and their -escaped forms)")
        parts.append((name, escaped))
        i = k + 1
    return Template(text, tuple(parts))


# ------------------------------------------------------------------------------------- trunks

#: the Contact parameter that marks a target as "through this trunk" (proxy mode)
TRUNK_PARAM: Final = "sipyard-trunk"
TRUNK_HOST: Final = "trunk.invalid"


def trunk_template(text: str) -> str:
    """``trunk:NAME`` / ``trunk:NAME:TEMPLATE`` as an ordinary contact template.

    Why a contact and not a new kind of target: the contact set, its q order and the
    redirectors after ``mapping`` stay as they are; the proxy recognises the parameter
    (:func:`trunk_of`) and sends the call to the provider. The host is ``.invalid``
    (RFC 6761), so such a contact leaking anywhere reaches nobody.
    """
    if not text.startswith("trunk:"):
        return text
    name, _, template = text[6:].partition(":")
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"{text!r}: expected trunk:NAME or trunk:NAME:TEMPLATE")
    return f"<sip:{template or '{vdigits}'}@{TRUNK_HOST}>;{TRUNK_PARAM}={name}"


def trunk_of(contact: Contact) -> str | None:
    """The trunk a rendered contact goes through, or None for an ordinary one."""
    for name, value in contact.params:
        if name.lower() == TRUNK_PARAM and value:
            return value
    return None


# ------------------------------------------------------------------------------------- rules

@dataclass(frozen=True, slots=True)
class Rule:
    kind: str
    index: int
    name: str
    hosts: HostMatcher
    users: tuple[UserPattern, ...]
    permissions: frozenset[str]
    when: TimeWindows | None
    contacts: tuple[Template, ...]
    #: some contact goes through a trunk (a line without the permissions gets 403)
    trunk: bool = False

    @property
    def label(self) -> str:
        return f"{self.kind}[{self.index}]" + (f" ({self.name})" if self.name else "")

    def match_user(self, user: str) -> str | None:
        """vdigits of the first matching user pattern (all users when there are none)."""
        if not self.users:
            return ""
        for p in self.users:
            v = p.match(user)
            if v is not None:
                return v
        return None

    def render(self, values: dict[str, str], source: str) -> list[Contact | str]:
        """Each template's Contact, or an error text for a template that came out invalid."""
        out: list[Contact | str] = []
        for t in self.contacts:
            text = t.render(values)
            try:
                out.append(Contact.parse(text, source=source))
            except ValueError as exc:
                out.append(f"{t.text!r} gave an invalid contact: {exc}")
        return out


_SAMPLE: Final = {"user": "1234", "digits": "1234", "vdigits": "34", "host": "example.com"}


def compile_rule(raw: Any, kind: str, index: int, default_zone: str) -> Rule:
    """Compile a RuleConfig (or a dict with the same keys); RuleError names the bad part."""
    def get(key: str, default: Any = ()) -> Any:
        value = raw.get(key, default) if isinstance(raw, dict) else getattr(raw, key, default)
        return default if value is None else value

    def strings(key: str) -> tuple[str, ...]:
        value = get(key)
        if isinstance(value, str):
            return (value,)
        if not all(isinstance(v, str) for v in value):
            raise RuleError(key, "must be a string or an array of strings")
        return tuple(value)

    try:
        hosts = compile_hosts(strings("hosts"))
    except ValueError as exc:
        raise RuleError("hosts", str(exc)) from None
    users: list[UserPattern] = []
    for i, text in enumerate(strings("users")):
        try:
            users.append(compile_user_pattern(text))
        except ValueError as exc:
            raise RuleError("users" if len(strings("users")) == 1 else f"users[{i}]",
                            str(exc)) from None
    try:
        when = compile_when(strings("when"), str(get("timezone", "") or default_zone))
    except ValueError as exc:
        raise RuleError("when", str(exc)) from None
    templates: list[Template] = []
    contact_texts = strings("contacts")
    if not contact_texts:
        raise RuleError("contacts", "needs at least one contact template")
    for i, text in enumerate(contact_texts):
        try:
            t = compile_template(trunk_template(text))
            Contact.parse(t.render(_SAMPLE))
        except ValueError as exc:
            raise RuleError(f"contacts[{i}]", str(exc)) from None
        templates.append(t)
    return Rule(kind, index, str(get("name", "") or ""), hosts, tuple(users),
                frozenset(strings("permissions")), when, tuple(templates),
                any(text.startswith("trunk:") for text in contact_texts))
