"""The pure-Python fallback, tested in a built tree.

``make test`` runs the suite on the mypyc-compiled modules. A user without a C
compiler or mypy runs the same modules as plain Python (``pip install`` falls
back, tests/interop/test_install.py), and the two can differ: a compiled
coroutine is no ``CoroutineType``, a compiled class refuses monkeypatching, a
dataclass field keeps its Python semantics only in one of them. Here the unit
tests of the compiled modules run again with ``SIPYARD_PURE=1``, which makes
sipyard import every module from its source (sipyard/__init__.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: the unit tests of what scripts/build_core.py compiles (each file takes well under a second)
COVERED = [
    "test_message.py", "test_torture_parse.py", "test_transaction.py",
    "test_client_transaction.py", "test_digest.py", "test_auth.py", "test_registrar.py",
    "test_store.py", "test_redirect_pipeline.py", "test_redirectors.py", "test_forwarder.py",
    "test_proxy_core.py", "test_pair.py", "test_udp_batch_sends.py", "test_app_eager.py",
]


def _pure_env() -> dict[str, str]:
    return {**os.environ, "SIPYARD_PURE": "1"}


def test_sipyard_pure_imports_the_sources() -> None:
    out = subprocess.run(
        [sys.executable, "-c",
         "import sipyard, sipyard.app, sipyard.sip.message as m; "
         "print(sipyard.version_line()); print(m.__file__); print(sipyard.app.__file__)"],
        cwd=ROOT, env=_pure_env(), capture_output=True, text=True, check=True)
    version, message, app = out.stdout.splitlines()
    assert version.endswith("(core: pure Python)")
    assert message.endswith("message.py") and app.endswith("app.py")


def test_unit_tests_of_the_compiled_modules_pass_as_pure_python() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         *(str(ROOT / "tests" / name) for name in COVERED)],
        cwd=ROOT, env=_pure_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout
