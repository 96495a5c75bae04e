"""``pickup``: the global pick-up code and ``*allcredentials``.

* ``[features] global_pickup`` (off by default): answer whichever call is ringing on any line
  (except the caller's own): the dialog search of ``directed_pickup`` over every line's
  bindings, the longest-ringing call wins. Like sipX, whose global pick-up subscribed to
  ``~~sp~allcredentials`` and took the first early dialog; here the server does the fan-out
  itself, so no separate pick-up agent is needed (``[features] pickup_agent`` is the identity
  the SUBSCRIBEs are sent from).
* ``*allcredentials`` in one of our domains: a SUBSCRIBE is redirected to every configured
  line's AOR (a monitoring client subscribes to all phones at once); any other method gets
  405 with ``Allow: SUBSCRIBE``. Both answers are final (the set is sealed).
"""

from __future__ import annotations

from typing import ClassVar, Final

from ..contacts import Contact
from ..pipeline import ErrorDescriptor, RedirectContext, Result, line_aor
from ._dialog import DialogFeature

__all__ = ["Pickup", "ALL_CREDENTIALS"]

ALL_CREDENTIALS: Final = "*allcredentials"
_NOT_SUBSCRIBE: Final = ErrorDescriptor(405, "Method Not Allowed",
                                        headers=(("Allow", "SUBSCRIBE"),))


class Pickup(DialogFeature):
    name = "pickup"
    feature: ClassVar[str] = "global_pickup"

    def lines_for(self, ctx: RedirectContext) -> list[str] | None:
        code = self.code
        if not code or ctx.user != code:
            return None
        if not self.config.is_our_domain(ctx.target.host):
            return None
        return [n for n in self.config.lines if n != ctx.caller]

    def process(self, ctx: RedirectContext) -> Result | ErrorDescriptor:
        target = ctx.target
        if ctx.user == ALL_CREDENTIALS and self.config.is_our_domain(target.host):
            if ctx.request.method != "SUBSCRIBE":
                return _NOT_SUBSCRIBE
            contacts = ctx.contacts
            contacts.clear()
            for number in self.config.line_numbers:
                contacts.add(Contact(line_aor(self.config, number), source=self.name))
            contacts.seal(self.name)
            return Result.SUCCESS
        return super().process(ctx)
