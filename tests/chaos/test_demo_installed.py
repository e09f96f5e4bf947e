"""`crashonly demo` from an installed wheel, in an empty folder, far from any checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_the_demo_runs_from_an_installed_wheel_and_leaves_only_its_report(tmp_path: Path) -> None:
    wheels, venv, empty, scratch = (tmp_path / n for n in ("wheels", "venv", "empty", "tmp"))
    for folder in (empty, scratch):
        folder.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(ROOT), "--no-deps", "-w", str(wheels)], check=True,
                   capture_output=True, timeout=180)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    # Offline: the core needs nothing outside the standard library.
    subprocess.run([*pip, "--python", str(python), "install", "--no-index", "--no-deps",
                    *map(str, wheels.glob("crashonly-*.whl"))], check=True, capture_output=True,
                   timeout=180)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "DATABASE_URL", "CRASHONLY_APP")}
    env.update(TMPDIR=str(scratch), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    where = subprocess.run([str(python), "-c", "import crashonly; print(crashonly.__file__)"],
                           env=env, cwd=empty, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(venv)), where.stdout  # not the checkout's copy

    shown = subprocess.run([str(venv / "bin" / "crashonly"), "demo", "--help"], env=env,
                           cwd=empty, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: crashonly demo")

    site = next((venv / "lib").glob("python3*/site-packages"))
    installed = sorted(site.rglob("*"))
    run = subprocess.run([str(venv / "bin" / "crashonly"), "demo", "--duration", "3",
                          "--kill-every", "0.4"], env=env, cwd=empty, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS: every invariant held." in run.stdout
    assert f"report: {empty / 'crashonly-demo-report.html'}" in run.stdout
    assert sorted(p.name for p in empty.iterdir()) == ["crashonly-demo-report.html"]
    assert list(scratch.iterdir()) == []
    assert sorted(site.rglob("*")) == installed  # nothing written into the package either
