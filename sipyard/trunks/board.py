"""The trunks' state as everybody else reads it: the CLI, status, metrics, the page, the proxy.

Why a board apart from the registration loops: the loops run in one place only (one
registration per trunk per site: a scale-out runs :class:`~sipyard.trunks.TrunkManager`
in one worker), while every worker's proxy must recognise the trunk's addresses and
every reader wants the same document. The board is plain data, written by the manager
and read by the rest; it never holds a secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..sip.source import Source

if TYPE_CHECKING:
    from ..config import TrunkConfig

__all__ = ["TrunkBoard", "TrunkState", "display_uri"]

#: states shown (and counted in ``sipyard_trunks{state}``)
STATES = ("registering", "registered", "failed", "disabled")


def display_uri(host: str, port: int | None, transport: str | None) -> str:
    """A registrar URI without any user info (a ``sip:user:password@`` never shows)."""
    hp = f"[{host}]" if ":" in host else host
    text = f"sip:{hp}" + (f":{port}" if port else "")
    return text + (f";transport={transport}" if transport else "")


@dataclass(slots=True, eq=False)
class TrunkState:
    """One trunk as last seen by its registration loop."""

    name: str
    registrar: str  # display form, see display_uri
    state: str = "registering"
    transport: str | None = None
    last_status: int | None = None
    last_error: str | None = None
    expires_at: float | None = None  # wall clock
    retry_at: float | None = None  # wall clock, when failed
    registered_at: float | None = None
    #: addresses the provider's requests may come from (registrar, outbound proxy)
    addresses: frozenset[str] = frozenset()
    #: the TCP flow the registration holds (requests to the provider reuse it)
    flow: Source | None = None
    refreshes: int = 0
    failures: int = 0

    def doc(self, now: float) -> dict[str, Any]:
        return {
            "name": self.name, "registrar": self.registrar, "state": self.state,
            "transport": self.transport,
            "expires_in": None if self.expires_at is None or self.state != "registered"
            else max(0, int(self.expires_at - now)),
            "last_status": self.last_status, "last_error": self.last_error,
            "retry_in": None if self.retry_at is None or self.state != "failed"
            else max(0, round(self.retry_at - now, 1)),
            "registered_at": self.registered_at, "refreshes": self.refreshes,
            "failures": self.failures,
        }


@dataclass(eq=False)
class TrunkBoard:
    trunks: dict[str, TrunkState] = field(default_factory=dict)

    def sync(self, configs: dict[str, TrunkConfig] | Any) -> None:
        """Make the board list exactly the configured trunks (a reload adds/removes)."""
        for name in list(self.trunks):
            if name not in configs:
                del self.trunks[name]
        for name, tc in configs.items():
            shown = display_uri(tc.host, tc.port, tc.transport)
            st = self.trunks.get(name)
            if st is None or st.registrar != shown:
                self.trunks[name] = TrunkState(
                    name, shown, state="registering" if tc.register else "disabled")

    def get(self, name: str) -> TrunkState | None:
        return self.trunks.get(name)

    def from_address(self, ip: str) -> list[TrunkState]:
        return [t for t in self.trunks.values() if ip in t.addresses]

    def docs(self, now: float) -> list[dict[str, Any]]:
        return [self.trunks[n].doc(now) for n in sorted(self.trunks)]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for t in self.trunks.values():
            key = "failed" if t.state == "failed" else t.state
            out[key] = out.get(key, 0) + 1
        return out
