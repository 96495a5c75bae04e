"""``subscribe``: on SUBSCRIBE, drop q from every contact (sipX 997-Subscribe).

Why: a caller forking by q would try the phones one after another; a subscription (presence,
dialog, message-summary) should reach every device at once, which equal q expresses.
"""

from __future__ import annotations

from ..pipeline import ErrorDescriptor, RedirectContext, Redirector, Result

__all__ = ["Subscribe"]


class Subscribe(Redirector):
    name = "subscribe"

    def process(self, ctx: RedirectContext) -> Result | ErrorDescriptor:
        if ctx.request.method != "SUBSCRIBE":
            return Result.SUCCESS
        contacts = ctx.contacts
        for c in contacts:
            if c.q is not None:
                contacts.replace(c, c.with_q(None))
        return Result.SUCCESS
