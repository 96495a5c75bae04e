"""Logging of ``sipyard serve``: plain lines on stderr, or journal-ready lines under systemd.

Why two formats: on a terminal or in a log file a line needs its own timestamp
(``2026-01-01 12:00:00,123 WARNING sipyard.security: …``); the journal stamps every line
itself, so there the timestamp would only be noise and is left out. Instead each line starts
with the syslog priority in the form journald understands (``<4>`` for WARNING: journald
strips it and files the line at that priority, so ``journalctl -p warning -u sipyard``
works). The level name and logger stay in the message, so examples/fail2ban's filter
matches both forms.

"Under systemd" means: ``$JOURNAL_STREAM`` names the device and inode of our stderr, which
is how systemd tells a service that its stderr is connected to the journal. A stderr that was
redirected somewhere else (``sipyard serve 2>file`` in a unit's shell) keeps timestamps.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

__all__ = ["PLAIN_FORMAT", "JournalFormatter", "configure", "stderr_is_journal"]

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"

#: logging level -> syslog priority (sd-daemon(3) prefixes)
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


def stderr_is_journal(stream: TextIO | None = None,
                      environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """True when ``$JOURNAL_STREAM`` (``DEV:INODE``) is the file behind ``stream``."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalFormatter(logging.Formatter):
    """No timestamp; ``<N>`` priority on every line, so a traceback's lines keep the level."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


def _priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return _PRIORITY[logging.DEBUG]


def configure(level: str, stream: TextIO | None = None) -> bool:
    """Set up the root logger at ``level`` (``"INFO"``…) on ``stream`` (stderr).

    Like ``logging.basicConfig`` (does nothing when the root logger has handlers already);
    returns True when the journal format was chosen.
    """
    out = stream or sys.stderr
    journal = stderr_is_journal(out)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(out)
        handler.setFormatter(JournalFormatter() if journal else logging.Formatter(PLAIN_FORMAT))
        root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    return journal
