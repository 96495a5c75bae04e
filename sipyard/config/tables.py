"""Typed, error-reporting access to the merged TOML, with provenance.

Why one place: every reader here turns a wrong type or value into a ``ConfigError`` that names
the file which set the key (``states/night.toml: lines.10.secret: must be a string``), so the
section validators can be written as plain reads with defaults and never format errors or
look up files themselves.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from .records import ALGORITHMS, ConfigError

#: Marks an absent key, so a present ``false`` / ``0`` / ``""`` is told from no key at all.
MISSING: Any = object()
#: A key's position in the merged data: table names and array indexes, ("mapping", 2, "users").
KeyPath = tuple[str | int, ...]


def keystr(path: KeyPath) -> str:
    """A key path as TOML spells it (``lines.10.secret``, ``mapping[2].users``, quoted when
    not bare), so error messages can be pasted back into a file."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            bare = part and part.isascii() and part.replace("-", "").replace("_", "").isalnum()
            name = part if bare else '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
            out += f".{name}" if out else name
    return out


class Context:
    """Merged data plus provenance; turns a key path into a ConfigError naming its file."""

    def __init__(self, data: dict[str, Any], prov: dict[KeyPath, str], main: Path) -> None:
        self.data, self.prov, self.main = data, prov, main
        self.base = Path(os.path.abspath(main.parent))
        self.warnings: list[str] = []

    def file_of(self, path: KeyPath) -> str:
        for n in range(len(path), -1, -1):
            file = self.prov.get(path[:n])
            if file is not None:
                return file
        return str(self.main)  # pragma: no cover - () is always recorded

    def error(self, path: KeyPath, reason: str) -> ConfigError:
        return ConfigError(self.file_of(path), keystr(path), reason)

    def warn(self, path: KeyPath, note: str) -> None:
        self.warnings.append(f"{self.file_of(path)}: {keystr(path)}: {note}")

    def table(self, name: str, known: Collection[str] | None) -> Table:
        node: Any = self.data.get(name, {})
        if not isinstance(node, dict):
            raise self.error((name,), "must be a table")
        return Table(self, (name,), node, known)


class Table:
    """Typed, error-reporting access to one table; unknown keys fail on construction."""

    def __init__(self, ctx: Context, path: KeyPath, data: dict[str, Any],
                 known: Collection[str] | None) -> None:
        self.ctx, self.path, self.data = ctx, path, data
        if known is None:
            return
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.error(key, f"unknown key{hint}")

    def error(self, key: str | int, reason: str) -> ConfigError:
        return self.ctx.error((*self.path, key), reason)

    def get(self, key: str) -> Any:
        return self.data.get(key, MISSING)

    def string(self, key: str, default: str | None, *, empty_is_none: bool = False,
               printable: bool = True) -> str | None:
        """A string; control characters (CR, LF: header injection) only where ``printable``
        is off, which is only for secrets."""
        value = self.data.get(key, MISSING)
        if value is MISSING:
            return default
        if not isinstance(value, str):
            raise self.error(key, "must be a string")
        if printable and not value.isprintable():
            raise self.error(key, "must not contain control characters")
        if empty_is_none and not value.strip():
            return None
        if not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def required(self, key: str) -> str:
        value = self.string(key, None)
        if value is None:
            raise self.error(key, "is required")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false")
        return value

    def integer(self, key: str, default: int, lo: int, hi: int | None = None) -> int:
        value = self.data.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, "must be an integer")
        if value < lo or (hi is not None and value > hi):
            raise self.error(key, f"must be between {lo} and {hi}" if hi is not None
                             else f"must be at least {lo}")
        return value

    def number(self, key: str, default: float, lo: float, hi: float) -> float:
        value = self.data.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
            raise self.error(key, "must be a number")
        if not lo <= value <= hi:
            raise self.error(key, f"must be between {lo:g} and {hi:g}")
        return float(value)

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self.string(key, default)
        assert value is not None
        if value.lower() not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}")
        return value.lower()

    def strings(self, key: str, default: Sequence[str] = (), *, one: bool = False,
                nonempty: bool = False) -> tuple[str, ...]:
        """An array of non-empty strings (or one string when ``one``)."""
        value = self.data.get(key, MISSING)
        if value is MISSING:
            return tuple(default)
        if one and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.error(key, "must be a string or an array of strings" if one
                             else "must be an array of strings")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip() or not item.isprintable():
                raise self.ctx.error((*self.path, key, i),
                                     "must be a non-empty string without control characters")
        if nonempty and not value:
            raise self.error(key, "must not be empty")
        return tuple(value)


def read_algorithms(t: Table, key: str, default: Sequence[str]) -> tuple[str, ...]:
    """Digest algorithm names in canonical spelling, duplicates dropped; shared by
    ``[server]`` and ``[lines.NN]``, which accept the same list."""
    out: list[str] = []
    for i, name in enumerate(t.strings(key, default, nonempty=True)):
        canonical = name.strip().upper()
        if canonical not in ALGORITHMS:
            raise t.ctx.error((*t.path, key, i), f"unknown digest algorithm {name!r} "
                              f"(use {', '.join(ALGORITHMS)})")
        if canonical not in out:
            out.append(canonical)
    return tuple(out)


def fields_of(cls: type) -> tuple[str, ...]:
    """A section's keys are its record's fields, so key lists and defaults live in one place."""
    return tuple(f.name for f in dataclasses.fields(cls))
