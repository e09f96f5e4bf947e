"""``crashonly worker MODULE:APP``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run jobs of a crashonly app. Starts in milliseconds; on SIGTERM/SIGINT "
        "stops reserving, gives running jobs --grace seconds, then hands every job still "
        "running back to the queue (no attempt counted) and exits 0. A second signal hands "
        "them back at once. After SIGKILL, any live worker returns this one's jobs.",
    )
    p.add_argument("app", nargs="?", metavar="MODULE:APP",
                   help="your crashonly.App, e.g. myproject.tasks:app (default: $CRASHONLY_APP)")
    p.add_argument("--queue", "-q", action="append", default=[], metavar="NAME",
                   help="queue to take jobs from (repeatable; default: every queue of the "
                   "app's tasks)")
    p.add_argument("--concurrency", "-c", type=int, default=1, metavar="N",
                   help="jobs run at once: async ones on one event loop, sync ones on a "
                   "thread pool (default 1; scale out with more processes)")
    p.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                   help="on SIGTERM, how long running jobs may finish before they are "
                   "released (default 10)")
    p.add_argument("--prefetch", type=int, default=None, metavar="N",
                   help="extra jobs to claim per transaction (default: adapt to job length)")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--url", help="database URL (overrides the app's; default $DATABASE_URL)")
    p.add_argument("--die-with-parent", action="store_true",
                   help="stop (as on SIGTERM) when the parent process dies; for supervisors "
                   "that cannot stop their children themselves (same as "
                   "CRASHONLY_DIE_WITH_PARENT=1; not needed under crashonly up)")
    return p


def main(argv: Sequence[str], prog: str = "crashonly worker", command: str = "worker") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.concurrency < 1:
        print(f"{prog}: error: --concurrency must be at least 1", file=sys.stderr)
        return 2
    if args.grace < 0:
        print(f"{prog}: error: --grace must be 0 or more seconds", file=sys.stderr)
        return 2
    from ..lifecycle import DIE_WITH_PARENT_ENV, Shutdown
    from ..loader import load_app
    from .heartbeat import ENV
    from .process import Worker, WorkerConfig

    # Handlers first: a SIGTERM that arrives while the app imports still means "stop politely".
    shutdown = Shutdown().install()
    if args.die_with_parent:
        os.environ[DIE_WITH_PARENT_ENV] = "1"  # read (and removed) by the worker once ready
    app = load_app(args.app)
    if args.url:
        app.url = args.url
    helper = os.environ.get(ENV, "1").lower() not in ("0", "false", "no", "off")
    config = WorkerConfig(queues=tuple(args.queue), concurrency=args.concurrency,
                          grace=args.grace, prefetch=args.prefetch, log_format=args.log_format,
                          heartbeat_helper=helper)
    return Worker(app, config, shutdown=shutdown).run()
