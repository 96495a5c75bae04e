"""Building the chain from ``[redirect] chain``: built-ins by name, others by entry point.

Built-ins are imported lazily by dotted path so a chain without ``directed_pickup`` never
imports ``xml.etree``. A third-party package registers a class with the same API as the
built-ins (a ``Redirector`` subclass) in the entry-point group ``sipyard.redirectors``::

    [project.entry-points."sipyard.redirectors"]
    blacklist = "mypkg.blacklist:Blacklist"

An unknown name, a failing import or an object that is not a Redirector class is a
``ConfigError`` naming ``redirect.chain[i]``, so ``sipyard check`` and a reload report it
and a reload keeps the running chain.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Final

from sipyard.config import ConfigError

from .pipeline import Redirector, Services

if TYPE_CHECKING:
    from sipyard.config import Config

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "build_chain", "redirector_class"]

ENTRY_POINT_GROUP: Final = "sipyard.redirectors"

_PKG = "sipyard.redirect.redirectors"
BUILTIN: Final[dict[str, str]] = {
    "registrations": f"{_PKG}.registrations:Registrations",
    "aliases": f"{_PKG}.aliases:Aliases",
    "subscribe": f"{_PKG}.subscribe:Subscribe",
    "mapping": f"{_PKG}.mapping:Mapping",
    "fallback": f"{_PKG}.fallback:Fallback",
    "pickup": f"{_PKG}.pickup:Pickup",
    "directed_pickup": f"{_PKG}.directed_pickup:DirectedPickup",
    "join": f"{_PKG}.join:Join",
}


def _config_file(config: Config | None) -> str:
    return "<config>" if config is None else str(config.path)


def redirector_class(name: str, *, config: Config | None = None, key: str = "redirect.chain"
                     ) -> type[Redirector]:
    """The class for a chain entry; ConfigError when it cannot be found or is not one."""
    file = _config_file(config)
    target = BUILTIN.get(name)
    try:
        if target is not None:
            module, _, attr = target.partition(":")
            obj: Any = getattr(importlib.import_module(module), attr)
        else:
            found = entry_points(group=ENTRY_POINT_GROUP, name=name)
            if not found:
                known = ", ".join(sorted(BUILTIN))
                raise ConfigError(file, key, f"unknown redirector {name!r} (built-in: {known}; "
                                  f"others need an entry point in group {ENTRY_POINT_GROUP!r})")
            obj = next(iter(found)).load()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(file, key, f"redirector {name!r} cannot be loaded: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Redirector)):
        raise ConfigError(file, key, f"redirector {name!r} is {obj!r}, not a Redirector class")
    return obj


def build_chain(config: Config, services: Services,
                names: Sequence[str] | None = None) -> list[Redirector]:
    """Instantiate the redirectors of ``[redirect] chain`` (or ``names``) in order.

    A redirector's constructor may raise ConfigError (bad rule, alias loop); it propagates.
    """
    if names is None:
        names = tuple(config.redirect.chain)
    chain: list[Redirector] = []
    for i, name in enumerate(names):
        cls = redirector_class(name, config=config, key=f"redirect.chain[{i}]")
        redirector = cls(config, services)
        if not type(redirector).name:
            type(redirector).name = name
        chain.append(redirector)
    return chain
