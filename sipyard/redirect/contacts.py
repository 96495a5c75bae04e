"""The contact set a redirect chain builds: ordered, q-aware, editable.

Why a class of its own: redirectors edit what earlier ones produced (``subscribe`` strips q,
a pick-up code replaces whatever a dial rule matched), and the pick-up redirectors must be
able to *seal* the set so that nothing added later reaches the caller (sipX XECS-64: a failed
pick-up fell through to a gateway rule). The set keeps insertion order; ``ordered()`` gives the
response order, highest q first and stable among equals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Final

from sipyard.sip.errors import ParseError
from sipyard.sip.headers import parse_name_addr
from sipyard.sip.uri import SipUri, TelUri, parse_uri

__all__ = ["Contact", "ContactSet", "format_q", "parse_q"]

Params = tuple[tuple[str, str | None], ...]


def parse_q(text: str) -> float:
    """RFC 3261 qvalue (``0``, ``0.5``, ``1.000``) → float; ValueError when malformed."""
    t = text.strip()
    frac = t[2:]
    ok = t.isascii() and (t in ("0", "1") or (
        len(t) <= 5 and t[:2] in ("0.", "1.") and (not frac or frac.isdigit())))
    if not ok:
        raise ValueError(f"bad q value {text!r}")
    q = float(t)
    if q > 1.0:
        raise ValueError(f"bad q value {text!r}")
    return q


def format_q(q: float) -> str:
    """The shortest qvalue text for ``q`` (``1``, ``0.5``, ``0.125``)."""
    text = f"{q:.3f}".rstrip("0").rstrip(".")
    return text or "0"


class Contact:
    """One redirect target: the URI text as it will be sent, its q and other header params.

    ``uri`` may carry URI headers (``?Replaces=…``); it is written inside ``<>``. ``params``
    are Contact header params other than q (``expires``, ``+sip.instance`` …), as written.
    ``q`` is None when the target has no preference (it sorts as 1.0, RFC 3261 §16.6).
    ``source`` names the redirector that produced it, for logs only.

    A value (compared and hashed by uri, q, params, display and source) and immutable
    (``Final``). A plain slotted class, not a dataclass: mypyc compiles neither a field
    declared with ``field(compare=False)`` nor, natively, a dataclass's ``__init__``.
    """

    __slots__ = ("uri", "q", "params", "display", "source", "binding", "_header")

    def __init__(self, uri: str, q: float | None = None, params: Params = (),
                 display: str | None = None, source: str = "",
                 binding: object = None) -> None:
        self.uri: Final = uri
        self.q: Final = q
        self.params: Final = params
        self.display: Final = display
        self.source: Final = source
        #: the registered binding this target came from (``registrations``), else None: a
        #: proxy reaches a binding behind NAT at its flow, not at this URI; never compared
        self.binding: Final = binding
        #: header_value() once computed (contacts made from cached bindings are reused)
        self._header: str | None = None

    def _key(self) -> tuple[str, float | None, Params, str | None, str]:
        return (self.uri, self.q, self.params, self.display, self.source)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Contact):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"Contact(uri={self.uri!r}, q={self.q!r}, params={self.params!r}, "
                f"display={self.display!r}, source={self.source!r})")

    @classmethod
    def parse(cls, text: str, *, source: str = "") -> Contact:
        """A Contact header value (``<sip:a@b>;q=0.5`` or ``sip:a@b;q=0.5``) → Contact.

        Raises ValueError when the text is not a name-addr / addr-spec with a SIP, SIPS or
        tel URI, or when q is malformed: configured contacts are checked with this at load.
        """
        try:
            na = parse_name_addr(text)
            uri = parse_uri(na.uri)
        except ParseError as exc:
            raise ValueError(f"{text!r}: {exc.reason}") from None
        if not isinstance(uri, SipUri | TelUri):
            raise ValueError(f"{text!r}: only sip:, sips: and tel: targets can be redirected to")
        q: float | None = None
        params: list[tuple[str, str | None]] = []
        for name, value in na.params:
            if name.lower() == "q":
                if value is None:
                    raise ValueError(f"{text!r}: q without a value")
                q = parse_q(value)
            else:
                params.append((name, value))
        return cls(na.uri, q, tuple(params), na.display, source)

    def with_q(self, q: float | None) -> Contact:
        return Contact(self.uri, q, self.params, self.display, self.source, self.binding)

    @property
    def sort_q(self) -> float:
        return 1.0 if self.q is None else self.q

    def header_value(self) -> str:
        """The Contact header value: ``[display ]<uri>[;params][;q=…]``."""
        text = self._header
        if text is None:
            parts = [f"{self.display} <{self.uri}>" if self.display else f"<{self.uri}>"]
            for name, value in self.params:
                parts.append(f";{name}" if value is None else f";{name}={value}")
            if self.q is not None:
                parts.append(f";q={format_q(self.q)}")
            text = "".join(parts)
            self._header = text  # a cache, not a change of value
        return text

    def __str__(self) -> str:
        return self.header_value()


class ContactSet:
    """The targets found so far for one pass of the chain.

    Adding a URI already in the set is ignored (the first redirector to name a target keeps
    it). ``seal()`` makes the set final: later ``add`` calls are refused (return False), so an
    authoritative redirector (a pick-up code) can guarantee that an empty set ends in 404.
    Removing and replacing stay allowed after sealing: they can only narrow or edit.
    """

    __slots__ = ("_items", "_uris", "sealed", "sealed_by", "modified")

    def __init__(self, items: Sequence[Contact] = ()) -> None:
        self._items: list[Contact] = []
        self._uris: set[str] = set()
        for c in items:
            if c.uri not in self._uris:
                self._items.append(c)
                self._uris.add(c.uri)
        self.sealed = False
        self.sealed_by = ""
        #: True once any redirector changed the set (sipX's "touched" flag).
        self.modified = False

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[Contact]:
        return iter(list(self._items))

    def __contains__(self, item: object) -> bool:
        uri = item.uri if isinstance(item, Contact) else item
        return uri in self._uris

    def __repr__(self) -> str:
        return f"ContactSet({self._items!r}, sealed={self.sealed})"

    def _index(self, item: Contact | str) -> int:
        uri = item.uri if isinstance(item, Contact) else item
        if uri not in self._uris:
            return -1
        for i, c in enumerate(self._items):
            if c.uri == uri:
                return i
        return -1

    def add(self, contact: Contact | str, *, q: float | None = None, source: str = "") -> bool:
        """Append a target; a plain string is a URI (not a header value). False if refused."""
        if self.sealed:
            return False
        if isinstance(contact, str):
            contact = Contact(contact, q, source=source)
        uris = self._uris
        if contact.uri in uris:
            return False
        uris.add(contact.uri)
        self._items.append(contact)
        self.modified = True
        return True

    def remove(self, item: Contact | str) -> bool:
        """Drop the target with that URI; False when absent."""
        i = self._index(item)
        if i < 0:
            return False
        self._uris.discard(self._items.pop(i).uri)
        self.modified = True
        return True

    def remove_if(self, predicate: Callable[[Contact], bool]) -> int:
        """Drop every target the predicate accepts; returns how many went."""
        keep = [c for c in self._items if not predicate(c)]
        gone = len(self._items) - len(keep)
        if gone:
            self._items = keep
            self._uris = {c.uri for c in keep}
            self.modified = True
        return gone

    def replace(self, old: Contact | str, new: Contact) -> bool:
        """Put ``new`` where ``old`` was (same position); False when ``old`` is absent.

        If ``new``'s URI is already elsewhere in the set, ``old`` is just removed.
        """
        i = self._index(old)
        if i < 0:
            return False
        items = self._items
        self._uris.discard(items[i].uri)
        if new.uri in self._uris:
            del items[i]
        else:
            items[i] = new
            self._uris.add(new.uri)
        self.modified = True
        return True

    def clear(self) -> None:
        self._items.clear()
        self._uris.clear()
        self.modified = True

    def seal(self, by: str = "") -> None:
        """No more additions: what is in the set now (possibly nothing) is the answer."""
        self.sealed = True
        self.sealed_by = by
        self.modified = True

    def ordered(self) -> list[Contact]:
        """Response order: highest q first; equal q keeps insertion order (sort is stable)."""
        items = self._items
        if len(items) < 2:
            return list(items)
        return sorted(items, key=_neg_q)


def _neg_q(c: Contact) -> float:
    return -c.sort_q
