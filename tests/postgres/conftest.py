"""Fixtures for the PostgreSQL integration tests.

``pg_url`` is a fresh schema on the shared server (dropped afterwards). ``private_pg`` is a
server of the test's own (``initdb`` into a temporary folder, ``pg_ctl`` on a free port) for
tests that stop or restart the database: the shared server is never touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import IN_CI, ROOT
from tests.semantics.postgres_factory import drop_schema, postgres_url

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


@pytest.fixture
def pg_url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return postgres_url(tmp_path, request)


@pytest.fixture
def pg_env(subprocess_env: dict[str, str]) -> dict[str, str]:
    """Environment for worker subprocesses running :mod:`tests.postgres.pgapp`."""
    env = dict(subprocess_env)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "postgres"), env["PYTHONPATH"]])
    return env


def conninfo(url: str) -> str:
    """The URL psycopg takes (crashonly's own options removed)."""
    from crashonly.backends.postgres import parse_url

    return parse_url(url)[0]


def create_effects(url: str) -> None:
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS effects (key text, job bigint, pid integer)")


def effects(url: str) -> dict[str, int]:
    """How many times each key's effect committed."""
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        rows = conn.execute("SELECT key, count(*) FROM effects GROUP BY key").fetchall()
    return {key: int(n) for key, n in rows}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """A throwaway PostgreSQL server: ``start``, ``stop``, ``restart`` at will."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="crashonly-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        as_postgres = os.geteuid() == 0
        if as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._prefix = ["runuser", "-u", "postgres", "--"] if as_postgres else []
        self._run(PG_BIN / "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync")

    def _run(self, *args: object) -> None:
        cmd = [*self._prefix, *map(str, args)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")

    def _ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-o", options,
                  "-l", self.dir / "server.log", "-w", "-t", "30", *args)

    def start(self) -> None:
        self._ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("stop", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        self._ctl("restart", "-m", mode)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    if not (PG_BIN / "initdb").exists():
        message = f"no initdb in {PG_BIN} (set PG_BIN)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


__all__ = ["PrivatePostgres", "conninfo", "create_effects", "drop_schema", "effects"]


def fresh_schema_url(base: str) -> str:
    schema = f"t_{uuid.uuid4().hex[:16]}"
    return f"{base}?schema={schema}&options=-c%20search_path%3D{schema}"
