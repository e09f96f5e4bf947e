"""The ``crashonly`` command.

argparse (standard library), not click: the worker's cold start is a product feature, and a
management command should not pay for imports it does not use. Commands that live in optional
parts (worker, web, up, chaos…) are imported only when called; each such module has
``main(argv, prog) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from .errors import CrashonlyError

__all__ = ["main"]

# Commands implemented in their own modules, imported only when run: name -> (module, help).
LAZY: dict[str, tuple[str, str]] = {
    "worker": ("crashonly.worker.cli", "run a worker process: crashonly worker MODULE:APP"),
    "web": ("crashonly.web.cli", "serve an ASGI/WSGI app that drains on SIGTERM"),
    "up": ("crashonly.supervisor.cli", "run a Procfile formation (process manager)"),
    "restart": ("crashonly.supervisor.cli", "rolling restart of a running `crashonly up`"),
    "scale": ("crashonly.supervisor.cli", "change the formation of a running `crashonly up`"),
    "chaos": ("crashonly.chaos.cli", "kill processes under load and verify nothing was lost"),
    "demo": ("crashonly.chaos.cli", "the chaos run on the bundled example app (SQLite)"),
}

STATES = ("scheduled", "ready", "reserved", "done", "buried")


def _fmt_time(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain text table (no colour, so it pastes into issues)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _job_dict(job: Any) -> dict[str, Any]:
    return {
        "id": job.id, "task": job.task, "queue": job.queue, "state": job.state.value,
        "priority": job.priority, "attempts": job.attempts, "max_attempts": job.max_attempts,
        "run_at": job.run_at, "created_at": job.created_at,
        "lease_expires_at": job.lease_expires_at, "worker": job.worker,
        "last_error": job.last_error, "result": job.result, "args": job.args,
        "kwargs": job.kwargs, "unique_key": job.unique_key, "finished_at": job.finished_at,
    }


def _app(args: argparse.Namespace, *, create: bool = False) -> Any:
    """The user's app if named, else a bare App on --url / $DATABASE_URL (enough to inspect)."""
    import os

    from .app import App
    from .backends import open_backend
    from .loader import load_app

    if args.app or os.environ.get("CRASHONLY_APP"):
        app = load_app(args.app)
        if args.url:
            app.url = args.url
    else:
        app = App(args.url)
    app._backend = open_backend(app.url, create=create)
    args.opened = app  # closed by main(): a pool left to the garbage collector at exit errs
    return app


def cmd_jobs_list(args: argparse.Namespace) -> int:
    app = _app(args)
    jobs = app.list_jobs(state=args.state, queue=args.queue, limit=args.limit)
    if args.json:
        print(json.dumps([_job_dict(j) for j in jobs], indent=1))
        return 0
    if not jobs:
        print("no jobs")
        return 0
    rows = [(j.id, j.task, j.queue, j.state.value, j.priority, f"{j.attempts}/{j.max_attempts}",
             _fmt_time(j.run_at), (j.last_error or "").strip().splitlines()[-1:][0][:60]
             if j.last_error else "") for j in jobs]
    print(table(rows, ["id", "task", "queue", "state", "prio", "attempts", "run_at", "error"]))
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    job = _app(args).get_job(args.id)
    if args.json:
        print(json.dumps(_job_dict(job), indent=1))
        return 0
    d = _job_dict(job)
    for key in ("run_at", "created_at", "lease_expires_at", "finished_at"):
        d[key] = _fmt_time(d[key])
    error = d.pop("last_error")
    width = max(len(k) for k in d)
    for key, value in d.items():
        print(f"{key.ljust(width)}  {json.dumps(value) if key in ('args', 'kwargs', 'result') else value}")
    if error:
        print(f"\nlast error:\n{error}")
    return 0


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    app = _app(args)
    if args.all_buried:
        print(f"kicked {app.retry_all_buried()} buried job(s) back to ready")
        return 0
    if args.id is None:
        raise CrashonlyError("give a job ID, or --all-buried")
    if app.retry(args.id):
        print(f"job {args.id} is ready again")
        return 0
    print(f"job {args.id} is {app.get_job(args.id).state.value}, not buried: nothing to retry",
          file=sys.stderr)
    return 1


def cmd_jobs_delete(args: argparse.Namespace) -> int:
    if _app(args).delete(args.id):
        print(f"deleted job {args.id}")
        return 0
    print(f"crashonly: error: no job {args.id}", file=sys.stderr)
    return 1


