"""Chat commands through the wire: a MESSAGE to ``sip:system@REALM`` runs ``chat/WORD``.

A real ``sipyard serve`` with the shipped example commands (``examples/hooks/chat/*``) copied
into its hooks dir, plus a few test commands: ``dump`` saves its raw stdin, ``probe`` leaves a
file behind, ``badout`` prints bytes that are not UTF-8, ``fail`` exits 3 and ``slow`` never
ends. The server answers the MESSAGE 202 and sends each reply line back as a MESSAGE of its
own to the sender's bindings.

Two clients: SIPp (``scenarios/chat_send.xml`` + the out-of-call ``chat_reply.xml``) for the
plain commands, and a small Python phone (:class:`Phone`) where the test needs exact bytes in
the body — a bare LF, a CR, bytes that are not UTF-8 — which SIPp would rewrite (it turns LF
into CRLF in what it sends).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import require_tool
from support import (
    PASSWORDS,
    ROOT,
    Server,
    UdpClient,
    auth_header,
    free_port,
    header_values,
    register,
    sip_request,
    status_of,
)

from sipyard.hooks import decode_record

pytestmark = pytest.mark.interop

REALM = "sipyard.test"
SYSTEM = f"sip:system@{REALM}"
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
EXAMPLES = ROOT / "examples" / "hooks" / "chat"
MAX_LINE, MAX_LINES = 160, 5


# -- server -----------------------------------------------------------------------------------


def write_hook(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.fixture
def server(start_server: Callable[..., Server], tmp_path: Path, out: Path) -> Server:
    chat = tmp_path / "hooks" / "chat"
    shutil.copytree(EXAMPLES, chat)
    write_hook(chat / "dump", f"""\
cat >{out}/chat.$$.tmp && mv {out}/chat.$$.tmp {out}/chat.$$.rec
echo dumped
""")
    write_hook(chat / "probe", f": >{out}/probe.$$\necho probed\n")
    write_hook(chat / "badout", "printf 'ok \\377\\376 end\\n'\n")
    write_hook(chat / "fail", "echo 'this is not sent' ; exit 3\n")
    write_hook(chat / "slow", "exec sleep 1000\n")
    return start_server("chat", realm=REALM, server={"hooks_dir": str(tmp_path / "hooks")},
                        hooks={"timeout": 1.5})


def dumps(out: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(out.glob("chat.*.rec"))]


# -- the Python phone ---------------------------------------------------------------------------


def answer(request: bytes) -> bytes:
    lines = ["SIP/2.0 200 OK"]
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for v in header_values(request, name):
            lines.append(f"{name}: {v};tag=phone" if name == "To" and ";tag=" not in v
                         else f"{name}: {v}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Phone:
    """A registered line on one UDP socket: sends chat MESSAGEs, answers the replies 200."""

    def __init__(self, server: Server, line: str) -> None:
        self.line = line
        self.client = UdpClient(server.addr)
        assert status_of(register(self.client, line, realm=REALM)) == 200
        self.inbox: dict[str, bytes] = {}  # Call-ID -> MESSAGE (retransmissions counted once)

    def close(self) -> None:
        self.client.close()

    def _take(self, data: bytes) -> None:
        self.client.send(answer(data))
        self.inbox.setdefault(header_values(data, "Call-ID")[0], data)

    def _response(self, timeout: float = 3.0) -> bytes | None:
        """The next final response; requests that arrive meanwhile are answered and kept."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            data = self.client.recv(left)
            if data is None:
                return None
            if data.startswith(b"MESSAGE "):
                self._take(data)
            elif status_of(data) >= 200:
                return data
        return None

    def send(self, body: bytes, *, authenticate: bool = True, password: str | None = None,
             content_type: str = "text/plain;charset=UTF-8") -> int:
        """MESSAGE ``body`` to the system identity; answers a 401 once. The final status."""
        call_id = uuid.uuid4().hex
        frm = f"<sip:{self.line}@{REALM}>"

        def request(cseq: int, extra: list[tuple[str, str]]) -> bytes:
            return sip_request("MESSAGE", SYSTEM, frm=frm, call_id=call_id, cseq=cseq,
                               headers=[("Content-Type", content_type), *extra], body=body,
                               local_port=self.client.port)

        self.client.send(request(1, []))
        r = self._response()
        if status_of(r) == 401 and authenticate:
            assert r is not None
            auth = auth_header(r, self.line, password or PASSWORDS[self.line], "MESSAGE", SYSTEM)
            self.client.send(request(2, [("Authorization", auth)]))
            r = self._response()
        return status_of(r)

    def replies(self, count: int, timeout: float = 5.0, quiet: float = 0.4) -> list[str]:
        """The bodies of the next ``count`` MESSAGEs, in arrival order, after waiting
        ``quiet`` more seconds for any further ones (which would be a failure to cap)."""
        self.inbox.clear()
        deadline = time.monotonic() + timeout
        while len(self.inbox) < count and (left := deadline - time.monotonic()) > 0:
            data = self.client.recv(left)
            if data is not None and data.startswith(b"MESSAGE "):
                self._take(data)
        end = time.monotonic() + quiet
        while (left := end - time.monotonic()) > 0:
            data = self.client.recv(left)
            if data is not None and data.startswith(b"MESSAGE "):
                self._take(data)
        bodies = []
        for msg in self.inbox.values():
            assert header_values(msg, "From")[0].startswith(f"<{SYSTEM}>"), msg[:300]
            bodies.append(msg.split(b"\r\n\r\n", 1)[1].decode("utf-8"))  # strict: valid UTF-8
        return bodies

    def chat(self, body: bytes | str, count: int = 1) -> list[str]:
        data = body.encode() if isinstance(body, str) else body
        assert self.send(data) == 202
        return self.replies(count)


