"""libexec hooks: run the site's executables on server events, and chat commands.

DESIGN §7. The hooks dir (``[server] hooks_dir``, default ``/usr/libexec/sipyard``) holds
executables with fixed names:

=============  ==========================================================================
``activate``   a line's first binding appeared
``release``    a line's last binding expired or was removed
``state``      the run state changed
``reload``     the configuration was reloaded
``cdr``        a call ended (defined now; fired by the proxy later)
``chat/WORD``  a chat command ``/WORD`` sent by an authenticated line (see ``ChatService``)
=============  ==========================================================================

Each run gets one record on stdin: ``key=value`` lines, one per key, each ended by LF. Keys
match ``[a-z_][a-z0-9_]*``. In values ``\\`` is sent as ``\\\\``, LF as ``\\n`` and CR as
``\\r``; nothing else is escaped. So a value can never start a line of its own (a newline in a
User-Agent cannot forge ``line=…``), spaces and further ``=`` arrive as they are, and a shell
script gets a value back with ``printf '%b' "$v"``. ``event`` comes first, then ``time``
(ISO 8601 UTC, ``2024-05-01T12:00:00Z``), then the event's own keys; a key whose value is
unknown (None) is left out. Keys sent today (examples/hooks/README.md is the reference):

- activate / release: ``line``, ``display``; activate adds ``contact``, ``source``
  (``ip:port/transport``), ``user_agent``, ``expires`` (seconds); release adds ``reason``
  (``expired``, ``unregistered``, ``removed``).
- state: ``state``, ``previous`` (``none`` when there is no run state). reload: ``state``.
- chat: ``command``, ``args``, ``line``, ``display``.

Why the process runs the way it does: a hook is the site's code, run with the server's
rights, fed with data from the network. It is exec'd directly (argv = [path], never a shell),
with a minimal environment (``PATH``, ``LANG``, ``SIPYARD_EVENT`` plus what the app passes in
``env_extra``: ``SIPYARD_DATA``, ``SIPYARD_CONTROL``), in a session of its own so that a
timeout kills everything it started (SIGTERM to the group, SIGKILL after a grace). The SIP
side never waits: ``fire()`` only queues; at most ``max_running`` hooks run at once and at
most ``queue`` wait, the rest are dropped and counted.

Not thread-safe: call everything from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import stat
import textwrap
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

__all__ = [
    "DEFAULT_MAX_RUNNING",
    "DEFAULT_QUEUE",
    "DEFAULT_TIMEOUT",
    "EVENTS",
    "ChatService",
    "HookResult",
    "HookRunner",
    "Outcome",
    "Value",
    "decode_record",
    "encode_record",
    "iso_time",
]

EVENTS = ("activate", "release", "state", "reload", "cdr", "chat")
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_RUNNING = 4
DEFAULT_QUEUE = 256

Value = str | int | float | None

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
STDOUT_CAP = 64 * 1024  # enough for any reply; a runaway printer is drained, not stored
STDERR_CAP = 4 * 1024
STDERR_LOG_LINES = 5
STDERR_LOG_CHARS = 200

_KEY = re.compile(r"[a-z_][a-z0-9_]*")
_NAME = re.compile(r"[a-z0-9_-]{1,32}")  # an event name or a chat word: never "..", never "/"
_UNESCAPE = re.compile(r"\\([\\nr])")
_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r"})
_UNESCAPES = {"\\": "\\", "n": "\n", "r": "\r"}
_LOG_SAFE = {c: "?" for c in range(32) if c != 9} | {127: "?"}
#: how many hook names (and missing hooks) find() remembers: chat words come from the network
_MAX_REMEMBERED = 256


# --- records ---------------------------------------------------------------------------


def iso_time(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC (``2024-05-01T12:00:00Z``): what a shell's ``date -u`` reads."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(value: str | int | float) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):  # str(True) would be "True": give the shell something testable
        return "1" if value else "0"
    return str(value)


def encode_record(record: Mapping[str, Value]) -> bytes:
    """One record as ``key=value`` lines, values escaped so a newline can never forge a key.

    ValueError for a key outside ``[a-z_][a-z0-9_]*`` (keys come from our code, so a bad one
    is a bug to surface, not data to pass on). None values are left out. Text that cannot be
    UTF-8 (lone surrogates) is sent as the bytes ``surrogateescape`` gives back, else ``?``.
    """
    parts: list[str] = []
    for key, value in record.items():
        if _KEY.fullmatch(key) is None:
            raise ValueError(f"bad record key {key!r}")
        if value is None:
            continue
        parts.append(f"{key}={_text(value).translate(_ESCAPES)}\n")
    text = "".join(parts)
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def decode_record(data: bytes) -> dict[str, str]:
    """Inverse of ``encode_record`` (for tests and Python hooks); ValueError on a bad line."""
    record: dict[str, str] = {}
    for line in data.decode("utf-8", "surrogateescape").split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or _KEY.fullmatch(key) is None:
            raise ValueError(f"bad record line {line[:80]!r}")
        record[key] = _UNESCAPE.sub(lambda m: _UNESCAPES[m.group(1)], value)
    return record


# --- results ---------------------------------------------------------------------------


class Outcome(StrEnum):
    """How a run ended."""

    OK = "ok"  # exited 0
    FAILED = "failed"  # exited non-zero, died of a signal, could not be exec'd, or cancelled
    TIMED_OUT = "timed_out"  # killed by us after the timeout
    MISSING = "missing"  # no such hook, or not an executable file
    DROPPED = "dropped"  # the queue was full or the runner closed


@dataclass(frozen=True, slots=True)
class HookResult:
    """The end of one run. ``returncode`` is None when no exit status was seen (never ran,
    or killed by us); negative is the signal that ended it (asyncio's convention)."""

    name: str
    outcome: Outcome
    returncode: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def timed_out(self) -> bool:
        return self.outcome is Outcome.TIMED_OUT


@dataclass(slots=True)
class _Job:
    name: str
    path: str
    data: bytes
    env: dict[str, str]
    future: asyncio.Future[HookResult] | None = None


# --- runner ----------------------------------------------------------------------------


def _check_name(name: str) -> None:
    """Hook names cannot leave the hooks dir: ``WORD`` or ``chat/WORD``, WORD ``[a-z0-9_-]{1,32}``."""
    word = name[5:] if name.startswith("chat/") else name
    if _NAME.fullmatch(word) is None:
        raise ValueError(f"bad hook name {name!r}")


class HookRunner:
    """Runs hooks off the SIP path: sync ``fire`` to queue, bounded workers, a timeout each."""

    def __init__(
        self,
        hooks_dir: Path,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_running: int = DEFAULT_MAX_RUNNING,
        queue: int = DEFAULT_QUEUE,
        env_extra: Mapping[str, str] = {},  # noqa: B006 - read only
        kill_grace: float = 2.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self._log = logger or logging.getLogger("sipyard.hooks")
        self._kill_grace = kill_grace
        self._pending: deque[_Job] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._warned: set[str] = set()
        self._overflowing = False
        self._counts = dict.fromkeys(("started", "finished", "failed", "timed_out", "dropped"), 0)
        self._running = 0
        self._peak = 0
        self.update(hooks_dir, timeout, max_running, queue, env_extra=env_extra)

    # configuration

    def update(
        self,
        hooks_dir: Path,
        timeout: float,
        max_running: int,
        queue: int,
        *,
        env_extra: Mapping[str, str] | None = None,
    ) -> None:
        """Take a reloaded config. Queued jobs stay queued (and keep the path they were
        resolved to); running ones finish under the old timeout."""
        if timeout <= 0 or max_running < 1 or queue < 0:
            raise ValueError("hooks: timeout > 0, max_running >= 1, queue >= 0")
        self._dir = Path(hooks_dir).absolute()
        self._paths: dict[str, str] = {}
        #: hooks found missing, with their directory's mtime then (see find)
        self._missing: dict[str, int] = {}
        self._timeout = float(timeout)
        self._max_running = max_running
        self._queue = queue
        if env_extra is not None:
            self._env = {"PATH": BASE_PATH, "LANG": "C.UTF-8", **env_extra}
        self._warned.clear()
        self._pump()

    @property
    def hooks_dir(self) -> Path:
        return self._dir

    # lookup

    def find(self, name: str) -> str | None:
        """The hook's path if it is an executable file, else None.

        Missing is the normal case (a site installs only the hooks it wants): debug only. A
        file that exists but cannot run is a mistake worth one warning, not one per event.
        """
        path = self._paths.get(name)
        if path is None:  # checked and joined once per name: this runs for every event
            _check_name(name)
            path = os.path.join(self._dir, name)
            # chat words come from the network: only so many names are remembered
            if len(self._paths) < _MAX_REMEMBERED:
                self._paths[name] = path
        # A hook found missing stays missing until its directory changes (a file
        # created, renamed or removed there moves the directory's mtime): one stat
        # of the directory instead of a failed stat and its exception per event.
        # The directory is read first, so a hook installed in between is not missed.
        folder = os.path.dirname(path)
        try:
            mtime = os.stat(folder).st_mtime_ns
        except OSError:
            return None  # no hooks directory: nothing installed
        if self._missing.get(path) == mtime:
            return None
        try:
            st = os.stat(path)
        except OSError:
            # not when the directory changed within the last second: a file created in
            # the same clock tick (file systems stamp a few ms coarse) moves no mtime
            if len(self._missing) < _MAX_REMEMBERED and time.time_ns() - mtime > 1_000_000_000:
                self._missing[path] = mtime
            self._log.debug("hook %s: not installed", name)
            return None
        self._missing.pop(path, None)
        if stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK):
            return path
        if path not in self._warned:
            self._warned.add(path)
            self._log.warning("hook %s: %s is not an executable file; ignored", name, path)
        return None

    def installed(self, subdir: str) -> list[str]:
        """Names of the executables in ``hooks_dir/subdir`` that are valid hook words, sorted."""
        _check_name(subdir)
        try:
            entries = list(os.scandir(self._dir / subdir))
        except OSError:
            return []
        names = []
        for entry in entries:
            with contextlib.suppress(OSError):
                if (
                    _NAME.fullmatch(entry.name)
                    and entry.is_file()
                    and os.access(entry.path, os.X_OK)
                ):
                    names.append(entry.name)
        return sorted(names)

    # queueing

    def _job(self, name: str, path: str, record: Mapping[str, Value]) -> _Job:
        event = "chat" if name.startswith("chat/") else name
        full: dict[str, Value] = {"event": event, "time": None}
        full.update(record)
        full["event"] = event
        when = full["time"]
        if when is None or isinstance(when, (int, float)):
            full["time"] = iso_time(time.time() if when is None else float(when))
        return _Job(name, path, encode_record(full), {**self._env, "SIPYARD_EVENT": event})

    def fire(self, name: str, record: Mapping[str, Value]) -> bool:
        """Queue a run and return at once; False when the hook is missing or was dropped."""
        path = self.find(name)
        if path is None:
            return False
        return self._enqueue(self._job(name, path, record))

    async def run(self, name: str, record: Mapping[str, Value]) -> HookResult:
        """Run through the same queue and limits, and wait for the result."""
        path = self.find(name)
        if path is None:
            return HookResult(name, Outcome.MISSING)
        job = self._job(name, path, record)
        job.future = asyncio.get_running_loop().create_future()
        if not self._enqueue(job):
            return HookResult(name, Outcome.DROPPED)
        return await job.future

    def _enqueue(self, job: _Job) -> bool:
        if self._closed:
            self._counts["dropped"] += 1
            self._log.debug("hooks: closed; dropping %s", job.name)
            return False
        if len(self._pending) >= self._queue and not self._has_slot():
            self._counts["dropped"] += 1
            if not self._overflowing:
                self._overflowing = True
                self._log.warning(
                    "hooks: queue full (%d waiting, %d running); dropping %s",
                    len(self._pending), self._running, job.name,
                )
            return False
        self._overflowing = False
        self._pending.append(job)
        self._idle.clear()
        self._pump()
        return True

    def _has_slot(self) -> bool:
        """A job can start right now without waiting (so queue=0 still runs hooks)."""
        return self._loop is not None and not self._pending and self._running < self._max_running

    def _pump(self) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        while self._pending and self._running < self._max_running:
            job = self._pending.popleft()
            if job.future is not None and job.future.done():  # its caller went away
                continue
            self._running += 1
            self._peak = max(self._peak, self._running)
            task = loop.create_task(self._work(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not self._pending and not self._running:
            self._idle.set()

    async def _work(self, job: _Job) -> None:
        try:
            result = await self._execute(job)
        except asyncio.CancelledError:
            if job.future is not None:
                job.future.cancel()
            raise
        except Exception:  # never leave a run() caller waiting forever
            self._log.exception("hook %s: runner error", job.name)
            result = HookResult(job.name, Outcome.FAILED)
        finally:
            self._running -= 1
            self._pump()
        if job.future is not None and not job.future.done():
            job.future.set_result(result)

    # one process

    async def _execute(self, job: _Job) -> HookResult:
        start = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                job.path,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=job.env,
                cwd="/",
                start_new_session=True,
            )
        except FileNotFoundError:  # removed since find(): as if never installed
            self._log.debug("hook %s: vanished before it ran", job.name)
            return HookResult(job.name, Outcome.MISSING)
        except OSError as exc:  # no #! line (ENOEXEC), bad interpreter, EACCES, EMFILE …
            self._counts["failed"] += 1
            self._log.warning("hook %s: cannot run %s: %s", job.name, job.path, exc)
            return HookResult(job.name, Outcome.FAILED)
        self._counts["started"] += 1
        out, err = bytearray(), bytearray()
        returncode: int | None = None
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            async with asyncio.timeout(self._timeout):
                await asyncio.gather(
                    _feed(proc.stdin, job.data),
                    _collect(proc.stdout, out, STDOUT_CAP),
                    _collect(proc.stderr, err, STDERR_CAP),
                )
                returncode = await proc.wait()
        except TimeoutError:
            await self._terminate(proc, self._kill_grace)
            outcome = Outcome.TIMED_OUT
        except asyncio.CancelledError:
            await self._terminate(proc, 0.0)
            self._counts["finished"] += 1
            raise
        except Exception:  # a bug or a loop quirk: still reap the group, still answer
            self._log.exception("hook %s: runner error", job.name)
            await self._terminate(proc, 0.0)
            outcome = Outcome.FAILED
        else:
            outcome = Outcome.OK if returncode == 0 else Outcome.FAILED
        self._counts["finished"] += 1
        result = HookResult(
            job.name, outcome, returncode, bytes(out), bytes(err), time.monotonic() - start
        )
        self._report(result)
        return result

    async def _terminate(self, proc: asyncio.subprocess.Process, grace: float) -> None:
        """SIGTERM the hook's whole process group, SIGKILL it after ``grace``.

        The group is signalled even when the leader is already gone: its children may still
        hold the output pipes. POSIX does not reuse a pid while a group of that id exists, so
        ``killpg(proc.pid)`` never hits a stranger.
        """
        if grace > 0:
            _killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), grace)
        _killpg(proc.pid, signal.SIGKILL)
        try:
            await asyncio.wait_for(proc.wait(), 2.0)
        except TimeoutError:
            # Something that left the session still holds a pipe; stop listening to it.
            self._log.warning("hook pid %d: output still open after SIGKILL", proc.pid)
            transport = getattr(proc, "_transport", None)
            if transport is not None:
                transport.close()

    def _report(self, result: HookResult) -> None:
        lines = result.stderr.decode("utf-8", "replace").splitlines()[:STDERR_LOG_LINES]
        tail = " | ".join(ln[:STDERR_LOG_CHARS].translate(_LOG_SAFE) for ln in lines)
        if result.outcome is Outcome.OK:
            self._log.debug("hook %s: exit 0 in %.3fs %s", result.name, result.duration, tail)
        elif result.outcome is Outcome.TIMED_OUT:
            self._counts["timed_out"] += 1
            self._log.warning(
                "hook %s: killed after %.1fs timeout %s", result.name, self._timeout, tail
            )
        else:
            self._counts["failed"] += 1
            self._log.warning("hook %s: exit %s %s", result.name, result.returncode, tail)

    # life cycle

    async def start(self) -> None:
        """Bind to the running loop and start whatever was fired before."""
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._pump()

    async def wait_idle(self) -> None:
        """Until nothing is queued or running (tests, and a polite shutdown before close)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Drop what is queued, kill what runs (its group too), and refuse further work."""
        self._closed = True
        while self._pending:
            job = self._pending.popleft()
            self._counts["dropped"] += 1
            if job.future is not None and not job.future.done():
                job.future.set_result(HookResult(job.name, Outcome.DROPPED))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._idle.set()

    def stats(self) -> dict[str, int]:
        """Counters for status/metrics; ``running`` and ``queued`` are gauges, ``peak`` the
        most that ever ran at once."""
        return {
            **self._counts,
            "running": self._running,
            "queued": len(self._pending),
            "peak": self._peak,
        }


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    """Write the record; a hook that does not read it (or exits early) is not an error."""
    try:
        stdin.write(data)
        await stdin.drain()
    except (OSError, RuntimeError):  # EPIPE/ECONNRESET; uvloop: "the handler is closed"
        pass
    finally:
        stdin.close()


