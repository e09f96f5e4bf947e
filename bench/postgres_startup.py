"""PostgreSQL start-up: spawn → first queued job started, crashonly against procrastinate and
pgqueuer, and the floor ``python -c "import APP, psycopg, psycopg_pool"``.

    .venv/bin/python bench/postgres_startup.py [--runs N] [--only NAME,...] [--write]

Each round resets the ``crashonly_bench`` database, installs each system's schema, enqueues one
job whose handler appends ``time.time()`` to a file, spawns one worker process and waits for the
stamp; the figure is stamp - the time just before the spawn. The floor is measured the same way:
spawn → ``python -c "import co_pg, psycopg, psycopg_pool"`` done (the app module the crashonly
worker loads, and the driver and pool it needs; the interpreter's exit not counted). Systems
take turns within each round (A B C floor, A B C floor…), so a machine whose speed drifts
affects all alike; one warm-up round is not counted; medians are reported. Peers and the
PostgreSQL set-up are those of ``bench/postgres_peers.py`` (the ``bench`` extra; PostgreSQL at
127.0.0.1:5432). ``--write`` replaces this benchmark's section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from postgres_peers import (  # type: ignore[import-not-found]
    ROOT,
    Crashonly,
    Pgqueuer,
    Procrastinate,
    System,
    drop_database,
    log,
    machine,
    reset_database,
    stop,
    write_section,
)

SECTION = "## PostgreSQL start-up: spawn → first job (`bench/postgres_startup.py`)"


def cold(system: System) -> float:
    """Spawn → the queued job's handler started, in ms."""
    reset_database()
    system.install()
    system.stamps.unlink(missing_ok=True)
    system.stamps.touch()
    system.enqueue("stamp", 1)
    spawned = time.time()
    procs = [system.start_worker()]
    try:
        deadline = time.monotonic() + 30
        while not (text := system.stamps.read_text()).strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{system.name}: the job did not start within 30 s")
            time.sleep(0.001)
        return (float(text.split()[0]) - spawned) * 1000
    finally:
        stop(procs)


def floor(system: Crashonly) -> float:
    """Spawn → the imports done, in ms, measured like ``cold`` (not counting the exit)."""
    spawned = time.time()
    out = subprocess.run(
        [sys.executable, "-c", "import co_pg, psycopg, psycopg_pool, time; print(time.time())"],
        env=system.env, cwd=system.tmp, check=True, capture_output=True, text=True)
    return (float(out.stdout) - spawned) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--only", default="", help="comma-separated system names")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    # Bytecode, as an installed package has it (pip compiles on install; a checkout run with
    # PYTHONDONTWRITEBYTECODE=1 would otherwise compile crashonly on every start).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src")], check=True,
                   env=dict(os.environ, PYTHONDONTWRITEBYTECODE=""), stdout=subprocess.DEVNULL)
    tmp = Path(tempfile.mkdtemp(prefix="crashonly-pgstart-"))
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    crashonly = Crashonly(tmp)
    systems: list[System] = [crashonly, Procrastinate(tmp), Pgqueuer(tmp),
                             Pgqueuer(tmp, driver="psycopg")]
    if args.only:
        systems = [s for s in systems if s.name.split(" ")[0] in args.only.split(",")]
    times: dict[str, list[float]] = {s.name: [] for s in systems}
    floors: list[float] = []
    # Ratios pair by pair (within a round), robust to the machine's speed drifting.
    over_floor: dict[str, list[float]] = {s.name: [] for s in systems}
    over_crashonly: dict[str, list[float]] = {s.name: [] for s in systems}
    try:
        for run in range(args.runs + 1):
            got = {s.name: cold(s) for s in systems}
            base = floor(crashonly)
            log(f"round {run}{' (warm-up)' if not run else ''}: "
                + ", ".join(f"{k} {v:.0f} ms" for k, v in got.items()) + f"; floor {base:.0f} ms")
            if run:
                for name, value in got.items():
                    times[name].append(value)
                    over_floor[name].append(value / base)
                    if crashonly.name in got:
                        over_crashonly[name].append(value / got[crashonly.name])
                floors.append(base)
        if crashonly.app is not None:
            crashonly.app.close()
    finally:
        drop_database()
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    base = statistics.median(floors)
    lines = [
        SECTION, "",
        f"Run {started} on {machine()}; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after (2 cores shared with other work). Medians of {args.runs} "
        f"rounds after one warm-up. Command: `.venv/bin/python bench/postgres_startup.py "
        f"--runs {args.runs}`.", "",
        "| system | spawn → first job started (median) | min to max | ÷ floor, same round "
        "(median) | ÷ crashonly, same round (median) |",
        "|---|---|---|---|---|",
    ]
    for name, values in times.items():
        vs = f"{statistics.median(over_crashonly[name]):.2f}x" if over_crashonly[name] else "-"
        lines.append(f"| {name} | {statistics.median(values):.0f} ms | {min(values):.0f} to "
                     f"{max(values):.0f} ms | {statistics.median(over_floor[name]):.2f}x | {vs} |")
    lines.append(f"| floor: `python -c \"import co_pg, psycopg, psycopg_pool\"` | {base:.0f} ms "
                 f"| {min(floors):.0f} to {max(floors):.0f} ms | 1 | - |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
