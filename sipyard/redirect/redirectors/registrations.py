"""``registrations``: the target line's registered contacts (sipX RegDB).

The server fetched the bindings before the chain ran (``ctx.bindings``: store lookups are
async, the chain is not). Each binding becomes a contact with its q. A binding that arrived
through proxies (RFC 3327 Path) carries that path as a ``Route`` URI header, so a caller
following the redirect reaches the phone through the same edge proxy (sipX did the same).
Other binding params (``+sip.instance``, ``reg-id``) mean nothing to a caller and are left out.
"""

from __future__ import annotations

from typing import Final

from sipyard.sip.uri import escape

from ..contacts import Contact
from ..pipeline import ErrorDescriptor, RedirectContext, Redirector, Result

__all__ = ["Registrations", "with_uri_header"]

#: hnv-unreserved (RFC 3261 §25.1): kept as is in a URI header value.
HNV_SAFE: Final = "[]/?:+$"


def with_uri_header(uri: str, name: str, value: str) -> str:
    """``uri`` plus the header ``name=value`` (``value`` escaped for a URI header)."""
    sep = "&" if "?" in uri else "?"
    return f"{uri}{sep}{name}={escape(value, HNV_SAFE)}"


class Registrations(Redirector):
    name = "registrations"

    def process(self, ctx: RedirectContext) -> Result | ErrorDescriptor:
        bindings = ctx.bindings
        if not bindings:
            return Result.SUCCESS
        add = ctx.contacts.add
        for b in bindings:
            uri = b.contact
            if b.path:
                uri = with_uri_header(uri, "Route", ",".join(b.path))
            add(Contact(uri, b.q, source="registrations"))
        return Result.SUCCESS