def cmd_stats(args: argparse.Namespace) -> int:
    stats = _app(args).stats()
    if args.json:
        print(json.dumps(stats, indent=1))
        return 0
    if not stats:
        print("no jobs")
        return 0
    rows = [(q, *(s[state] for state in STATES)) for q, s in sorted(stats.items())]
    print(table(rows, ["queue", *STATES]))
    return 0


def _json_arg(text: str, what: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CrashonlyError(f"--{what} is not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, kind):
        raise CrashonlyError(f"--{what} must be a JSON {'array' if kind is list else 'object'}")
    return value


def cmd_enqueue(args: argparse.Namespace) -> int:
    from .errors import UnknownTask

    app = _app(args, create=True)
    if app.tasks and args.task not in app.tasks:
        raise UnknownTask(
            f"unknown task {args.task!r}; this app has: {', '.join(sorted(app.tasks))}"
        )
    handle = app.enqueue(
        args.task, args=_json_arg(args.args, "args", list),
        kwargs=_json_arg(args.kwargs, "kwargs", dict), delay=args.delay,
        priority=args.priority, queue=args.queue, unique_key=args.unique_key,
    )
    print(handle.id)
    if handle.existing_state is not None:
        print(f"crashonly: job {handle.id} ({handle.existing_state.value}) holds this unique key: "
              "nothing was enqueued", file=sys.stderr)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    app = _app(args, create=True)
    version = app.migrate()
    print(f"schema is at version {version} on {app.url.split('@')[-1]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crashonly",
        description="Stateless, disposable processes: a durable job queue, workers, web "
        "processes, a process manager and a chaos verifier.",
        epilog="Commands run elsewhere: "
        + "; ".join(f"{name}: {help_}" for name, (_, help_) in LAZY.items())
        + ". Use `crashonly COMMAND --help` for each.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--app", metavar="MODULE:ATTR",
                        help="your crashonly.App (default: $CRASHONLY_APP; without it a bare "
                        "App on --url is enough to inspect jobs)")
    common.add_argument("--url", help="database URL (default: $DATABASE_URL, else "
                        "sqlite:///crashonly.db)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in LAZY.items():
        sub.add_parser(name, help=help_, add_help=False)

    jobs = sub.add_parser("jobs", help="list, show, retry and delete jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    p = jobs_sub.add_parser("list", parents=[common], help="list jobs, newest first")
    p.add_argument("--state", choices=STATES)
    p.add_argument("--queue")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_jobs_list)
    p = jobs_sub.add_parser("show", parents=[common], help="one job in full, with its error")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_jobs_show)
    p = jobs_sub.add_parser("retry", parents=[common], help="kick a buried job back to ready")
    p.add_argument("id", type=int, nargs="?")
    p.add_argument("--all-buried", action="store_true", help="kick every buried job")
    p.set_defaults(fn=cmd_jobs_retry)
    p = jobs_sub.add_parser("delete", parents=[common], help="delete a job")
    p.add_argument("id", type=int)
    p.set_defaults(fn=cmd_jobs_delete)

    p = sub.add_parser("stats", parents=[common], help="job counts per queue and state")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_stats)
    p = sub.add_parser("enqueue", parents=[common], help="enqueue a job by task name")
    p.add_argument("task")
    p.add_argument("--args", default="[]", help="JSON array of positional arguments")
    p.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    p.add_argument("--delay", type=float, default=None, help="seconds before it may run")
    p.add_argument("--priority", type=int, default=None, help="lower runs first (default 100)")
    p.add_argument("--queue", default=None)
    p.add_argument("--unique-key", default=None)
    p.set_defaults(fn=cmd_enqueue)
    p = sub.add_parser("migrate", parents=[common], help="create or upgrade the schema")
    p.set_defaults(fn=cmd_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in LAZY:
            module = importlib.import_module(LAZY[argv[0]][0])
            code: int = module.main(argv[1:], prog=f"crashonly {argv[0]}", command=argv[0])
            return code
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "fn", None):
            parser.print_help()
            return 2
        try:
            result: int = args.fn(args)
        finally:
            opened = getattr(args, "opened", None)
            if opened is not None:
                opened.close()
        return result
    except CrashonlyError as exc:
        print(f"crashonly: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
