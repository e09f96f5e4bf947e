"""A worker whose machine's clock is 45 s off, started beside a healthy one running a job: it
warns about its clock, steals nothing, and the job runs once (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import crashonly
from crashonly.job import JobState
from tests.processes.harness import worker
from tests.semantics.conftest import BACKENDS


@pytest.mark.parametrize("backend", [b for b in ("sqlite", "postgres") if b in BACKENDS])
@pytest.mark.parametrize("skew", ["45", "-45"])
def test_a_worker_with_a_wrong_clock_warns_and_steals_nothing(
    backend: str, skew: str, tmp_path: Path, request: pytest.FixtureRequest,
    subprocess_env: dict[str, str],
) -> None:
    url = BACKENDS[backend](tmp_path, request)
    marker = tmp_path / "starts"
    app = crashonly.App(url)
    app.migrate()
    healthy = worker(url, subprocess_env)
    wrong = None
    try:
        healthy.wait_for(r"\bready\b")
        handle = app.enqueue("workapp.sleeper", [3, str(marker)])
        healthy.wait_for(r"started .*workapp.sleeper")
        wrong = worker(url, dict(subprocess_env, WORKAPP_CLOCK_SKEW=skew))
        wrong.wait_for(r"warning .*clock_skew=" + re.escape(f"{float(skew):+.0f}."), timeout=10)
        wrong.wait_for(r"\bready\b")
        healthy.wait_for(r"succeeded .*workapp.sleeper", timeout=10)
        assert len(marker.read_text().splitlines()) == 1, wrong.text()
        assert "recovered" not in wrong.text()
        job = app.get_job(handle.id)
        assert job.state is JobState.DONE and job.attempts == 1
    finally:
        healthy.stop()
        if wrong is not None:
            wrong.stop()
        app.close()
