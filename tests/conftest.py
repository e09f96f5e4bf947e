"""Shared fixtures. Tests needing a service fail (never skip) when CI=true and it is missing."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, port: int) -> None:
    """Skip locally, fail under CI=true: a silent skip would hide a broken backend."""
    if service_answers(port):
        return
    message = f"{name} is not answering on 127.0.0.1:{port} (run .ci/services)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A fresh SQLite file for one test."""
    return f"sqlite:///{tmp_path / 'queue.db'}"


@pytest.fixture
def subprocess_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for real subprocesses: the repo on PYTHONPATH (for tests/apps, examples)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests" / "apps"), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("CRASHONLY_APP", None)
    yield env


PYTHON = sys.executable


@contextlib.contextmanager
def busy_cores(count: int | None = None) -> Iterator[None]:
    """A busy-loop process per core (or ``count``) for the duration: a guarantee is tested on a
    saturated machine, not only an idle one (STYLE 15)."""
    burners = [subprocess.Popen([PYTHON, "-c", "while True: pass"])
               for _ in range(count or os.cpu_count() or 2)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
        for burner in burners:
            burner.wait()