@pytest.fixture
def phone(server: Server) -> Iterator[Callable[[str], Phone]]:
    made: list[Phone] = []

    def make(line: str) -> Phone:
        p = Phone(server, line)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


# -- SIPp ---------------------------------------------------------------------------------------


def sipp_chat(server: Server, tmp: Path, line: str, text: str) -> list[str]:
    """Register ``line`` with SIPp, chat ``text`` (401 answered, 202 expected) and return the
    reply bodies its out-of-call scenario logged."""
    exe = require_tool("sipp")
    log, err = tmp / f"sipp-{uuid.uuid4().hex[:6]}.log", tmp / "sipp-errors.log"
    r = subprocess.run(
        [exe, "-sf", str(SCENARIOS / "chat_send.xml"), "-oocsf", str(SCENARIOS / "chat_reply.xml"),
         "-key", "line", line, "-key", "realm", REALM, "-key", "text", text,
         "-au", line, "-ap", PASSWORDS[line], "-d", "800", "-m", "1",
         "-i", "127.0.0.1", "-p", str(free_port()), f"127.0.0.1:{server.port}",
         "-trace_logs", "-log_file", str(log), "-trace_err", "-error_file", str(err),
         "-timeout", "15s", "-timeout_error", "-nostdin"],
        capture_output=True, text=True, timeout=30, cwd=tmp)
    errors = err.read_text(errors="replace") if err.exists() else ""
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:] + errors
    assert "Failed regexp match" not in errors, errors
    return [ln[len("reply: "):] for ln in log.read_text().splitlines() if ln.startswith("reply: ")]


def test_sipp_echo_hi_there_comes_back(server: Server, tmp_path: Path) -> None:
    assert sipp_chat(server, tmp_path, "11", "/echo hi there") == ["hi there"]


def test_sipp_unknown_command_gets_the_help_reply(server: Server, tmp_path: Path) -> None:
    (reply,) = sipp_chat(server, tmp_path, "11", "/nosuch")
    assert reply.startswith("unknown command /nosuch")
    assert "/help" in reply
    for name in ("door", "echo", "time"):  # the installed commands are listed
        assert name in reply
    assert sipp_chat(server, tmp_path, "12", "/help") == [
        "commands: /badout /door /dump /echo /fail /probe /slow /time /help"]


def test_shipped_time_and_door_answer(phone: Callable[[str], Phone]) -> None:
    p = phone("14")
    (now,) = p.chat("/time")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+", now), now
    assert p.chat("/door") == ["door: would open door for line 14"]
    assert p.chat("/echo") == ["usage: /echo TEXT"]


# -- who may chat -------------------------------------------------------------------------------


def test_unauthenticated_sender_is_challenged_and_runs_nothing(
        server: Server, phone: Callable[[str], Phone], out: Path) -> None:
    p = phone("12")
    assert p.send(b"/probe", authenticate=False) == 401
    assert p.send(b"/probe", password="wrong-password") == 401
    stranger = UdpClient(server.addr)  # never registered, never authenticated
    try:
        r = stranger.request(sip_request("MESSAGE", SYSTEM, frm="<sip:99@127.0.0.1>",
                                         headers=[("Content-Type", "text/plain")],
                                         body=b"/probe", local_port=stranger.port))
        assert status_of(r) == 401 and r is not None
        assert header_values(r, "WWW-Authenticate")
    finally:
        stranger.close()
    assert p.replies(0, quiet=0.8) == []  # no reply of any kind
    assert not list(out.glob("probe.*"))
    assert json.loads(server.cli("status", "--json").stdout)["hooks"]["started"] == 0

    assert p.chat("/probe") == ["probed"]  # the same command, authenticated, does run
    assert len(list(out.glob("probe.*"))) == 1


# -- data only ----------------------------------------------------------------------------------


