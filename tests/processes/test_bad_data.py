"""Bad bytes and bad shapes in a job's data never crash a worker nor corrupt a row: errors and
results are always storable, one bad settlement fails no batch; SQLite and PostgreSQL."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import urllib.parse

import pytest

import crashonly
from crashonly.job import JobState
from tests.apps.stallapp import BAD_NAME
from tests.conftest import PYTHON
from tests.processes.harness import Proc, worker


def cli(url: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "crashonly.cli", *args, "--url", url], env=env,
                          capture_output=True, text=True, timeout=30)


def test_an_undecodable_file_name_in_an_error_or_a_result_is_stored(
    url: str, subprocess_env: dict[str, str], procs: list[Proc], queue: crashonly.App,
) -> None:
    failing = queue.tasks["stallapp.missing_file"].enqueue()  # raises FileNotFoundError(BAD_NAME)
    returning = queue.tasks["stallapp.bad_result"].enqueue()
    echoed = queue.tasks["stallapp.echo"].enqueue({"path": BAD_NAME, "nul": "a\x00b"})
    neighbours = queue.tasks["stallapp.short"].enqueue_many([()] * 5)
    w = worker(url, subprocess_env, "--concurrency", "2", "--prefetch", "8", app="stallapp:app")
    procs.append(w)
    assert returning.wait(10) == BAD_NAME  # the very same string, surrogate and all
    assert echoed.wait(10) == {"path": BAD_NAME, "nul": "a\x00b"}
    assert [h.wait(10) for h in neighbours] == ["short"] * 5
    with pytest.raises(crashonly.JobFailed):
        failing.wait(10)
    job = failing.job
    assert job.state is JobState.BURIED and "/data/\\xff.csv" in (job.last_error or ""), job
    assert w.popen.poll() is None, w.text()  # the worker never crashed
    for args in (["jobs", "list"], ["jobs", "show", str(failing.id)],
                 ["jobs", "show", str(returning.id), "--json"]):
        out = cli(url, subprocess_env, *args)
        assert out.returncode == 0, (args, out.stderr)
    shown = json.loads(cli(url, subprocess_env, "jobs", "show", str(returning.id), "--json").stdout)
    assert shown["result"] == BAD_NAME
    w.signal(signal.SIGTERM)
    assert w.wait() == 0
    assert "Traceback" not in w.text()


def test_a_payload_nested_too_deep_is_refused_at_enqueue(queue: crashonly.App) -> None:
    deep: list[object] = []
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(crashonly.SerializationError, match=r"argument 0 of stallapp\.echo"):
        queue.tasks["stallapp.echo"].enqueue(deep)
    shallow: list[object] = []
    for _ in range(150):
        shallow = [shallow]
    assert queue.tasks["stallapp.echo"].enqueue(shallow).job.args == [shallow]


def test_a_payload_too_deep_written_by_another_client_is_shown(
        url: str, queue: crashonly.App, subprocess_env: dict[str, str]) -> None:
    """A row enqueue would refuse (another client wrote it): `crashonly jobs show` prints the
    job (without its arguments) instead of a RecursionError traceback."""
    handle = queue.tasks["stallapp.echo"].enqueue(1)
    deep = "[" * 100_000 + "]" * 100_000
    payload = '{"args": [' + deep + '], "kwargs": {}}'
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute("UPDATE crashonly_jobs SET payload = ? WHERE id = ?", (payload, handle.id))
    else:
        import psycopg

        from tests.postgres.conftest import conninfo

        schema = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["schema"][0]
        with psycopg.connect(conninfo(url), autocommit=True) as conn:
            conn.execute(f"UPDATE {schema}.jobs SET payload = %s WHERE id = %s",
                         (payload, handle.id))
    out = cli(url, subprocess_env, "jobs", "show", str(handle.id))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
