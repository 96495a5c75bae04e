"""The binding record and the update contract every backend shares.

Apart from :mod:`sipyard.store.base` (the abstract backend) so that this
module, on the REGISTER path, can be compiled with mypyc while backends stay
ordinary Python subclasses of the interface.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["Binding", "UpdateFn", "UpdateDone", "normalize_update", "sort_key"]


@dataclass(slots=True, init=False, unsafe_hash=True)
class Binding:
    """One registered contact of an AOR (RFC 3261 §10, RFC 5626 when present).

    Slotted and immutable: a server holds one per registered device in memory
    (the object is 168 bytes; with its strings and the sqlite cache's index a
    typical binding costs about 800 bytes, see tests/test_store.py), and the
    cache hands the same objects to every reader, so they must be immutable.

    Immutable through ``Final`` (mypy refuses an assignment; compiled, the
    attributes are read-only) rather than ``frozen=True``: a dataclass's
    generated ``__init__`` is interpreted Python even in a compiled module, and
    a frozen one sets each field through ``object.__setattr__`` (1.8 µs per
    binding, measured); this explicit one compiles to a few stores.
    """

    aor: Final[str]
    #: the registrar's identity of the binding within its AOR (instance/reg-id or contact text)
    binding_id: Final[str]
    #: the contact URI text exactly as received, without the <>
    contact: Final[str]
    #: header params as written (";+sip.instance=\"<urn:…>\";reg-id=1"), without q/expires
    params: Final[str]
    q: Final[float | None]
    #: epoch seconds; the binding is gone once ``now >= expires_at``
    expires_at: Final[float]
    registered_at: Final[float]
    call_id: Final[str]
    cseq: Final[int]
    source_ip: Final[str]
    source_port: Final[int]
    transport: Final[str]
    #: the stream connection the REGISTER came on (RFC 5626 flow), if any
    conn_id: Final[str | None]
    path: Final[tuple[str, ...]]
    user_agent: Final[str]
    instance: Final[str | None]
    reg_id: Final[int | None]

    def __init__(self, aor: str, binding_id: str, contact: str, params: str, q: float | None,
                 expires_at: float, registered_at: float, call_id: str, cseq: int,
                 source_ip: str, source_port: int, transport: str, conn_id: str | None,
                 path: tuple[str, ...], user_agent: str, instance: str | None,
                 reg_id: int | None) -> None:
        self.aor = aor
        self.binding_id = binding_id
        self.contact = contact
        self.params = params
        self.q = q
        self.expires_at = expires_at
        self.registered_at = registered_at
        self.call_id = call_id
        self.cseq = cseq
        self.source_ip = source_ip
        self.source_port = source_port
        self.transport = transport
        self.conn_id = conn_id
        self.path = path
        self.user_agent = user_agent
        self.instance = instance
        self.reg_id = reg_id


def sort_key(b: Binding) -> tuple[float, str]:
    """The order every backend returns an AOR's bindings in."""
    return (b.registered_at, b.binding_id)


UpdateFn = Callable[[list[Binding]], tuple[list[Binding], list[str]]]
#: called with (bindings after, None) once an update committed, or (None, error)
UpdateDone = Callable[["list[Binding] | None", "BaseException | None"], None]


def normalize_update(
    aor: str, result: tuple[Iterable[Binding], Iterable[str]]
) -> tuple[tuple[Binding, ...], tuple[str, ...]]:
    """Check and canonicalise what an update ``fn`` returned.

    Returns (puts without duplicate ids, last one wins; ids to remove without
    duplicates). A put for another AOR or a non-Binding is a caller bug:
    ``ValueError``/``TypeError`` before anything is written.
    """
    puts_in, removes_in = result
    removes = tuple(dict.fromkeys(removes_in))
    for rid in removes:
        if type(rid) is not str:
            raise TypeError(f"binding id to remove must be str, not {type(rid).__name__}")
    removed = set(removes)
    puts: dict[str, Binding] = {}
    for b in puts_in:
        if not isinstance(b, Binding):
            raise TypeError(f"update fn must return Binding objects, not {type(b).__name__}")
        if b.aor != aor:
            raise ValueError(f"binding for {b.aor!r} put into AOR {aor!r}")
        if b.binding_id not in removed:
            puts.pop(b.binding_id, None)
            puts[b.binding_id] = b
    return tuple(puts.values()), removes


