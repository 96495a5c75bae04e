"""The control operations an admin line may run over SIP, answered with the CLI's texts.

Why here and not in the handler: the handler knows SIP (who asks, over which transport,
where the answer goes); this knows the operations, through the same functions the
control socket uses (:mod:`sipyard.ops`) and the same formatting the CLI prints
(:mod:`sipyard.clitext`), so ``/status`` over SIP reads exactly like ``sipyard status``.
"""

from __future__ import annotations

from . import clitext
from .ops import (
    OpsContext,
    calls_doc,
    registry_doc,
    reload,
    runstate_doc,
    set_runstate,
    status_doc,
    trunks_doc,
)

__all__ = ["ADMIN_COMMANDS", "run_admin"]

#: the fixed set; anything else stays a chat command (hook script)
ADMIN_COMMANDS = frozenset({"status", "registry", "calls", "reload", "runstate", "trunks"})


def _error(reply: dict[str, object]) -> str | None:
    if reply.get("ok") is False:
        return f"error: {reply.get('error')}"
    return None


async def run_admin(ctx: OpsContext, word: str, args: str) -> str:
    """The text for ``/word args`` (``word`` in :data:`ADMIN_COMMANDS`)."""
    arg = args.strip() or None
    if word == "status":
        return clitext.status_text(await status_doc(ctx))
    if word == "registry":
        r = await registry_doc(ctx, arg)
        return _error(r) or clitext.registry_text(r)
    if word == "calls":
        return clitext.calls_text(calls_doc(ctx.parts, ctx.now()))
    if word == "reload":
        r = await reload(ctx)
        return _error(r) or clitext.reload_text(r)
    if word == "runstate":
        r = await (set_runstate(ctx, arg) if arg is not None else runstate_doc(ctx))
        return _error(r) or clitext.runstate_text(r, arg)
    if word == "trunks":
        return clitext.trunks_text(trunks_doc(ctx))
    raise ValueError(word)
