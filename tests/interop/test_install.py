"""``pip install`` of sipyard into a fresh venv, far from the repository, then a real serve.

What this guards: the packaging (setup.py, pyproject.toml, MANIFEST.in), not the server.
An installed sipyard must run with nothing of the repository beside it (demo-init takes
its files from package data), compile its SIP core with mypyc when it can and say so in
``--version``, and still install, pure Python, when it cannot.

Why a copy of the repository: pip builds in the source tree (``build/``,
``sipyard.egg-info``); building in a copy leaves the checkout as it was and keeps in-place
compiled modules (``make core``) out of the build. The copy skips only such build products.

Slow (a venv per test, a build with mypyc), and it needs PyPI for the build requirements
(setuptools, mypy) in pip's isolated build environment, which ``make test`` machines reach.
"""

from __future__ import annotations

import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from support import ROOT, UdpClient, free_port, sip_request, status_of

pytestmark = [pytest.mark.slow, pytest.mark.interop, pytest.mark.timeout(900)]

#: the modules setup.py compiles: scripts/build_core.py's list
COMPILED: list[str] = runpy.run_path(str(ROOT / "scripts" / "build_core.py"))["MODULES"]
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                              "*.so", ".*_cache", ".hypothesis", "demo", "out")


def _env(**extra: str) -> dict[str, str]:
    """The test's environment without anything that would let the repository leak in."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("PIP_")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 600, **extra: str
         ) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, cwd=cwd, env=_env(**extra), capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{cmd}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def _source(tmp: Path) -> Path:
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SKIP, symlinks=True)
    return src


def _venv(tmp: Path, name: str = "venv") -> Path:
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(tmp / name)], cwd=tmp, timeout=120)
    return tmp / name / "bin"


def _site_sipyard(bindir: Path) -> Path:
    out = _run([str(bindir / "python"), "-c", "import sipyard, os; "
                "print(os.path.dirname(sipyard.__file__))"], cwd=bindir.parent)
    return Path(out.stdout.strip())


def test_pip_install_compiles_the_core_and_serves(tmp_path: Path) -> None:
    assert not tmp_path.is_relative_to(ROOT)
    src = _source(tmp_path)
    bindir = _venv(tmp_path)
    _run([str(bindir / "pip"), "install", str(src)], cwd=tmp_path)
    shutil.rmtree(src)  # nothing of the source may be needed from here on

    out = _run([str(bindir / "sipyard"), "--version"], cwd=tmp_path)
    assert re.fullmatch(r"sipyard \S+ \(core: compiled\)\n", out.stdout), out.stdout
    pkg = _site_sipyard(bindir)
    assert not pkg.is_relative_to(ROOT)
    for name in COMPILED:  # the extension, and no .py that could shadow or "outdate" it
        path = pkg / name
        assert list(path.parent.glob(f"{path.name}.*.so")), name
        assert not path.with_suffix(".py").exists(), name
    assert os.access(pkg / "data" / "hooks" / "activate", os.X_OK)

    demo = tmp_path / "demo"
    out = _run([str(bindir / "sipyard"), "demo-init", str(demo)], cwd=tmp_path)
    assert "line 10:" in out.stdout
    assert (demo / "states" / "night.toml").is_file()
    _run([str(bindir / "sipyard"), "check", "-c", str(demo / "sipyard.toml")], cwd=tmp_path)

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [str(bindir / "sipyard"), "serve", "-c", str(demo / "sipyard.toml"),
             "--listen", f"udp:127.0.0.1:{port}"],
            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"listening on udp:127.0.0.1:{port}" in line, line + log.read_text()
        client = UdpClient(("127.0.0.1", port))
        try:
            ruri = f"sip:127.0.0.1:{port}"
            reply = client.request(sip_request("OPTIONS", ruri, local_port=client.port),
                                   timeout=5)
        finally:
            client.close()
        assert status_of(reply) == 200, reply
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
    assert rc == 0


@pytest.mark.parametrize("how", ["no compiler", "no mypy"])
def test_install_falls_back_to_pure_python(tmp_path: Path, how: str) -> None:
    src = _source(tmp_path)
    bindir = _venv(tmp_path)
    if how == "no compiler":
        _run([str(bindir / "pip"), "install", str(src)], cwd=tmp_path, CC="false")
    else:  # no build isolation, so the build sees this venv: setuptools but no mypy
        _run([str(bindir / "pip"), "install", "setuptools>=64", "wheel"], cwd=tmp_path)
        _run([str(bindir / "pip"), "install", "--no-build-isolation", str(src)], cwd=tmp_path)
    shutil.rmtree(src)
    out = _run([str(bindir / "sipyard"), "--version"], cwd=tmp_path)
    assert out.stdout.endswith("(core: pure Python)\n"), out.stdout
    pkg = _site_sipyard(bindir)
    assert not list((pkg / "sip").glob("*.so"))
    assert (pkg / "sip" / "message.py").is_file()


def test_sdist_carries_docs_and_examples_and_builds_a_wheel(tmp_path: Path) -> None:
    src = _source(tmp_path)
    bindir = _venv(tmp_path)
    _run([str(bindir / "pip"), "install", "setuptools>=64", "wheel"], cwd=tmp_path)
    dist = tmp_path / "dist"
    _run([str(bindir / "python"), "setup.py", "-q", "sdist", "-d", str(dist)], cwd=src)
    (sdist,) = dist.glob("sipyard-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for want in ("docs/admin-guide.md", "docs/hooks.md", "examples/systemd/sipyard.service",
                 "examples/logrotate/sipyard", "examples/fail2ban/filter.d/sipyard.conf",
                 "examples/hooks/activate", "setup.py", "sipyard/data/demo.toml.in",
                 "sipyard/data/states/night.toml"):
        assert want in names, want

    _run([str(bindir / "pip"), "wheel", "--no-deps", "-w", str(dist), str(sdist)],
         cwd=tmp_path)
    (wheel,) = dist.glob("sipyard-*.whl")
    assert "-cp3" in wheel.name and "linux" in wheel.name  # compiled: a platform wheel
    with zipfile.ZipFile(wheel) as whl:
        files = set(whl.namelist())
    assert "sipyard/data/hooks/chat/echo" in files
    assert "sipyard/py.typed" in files
    assert any(re.fullmatch(r"sipyard/sip/message\..+\.so", f) for f in files)
    assert "sipyard/sip/message.py" not in files
    assert any(f.endswith("entry_points.txt") for f in files)
