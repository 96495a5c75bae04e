"""One trunk's REGISTER client: register, refresh, back off, keep the flow alive, un-register.

Why a loop over a small :class:`RegistrationIO` and not over sockets: the timing rules
are the part that must be right — a provider that answers 401 forever, 500s or never
answers must never make us send faster than the back-off — and with the I/O and the
clock handed in, a unit test runs hours of provider trouble in milliseconds with a fake
clock (``tests/test_trunks.py``).

Rules, and the choices where the issue left room:

* One attempt = at most one unauthenticated REGISTER, one answer per challenge (a
  ``stale=true`` challenge may be answered once more), one retry after 423 with the
  ``Min-Expires`` asked for. Anything else ends the attempt: 2xx → registered; any other
  final, a timeout (408) or an unreachable registrar → failed, and the next attempt waits
  ``retry_min`` (30 s), doubling up to ``retry_max`` (600 s), reset by a success.
* A refresh is sent at half the granted expiry, with the last challenge answered
  again (next ``nc``): one round trip instead of two while the provider's nonce lives.
* Over TCP the connection is the flow (RFC 5626): CRLF keep-alives every 95-120 s
  (``keepalive`` overrides); when the connection drops, the trunk registers again at
  once over a new one (that attempt failing backs off as usual). A flow that dies within
  ``retry_min`` of its registration counts as a failure, so a provider that accepts and
  hangs up cannot make us loop.
* ``transport`` unset: TCP first, UDP when the TCP connection cannot be made.
* Stop: one REGISTER with ``Expires: 0`` for our contact, bounded to a few seconds.
"""

from __future__ import annotations

import logging
import random
import re
import secrets
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Protocol

from ..sip.digest_client import DigestClient
from ..sip.framing import PING
from ..sip.message import Response
from ..sip.source import Source
from .board import TrunkState

if TYPE_CHECKING:
    from ..config import TrunkConfig

__all__ = ["Registration", "RegistrationIO", "Reply"]

log = logging.getLogger("sipyard.trunks")

_EXPIRES = re.compile(r";\s*expires\s*=\s*(\d+)", re.IGNORECASE)
#: the most requests one attempt may send (unauthenticated, answer, stale answer, 423)
MAX_REQUESTS = 4


class Reply(Protocol):
    status: int
    reason: str
    response: Response | None


