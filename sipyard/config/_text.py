"""Text checks shared by the records, the validators and the editor.

Kept at the bottom of the package and free of records, so ``Ranges`` and ``Config`` can use
them without an import cycle: they take strings and answer plain values or ``ValueError``
(the caller knows which file and key to blame).
"""

from __future__ import annotations

import contextlib
import ipaddress
import zoneinfo


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host without brackets, port); shared by listen and
    metrics so both accept the same spellings."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("unclosed '['")
        host, port_s = text[1:end], text[end + 1:]
        if not port_s.startswith(":"):
            raise ValueError("expected :PORT after ']'")
        port_s = port_s[1:]
        try:
            host = ipaddress.IPv6Address(host).compressed
        except ValueError:
            raise ValueError(f"bad IPv6 address {host!r}") from None
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise ValueError("expected HOST:PORT")
        if ":" in host:
            raise ValueError("IPv6 addresses need brackets, as in udp:[::1]:5060")
        host = check_hostname(host)
    if not is_number(port_s) or int(port_s) > 65535:
        raise ValueError(f"bad port {port_s!r}")
    return host, int(port_s)


def check_hostname(host: str) -> str:
    if host.replace(".", "").isdigit():
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(f"bad IPv4 address {host!r}") from None
    labels = host.lower().split(".")
    if not host or len(host) > 253 or not all(
        0 < len(lb) < 64 and lb.isascii() and lb.replace("-", "").isalnum() for lb in labels
    ):
        raise ValueError(f"bad host name {host!r}")
    return host.lower()


def is_number(text: str) -> bool:
    """Canonical decimal: ASCII digits, no sign, no leading zero (SIP users are strings)."""
    return text.isascii() and text.isdigit() and (text == "0" or text[0] != "0")


def norm_host(host: str) -> str:
    """One spelling per host (lower case, no brackets or trailing dot, compressed IPv6), so
    a domain set answers membership with a plain ``in``."""
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    h = h.removesuffix(".")
    if ":" in h:
        with contextlib.suppress(ValueError):
            h = ipaddress.IPv6Address(h).compressed
    return h


def valid_zone(name: str) -> bool:
    """Checked at load so a typo in a zone fails the reload, not the first time rule."""
    if name == "UTC":
        return True  # valid even on a host without tzdata
    try:
        zoneinfo.ZoneInfo(name)
    except (KeyError, ValueError, OSError):
        return False
    return True


def check_hex(value: str, length: int) -> str:
    """A stored HA1 in one case, so the digest code can compare strings directly."""
    text = value.strip().lower()
    if len(text) != length or not all(c in "0123456789abcdef" for c in text):
        raise ValueError(f"must be {length} hexadecimal digits")
    return text
