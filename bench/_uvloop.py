"""How the profiling scripts run their ``main()``: on uvloop, as ``sipyard serve`` does.

asyncio's own loop is Python: its Tasks and callbacks cost several times more, which
would misstate any change to them. ``--asyncio`` on the command line keeps the stdlib loop.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if "--asyncio" not in sys.argv:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main())
            return
    asyncio.run(main())
