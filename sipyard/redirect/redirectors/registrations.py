"""``registrations``: the target line's registered contacts (sipX RegDB).

The server fetched the bindings before the chain ran (``ctx.bindings``: store lookups are
async, the chain is not). Each binding becomes a contact with its q. A binding that arrived
through proxies (RFC 3327 Path) carries that path as a ``Route`` URI header, so a caller
following the redirect reaches the phone through the same edge proxy (sipX did the same).
Other binding params (``+sip.instance``, ``reg-id``) mean nothing to a caller and are left out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from sipyard.sip.uri import escape

from ..contacts import Contact
from ..pipeline import BindingLike, ErrorDescriptor, RedirectContext, Redirector, Result, Services

if TYPE_CHECKING:
    from sipyard.config import Config

__all__ = ["Registrations", "with_uri_header"]

#: hnv-unreserved (RFC 3261 §25.1): kept as is in a URI header value.
HNV_SAFE: Final = "[]/?:+$"
#: Contacts remembered per binding (the store's cache hands out the same immutable objects),
#: so a hot line's 302 costs a dict lookup per binding; cleared when full. Keyed by the
#: binding's id within its AOR, so a re-registration's binding takes its predecessor's
#: entry: keyed by the object, every REGISTER added one, and up to this many superseded
#: bindings (≈ 800 bytes each with what they hold) stayed alive (issue #16, make soak).
_CACHE_MAX: Final = 8192


def with_uri_header(uri: str, name: str, value: str) -> str:
    """``uri`` plus the header ``name=value`` (``value`` escaped for a URI header)."""
    sep = "&" if "?" in uri else "?"
    return f"{uri}{sep}{name}={escape(value, HNV_SAFE)}"


class Registrations(Redirector):
    name = "registrations"

    def __init__(self, config: Config, services: Services) -> None:
        super().__init__(config, services)
        # (aor, binding_id) -> (binding, contact); a hit must be the very binding object
        self._cache: dict[tuple[str, str], tuple[BindingLike, Contact]] = {}

    def process(self, ctx: RedirectContext) -> Result | ErrorDescriptor:
        bindings = ctx.bindings
        if not bindings:
            return Result.SUCCESS
        add = ctx.contacts.add
        cache = self._cache
        for b in bindings:
            key = (b.aor, b.binding_id)
            hit = cache.get(key)
            if hit is not None and hit[0] is b:
                add(hit[1])
                continue
            uri = b.contact
            if b.path:
                uri = with_uri_header(uri, "Route", ",".join(b.path))
            contact = Contact(uri, b.q, source="registrations", binding=b)
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cache[key] = (b, contact)
            add(contact)
        return Result.SUCCESS
