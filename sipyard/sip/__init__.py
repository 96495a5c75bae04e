"""The sans-IO SIP core: no sockets, no clock reads (DESIGN §2).

`scripts/build_core.py` may compile these modules with mypyc; the extension
modules then sit beside the sources. One older than its source would shadow an
edit, so such stale builds are dropped here, before any submodule is imported.
"""

from __future__ import annotations

import contextlib
from pathlib import Path


def _drop_stale_builds() -> None:
    here = Path(__file__).resolve().parent
    built = list(here.glob("*.so"))
    if not built:
        return
    stale = False
    for so in built:
        src = here / (so.name.split(".", 1)[0] + ".py")
        if src.exists() and src.stat().st_mtime > so.stat().st_mtime:
            stale = True
    if stale:  # the shared group library goes too, or the rest would not load
        for so in built:
            with contextlib.suppress(OSError):
                so.unlink()


_drop_stale_builds()