class RegistrationIO(Protocol):
    """What a registration needs from the world (the manager's adapter, or a test's fake)."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> Awaitable[None]: ...

    async def resolve(self, host: str, port: int) -> list[str]: ...

    async def open_flow(self, transport: str, ip: str, port: int) -> Source: ...

    def flow_alive(self, flow: Source) -> bool: ...

    def send_raw(self, flow: Source, data: bytes) -> bool: ...

    def local(self, transport: str) -> tuple[str, int]: ...

    async def request(self, method: str, ruri: str, dest: Source, *, from_uri: str, to_uri: str,
                      headers: Sequence[tuple[str, str]], call_id: str,
                      timeout: float) -> Reply: ...


class Registration:
    """The loop of one trunk; :meth:`run` until :meth:`stop`."""

    def __init__(self, cfg: TrunkConfig, state: TrunkState, io: RegistrationIO, *,
                 instance: str, timeout: float = 32.0) -> None:
        self.cfg = cfg
        self.state = state
        self.io = io
        self.instance = instance
        self.timeout = timeout
        self.client = DigestClient(cfg.username, cfg.secret, cfg.ha1, cfg.realm)
        self.call_id = secrets.token_hex(12)
        self.expires = cfg.expires
        self.flow: Source | None = None
        self.contact: str | None = None
        self._auth_header = "Authorization"
        self._stopping = False
        hp = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        self.ruri = f"sip:{hp}" + (f":{cfg.port}" if cfg.port else "")
        self.aor = f"sip:{cfg.username}@{hp}"

    # -- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        delay = self.cfg.retry_min
        st = self.state
        while not self._stopping:
            granted = await self._attempt()
            if self._stopping:
                break
            if granted is None:
                st.failures += 1
                st.state = "failed"
                st.expires_at = None
                st.retry_at = self.io.now() + delay
                log.warning("trunk %s: registration failed (%s); retry in %gs", self.cfg.name,
                            st.last_error, delay)
                await self.io.sleep(delay)
                delay = min(delay * 2, self.cfg.retry_max)
                continue
            registered_at = self.io.now()
            lost = await self._hold(granted)
            if lost and self.io.now() - registered_at < self.cfg.retry_min:
                st.last_error = "connection lost"
                st.state = "failed"
                st.failures += 1
                st.retry_at = self.io.now() + delay
                await self.io.sleep(delay)
                delay = min(delay * 2, self.cfg.retry_max)
            else:
                delay = self.cfg.retry_min

    def stop(self) -> None:
        self._stopping = True

    async def unregister(self) -> None:
        """``Expires: 0`` for our contact (clean stop, a removed trunk); bounded wait."""
        flow, contact = self.flow, self.contact
        if flow is None or contact is None or self.state.state != "registered":
            return
        if flow.transport == "tcp" and not self.io.flow_alive(flow):
            return
        reply = await self._register(flow, 0, timeout=3.0)
        self.state.state = "registering"
        self.state.expires_at = None
        log.info("trunk %s: un-registered (%d)", self.cfg.name, reply.status)

    # -- one attempt ------------------------------------------------------------------------
    async def _attempt(self) -> float | None:
        st = self.state
        cfg = self.cfg
        host, port = cfg.proxy_host or cfg.host, cfg.proxy_port or cfg.port
        transport = (cfg.proxy_transport if cfg.outbound_proxy else cfg.transport)
        try:
            ips = await self.io.resolve(host, port or 5060)
        except OSError as exc:
            st.last_status, st.last_error = None, f"cannot resolve {host}: {exc}"
            return None
        if not ips:
            st.last_status, st.last_error = None, f"cannot resolve {host}"
            return None
        st.addresses = frozenset(ips) | st.addresses
        flow = self.flow
        if flow is None or (flow.transport == "tcp" and not self.io.flow_alive(flow)):
            flow = await self._open(transport, ips[0], port or 5060)
            if flow is None:
                return None
            self.flow = flow
            st.flow = flow if flow.transport == "tcp" else None
            st.transport = flow.transport
        reply = await self._register(flow, self.expires, timeout=self.timeout)
        st.last_status = reply.status
        if 200 <= reply.status < 300 and reply.response is not None:
            granted = self._granted(reply.response)
            if granted <= 0:
                st.last_error = "registrar granted 0 s"
                return None
            now = self.io.now()
            st.state = "registered"
            st.last_error = None
            st.retry_at = None
            st.expires_at = now + granted
            if st.registered_at is not None:
                st.refreshes += 1
            st.registered_at = now
            log.info("trunk %s: registered via %s for %ds", cfg.name, flow.transport, granted)
            return granted
        st.last_error = f"{reply.status} {reply.reason}"
        if reply.status == 408 and flow.transport == "tcp":
            self.flow = None  # a silent peer on TCP: next time over a fresh connection
        return None

    async def _open(self, transport: str | None, ip: str, port: int) -> Source | None:
        st = self.state
        for tr in ((transport,) if transport else ("tcp", "udp")):
            try:
                return await self.io.open_flow(tr, ip, port)
            except (OSError, TimeoutError, ConnectionError) as exc:
                st.last_status, st.last_error = None, f"{tr} connect failed: {exc or 'timeout'}"
        return None

    def _contact(self, flow: Source) -> str:
        host, port = self.io.local(flow.transport)
        hp = f"[{host}]" if ":" in host else host
        value = f"<sip:{self.cfg.contact_user}@{hp}:{port};transport={flow.transport}>"
        if flow.transport == "tcp":
            value += f';reg-id=1;+sip.instance="<urn:uuid:{self.instance}>"'
        return value

    async def _register(self, flow: Source, expires: int, *, timeout: float) -> Reply:
        contact = self._contact(flow)
        self.contact = contact
        auth = self.client.again("REGISTER", self.ruri)  # the last nonce, next nc
        answered = 0
        reply: Reply | None = None
        for _ in range(MAX_REQUESTS):
            headers = [("Contact", f"{contact};expires={expires}"), ("Expires", str(expires)),
                       ("Supported", "path, outbound" if flow.transport == "tcp" else "path")]
            if auth is not None:
                headers.append((self._auth_header, auth))
            reply = await self.io.request(
                "REGISTER", self.ruri, flow, from_uri=self.aor, to_uri=self.aor,
                headers=headers, call_id=self.call_id, timeout=timeout)
            resp = reply.response
            if reply.status in (401, 407) and resp is not None:
                name = "www-authenticate" if reply.status == 401 else "proxy-authenticate"
                ch = self.client.pick(resp.get_all(name))
                if ch is None or answered >= (2 if ch.stale else 1):
                    return reply
                answered += 1
                self._auth_header = "Authorization" if reply.status == 401 else (
                    "Proxy-Authorization")
                auth = self.client.answer(ch, "REGISTER", self.ruri)
                continue
            if reply.status == 423 and resp is not None and expires:
                raw = (resp.get("min-expires") or "").strip()
                wanted = int(raw) if raw.isdigit() else 0
                if not expires < wanted <= 86400:
                    return reply
                log.info("trunk %s: registrar wants %ds at least (423)", self.cfg.name, wanted)
                self.expires = expires = wanted
                auth = self.client.again("REGISTER", self.ruri)
                continue
            return reply
        assert reply is not None
        return reply

    def _granted(self, resp: Response) -> int:
        """Our contact's expiry in the 200 (else its Expires, else what we asked for)."""
        host, port = self.io.local(self.flow.transport if self.flow else "udp")
        mark = f"@{host}:{port}".lower()
        for value in resp.get_all("contact"):
            if mark in value.lower() and f"sip:{self.cfg.contact_user}@".lower() in value.lower():
                m = _EXPIRES.search(value.split(">", 1)[-1])
                if m:
                    return int(m.group(1))
        raw = (resp.get("expires") or "").strip()
        return int(raw) if raw.isdigit() else self.expires

    # -- registered: wait for the refresh, keep the flow alive ---------------------------------
    async def _hold(self, granted: float) -> bool:
        """Wait until the refresh is due; True when the TCP flow was lost first."""
        io = self.io
        refresh_at = io.now() + max(granted / 2, 1.0)
        flow = self.flow
        tcp = flow is not None and flow.transport == "tcp"
        next_ka = io.now() + self._keepalive()
        while not self._stopping:
            now = io.now()
            if now >= refresh_at:
                return False
            if tcp:
                assert flow is not None
                if not io.flow_alive(flow):
                    log.warning("trunk %s: connection to the registrar lost; registering again",
                                self.cfg.name)
                    self.flow = None
                    self.state.flow = None
                    return True
                if now >= next_ka:
                    io.send_raw(flow, PING)  # RFC 5626 §4.4.1: CRLF CRLF, the peer answers CRLF
                    next_ka = now + self._keepalive()
            await io.sleep(min(1.0, refresh_at - now))
        return False

    def _keepalive(self) -> float:
        if self.cfg.keepalive > 0:
            return self.cfg.keepalive
        return 120.0 * random.uniform(0.8, 1.0)  # RFC 5626 §4.4.1: 95-120 s
