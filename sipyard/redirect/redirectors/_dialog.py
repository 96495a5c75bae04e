"""Finding a call through the dialog event package (RFC 4235), for pick-up and join.

How a search goes (sipX PickUp, without its flaws):
  1. First pass: the redirector starts a ``DialogSearch`` and returns SUSPEND.
  2. The search looks up the bindings of the lines concerned and sends each a
     ``SUBSCRIBE`` with ``Event: dialog``, ``Expires: 0`` (a fetch: one NOTIFY, no
     subscription), ``Accept: application/dialog-info+xml``, through the binding's Path.
     NOTIFYs reach it by Call-ID (``Services.register_notify``).
  3. It resumes the request when every binding has answered (a NOTIFY, or a failed
     SUBSCRIBE), or when its own timer (``[features] pickup_wait``) fires, whichever is first.
  4. Re-run: the redirector picks the best dialog, and *replaces* the contact set with the
     one target (or nothing) and seals it: a pick-up code that finds no call ends 404 and
     never reaches a dial rule or gateway (sipX XECS-64).
  ``cancel(seq)`` (and completion) unregister the NOTIFY callbacks, stop the timer and the
  task. Bodies are capped at ``MAX_BODY`` bytes and documents with a DTD are ignored, so a
  hostile phone cannot make the XML parser expand entities.
"""

from __future__ import annotations

import asyncio
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from sipyard.cluster.ownership import new_call_id
from sipyard.sip.errors import ParseError
from sipyard.sip.uri import SipUri, escape, parse_uri

from ..contacts import Contact
from ..pipeline import (
    BindingLike,
    ErrorDescriptor,
    RedirectContext,
    Redirector,
    Result,
    ResumeHandle,
    Services,
    line_aor,
)
from .registrations import HNV_SAFE

if TYPE_CHECKING:
    from sipyard.config import Config

__all__ = ["DialogInfo", "parse_dialog_info", "DialogSearch", "DialogFeature", "MAX_BODY",
           "dialog_contact"]

MAX_BODY: Final = 64 * 1024
_MAX_DIALOGS: Final = 64


@dataclass(frozen=True, slots=True)
class DialogInfo:
    """One ``<dialog>`` of a dialog-info document, from the notifying phone's point of view."""

    id: str
    call_id: str | None
    local_tag: str | None
    remote_tag: str | None
    direction: str | None  # "initiator" | "recipient"
    state: str  # trying, proceeding, early, confirmed, terminated
    duration: int  # seconds; -1 when absent
    remote_target: str | None
    remote_identity: str | None

    @property
    def remote_uri(self) -> str | None:
        return self.remote_target or self.remote_identity


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    for c in elem:
        if _local(c.tag) == name:
            return c
    return None


def parse_dialog_info(body: bytes) -> list[DialogInfo]:
    """The dialogs of an ``application/dialog-info+xml`` body; [] when unusable."""
    if not body or len(body) > MAX_BODY or b"<!" in body.replace(b"<![CDATA[", b""):
        return []  # too big, or a DTD / entity declaration: not worth the risk
    try:
        root = ET.fromstring(body)
    except (ET.ParseError, ValueError):
        return []
    if _local(root.tag) != "dialog-info":
        return []
    out: list[DialogInfo] = []
    for d in root:
        if _local(d.tag) != "dialog":
            continue
        state_el = _child(d, "state")
        state = (state_el.text or "").strip().lower() if state_el is not None else ""
        dur_el = _child(d, "duration")
        try:
            duration = int((dur_el.text or "").strip()) if dur_el is not None else -1
        except ValueError:
            duration = -1
        target = identity = None
        remote = _child(d, "remote")
        if remote is not None:
            t = _child(remote, "target")
            if t is not None:
                target = (t.get("uri") or "").strip() or None
            i = _child(remote, "identity")
            if i is not None:
                identity = (i.text or "").strip() or None
        out.append(DialogInfo(
            id=d.get("id", ""), call_id=d.get("call-id"), local_tag=d.get("local-tag"),
            remote_tag=d.get("remote-tag"), direction=d.get("direction"), state=state,
            duration=duration, remote_target=target, remote_identity=identity))
        if len(out) >= _MAX_DIALOGS:
            break
    return out


