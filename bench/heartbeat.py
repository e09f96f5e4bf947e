"""The heartbeat helper's cost: no-op drain rate and memory with the helper on and off.

    .venv/bin/python bench/heartbeat.py [--jobs N] [--runs K]

One worker (SQLite, concurrency 1) drains N no-op jobs enqueued first; jobs/s between the
first and the last job done (from their ``finished_at``), helper on and off alternated, K runs
each, medians reported; plus the helper process's resident memory.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import crashonly  # noqa: E402


def rss_kb(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+)", text)
    return int(found.group(1)) if found else 0


def drain(tmp: Path, jobs: int, helper: bool, run: int) -> tuple[float, int]:
    url = f"sqlite:///{tmp}/hb-{int(helper)}-{run}.db"
    app = crashonly.App(url)
    app.migrate()
    for i in range(0, jobs, 5000):
        app.enqueue_many([("co_app.noop", (), {})] * min(5000, jobs - i))
    env = dict(os.environ, DATABASE_URL=url, CRASHONLY_HEARTBEAT_HELPER="1" if helper else "0",
               PYTHONPATH=str(ROOT / "bench" / "peers"))
    proc = subprocess.Popen([sys.executable, "-m", "crashonly.cli", "worker", "co_app:app"],
                            env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    helper_rss = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            left = sum(n for s in app.stats().values() for k, n in s.items()
                       if k in ("ready", "reserved"))
            if helper and not helper_rss:
                children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
                kids = children.read_text().split() if children.exists() else []
                helper_rss = rss_kb(int(kids[0])) if kids else 0
            if left == 0:
                break
            time.sleep(0.05)
        done = app.backend.list(state=crashonly.JobState.DONE, limit=jobs)
        times = sorted(j.finished_at or 0.0 for j in done)
        rate = (len(times) - 1) / (times[-1] - times[0])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        app.close()
    return rate, helper_rss


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    rates: dict[bool, list[float]] = {True: [], False: []}
    memory: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for helper in (run % 2 == 0, run % 2 == 1):
                rate, rss = drain(Path(tmp), args.jobs, helper, run)
                rates[helper].append(rate)
                if rss:
                    memory.append(rss)
                print(f"run {run} helper={'on' if helper else 'off'}: {rate:,.0f} jobs/s",
                      file=sys.stderr)
    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    print("| helper | no-op jobs/s (median) | runs |")
    print("|---|---|---|")
    for name, key in (("off", False), ("on", True)):
        print(f"| {name} | {statistics.median(rates[key]):,.0f} | "
              f"{', '.join(f'{r:,.0f}' for r in rates[key])} |")
    print(f"\nratio on/off: {on / off:.3f}; helper RSS: "
          f"{statistics.median(memory) / 1024 if memory else 0:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
