"""Which files make a config, in what order, and how they merge (layers later win).

Why provenance is recorded while merging: after the merge nobody can tell which layer set a
key, yet an error must name that file (``states/night.toml: groups.100.members: …``), so
every table and value is tagged with its file as it is copied in, and a replaced value
forgets the files of what it replaced. The layer rules are in the package docstring.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .records import CLI, Config, ConfigError
from .tables import Context, KeyPath
from .validate import build

__all__ = ["load_config"]


def load_config(path: str | Path, *, data_dir: str | Path | None = None,
                listen: Sequence[str] | None = None, state: str | None = None) -> Config:
    """Read the layers, merge them, validate, and return the Config (or raise ConfigError)."""
    main = Path(path)
    layers = [main]
    custom = main.parent / "custom.toml"
    if custom.is_file() and not _same_file(custom, main):
        layers.append(custom)
    run_state = None if state is None or state.strip().lower() in ("", "none") else state.strip()
    if run_state is not None:
        if not run_state.replace("-", "").replace("_", "").isalnum() or not run_state.isascii():
            raise ConfigError(CLI, "state", f"bad run state name {run_state!r} "
                              "(letters, digits, - and _)")
        state_file = main.parent / "states" / f"{run_state}.toml"
        if not state_file.is_file():
            raise ConfigError(str(state_file), "(file)", f"run state {run_state!r} has no file")
        layers.append(state_file)
    merged: dict[str, Any] = {}
    prov: dict[KeyPath, str] = {(): str(main)}
    for layer in layers:
        _merge(merged, _read(layer), prov, (), str(layer))
    ctx = Context(merged, prov, main)
    return build(ctx, layers, run_state, data_dir, listen)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(str(path), "(file)", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "(file)", "not valid UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        reason, _, where = str(exc).rpartition(" (at ")
        if not reason:
            raise ConfigError(str(path), "(syntax)", str(exc)) from None
        raise ConfigError(str(path), where.rstrip(")"), f"TOML syntax: {reason}") from None


def _merge(dst: dict[str, Any], src: Mapping[str, Any], prov: dict[KeyPath, str],
           path: KeyPath, file: str) -> None:
    """Deep-merge ``src`` into ``dst``, recording the file behind every table and value."""
    for key, value in src.items():
        sub = (*path, key)
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, prov, sub, file)
            continue
        if key in dst:  # replaced: forget where the old value and its children came from
            n = len(sub)
            for p in [p for p in prov if p[:n] == sub]:
                del prov[p]
        dst[key] = value
        _record(value, prov, sub, file)


def _record(value: Any, prov: dict[KeyPath, str], path: KeyPath, file: str) -> None:
    prov[path] = file
    if isinstance(value, dict):
        for k, v in value.items():
            _record(v, prov, (*path, k), file)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, dict):
                _record(v, prov, (*path, i), file)