def dialog_contact(d: DialogInfo, header: str, require: str, *, early_only: bool) -> str | None:
    """The target URI with ``?<header>=<call-id>;to-tag=…;from-tag=…&Require=<require>``.

    The INVITE goes to the *other* end of the dialog, so its To tag is the dialog's remote
    tag and its From tag our phone's local tag. The value is escaped as a URI header value
    (``;`` → ``%3B``, ``=`` → ``%3D``, ``@`` → ``%40``).
    """
    uri_text = d.remote_uri
    if not uri_text or not d.call_id or not d.local_tag or not d.remote_tag:
        return None
    try:
        uri = parse_uri(uri_text)
    except ParseError:
        return None
    if not isinstance(uri, SipUri):
        return None
    if uri.headers:
        uri = uri.replace(headers=[])
    value = (f"{escape(d.call_id, HNV_SAFE)}%3Bto-tag%3D{escape(d.remote_tag, HNV_SAFE)}"
             f"%3Bfrom-tag%3D{escape(d.local_tag, HNV_SAFE)}")
    if early_only:
        value += "%3Bearly-only"
    return f"{uri}?{header}={value}&Require={require}"


class DialogSearch:
    """The async part of one search for one request (see the module docstring)."""

    def __init__(self, owner: DialogFeature, seq: int, lines: Sequence[str],
                 resume: ResumeHandle) -> None:
        self.owner = owner
        self.seq = seq
        self.lines = tuple(lines)
        self._resume = resume
        self.dialogs: list[DialogInfo] = []
        self.done = False
        self._call_ids: list[str] = []
        self._waiting: set[str] = set()
        loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = loop.call_later(owner.wait, self.finish)
        self._task: asyncio.Task[None] | None = loop.create_task(self._run())

    async def _run(self) -> None:
        owner = self.owner
        services = owner.services
        try:
            found = await asyncio.gather(
                *(services.lookup(line_aor(owner.config, line)) for line in self.lines))
            subs: list[tuple[str, BindingLike]] = []
            for bindings in found:
                for b in bindings:
                    call_id = new_call_id("@sipyard", 10)  # its NOTIFYs reach this worker
                    self._call_ids.append(call_id)
                    self._waiting.add(call_id)
                    services.register_notify(call_id, self._notify_handler(call_id))
                    subs.append((call_id, b))
            if not subs:
                self.finish()
                return
            results = await asyncio.gather(*(self._subscribe(c, b) for c, b in subs),
                                           return_exceptions=True)
            for (call_id, b), status in zip(subs, results, strict=True):
                if isinstance(status, BaseException) or not 200 <= status < 300:
                    owner.log.info("%s: SUBSCRIBE to %s: %s", owner.name, b.contact,
                                   status if isinstance(status, int) else repr(status))
                    self._answered(call_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            owner.log.exception("%s: dialog search failed", owner.name)
            self.finish()
        finally:
            self._task = None

    async def _subscribe(self, call_id: str, b: BindingLike) -> int:
        owner = self.owner
        headers: list[tuple[str, str]] = [
            ("From", f"<{owner.agent}>;tag={secrets.token_hex(4)}"),
            ("To", f"<{b.aor}>"),
            ("Call-ID", call_id),
            ("Event", "dialog"),
            ("Expires", "0"),
            ("Accept", "application/dialog-info+xml"),
        ]
        if b.path:
            headers.append(("Route", ", ".join(b.path)))
        dest = (b.source_ip, b.source_port, b.transport) if b.source_ip else None
        return await owner.services.send_request("SUBSCRIBE", b.contact, dest=dest,
                                                 headers=headers, body=b"")

    def _notify_handler(self, call_id: str) -> Any:
        def on_notify(request: Any) -> None:
            self.on_notify(call_id, request)
        return on_notify

    def on_notify(self, call_id: str, request: Any) -> None:
        if self.done:
            return
        ctype = (request.get("content-type") or "").lower()
        if not ctype or "dialog-info+xml" in ctype:
            body = request.body
            room = _MAX_DIALOGS - len(self.dialogs)
            if room > 0:
                self.dialogs.extend(parse_dialog_info(bytes(body))[:room])
        self._answered(call_id)

    def _answered(self, call_id: str) -> None:
        # Every Call-ID is registered (synchronously) before the first SUBSCRIBE goes out,
        # so an empty waiting set means every binding has answered.
        self._waiting.discard(call_id)
        if not self._waiting:
            self.finish()

    def finish(self) -> None:
        """Stop waiting and resume the request (idempotent)."""
        if self.done:
            return
        self.done = True
        self.close()
        self._resume()

    def close(self) -> None:
        """Drop the timer, the task and every NOTIFY route (idempotent)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._task = None
        for call_id in self._call_ids:
            self.owner.services.unregister_notify(call_id)
        self._call_ids = []
        self._waiting.clear()


class DialogFeature(Redirector):
    """Base of the feature codes answered by finding a dialog (pick-up, join)."""

    #: ``[features]`` key of the code.
    feature: ClassVar[str] = ""
    #: dialog state wanted: "early" (pick-up) or "confirmed" (join).
    want_state: ClassVar[str] = "early"
    #: only dialogs the phone received (a pick-up takes an incoming call).
    recipient_only: ClassVar[bool] = True
    header: ClassVar[str] = "Replaces"
    require: ClassVar[str] = "replaces"
    early_only: ClassVar[bool] = True

    def __init__(self, config: Config, services: Services) -> None:
        super().__init__(config, services)
        features = config.features
        self.code: str | None = getattr(features, self.feature, None) if self.feature else None
        self.wait = float(features.pickup_wait)
        agent = features.pickup_agent or config.server.system
        self.agent = agent if ":" in agent else f"sip:{agent}@{config.server.realm}"
        self._searches: dict[int, DialogSearch] = {}

    def lines_for(self, ctx: RedirectContext) -> list[str] | None:
        """The lines to search, or None when the request is not for this feature.

        Default: ``<code><line>`` in one of our domains; a number that is not a line → [].
        """
        code = self.code
        user = ctx.user
        if not code or not user or not user.startswith(code) or len(user) == len(code):
            return None
        if not self.config.is_our_domain(ctx.target.host):
            return None
        line = user[len(code):]
        return [line] if line in self.config.lines else []

    def process(self, ctx: RedirectContext) -> Result | ErrorDescriptor:
        lines = self.lines_for(ctx)
        if lines is None:
            return Result.SUCCESS
        slot = ctx.storage
        search: DialogSearch | None = slot.get()
        if search is None and lines:
            search = DialogSearch(self, ctx.seq, lines, ctx.resume_handle())
            slot.set(search)
            self._searches[ctx.seq] = search
            return Result.SUSPEND
        if search is not None and not search.done:
            return Result.SUSPEND  # re-run for another redirector; ours still waits
        contacts = ctx.contacts
        contacts.clear()
        best = self.pick(search.dialogs) if search is not None else None
        if best is not None:
            uri = dialog_contact(best, self.header, self.require, early_only=self.early_only)
            if uri is not None:
                contacts.add(Contact(uri, source=self.name))
        contacts.seal(self.name)
        if search is not None:
            self.cancel(ctx.seq)
        return Result.SUCCESS

    def pick(self, dialogs: Sequence[DialogInfo]) -> DialogInfo | None:
        """The longest-running usable dialog in the wanted state (first one on ties)."""
        best: DialogInfo | None = None
        for d in dialogs:
            if d.state != self.want_state or not d.call_id or not d.local_tag \
                    or not d.remote_tag or not d.remote_uri:
                continue
            if self.recipient_only and d.direction != "recipient":
                continue
            if best is None or d.duration > best.duration:
                best = d
        return best

    def cancel(self, seq: int) -> None:
        search = self._searches.pop(seq, None)
        if search is not None:
            if not search.done:
                self.log.debug("%s: seq %d: dialog search stopped before it finished",
                               self.name, seq)
            search.close()

    def close(self) -> None:
        for seq in list(self._searches):
            self.cancel(seq)
