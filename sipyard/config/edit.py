"""Editing the main config file in place, for tools (``sipyard passwd``).

Why ``tomlkit`` and not ``tomllib`` + a writer: the file belongs to a person, so its comments,
order and layout must survive a password change (DESIGN §4). The result is written beside the
file and renamed over it, so a crash never leaves half a config for the next reload.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import tomlkit

from ._text import check_hex, is_number
from .records import ALGORITHMS, CREDENTIAL_KEYS, ConfigError

__all__ = ["set_line_credentials"]


def set_line_credentials(path: str | Path, line: str, *, secret: str | None = None,
                         ha1: Mapping[str, str] | None = None) -> None:
    """Set ``[lines.LINE]`` credentials in the main file, keeping its comments and layout.

    Give a ``secret`` or ``ha1`` ({"MD5": hex, …}; keys may also be "ha1_md5" …). Every other
    credential key of the line is removed, so no digest of an old password survives. The file
    is replaced atomically with its mode kept.
    """
    if (secret is None) == (ha1 is None):
        raise ValueError("give exactly one of secret or ha1")
    if not is_number(line):
        raise ValueError(f"bad line number {line!r}")
    values: dict[str, str] = {}
    if secret is not None:
        if not secret:
            raise ValueError("the secret must not be empty")
        values["secret"] = secret
    else:
        assert ha1 is not None
        by_key = {key: length for key, length in ALGORITHMS.values()}
        for name, digest in ha1.items():
            key = ALGORITHMS[name.upper()][0] if name.upper() in ALGORITHMS else name.lower()
            if key not in by_key:
                raise ValueError(f"unknown digest algorithm {name!r}")
            try:
                values[key] = check_hex(digest, by_key[key])
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        if not values:
            raise ValueError("ha1 must hold at least one digest")
    file = Path(os.path.realpath(path))
    try:
        doc = tomlkit.parse(file.read_text("utf-8"))
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(str(path), "(syntax)", str(exc)) from None
    lines: Any = doc.get("lines")
    if lines is not None and not isinstance(lines, MutableMapping):
        raise ConfigError(str(path), "lines", "must be a table")
    entry: Any = None if lines is None else lines.get(line)
    if entry is None:
        entry = tomlkit.table()
        for key, value in values.items():
            entry[key] = value
        entry.add(tomlkit.nl())
        if lines is None:
            lines = tomlkit.table(is_super_table=True)
            lines[line] = entry
            doc["lines"] = lines
        else:
            lines[line] = entry
    elif not isinstance(entry, MutableMapping):
        raise ConfigError(str(path), f"lines.{line}", "must be a table")
    else:
        for key in CREDENTIAL_KEYS:
            if key in entry and key not in values:
                del entry[key]
        for key, value in values.items():
            entry[key] = value
    _write_atomic(file, doc.as_string())


def _write_atomic(file: Path, text: str) -> None:
    """Same mode and owner as the file it replaces: a root-run tool must not leave the
    server (another user) unable to read its own config."""
    st = file.stat()
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, st.st_mode & 0o7777)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, st.st_mode & 0o7777)  # umask may have narrowed it
        if hasattr(os, "chown") and (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
            with contextlib.suppress(OSError):
                os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
