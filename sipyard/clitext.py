"""The texts the CLI prints, made from the ops' JSON documents.

Why apart from ``cli``: the same words answer an admin's ``/status`` over SIP
(:mod:`sipyard.handlers.admin`), so a person sees one format whichever way they ask,
and neither side can drift from the other. Pure functions of plain documents.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["table", "status_text", "registry_text", "calls_text", "reload_text",
           "runstate_text", "trunks_text"]


def table(rows: list[list[str]], header: list[str]) -> str:
    if not rows:
        return ""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _kv(d: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(d.items())) or "-"


def _trunk_state(t: dict[str, Any]) -> str:
    state = str(t.get("state"))
    if state == "failed" and t.get("last_status"):
        return f"failed {t['last_status']}"
    return state


def status_text(r: dict[str, Any]) -> str:
    up = int(r.get("uptime", 0))
    lines = [
        f"sipyard {r.get('version')}  pid {r.get('pid')}  up {up // 3600}h{up % 3600 // 60:02d}m{up % 60:02d}s",
        f"realm        {r.get('realm')}",
        f"listen       {', '.join(r.get('listen', []))}",
        f"run state    {r.get('state') or 'none'}",
        f"log level    {r.get('log_level')}",
        f"bindings     {r.get('bindings')}  (lines registered: {r.get('lines_registered')})",
        f"transactions {r.get('transactions')}  suspended requests {r.get('suspended')}",
        f"requests     {_kv(r.get('requests', {}))}",
        f"responses    {_kv(r.get('responses', {}))}",
        f"bans         {r.get('bans')}  auth failures {r.get('auth_failures')}",
        f"mode         {r.get('mode')}  calls {r.get('calls')}  cdr written {r.get('cdr_written')}",
    ]
    trunks = r.get("trunks") or []
    if trunks:
        lines.append("trunks       " + "  ".join(f"{t['name']}={_trunk_state(t)}" for t in trunks))
    return "\n".join(lines)


def registry_text(r: dict[str, Any]) -> str:
    rows = []
    for ln in r.get("lines", []):
        if not ln["bindings"]:
            rows.append([ln["line"], ln.get("display") or "", ln.get("presence") or "", "-",
                         "", "", "", ""])
        for b in ln["bindings"]:
            rows.append([ln["line"], ln.get("display") or "", ln.get("presence") or "",
                         b["contact"], b["source"], str(b["expires_in"]),
                         "" if b["q"] is None else str(b["q"]), b.get("user_agent", "")])
    text = table(rows, ["LINE", "DISPLAY", "PRESENCE", "CONTACT", "SOURCE", "EXPIRES", "Q",
                        "USER-AGENT"])
    return text or "no lines"


def calls_text(r: dict[str, Any]) -> str:
    rows = [[c["caller_line"] or c["caller"], c["callee_line"] or c["target"], c["state"],
             c["since"] or "", str(c["seconds"]), c.get("trunk") or ""]
            for c in r.get("calls", [])]
    return table(rows, ["CALLER", "CALLEE", "STATE", "SINCE", "SECONDS", "TRUNK"]) or "no calls"


def reload_text(r: dict[str, Any]) -> str:
    text = f"reloaded: {', '.join(r.get('files', []))} (run state {r.get('state') or 'none'})"
    if r.get("removed_lines"):
        text += f"\nremoved lines (bindings dropped): {', '.join(r['removed_lines'])}"
    return text


def runstate_text(reply: dict[str, Any], asked: str | None) -> str:
    st = reply.get("state") or "none"
    note = "" if reply.get("running", True) else " (server not running; recorded for its start)"
    if asked is None and not reply.get("running", True):
        note = " (server not running)"
    active = reply.get("active", reply.get("state"))
    if reply.get("running", True) and (active or None) != (reply.get("state") or None):
        note += f" (but the server runs with {active or 'none'}: it could not be applied)"
    return f"run state: {st}{note}"


def trunks_text(r: dict[str, Any], now: float | None = None) -> str:
    rows = []
    for t in r.get("trunks", []):
        exp = t.get("expires_in")
        retry = t.get("retry_in")
        rows.append([t["name"], t["registrar"], _trunk_state(t), t.get("transport") or "",
                     "" if exp is None else f"{exp}s",
                     "" if retry is None else f"{retry:g}s", t.get("last_error") or ""])
    _ = now if now is not None else time.time()
    return table(rows, ["TRUNK", "REGISTRAR", "STATE", "VIA", "EXPIRES", "RETRY", "LAST ERROR"]
                 ) or "no trunks configured"