async def _collect(stream: asyncio.StreamReader, buf: bytearray, cap: int) -> None:
    """Keep the first ``cap`` bytes and drain the rest, so a chatty hook never blocks on a
    full pipe and never fills our memory."""
    while chunk := await stream.read(65536):
        room = cap - len(buf)
        if room > 0:
            buf += chunk[:room]


# --- chat ------------------------------------------------------------------------------


class ChatService:
    """``/word args`` from an authenticated line → ``chat/word`` → reply lines.

    The app does the SIP part (who may chat, sending the replies as MESSAGEs); this is the
    logic. The message text is data only: the args reach the script on stdin, escaped, never
    through a shell or argv, so ``; rm -rf / $(id)`` is just text.
    """

    def __init__(self, runner: HookRunner, *, max_line: int = 160, max_lines: int = 5) -> None:
        self._runner = runner
        self._max_line = max_line
        self._max_lines = max_lines

    def commands(self) -> list[str]:
        """Installed chat commands (``/help`` is built in and always listed last)."""
        return [name for name in self._runner.installed("chat") if name != "help"]

    async def handle(self, text: str, *, line: str, display: str) -> list[str]:
        """The reply texts for one MESSAGE body (at most ``max_lines`` of ``max_line``)."""
        text = text.lstrip().rstrip("\r\n")  # clients add a line end; the args keep the rest
        if not text.startswith("/"):
            return self._wrap("chat commands start with / — try /help")
        body = text[1:]
        word_end = len(body)
        for i, ch in enumerate(body):
            if ch.isspace():
                word_end = i
                break
        word = body[:word_end].lower()
        args = body[word_end + 1 :]  # after exactly one space: the rest is kept as sent
        if word in ("", "help"):
            return self._wrap("commands: " + " ".join(f"/{c}" for c in [*self.commands(), "help"]))
        if _NAME.fullmatch(word) is None or self._runner.find(f"chat/{word}") is None:
            return self._unknown(word)
        record: dict[str, Value] = {"command": word, "args": args, "line": line, "display": display}
        result = await self._runner.run(f"chat/{word}", record)
        if result.outcome is Outcome.OK:
            return self._output(result.stdout) or [f"/{word}: done"]
        if result.outcome is Outcome.TIMED_OUT:
            return [f"/{word} timed out"]
        if result.outcome is Outcome.DROPPED:
            return [f"/{word}: server busy, try again later"]
        if result.outcome is Outcome.MISSING:
            return self._unknown(word)
        status = f"exit {result.returncode}" if result.returncode is not None else "could not run"
        return [f"/{word} failed ({status})"]

    def unknown(self, word: str) -> list[str]:
        """The reply to a command nobody installed (also for words reserved to admins)."""
        return self._unknown(word)

    def _unknown(self, word: str) -> list[str]:
        what = f"unknown command /{word[:32]}" if word.isprintable() else "unknown command"
        names = self.commands()
        hint = f"try /help: {', '.join(names)}" if names else "no chat commands are installed"
        return self._wrap(f"{what} — {hint}")

    def _output(self, stdout: bytes) -> list[str]:
        lines: list[str] = []
        for raw in stdout.decode("utf-8", "replace").splitlines():
            if raw.strip():
                lines.append(raw.rstrip()[: self._max_line])
                if len(lines) == self._max_lines:
                    break
        return lines

    def _wrap(self, text: str) -> list[str]:
        return textwrap.wrap(
            text, self._max_line, max_lines=self._max_lines, placeholder=" …",
            break_long_words=True, break_on_hyphens=False,
        )
