"""``aliases``: extra names from ``[aliases]`` (and ``[groups]``) → their configured targets.

``[aliases]`` maps a name to one or more targets::

    sales = ["12", "13"]                 # a user in any of our domains → lines 12 and 13
    "info@example.com" = "sip:20@pbx.example.com;q=0.5"   # one exact AOR
    night = "<sip:+15551234@gw.example.com>;q=0.2"

A target is a line number (``sip:NN@realm``), a URI, or a Contact header value (with q).
Targets are returned as configured, never resolved further: the caller follows the redirect
and asks again. That is why loops are checked at load: an alias whose targets lead back to
itself (``a → sip:a@ours`` or ``a → b → a``) would bounce a caller between us forever, so it
is a ConfigError naming the cycle. A group number (``[groups.NNN]``) redirects to its members'
AORs, all with equal preference (the caller forks to them in parallel).
"""

from __future__ import annotations

from sipyard.config import Config, ConfigError
from sipyard.sip.errors import ParseError
from sipyard.sip.uri import SipUri, parse_uri

from ..contacts import Contact
from ..pipeline import ErrorDescriptor, RedirectContext, Redirector, Result, Services, line_aor
from ._rules import _norm_host

__all__ = ["Aliases"]

_Node = tuple[str, str]  # ("user", name) | ("aor", "user@host")


class Aliases(Redirector):
    name = "aliases"

    def __init__(self, config: Config, services: Services) -> None:
        super().__init__(config, services)
        self._file = str(config.path)
        self._ours = config.is_our_domain
        self._by_user: dict[str, tuple[Contact, ...]] = {}
        self._by_aor: dict[str, tuple[Contact, ...]] = {}
        for name, targets in config.aliases.items():
            key = f"aliases.{name}"
            if isinstance(targets, str):
                targets = (targets,)
            contacts = tuple(self._target(t, key) for t in targets)
            user, host = self._split_name(name, key)
            if host is None:
                self._by_user[user] = contacts
            else:
                self._by_aor[f"{user}@{host}"] = contacts
        for number, group in config.groups.items():
            if group.members and number not in self._by_user:
                self._by_user[number] = tuple(
                    Contact(line_aor(config, m), source="aliases") for m in group.members)
        self._check_loops()

    # -- load ---------------------------------------------------------------------------
    def _target(self, text: str, key: str) -> Contact:
        text = text.strip()
        if text.isdigit():
            text = line_aor(self.config, text)
        elif ":" not in text.split("@", 1)[0] and "@" in text and "<" not in text:
            text = f"sip:{text}"
        try:
            return Contact.parse(text, source="aliases")
        except ValueError as exc:
            raise ConfigError(self._file, key, f"bad target: {exc}") from None

    def _split_name(self, name: str, key: str) -> tuple[str, str | None]:
        text = name.strip()
        if not text:
            raise ConfigError(self._file, key, "empty alias name")
        if text.lower().startswith(("sip:", "sips:")):
            try:
                uri = parse_uri(text)
            except ParseError as exc:
                raise ConfigError(self._file, key, exc.reason) from None
            if not isinstance(uri, SipUri) or not uri.user:
                raise ConfigError(self._file, key, "an alias AOR needs a user part")
            return uri.user_unescaped or "", _norm_host(uri.host)
        user, at, host = text.rpartition("@")
        if not at:
            return text, None
        if not user or not host:
            raise ConfigError(self._file, key, "write an alias as NAME or NAME@DOMAIN")
        try:
            return user, _norm_host(host)
        except ValueError as exc:
            raise ConfigError(self._file, key, str(exc)) from None

    def _node_of(self, contact: Contact) -> _Node | None:
        """The alias a target names (if it is one of ours), for loop detection."""
        try:
            uri = parse_uri(contact.uri)
        except ParseError:
            return None
        if not isinstance(uri, SipUri) or uri.user is None:
            return None
        user = uri.user_unescaped or ""
        host = uri.host_lower.rstrip(".")
        if f"{user}@{host}" in self._by_aor:
            return ("aor", f"{user}@{host}")
        if user in self._by_user and self._ours(uri.host):
            return ("user", user)
        return None

    def _check_loops(self) -> None:
        nodes: dict[_Node, tuple[Contact, ...]] = {("user", u): c for u, c in self._by_user.items()}
        nodes.update({("aor", a): c for a, c in self._by_aor.items()})
        edges = {n: [m for c in cs if (m := self._node_of(c)) is not None]
                 for n, cs in nodes.items()}
        state: dict[_Node, int] = {}  # 1 = on the current path, 2 = done
        for start in edges:
            if state.get(start) == 2:
                continue
            path: list[_Node] = []
            stack: list[tuple[_Node, int]] = [(start, 0)]
            while stack:
                node, i = stack.pop()
                if i == 0:
                    state[node] = 1
                    path.append(node)
                nxt = edges.get(node, [])
                if i < len(nxt):
                    stack.append((node, i + 1))
                    m = nxt[i]
                    if state.get(m) == 1:
                        cycle = [*path[path.index(m):], m]
                        raise ConfigError(self._file, f"aliases.{cycle[0][1]}", "alias loop: " +
                                          " → ".join(n[1] for n in cycle))
                    if state.get(m) is None:
                        stack.append((m, 0))
                else:
                    state[node] = 2
                    path.pop()

    # -- requests ------------------------------------------------------------------------
    def process(self, ctx: RedirectContext) -> Result | ErrorDescriptor:
        target = ctx.target
        user = ctx.user
        if user is None:
            return Result.SUCCESS
        hit = None
        if self._by_aor:
            hit = self._by_aor.get(f"{user}@{target.host_lower.rstrip('.')}")
        if hit is None and self._by_user and user in self._by_user and self._ours(target.host):
            hit = self._by_user[user]
        if hit:
            add = ctx.contacts.add
            for c in hit:
                add(c)
        return Result.SUCCESS
