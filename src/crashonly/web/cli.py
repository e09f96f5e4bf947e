"""``crashonly web MODULE:APP``: serve an ASGI or WSGI app that drains on SIGTERM.

Imports stay inside :func:`main` so that ``crashonly --help`` does not pay for uvicorn.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import socket
import sys
from typing import Any

from ..errors import ConfigError
from .limits import MAX_CONNECTIONS

__all__ = ["SECRET_ENV", "load_web_app", "main"]

SECRET_ENV = "CRASHONLY_SECRET_KEY"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range 0-65535")
    return port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < 86400:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 86400 seconds")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{text} is not between 1 and 1000000")
    return value


def _path(text: str) -> str:
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"a probe path starts with '/': {text!r}")
    return text


def build_parser(prog: str) -> argparse.ArgumentParser:
    env_port = os.environ.get("PORT")
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve an ASGI (Starlette, FastAPI…) or WSGI (Flask, Django…) app on uvicorn. "
        "SIGTERM drains: stop accepting, /readyz answers 503, in-flight requests finish "
        "(up to --grace), long-polls end with a reconnect hint, exit 0.",
    )
    parser.add_argument("app", metavar="MODULE:APP",
                        help="the app object, e.g. myproject.web:app (APP defaults to 'app')")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    now = f"; now {env_port}" if env_port else ""
    parser.add_argument("--port", type=_port, default=None,
                        help=f"port (default $PORT, else 8000{now})")
    parser.add_argument("--fd", type=int, default=None, metavar="N",
                        help="serve the inherited listening socket on file descriptor N instead of "
                        "binding (as `crashonly up` hands it over); systemd's LISTEN_FDS is "
                        "honoured too")
    parser.add_argument("--grace", type=_seconds, default=10.0, metavar="SECONDS",
                        help="how long in-flight requests may run after SIGTERM (default 10)")
    parser.add_argument("--interface", choices=("auto", "asgi", "wsgi"), default="auto",
                        help="how to call the app (default: detected)")
    parser.add_argument("--livez", type=_path, default="/livez", help="liveness probe path")
    parser.add_argument("--readyz", type=_path, default="/readyz", help="readiness probe path")
    parser.add_argument("--keep-alive", type=int, default=5, metavar="SECONDS",
                        help="close idle keep-alive connections after this long (default 5)")
    parser.add_argument("--header-timeout", type=_seconds, default=10.0, metavar="SECONDS",
                        help="close a connection whose request head takes longer (default 10)")
    parser.add_argument("--idle-linger", type=_seconds, default=1.0, metavar="SECONDS",
                        help="after SIGTERM, how long an idle keep-alive connection may still "
                        "bring a request before it is closed (default 1)")
    parser.add_argument("--max-connections", type=_count, default=MAX_CONNECTIONS, metavar="N",
                        help=f"connections open at once; more are answered 503 (default "
                        f"{MAX_CONNECTIONS}, at most 3/4 of the open-file limit)")
    parser.add_argument("--body-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                        help="a request body must arrive within this long of its head, or "
                        "the answer is 408 (default 30)")
    parser.add_argument("--root-path", default="", help="ASGI root_path (mounted under a prefix)")
    parser.add_argument("--proxy-headers", action="store_true",
                        help="trust X-Forwarded-* from --forwarded-allow-ips")
    parser.add_argument("--forwarded-allow-ips", default=None)
    parser.add_argument("--access-log", action="store_true", help="log one line per request")
    parser.add_argument("--http", choices=("auto", "h11", "httptools"), default="auto",
                        help="HTTP parser (default: httptools if installed, else h11)")
    parser.add_argument("--die-with-parent", action="store_true",
                        help="drain and stop when the parent process dies; for supervisors that "
                        "cannot stop their children themselves (same as "
                        "CRASHONLY_DIE_WITH_PARENT=1; not needed under crashonly up)")
    return parser


def load_web_app(spec: str) -> Any:
    from ..loader import import_object

    app = import_object(spec, "MODULE:APP, e.g. myproject.web:app")
    if not callable(app):
        raise ConfigError(f"{spec} is a {type(app).__name__}, not an ASGI or WSGI app")
    return app


def is_asgi(app: Any) -> bool:
    """ASGI 3 apps are coroutine functions or objects with an async ``__call__``."""
    call = type(app).__call__ if not inspect.isfunction(app) else None
    return inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call)


def _listeners(args: argparse.Namespace) -> list[socket.socket]:
    from .listeners import from_fd, from_systemd, listen_tcp

    if args.fd is not None:
        return [from_fd(args.fd)]
    inherited = from_systemd()
    if inherited:
        return inherited
    port = args.port
    if port is None:
        port = _port(os.environ["PORT"]) if os.environ.get("PORT") else 8000
    return [listen_tcp(args.host, port)]


def _secret(listeners: list[socket.socket], log: logging.Logger) -> None:
    """Sessions are signed with $CRASHONLY_SECRET_KEY, the same in every web process. When only
    this machine can connect (every socket a loopback TCP address), a missing key is kept in
    the session store instead, made once for the whole formation; anywhere else (a public
    address, or a unix socket, which a proxy may serve to the world) refuse to start without
    one."""
    from .listeners import is_loopback
    from .sessions import KEY_HINT, parse_keys, use_stored_key

    if parse_keys(os.environ.get(SECRET_ENV, ""), f"${SECRET_ENV}"):
        return
    if not all(is_loopback(s) for s in listeners):
        raise ConfigError(f"{SECRET_ENV} is not set: it signs session cookies and must be the "
                          f"same in every web process; {KEY_HINT}")
    use_stored_key()
    log.info("%s is not set: on loopback, sessions share a key kept in their store", SECRET_ENV)


def main(argv: list[str], prog: str = "crashonly web", command: str = "web") -> int:
    from ..lifecycle import DIE_WITH_PARENT_ENV, die_with_parent  # notes our parent, early

    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("crashonly.web")
    try:
        from .limits import Limits
        from .server import ServeOptions, serve
    except ImportError as exc:
        raise ConfigError(f"crashonly web needs uvicorn ({exc}): pip install 'crashonly[web]'"
                          ) from None
    if args.die_with_parent:
        os.environ[DIE_WITH_PARENT_ENV] = "1"
    die_with_parent()  # only if asked: by default we outlive the shell that started us
    listeners = _listeners(args)
    try:
        _secret(listeners, log)
        app = load_web_app(args.app)
        wsgi = args.interface == "wsgi" or (args.interface == "auto" and not is_asgi(app))
        if wsgi:
            try:
                from a2wsgi import WSGIMiddleware
            except ImportError:
                raise ConfigError(f"{args.app} is a WSGI app, which needs a2wsgi: "
                                  "pip install 'crashonly[web]'") from None
            app = WSGIMiddleware(app)
        options = ServeOptions(
            grace=args.grace, livez=args.livez, readyz=args.readyz, keep_alive=args.keep_alive,
            header_timeout=args.header_timeout, idle_linger=args.idle_linger,
            access_log=args.access_log,
            root_path=args.root_path, proxy_headers=args.proxy_headers,
            forwarded_allow_ips=args.forwarded_allow_ips,
            shared=args.fd is not None or bool(os.environ.get("LISTEN_FDS")), wsgi=wsgi,
            limits=Limits(max_connections=args.max_connections, body_timeout=args.body_timeout),
        )
        log.info("serving %s (%s) on uvicorn %s", args.app, "WSGI" if wsgi else "ASGI",
                 _uvicorn_version())
        return serve(app, listeners, options, http=args.http)
    except BaseException:
        for sock in listeners:
            sock.close()
        raise


def _uvicorn_version() -> str:
    import uvicorn

    return str(uvicorn.__version__)