def test_newline_or_equals_in_the_text_cannot_inject_a_key(
        phone: Callable[[str], Phone], out: Path) -> None:
    p = phone("11")
    assert p.chat("/dump a=b") == ["dumped"]
    assert p.chat(b"/dump x\nline=99") == ["dumped"]
    assert p.chat(b"/dump a\rline=98\r\n") == ["dumped"]  # the client's line end is dropped
    assert p.chat(b"/dump back\\nslash") == ["dumped"]
    first, lf, cr, backslash = dumps(out)

    for raw in (first, lf, cr, backslash):
        lines = raw.decode().split("\n")
        assert lines[-1] == ""  # every line ends with LF
        keys = [ln.split("=", 1)[0] for ln in lines[:-1]]
        assert sorted(keys) == ["args", "command", "display", "event", "line", "time"]
        assert [ln for ln in lines if ln.startswith("line=")] == ["line=11"]
    assert b"\nargs=a=b\n" in first and decode_record(first)["args"] == "a=b"
    assert b"\nargs=x\\nline=99\n" in lf and decode_record(lf)["args"] == "x\nline=99"
    assert b"\nargs=a\\rline=98\n" in cr and decode_record(cr)["args"] == "a\rline=98"
    assert b"\nargs=back\\\\nslash\n" in backslash
    assert decode_record(backslash)["args"] == "back\\nslash"
    assert decode_record(lf)["command"] == "dump" and decode_record(lf)["event"] == "chat"

    # The shipped echo undoes the escaping exactly: a LF is a second reply line.
    assert p.chat(b"/echo x\nline=99", count=2) == ["x", "line=99"]
    assert p.chat(b"/echo back\\nslash") == ["back\\nslash"]
    assert p.chat("/Echo a=b") == ["a=b"]  # the word is lower-cased, the args kept


def test_shell_metacharacters_are_plain_text(
        phone: Callable[[str], Phone], tmp_path: Path, out: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    text = f"$(id); rm -rf {victim}; `touch {tmp_path}/pwned` | cat /etc/passwd && '\"$HOME"
    assert len(text) > MAX_LINE
    p = phone("11")
    assert p.chat("/echo " + text) == [text[:MAX_LINE]]
    assert p.chat("/dump " + text) == ["dumped"]
    assert decode_record(dumps(out)[0])["args"] == text
    assert victim.is_dir() and not (tmp_path / "pwned").exists()
    assert p.chat("/../../bin/sh -c id") == [
        "unknown command /../../bin/sh — try /help: badout, door, dump, echo, fail, probe, "
        "slow, time"]


def test_long_text_is_cut_to_160_characters_and_5_lines(phone: Callable[[str], Phone]) -> None:
    p = phone("11")
    assert p.chat("/echo " + "A" * 10240) == ["A" * MAX_LINE]
    assert p.chat("/echo " + "é" * 5000) == ["é" * MAX_LINE]  # characters, not bytes
    many = "\n".join(f"{i:02d}" + "B" * 498 for i in range(20))  # 20 lines, 10 KB
    got = p.chat("/echo " + many, count=MAX_LINES)
    assert got == [f"{i:02d}" + "B" * (MAX_LINE - 2) for i in range(MAX_LINES)]


def test_bytes_that_are_not_utf8_are_replaced_not_fatal(
        server: Server, phone: Callable[[str], Phone], out: Path) -> None:
    p = phone("11")
    assert p.chat(b"/dump \xff\xfe\x80ok\xc3") == ["dumped"]
    assert decode_record(dumps(out)[0])["args"] == "\ufffd\ufffd\ufffdok\ufffd"
    assert p.chat(b"/echo \xff\xfe\x80ok\xc3") == ["\ufffd\ufffd\ufffdok\ufffd"]
    assert p.chat("/badout") == ["ok \ufffd\ufffd end"]  # the script's own output
    assert p.chat(b"/dump \x00nul\x01") == ["dumped"]
    assert decode_record(dumps(out)[1])["args"] == "\x00nul\x01"  # control bytes are data too
    assert p.chat(b"/echo \x00nul\x01") == ["nul\x01"]  # sh's read drops the NUL itself
    assert p.chat("/echo still here") == ["still here"]
    assert server.proc is not None and server.proc.poll() is None
    assert "Traceback" not in server.log()


def test_failing_hanging_and_odd_requests_get_short_answers(
        server: Server, phone: Callable[[str], Phone]) -> None:
    p = phone("11")
    assert p.chat("/fail") == ["/fail failed (exit 3)"]
    t0 = time.monotonic()
    assert p.chat("/slow") == ["/slow timed out"]
    assert 1.4 <= time.monotonic() - t0 <= 5.0
    assert p.chat("hello") == ["chat commands start with / — try /help"]
    assert p.send(b"<b>/echo</b>", content_type="text/html") == 415
    assert p.replies(0) == []


def test_reply_lines_are_not_held_up_by_a_dead_binding(
        server: Server, phone: Callable[[str], Phone]) -> None:
    """Line 13 is registered from two phones; one is gone (its socket closed, as a phone that
    lost power). The live one must get every reply line at once, not one per 32 s."""
    live, dead = phone("13"), phone("13")
    dead.close()
    assert live.send(b"/echo one\ntwo") == 202
    assert live.replies(2, timeout=4.0) == ["one", "two"]
