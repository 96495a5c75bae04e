"""Shared fixtures: real ``sipyard serve`` processes and the external SIP tools.

Why here: several test modules (tests/ and tests/interop/) start servers and call
sipp/sipsak; doing it one way keeps every server on 127.0.0.1 at a random port,
stopped even when a test fails, and makes a missing tool a failure under CI (where
``make test`` was supposed to install it) but only a skip on a developer's machine.
Nothing here is autouse: a test pays only for what it asks for.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:  # `import support` from tests/ and tests/interop/ alike
    sys.path.insert(0, _TESTS)

from support import Server, write_config  # noqa: E402

#: start(name, *, log_level="info", **write_config kwargs) -> a started Server.
ServerFactory = Callable[..., Server]


def require_tool(name: str) -> str:
    """Path of an executable; under CI a missing one fails the test, else skips it."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (`make deps-test` installs it)"
        if os.environ.get("CI"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return path


@pytest.fixture
def tool() -> Callable[[str], str]:
    """``tool("sipp")`` -> path, failing under CI / skipping elsewhere when missing."""
    return require_tool


def _factory(mktemp: Callable[[str], Path]) -> tuple[ServerFactory, list[Server]]:
    started: list[Server] = []

    def start(name: str = "srv", *, log_level: str = "info", **config: Any) -> Server:
        server = Server(write_config(mktemp(name), **config), log_level=log_level)
        server.start()
        started.append(server)
        return server

    return start, started


def _stop_all(started: list[Server]) -> None:
    for server in reversed(started):
        server.stop()


@pytest.fixture
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Start servers for one test: ``start_server("x", realm=…, security={…})``."""
    start, started = _factory(lambda name: tmp_path_factory.mktemp(name))
    yield start
    _stop_all(started)


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """The same, shared by the tests of one module (stopped after its last test)."""
    start, started = _factory(lambda name: tmp_path_factory.mktemp(name))
    yield start
    _stop_all(started)
