"""``crashonly chaos`` end to end: real ``crashonly up``, real workers and web processes, real
signals. Each run is a few seconds; the broken systems must fail with an account of the loss."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="crashonly up needs Linux")

PYTHON = sys.executable


def chaos(args: list[str], env: dict[str, str], cwd: Path, *, command: str = "chaos",
          timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    """Run ``crashonly chaos`` (or ``demo``); on a hang, SIGTERM lets it stop what it started."""
    proc = subprocess.Popen([PYTHON, "-m", "crashonly.cli", command, *args], cwd=cwd, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        pytest.fail(f"crashonly {command} did not finish within {timeout} s:\n{out}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


@pytest.fixture
def env(subprocess_env: dict[str, str], db_url: str) -> dict[str, str]:
    return {**subprocess_env, "DATABASE_URL": db_url, "PYTHONDONTWRITEBYTECODE": "1"}


def procfile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "Procfile"
    path.write_text(text)
    return path


def verdict(out: str, invariant: str) -> str:
    """``ok`` or ``FAILED``: the summary table's first column for that invariant."""
    for line in out.splitlines():
        words = line.split(None, 1)
        if len(words) == 2 and words[0] in ("ok", "FAILED") and words[1].startswith(invariant):
            return words[0]
    raise AssertionError(f"no invariant {invariant!r} in:\n{out}")


ROOT = Path(__file__).resolve().parents[2]
GOOD = ("web: crashonly web tests.chaos.apps:web --fd 3\n"
        "worker: crashonly worker tests.chaos.apps:app\n")
FAST = ["--duration", "5", "--kill-every", "0.3", "--stop-timeout", "3", "--drain-timeout", "30",
        "--seed", "7"]


def test_a_correct_system_passes_with_a_report(tmp_path: Path, env: dict[str, str]) -> None:
    report = tmp_path / "report.html"
    result = chaos(["-f", str(procfile(tmp_path, GOOD)), "-d", str(ROOT), "-m", "web=2,worker=2",
                    *FAST, "--report", str(report)], env, tmp_path)
    assert result.returncode == 0, result.stdout
    out = result.stdout
    assert "PASS: every invariant held." in out
    assert "exactly once (ledger)" in out and "HTTP requests answered" in out
    kills = [line for line in out.splitlines() if line.startswith("faults")]
    assert kills and int(kills[0].split()[1]) >= 5, out  # it really killed things
    page = report.read_text()
    assert page.count("<svg") == 3 and "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert "SIGKILL" in page and "Every invariant held" in page


def test_a_worker_that_acks_before_running_loses_jobs(tmp_path: Path, env: dict[str, str]) -> None:
    path = procfile(tmp_path, f"worker: {PYTHON} -m tests.chaos.broken ack-first\n")
    result = chaos(["-f", str(path), "-d", str(ROOT), "-m", "worker=2", *FAST,
                    "--db-restart-cmd", "echo no such database >&2; exit 3"], env, tmp_path)
    out = result.stdout
    assert result.returncode == 1, out
    assert verdict(out, "database restart command ran") == "FAILED" and "no such database" in out
    assert verdict(out, "exactly once (ledger)") == "FAILED"
    assert "acked as done but their effect never committed (lost work" in out
    assert "FAIL: invariants violated" in out


def test_a_worker_that_ignores_sigterm_and_acks_late_duplicates(tmp_path: Path,
                                                                 env: dict[str, str]) -> None:
    path = procfile(tmp_path, f"worker: {PYTHON} -m tests.chaos.broken effect-then-ack\n")
    result = chaos(["-f", str(path), "-d", str(ROOT), "-m", "worker=2", *FAST, "--stop-timeout",
                    "1"], env, tmp_path)
    out = result.stdout
    assert result.returncode == 1, out
    assert verdict(out, "SIGTERM honoured") == "FAILED" and "ignored SIGTERM" in out
    assert "committed their effect more than once" in out
    assert verdict(out, "clean final stop") == "FAILED"


