"""``crashonly chaos`` and ``crashonly demo``.

A run, in order: start the user's Procfile under ``crashonly up`` (with the probe task added to
their app, :mod:`.probe`) → wait until the formation is ready → for ``--duration`` seconds
enqueue jobs, send HTTP requests and kill random processes → stop the faults and let the queue
drain → check the formation came back → stop ``up`` → check every invariant
(:mod:`.verify`) → print a summary, write the HTML report → exit 0 only if everything held.

Exit codes: 0 every invariant held; 1 some invariant was violated; 2 the run could not be made
(bad input, the formation never became ready, the database unreachable).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import CrashonlyError
from . import probe
from .record import Recording
from .verify import Verdict

__all__ = ["Config", "main", "run"]

DEMO_REPORT = "crashonly-demo-report.html"  # written into the current folder by default


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    procfile: Path
    env_file: Path | None = None
    formation: str | None = None
    root: Path | None = None
    url: str | None = None
    duration: float = 60.0
    jobs: int | None = None
    kill_every: float = 0.5
    signals: tuple[str, ...] = ("TERM", "KILL")
    task: str | None = None
    task_args: tuple[Any, ...] = ()
    task_queue: str | None = None
    http: str | None = "/"
    http_rate: float = 40.0
    db_restart_cmd: str | None = None
    report: Path | None = None
    json_path: Path | None = None
    log: Path | None = None
    stop_timeout: float = 10.0
    ready_timeout: float = 60.0
    drain_timeout: float = 60.0
    probe_queue: str = "crashonly-chaos"
    seed: int | None = None
    extra_env: tuple[tuple[str, str], ...] = ()
    title: str = "crashonly chaos"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 86400 seconds")
    return value


def _signals(text: str) -> tuple[str, ...]:
    from .faults import SIGNALS

    names = tuple(s.strip().upper().removeprefix("SIG") for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in SIGNALS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"unknown signal(s) {', '.join(bad) or text!r}; choose from {', '.join(SIGNALS)}")
    return names


def _add_run_options(p: argparse.ArgumentParser, *, duration: float, kill_every: float,
                     rate: int) -> None:
    p.set_defaults(job_rate=rate)
    p.add_argument("--duration", type=_seconds, default=duration, metavar="SECONDS",
                   help=f"how long to load and kill (default {duration:g})")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help=f"jobs to enqueue, spread over the run (default {rate} per second of "
                   "--duration)")
    p.add_argument("--kill-every", type=_seconds, default=kill_every, metavar="SECONDS",
                   help=f"mean time between two kills (default {kill_every:g}; each wait is "
                   "random within ±50%%)")
    p.add_argument("--signals", type=_signals, default=("TERM", "KILL"), metavar="TERM,KILL",
                   help="signals to choose from at random (default TERM,KILL)")
    p.add_argument("--report", metavar="PATH", help="write the HTML report there")
    p.add_argument("--json", metavar="PATH", dest="json_path",
                   help="write the verdict and every observation there, as JSON (for scripts)")
    p.add_argument("--stop-timeout", type=_seconds, default=10.0, metavar="SECONDS",
                   help="a process still running this long after SIGTERM ignored it: violation, "
                   "and SIGKILL (default 10)")
    p.add_argument("--drain-timeout", type=_seconds, default=60.0, metavar="SECONDS",
                   help="after the faults stop, how long the queue may take to empty (default 60)")
    p.add_argument("--seed", type=int, default=None, help="random seed (kill choices, job lengths)")


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run your Procfile's formation under `crashonly up`, load it with jobs and "
        "HTTP requests, kill random processes with SIGTERM/SIGKILL, and verify nothing was lost: "
        "every probe job committed exactly once, nothing left reserved, HTTP failures only where "
        "a SIGKILL cut a request. Exit 0 only if every invariant held.",
        epilog="Exit codes: 0 every invariant held, 1 an invariant was violated, 2 the run could "
        "not be made. See docs/chaos.md.",
    )
    p.add_argument("-f", "--procfile", default="Procfile", metavar="PATH",
                   help="the Procfile (default ./Procfile)")
    p.add_argument("-e", "--env", metavar="PATH",
                   help="a .env file (default: .env beside the Procfile, if there is one)")
    p.add_argument("-m", "--formation", metavar="TYPE=N,...",
                   help="processes per type, e.g. web=2,worker=2 (default: one of each)")
    p.add_argument("-d", "--root", metavar="DIR", help="working directory of the processes")
    p.add_argument("--url", help="the queue's database (default $DATABASE_URL, from the "
                   "environment or the .env file)")
    _add_run_options(p, duration=60.0, kill_every=0.5, rate=25)
    p.add_argument("--task", metavar="NAME",
                   help="enqueue this task of your app instead of the built-in probe: checked "
                   "at-least-once, with duplicate runs counted")
    p.add_argument("--args", default="[]", metavar="JSON",
                   help="positional arguments for --task, a JSON array (default [])")
    p.add_argument("--queue", metavar="NAME", dest="task_queue",
                   help="queue for the --task jobs (default: the task's own queue if "
                   "$CRASHONLY_APP names your app, else default)")
    p.add_argument("--http", default="/", metavar="PATH",
                   help="path to request on the web type while killing (default /)")
    p.add_argument("--no-http", action="store_true", help="send no HTTP requests")
    p.add_argument("--http-rate", type=float, default=40.0, metavar="N",
                   help="HTTP requests per second (default 40)")
    p.add_argument("--db-restart-cmd", metavar="CMD",
                   help="a shell command that restarts the database; run once, halfway through")
    p.add_argument("--ready-timeout", type=_seconds, default=60.0, metavar="SECONDS",
                   help="how long the formation may take to be ready at the start (default 60)")
    p.add_argument("--probe-queue", default="crashonly-chaos", metavar="NAME",
                   help="queue of the probe jobs (default crashonly-chaos; if your workers take "
                   "only named queues (--queue), name one of them)")
    p.add_argument("--log", metavar="PATH", help="also write crashonly up's output there")
    return p


def _config(args: argparse.Namespace) -> Config:
    try:
        task_args = json.loads(args.args)
    except ValueError as exc:
        raise CrashonlyError(f"--args is not valid JSON ({exc}): {args.args!r}") from None
    if not isinstance(task_args, list):
        raise CrashonlyError("--args must be a JSON array")
    if args.jobs is not None and args.jobs < 1:
        raise CrashonlyError("--jobs must be at least 1")
    return Config(
        procfile=Path(args.procfile), env_file=Path(args.env) if args.env else None,
        formation=args.formation, root=Path(args.root) if args.root else None, url=args.url,
        duration=args.duration, jobs=args.jobs or round(args.job_rate * args.duration),
        kill_every=args.kill_every, signals=args.signals, task=args.task, task_args=tuple(task_args),
        task_queue=args.task_queue,
        http=None if args.no_http or not args.http else args.http, http_rate=args.http_rate,
        db_restart_cmd=args.db_restart_cmd, report=Path(args.report) if args.report else None,
        json_path=Path(args.json_path) if args.json_path else None,
        log=Path(args.log) if args.log else None, stop_timeout=args.stop_timeout,
        ready_timeout=args.ready_timeout, drain_timeout=args.drain_timeout,
        probe_queue=args.probe_queue, seed=args.seed,
    )


# --- the run ---------------------------------------------------------------------------------

def _environment(cfg: Config) -> tuple[dict[str, str], str]:
    """The environment for ``up`` and the database URL the run checks."""
    from ..app import DEFAULT_URL, POISON_ENV
    from ..supervisor.envfile import read_env
    from ..supervisor.procfile import read_procfile

    procfile = read_procfile(cfg.procfile)  # fails early, with up's own message
    env_path = cfg.env_file or procfile.path.parent / ".env"
    file_env = read_env(env_path, required=cfg.env_file is not None)
    env = dict(os.environ)
    env.update(dict(cfg.extra_env))
    url = cfg.url or env.get("DATABASE_URL") or file_env.get("DATABASE_URL") or DEFAULT_URL
    if cfg.url:
        env["DATABASE_URL"] = cfg.url
    env[probe.ENV] = cfg.probe_queue
    # Deliberate kills at this rhythm would bury innocent jobs as poison (a job whose worker
    # "died" three times in a row); the run verifies delivery, so poison burial is off.
    env.setdefault(POISON_ENV, "1000000")
    env["NO_COLOR"] = "1"
    env.pop("FORCE_COLOR", None)
    env["PYTHONUNBUFFERED"] = "1"
    # The Procfile says `crashonly ...`: make that this installation's command.
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    return env, url


def run(cfg: Config) -> int:
    from ..app import App
    from .display import Progress
    from .faults import Killer, restart_database
    from .load import HttpLoad, JobLoad, Sampler
    from .supervised import Supervised

    try:
        env, url = _environment(cfg)
        app = App(url)
        app.migrate()
    except CrashonlyError as exc:
        print(f"crashonly chaos: error: {exc}", file=sys.stderr)
        return 2
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    recording = Recording()
    if cfg.task is None:
        probe.install(app, queue=cfg.probe_queue)
        probe.create_ledger(app.backend)
        task, queue = probe.TASK, cfg.probe_queue

        def make_args(rng: Any) -> list[Any]:
            return [run_id, round(rng.uniform(5, 50), 1)]
    else:
        task = cfg.task
        queue = cfg.task_queue or _task_queue(app, cfg.task)

        def make_args(rng: Any) -> list[Any]:
            return list(cfg.task_args)
    total = max(1, cfg.jobs if cfg.jobs is not None else round(25 * cfg.duration))
    log = open(cfg.log, "w", encoding="utf-8") if cfg.log else None
    supervised = Supervised(procfile=cfg.procfile, formation=cfg.formation, env=env,
                            env_file=cfg.env_file, root=cfg.root, stop_timeout=cfg.stop_timeout,
                            recording=recording, log=log)
    where = url.split("@")[-1]
    print(f"crashonly chaos: {cfg.procfile} {cfg.formation or ''} on {where}; "
          f"{total} {'probe' if cfg.task is None else task} jobs over {cfg.duration:g} s, "
          f"a SIG{'/SIG'.join(cfg.signals)} every ~{cfg.kill_every:g} s", flush=True)
    threads: list[Any] = []
    previous = signal.signal(signal.SIGTERM, _interrupt)  # stopped politely: stop the formation
    try:
        supervised.start()
        try:
            formation = supervised.wait_ready(cfg.ready_timeout)
        except CrashonlyError as exc:
            print(f"crashonly chaos: error: {exc}", file=sys.stderr)
            return 2
        recording.t0 = time.monotonic()  # time zero: the formation is up
        http_type = _http_type(supervised.ports, formation)
        sampler = Sampler(app, recording, queue=queue)
        jobs = JobLoad(app, recording, task=task, queue=queue, total=total,
                       seconds=cfg.duration * 0.9,
                       make_args=make_args, seed=cfg.seed)
        killer = Killer(supervised, recording, every=cfg.kill_every, signals=list(cfg.signals),
                        stop_timeout=cfg.stop_timeout, seed=cfg.seed)
        http = (HttpLoad(recording, port=supervised.ports[http_type], path=cfg.http,
                         rate=cfg.http_rate) if http_type is not None and cfg.http else None)
        progress = Progress(recording, total_jobs=total, duration=cfg.duration)
        sampler.start()
        for part in (jobs, killer, http, progress):
            if part is not None:
                part.start()
                threads.append(part)
        db_thread = None
        if cfg.db_restart_cmd:
            command = cfg.db_restart_cmd

            def restart() -> None:
                if not killer.stopping.wait(cfg.duration / 2):
                    restart_database(command, recording)

            db_thread = threading.Thread(target=restart, name="chaos-db", daemon=True)
            db_thread.start()
        time.sleep(cfg.duration)

        killer.stop()
        recording.load_end = recording.now()
        jobs.finish()
        if db_thread is not None:
            db_thread.join()
        if http is not None:
            http.stop()
        progress.phase = "drain"
        drained = _drain(sampler, cfg.drain_timeout)
        restored = _restored(supervised, cfg.ready_timeout)
        sampler.stop()
        progress.stop()
        recording.end = recording.now()
        up_code = supervised.stop(cfg.stop_timeout + 15.0)

        verdict, totals = _verify(app, cfg, recording, supervised, ids=jobs.ids, run_id=run_id,
                                  drained=drained, restored=restored, up_code=up_code,
                                  http_type=http_type if http is not None else None,
                                  errors=killer.errors + jobs.errors)
        _finish(cfg, recording, verdict, totals, supervised, http_type if http else None,
                formation)
        return 0 if verdict.ok else 1
    except KeyboardInterrupt:
        print("\ncrashonly chaos: interrupted; stopping the formation", file=sys.stderr)
        for part in threads:
            part.stopping.set()
        supervised.stop(cfg.stop_timeout + 5.0)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        supervised.kill()  # no-op when up already stopped; never leave a process behind
        app.close()
        if log is not None:
            log.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _task_queue(app: Any, task: str) -> str:
    """The queue the user's task's jobs land in: ``default`` unless the app says otherwise, which
    the chaos process cannot know without importing the app; ``CRASHONLY_APP`` helps."""
    if os.environ.get("CRASHONLY_APP"):
        from ..loader import load_app

        try:
            user_app = load_app(None)
        except CrashonlyError:
            return "default"
        if task in user_app.tasks:
            return user_app.tasks[task].queue
    return "default"


def _http_type(ports: dict[str, int], formation: dict[str, int]) -> str | None:
    serving = [name for name in ports if formation.get(name, 0) > 0]
    if not serving:
        return None
    return "web" if "web" in serving else serving[0]


def _drain(sampler: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = sampler.sample()
        if s is not None and s.waiting == 0 and s.reserved == 0:
            return True
        time.sleep(0.25)
    return False


def _restored(supervised: Any, timeout: float) -> str | None:
    try:
        supervised.wait_ready(timeout)
    except CrashonlyError as exc:
        return str(exc).split(";")[0]
    return None


def _verify(app: Any, cfg: Config, recording: Recording, supervised: Any, *, ids: list[int],
            run_id: str, drained: bool, restored: str | None, up_code: int | None,
            http_type: str | None, errors: list[str]) -> tuple[Verdict, list[tuple[str, str]]]:
    from .verify import (
        Check,
        check_http,
        check_probe_jobs,
        check_processes,
        check_task_jobs,
    )

    verdict = Verdict()
    jobs = {i: app.backend.get(i) for i in ids}
    totals: list[tuple[str, str]] = []
    if cfg.task is None:
        ledger = probe.read_ledger(app.backend, run_id)
        for check in check_probe_jobs(jobs, ids, ledger):
            verdict.add(check)
        totals.append(("jobs", f"{len(ids)} probe jobs, {len(ledger)} committed runs"))
    else:
        checks, again, extra = check_task_jobs(jobs, ids, supervised.job_starts, cfg.task)
        for check in checks:
            verdict.add(check)
        verdict.add(Check(name="duplicate runs (at-least-once: allowed)", ok=True,
                          summary=f"{again} of {len(ids)} jobs ran more than once "
                                  f"({extra} extra runs)"))
        totals.append(("jobs", f"{len(ids)} jobs of {cfg.task}; {again} ran more than once"))
    if not drained:
        verdict.add(Check(name="queue drained", ok=False,
                          summary=f"jobs still waiting or running {cfg.drain_timeout:g} s after "
                                  "the faults stopped"))
    if http_type is not None:
        verdict.add(check_http(recording.requests, recording.kills, http_type))
    for check in check_processes(recording, stop_timeout=cfg.stop_timeout, restored=restored,
                                 up_code=up_code):
        verdict.add(check)
    for event in recording.db_restarts:
        verdict.add(Check(name="database restart command ran", ok=event.returncode == 0,
                          summary=f"exit {event.returncode} after {event.seconds:.2f} s",
                          details=[event.output] if event.returncode else []))
    kills = recording.kills
    terms = sum(1 for k in kills if k.signal != "KILL")
    totals.append(("faults", f"{len(kills)} kills ({terms} SIGTERM, {len(kills) - terms} "
                             f"SIGKILL)" + (f", {len(recording.db_restarts)} database restart(s)"
                                            if recording.db_restarts else "")))
    totals.append(("processes started", str(len(recording.processes))))
    if recording.requests:
        totals.append(("HTTP requests", str(len(recording.requests))))
    load_end = recording.load_end or 0.0
    totals.append(("time", f"{load_end:.1f} s of faults, drained in "
                           f"{(recording.end or load_end) - load_end:.1f} s"))
    if errors:
        totals.append(("notes", f"{len(errors)} transient errors (first: {errors[0]})"))
    return verdict, totals


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def _finish(cfg: Config, recording: Recording, verdict: Verdict, totals: list[tuple[str, str]],
            supervised: Any, http_type: str | None, formation: dict[str, int]) -> None:
    from ..cli import table
    from .display import summary
    from .report import render
    from .verify import timings

    timing = timings(recording)
    rows: list[tuple[str, ...]] = []
    for name, metrics in timing.items():
        cells = []
        for metric in ("startup", "shutdown", "back"):
            m = metrics.get(metric) or {"n": 0}
            cells.append("-" if not m["n"] else f"{_fmt(m['p50'])} / {_fmt(m['p99'])} (n={m['n']})")
        rows.append((name, *cells))
    print(summary(verdict, totals, rows, table))
    if cfg.report is not None:
        settings = {"Procfile": str(cfg.procfile),
                    "formation": " ".join(f"{k}={v}" for k, v in formation.items()),
                    "duration": f"{cfg.duration:g} s", "kill every": f"{cfg.kill_every:g} s",
                    "signals": ",".join(cfg.signals)}
        page = render(recording=recording, verdict=verdict, title=cfg.title, settings=settings,
                      timing=timing, totals=totals, http_type=http_type,
                      log_tail=[] if verdict.ok else supervised.last_lines(40))
        cfg.report.parent.mkdir(parents=True, exist_ok=True)
        cfg.report.write_text(page, encoding="utf-8")
        print(f"report: {cfg.report}")
    if cfg.json_path is not None:
        data = {"ok": verdict.ok, "checks": [asdict(c) for c in verdict.checks],
                "totals": dict(totals), "timings": timing, "formation": formation,
                "kills": [asdict(k) for k in recording.kills],
                "processes": [asdict(p) for p in recording.processes.values()],
                "db_restarts": [asdict(d) for d in recording.db_restarts],
                "samples": [asdict(s) for s in recording.samples],
                "requests": [asdict(r) for r in recording.requests]}
        cfg.json_path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    if not verdict.ok:
        print("\nthe last lines of crashonly up:")
        print("\n".join(f"  {line}" for line in supervised.last_lines(15)))


# --- the demo --------------------------------------------------------------------------------

def _demo(argv: list[str], prog: str) -> int:
    from ..supervisor.envfile import read_env

    p = argparse.ArgumentParser(
        prog=prog,
        description="The chaos run on the bundled example shop, on SQLite in a temporary folder: "
        "its web and worker processes under `crashonly up`, probe jobs and HTTP requests, a "
        "random SIGTERM or SIGKILL every 0.75 s or so, then the proof that nothing was lost. "
        f"Leaves nothing behind but the report (./{DEMO_REPORT} unless --report says where).",
    )
    _add_run_options(p, duration=25.0, kill_every=0.75, rate=20)
    p.add_argument("--no-report", action="store_true", help="write no HTML report")
    args = p.parse_args(argv)
    root = _example_root()
    if root is None:
        print(f"{prog}: error: the example shop is missing from this installation of crashonly "
              "(crashonly/_demo); reinstall it", file=sys.stderr)
        return 2
    shop = root / "examples" / "shop"
    has_web = (shop / "web.py").is_file() and _importable("uvicorn")
    formation = "web=2,worker=2" if has_web else "web=0,worker=3"
    report = None
    if not args.no_report:
        report = Path(args.report or DEMO_REPORT).absolute()
    folder = Path(tempfile.mkdtemp(prefix="crashonly-demo-"))
    try:
        procfile = folder / "Procfile"
        shutil.copyfile(shop / "Procfile", procfile)
        extra = dict(read_env(shop / ".env", required=False))
        extra["DATABASE_URL"] = f"sqlite:///{folder / 'shop.db'}"
        extra["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH"))
                                              if p)
        extra["PYTHONDONTWRITEBYTECODE"] = "1"
        cfg = Config(procfile=procfile, formation=formation, root=root, url=extra["DATABASE_URL"],
                     duration=args.duration, jobs=args.jobs or round(args.job_rate * args.duration),
                     kill_every=args.kill_every,
                     signals=args.signals, http="/" if has_web else None, report=report,
                     stop_timeout=args.stop_timeout, drain_timeout=args.drain_timeout,
                     seed=args.seed, extra_env=tuple(extra.items()),
                     json_path=Path(args.json_path) if args.json_path else None,
                     title="crashonly demo: the example shop under chaos")
        return run(cfg)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _example_root() -> Path | None:
    """The folder that holds ``examples/shop``: inside the installed package (the wheel ships
    it as ``crashonly/_demo``), else the source checkout this module runs from."""
    here = Path(__file__).resolve()
    for root in (here.parents[1] / "_demo", here.parents[3]):
        if (root / "examples" / "shop" / "app.py").is_file():
            return root
    return None


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main(argv: list[str], prog: str = "crashonly chaos", command: str = "chaos") -> int:
    if sys.platform != "linux":
        raise CrashonlyError("crashonly chaos needs Linux (it runs `crashonly up` and pidfds)")
    if command == "demo":
        return _demo(argv, prog)
    args = build_parser(prog).parse_args(argv)
    try:
        cfg = _config(args)
    except CrashonlyError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return run(cfg)
