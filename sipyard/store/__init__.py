"""Location store: bindings per AOR behind one interface (DESIGN §5).

``open_store(url, data_dir)`` picks the backend from a URL:

* ``None``, ``""``, ``"sqlite"``, ``"sqlite:"`` → ``<data_dir>/sipyard.db``
* ``"sqlite:///abs/path.db"`` → that file; ``"sqlite:rel.db"`` → relative to data_dir;
  ``?synchronous=full`` selects fsync per commit (see :mod:`sipyard.store.sqlite`)
* ``"redis://host:port/db"`` (also ``rediss://``, ``unix://``) → :mod:`sipyard.store.redis_store`;
  ``?key_prefix=…`` changes the ``sipyard:`` key prefix

The redis backend lives in ``redis_store.py`` rather than ``redis.py``: a module
named ``redis`` beside code that does ``import redis.asyncio`` invites shadowing
whenever the package directory lands on ``sys.path`` (scripts, some tools), and
it is imported only when a redis URL is used, so the ``redis`` package stays an
optional dependency.

Both backends are imported inside :func:`open_store`, not at the top: the
registrar and the redirect layer import ``sipyard.store.base`` and so run this
file, and they must stay free of ``sqlite3``, ``asyncio`` and ``threading``
(``tests/test_imports.py``); only the server that opens a store loads one.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .base import Binding, LocationStore, StoreError, UpdateFn

__all__ = ["Binding", "LocationStore", "StoreError", "UpdateFn", "open_store"]


def open_store(url: str | None, data_dir: Path) -> LocationStore:
    """Build (not open) the store named by ``url``; ValueError for an unknown URL.

    The caller awaits ``store.open()``: building does no I/O, so a config
    check can validate the URL without touching the backend.
    """
    from .sqlite import DB_NAME, SqliteStore

    data_dir = Path(data_dir)
    if not url or url == "sqlite":
        return SqliteStore(data_dir / DB_NAME)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        if parts.netloc:
            raise ValueError(f"store URL {url!r}: use sqlite:///absolute/path or sqlite:relative")
        path = Path(parts.path or DB_NAME)
        if parts.path.endswith("/"):  # a directory: the usual file name inside it
            path = path / DB_NAME
        options = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(options) - {"synchronous"}
        if unknown:
            raise ValueError(f"store URL {url!r}: unknown option {sorted(unknown)[0]!r}")
        sync = options.get("synchronous", ["normal"])[-1]
        return SqliteStore(data_dir / path, synchronous=sync)  # absolute path wins over data_dir
    if scheme in ("redis", "rediss", "unix"):
        from .redis_store import RedisStore

        return RedisStore(url)
    raise ValueError(f"store URL {url!r}: unknown scheme (use sqlite or redis)")