def test_a_web_process_that_does_not_drain_fails_requests(tmp_path: Path,
                                                           env: dict[str, str]) -> None:
    path = procfile(tmp_path, f"web: {PYTHON} -m tests.chaos.broken web\n"
                              "worker: crashonly worker tests.chaos.apps:app\n")
    result = chaos(["-f", str(path), "-d", str(ROOT), "-m", "web=2,worker=1", *FAST,
                    "--signals", "TERM", "--jobs", "20"], env, tmp_path)
    out = result.stdout
    assert result.returncode == 1, out
    assert verdict(out, "HTTP requests answered") == "FAILED"
    assert "0 cut by a SIGKILL (expected)" in out  # no SIGKILL was sent: nothing excuses them
    assert verdict(out, "exactly once (ledger)") == "ok"  # the workers were fine


def test_a_user_task_is_checked_at_least_once(tmp_path: Path, env: dict[str, str]) -> None:
    path = procfile(tmp_path, "worker: crashonly worker tests.chaos.apps:app\n")
    result = chaos(["-f", str(path), "-d", str(ROOT), "-m", "worker=2", *FAST, "--signals",
                    "KILL", "--task", "tests.chaos.apps.chore", "--args", "[30]", "--jobs", "100",
                    "--no-http"], env, tmp_path)
    out = result.stdout
    assert result.returncode == 0, out
    assert verdict(out, "every tests.chaos.apps.chore job completed") == "ok"
    assert "100 of 100 done" in out
    assert verdict(out, "duplicate runs (at-least-once: allowed)") == "ok"


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, env: dict[str, str]) -> None:
    result = chaos(["-f", str(tmp_path / "nope"), "--duration", "1"], env, tmp_path)
    assert result.returncode == 2
    assert "crashonly chaos: error:" in result.stdout and "nope" in result.stdout
    result = chaos(["--signals", "HUP"], env, tmp_path)
    assert result.returncode == 2 and "unknown signal" in result.stdout
    path = procfile(tmp_path, "worker: sh -c 'exit 3'\n")
    result = chaos(["-f", str(path), "--duration", "1", "--ready-timeout", "3"], env, tmp_path)
    assert result.returncode == 2 and "not ready within 3 s" in result.stdout


def test_demo_leaves_nothing_behind_but_its_report(tmp_path: Path,
                                                   subprocess_env: dict[str, str]) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**subprocess_env, "TMPDIR": str(scratch), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("DATABASE_URL", None)
    result = chaos(["--duration", "5", "--kill-every", "0.4"], env, tmp_path, command="demo")
    assert result.returncode == 0, result.stdout
    assert "PASS: every invariant held." in result.stdout
    assert sorted(p.name for p in scratch.iterdir()) == []
    assert f"report: {tmp_path / 'crashonly-demo-report.html'}" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crashonly-demo-report.html", "tmp"]


def test_database_restart_on_postgres(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    """The workers ride out a restart of their PostgreSQL server (a private one) under kills."""
    import shlex

    from tests.postgres.conftest import PG_BIN, PrivatePostgres

    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no initdb in {PG_BIN}")
    server = PrivatePostgres()
    try:
        server.start()
        options = f"-p {server.port} -k {server.dir} -c listen_addresses=127.0.0.1"
        restart = shlex.join([*server._prefix, str(PG_BIN / "pg_ctl"), "-D", str(server.data),
                              "-o", options, "-l", str(server.dir / "server.log"), "-w", "-t",
                              "30", "restart", "-m", "fast"])
        env = {**subprocess_env, "DATABASE_URL": server.url, "PYTHONDONTWRITEBYTECODE": "1"}
        path = procfile(tmp_path, "worker: crashonly worker tests.chaos.apps:app\n")
        result = chaos(["-f", str(path), "-d", str(ROOT), "-m", "worker=2", *FAST, "--duration",
                        "6", "--db-restart-cmd", restart, "--json", str(tmp_path / "r.json")],
                       env, tmp_path)
    finally:
        server.destroy()
    out = result.stdout
    assert verdict(out, "database restart command ran") == "ok"
    assert "1 database restart(s)" in out
    assert result.returncode == 0, out
