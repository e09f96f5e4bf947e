"""The ``crashonly`` command: tables for people, JSON for scripts, one clear line for mistakes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import crashonly
from tests.conftest import ROOT


def run(*args: str, url: str | None = None, cwd: Path | None = None,
        app: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'tests' / 'apps'}"}
    if url:
        env["DATABASE_URL"] = url
    if app:
        env["CRASHONLY_APP"] = app
    return subprocess.run([sys.executable, "-m", "crashonly.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=60)


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def filled(db_url: str) -> Iterator[crashonly.App]:
    app = crashonly.App(db_url)
    app.enqueue("workapp.noop")
    app.enqueue("workapp.effect", args=["x"], queue="other")
    yield app
    app.close()


def test_jobs_list_stats_show_as_tables_and_json(db_url: str, filled: crashonly.App) -> None:
    table = run("jobs", "list", url=db_url)
    assert table.returncode == 0 and "workapp.noop" in table.stdout and "ready" in table.stdout
    rows = json.loads(run("jobs", "list", "--json", "--queue", "other", url=db_url).stdout)
    assert [r["task"] for r in rows] == ["workapp.effect"] and rows[0]["args"] == ["x"]
    stats = json.loads(run("stats", "--json", url=db_url).stdout)
    assert stats["default"]["ready"] == 1 and stats["other"]["ready"] == 1
    shown = run("jobs", "show", "1", url=db_url)
    assert shown.returncode == 0 and "workapp.noop" in shown.stdout


def test_enqueue_retry_delete(db_url: str, filled: crashonly.App) -> None:
    out = run("enqueue", "workapp.effect", "--args", '["k"]', "--delay", "60", url=db_url,
              app="workapp:app")
    assert out.returncode == 0, out.stderr
    job = filled.get_job(int(out.stdout))
    assert job.state.value == "scheduled" and job.args == ["k"]
    assert filled.backend.bury(job.id, "admin", now=filled.clock() + 100)
    assert run("jobs", "retry", str(job.id), url=db_url).returncode == 0
    assert filled.get_job(job.id).state.value == "ready"
    not_buried = run("jobs", "retry", str(job.id), url=db_url)
    assert not_buried.returncode == 1 and "not buried" in not_buried.stderr
    filled.backend.bury(1, "x", now=filled.clock())
    assert "kicked 1" in run("jobs", "retry", "--all-buried", url=db_url).stdout
    assert run("jobs", "delete", str(job.id), url=db_url).returncode == 0
    one_line_error(run("jobs", "show", str(job.id), url=db_url), f"no job {job.id}")


def test_user_mistakes_get_one_line(db_url: str, filled: crashonly.App) -> None:
    one_line_error(run("enqueue", "x", "--args", "[1", url=db_url), "not valid JSON")
    one_line_error(run("enqueue", "x", "--kwargs", "[1]", url=db_url), "JSON object")
    one_line_error(run("enqueue", "nope", url=db_url, app="workapp:app"), "unknown task 'nope'")
    one_line_error(run("stats", url="mysql://x"), "unknown backend scheme 'mysql://'", "known schemes: ")
    one_line_error(run("stats", url="sqlite://host/x.db"), "three slashes")
    one_line_error(run("stats", url="sqlite:///x.db?synchronous=SOMETIMES"), "synchronous")
    one_line_error(run("stats", app="no_such_module:app"), "no such module")
    one_line_error(run("stats", app="json:dumps"), "not a crashonly.App")
    one_line_error(run("enqueue", "x", "--delay", "nan", url=db_url), "delay must be a finite")
    one_line_error(run("enqueue", "x", "--priority", str(2**40), url=db_url), "priority must be")


def test_enqueue_says_when_a_unique_key_is_held(db_url: str, filled: crashonly.App) -> None:
    first = run("enqueue", "workapp.noop", "--unique-key", "k", url=db_url)
    again = run("enqueue", "workapp.noop", "--unique-key", "k", url=db_url)
    assert first.returncode == again.returncode == 0 and first.stdout == again.stdout
    assert first.stderr == "" and "(ready) holds this unique key" in again.stderr


def test_missing_corrupt_locked_newer_and_read_only_databases(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    one_line_error(run("stats", url=f"sqlite:///{missing}"), "does not exist")
    assert not missing.exists()  # inspecting never creates a database
    one_line_error(run("stats", url=f"sqlite:///{tmp_path}/nofolder/x.db"), "does not exist")

    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    one_line_error(run("stats", url=f"sqlite:///{corrupt}"), "corrupt or not an SQLite file")

    newer = tmp_path / "newer.db"
    crashonly.App(f"sqlite:///{newer}").migrate()
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE crashonly_meta SET value = '99' WHERE key = 'schema_version'")
    one_line_error(run("stats", url=f"sqlite:///{newer}"), "schema version 99", "upgrade")

    locked = tmp_path / "locked.db"
    crashonly.App(f"sqlite:///{locked}").migrate()
    holder = sqlite3.connect(locked, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        one_line_error(run("enqueue", "t", url=f"sqlite:///{locked}?busy_timeout=0.2"), "locked")
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    folder = tmp_path / "ro"
    folder.mkdir()
    ro = folder / "ro.db"
    crashonly.App(f"sqlite:///{ro}").migrate()
    for suffix in ("-wal", "-shm"):
        Path(f"{ro}{suffix}").unlink(missing_ok=True)
    made = subprocess.run(["chattr", "+i", str(ro), str(folder)], capture_output=True)
    assert made.returncode == 0, f"cannot make a read-only file here: {made.stderr!r}"
    try:
        one_line_error(run("enqueue", "t", url=f"sqlite:///{ro}"), "read-only")
    finally:
        subprocess.run(["chattr", "-i", str(ro), str(folder)], check=True)


def test_migrate_creates_and_reports(tmp_path: Path) -> None:
    from crashonly.backends.sqlite import SCHEMA_VERSION

    out = run("migrate", url=f"sqlite:///{tmp_path}/new.db")
    assert out.returncode == 0 and f"version {SCHEMA_VERSION}" in out.stdout
    assert (tmp_path / "new.db").exists()


@pytest.mark.parametrize("command", [[], ["jobs", "list"], ["worker"], ["stats"], ["enqueue"]])
def test_help(command: list[str]) -> None:
    out = run(*command, "--help")
    assert out.returncode == 0 and "usage:" in out.stdout


def test_an_older_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    from crashonly.backends.sqlite import SCHEMA_VERSION, Q

    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript(Q["migration_1"])
    conn.execute("INSERT INTO crashonly_meta VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO crashonly_jobs (task, queue, state, priority, payload, max_attempts,"
                 " lease_seconds, run_at, created_at) VALUES ('t', 'default', 'ready', 100,"
                 " '{\"args\":[],\"kwargs\":{}}', 5, 30, 0, 0)")
    conn.commit()
    conn.close()
    app = crashonly.App(f"sqlite:///{path}")
    assert app.stats()["default"]["ready"] == 1  # the job survived the upgrade
    app.close()
    with sqlite3.connect(path) as conn:
        version = conn.execute("SELECT value FROM crashonly_meta").fetchone()[0]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert int(version) == SCHEMA_VERSION and "crashonly_jobs_alone" in indexes


def test_python_dash_m_crashonly_is_the_cli() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "crashonly", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "worker" in out.stdout
