"""The admin guide's backup of the data dir, done while the server runs, restores.

Why: the guide tells admins that SQLite's online backup gives a consistent copy of
``sipyard.db`` while sipyard writes it (WAL mode), and how to restore; this runs exactly
that command against a running server and starts a second server on the restored copy.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ServerFactory
from support import UdpClient, register, status_of

pytestmark = pytest.mark.interop

#: the guide's command (docs/admin-guide.md, Backups), with the paths as parameters
BACKUP = ('import sqlite3, sys; s = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True); '
          'd = sqlite3.connect(sys.argv[2]); s.backup(d); d.close()')


def test_online_backup_restores_the_bindings(start_server: ServerFactory, tmp_path: Path) -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "admin-guide.md").read_text()
    assert "s.backup(d)" in guide and "?mode=ro" in guide  # the same command as here
    srv = start_server("live", lines=range(10, 13))
    c = UdpClient(srv.addr)
    try:
        for line in ("10", "11"):
            assert status_of(register(c, line)) == 200
    finally:
        c.close()
    copy = tmp_path / "sipyard.db"
    subprocess.run([sys.executable, "-c", BACKUP, str(srv.data / "sipyard.db"), str(copy)],
                   check=True, timeout=30)
    with sqlite3.connect(copy) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert srv.proc is not None and srv.proc.poll() is None  # the server ran on meanwhile
    srv.stop()

    restored = start_server("restored", lines=range(10, 13))
    restored.stop()  # a fresh data dir: put the copy in while it is stopped, as the guide says
    for extra in ("sipyard.db-wal", "sipyard.db-shm"):
        (restored.data / extra).unlink(missing_ok=True)
    shutil.copyfile(copy, restored.data / "sipyard.db")
    restored.start()
    out = restored.cli("registry", "--json")
    assert out.returncode == 0, out.stderr
    lines = {ln["line"]: ln["bindings"] for ln in json.loads(out.stdout)["lines"]}
    assert len(lines["10"]) == 1 and len(lines["11"]) == 1 and lines["12"] == []
