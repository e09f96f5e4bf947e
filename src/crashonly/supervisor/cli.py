"""``crashonly up``, ``crashonly restart`` and ``crashonly scale``.

argparse only, and only standard-library imports: ``up`` is the first thing a developer runs and
the thing a platform restarts, so it starts fast. User mistakes raise a
:class:`~crashonly.supervisor.SupervisorError`, which ``crashonly.cli`` prints as one line.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from . import FormationError, SupervisorError
from .procfile import Procfile

__all__ = ["main"]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 86400 seconds")
    return value


def _add_procfile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--procfile", default="Procfile", metavar="PATH",
                        help="the Procfile (default ./Procfile); restart/scale find the running "
                        "`up` by this path")


def _up_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the processes of a Procfile: a port bound once per web type and handed "
        "to each of its processes (fd 3, LISTEN_FDS), restarts with backoff, rolling restarts on "
        "SIGHUP or `crashonly restart`, graceful stop on SIGTERM/SIGINT.",
    )
    _add_procfile(parser)
    parser.add_argument("-e", "--env", metavar="PATH",
                        help="a .env file (default: .env beside the Procfile, if there is one); "
                        "variables already in the environment win")
    parser.add_argument("-m", "--formation", metavar="TYPE=N,...",
                        help="processes per type, e.g. web=2,worker=3 (all=N for every type; "
                        "default one of each)")
    parser.add_argument("-p", "--port", type=int, default=None,
                        help="base port (default $PORT, else 5000): the Procfile's Nth type, if it "
                        "serves HTTP, listens on base+100*N, as in foreman; 0 lets the kernel pick")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the web ports listen on (default 127.0.0.1)")
    parser.add_argument("-t", "--timeout", type=_seconds, default=30.0, metavar="SECONDS",
                        help="how long a process may take to stop after SIGTERM before SIGKILL "
                        "(default 30)")
    parser.add_argument("--ready-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                        help="how long a process that speaks NOTIFY_SOCKET may take to send "
                        "READY=1 before it is replaced (default 30)")
    parser.add_argument("--backoff-max", type=_seconds, default=30.0, metavar="SECONDS",
                        help="longest wait before restarting a process that keeps dying "
                        "(default 30; `crashonly chaos` lowers it, since it kills on purpose)")
    parser.add_argument("--notify", metavar="TYPE,...", default="",
                        help="types whose processes send READY=1 on NOTIFY_SOCKET: wait for it "
                        "(crashonly commands are recognised without this); other processes are "
                        "taken as ready after 1 s alive")
    parser.add_argument("-d", "--root", metavar="DIR",
                        help="working directory of the processes (default: the current one)")
    return parser


def _up(argv: list[str], prog: str) -> int:
    from .envfile import read_env
    from .formation import parse_formation, resolve_formation
    from .procfile import read_procfile

    args = _up_parser(prog).parse_args(argv)
    procfile = read_procfile(Path(args.procfile))
    env_path = Path(args.env) if args.env else procfile.path.parent / ".env"
    env = read_env(env_path, required=args.env is not None)
    env.update(os.environ)  # the caller's environment wins over the file
    formation = resolve_formation(
        parse_formation(args.formation) if args.formation else {}, procfile.names()
    )
    notify_types = frozenset(t for t in args.notify.replace(",", " ").split())
    unknown = sorted(notify_types - set(procfile.names()))
    if unknown:
        raise FormationError(f"unknown process type {', '.join(map(repr, unknown))} in --notify; "
                             f"the Procfile has: {', '.join(procfile.names())}")
    root = None
    if args.root is not None:
        root = Path(args.root).resolve()
        if not root.is_dir():
            raise SupervisorError(f"--root {args.root}: not a directory")
    base = args.port
    if base is None:
        try:
            base = int(env.get("PORT") or 5000)
        except ValueError:
            raise SupervisorError(f"PORT={env['PORT']!r} is not a port number") from None
    if not 0 <= base <= 65535:
        raise SupervisorError(f"port {base} is out of range 0-65535")
    env["CRASHONLY_UP_PID"] = str(os.getpid())
    env.setdefault("PYTHONUNBUFFERED", "1")  # children's lines should reach us as they happen
    return _run(procfile=procfile, env=env, formation=formation, base=base, args=args,
                root=root, notify_types=notify_types)


def _run(*, procfile: Procfile, env: dict[str, str], formation: dict[str, int], base: int,
         args: argparse.Namespace, root: Path | None, notify_types: frozenset[str]) -> int:
    from .control import listen
    from .logs import Logs
    from .manager import Manager, Settings
    from .sockets import bind_listener

    listeners: dict[str, socket.socket] = {}
    control = None
    logs = None
    try:
        # Everything that can fail on bad input fails here, before any process starts.
        for index, process_type in enumerate(procfile.types):
            if process_type.serves_http:
                port = base + 100 * index if base else 0
                if port > 65535:
                    raise SupervisorError(f"port {port} for {process_type.name} is out of range; "
                                          "use a lower --port")
                listeners[process_type.name] = bind_listener(
                    args.host, port, what=f"process type {process_type.name}")
        control = listen(procfile.path)
        ports = {name: sock.getsockname()[1] for name, sock in listeners.items()}
        settings = Settings(procfile=procfile, env=env, formation=formation, ports=ports,
                            timeout=args.timeout, ready_timeout=args.ready_timeout, root=root,
                            backoff_max=args.backoff_max)
        logs = Logs(procfile.names())
        manager = Manager(settings, logs, listeners=listeners, control=control)
        return manager.run()
    finally:
        if logs is not None:
            logs.close()
        for sock in listeners.values():
            sock.close()
        if control is not None:
            control.close()


def _restart(argv: list[str], prog: str) -> int:
    from .control import request

    parser = argparse.ArgumentParser(
        prog=prog, description="Rolling restart of a running `crashonly up`: each process is "
        "replaced by a new one, which must be ready before the old one gets SIGTERM. Waits "
        "until it is done; exits non-zero if it stopped (a new process failed).")
    _add_procfile(parser)
    parser.add_argument("types", nargs="*", metavar="TYPE", help="only these types (default all)")
    args = parser.parse_args(argv)
    reply = request(Path(args.procfile), {"op": "restart", "types": args.types}, timeout=None)
    restarted = reply.get("restarted") or []
    print(f"restarted {' '.join(restarted) or 'nothing (no process running)'} "
          f"in {float(reply.get('seconds', 0.0)):.2f} s")
    return 0


def _scale(argv: list[str], prog: str) -> int:
    from .control import request
    from .formation import parse_formation

    parser = argparse.ArgumentParser(
        prog=prog, description="Change the formation of a running `crashonly up` (types not "
        "named keep their count). Without TYPE=N, show the formation and the processes.")
    _add_procfile(parser)
    parser.add_argument("counts", nargs="*", metavar="TYPE=N", help="e.g. web=3 worker=0")
    args = parser.parse_args(argv)
    procfile = Path(args.procfile)
    if not args.counts:
        reply = request(procfile, {"op": "status"}, timeout=10.0)
        print(" ".join(f"{k}={v}" for k, v in reply["formation"].items()))
        for process in reply["processes"]:
            print(f"{process['name']:<16} pid {process['pid']:<8} {process['state']}")
        return 0
    counts = parse_formation(" ".join(args.counts))
    if "all" in counts:
        raise FormationError("scale takes TYPE=N for named types, not all=N")
    reply = request(procfile, {"op": "scale", "counts": counts}, timeout=10.0)
    print(" ".join(f"{k}={v}" for k, v in reply["formation"].items()))
    return 0


def main(argv: list[str], prog: str, command: str = "up") -> int:
    if sys.platform != "linux":
        raise SupervisorError("crashonly up needs Linux (abstract sockets, process groups, prctl)")
    if command == "restart":
        return _restart(argv, prog)
    if command == "scale":
        return _scale(argv, prog)
    return _up(argv, prog)
