"""The listening sockets ``up`` binds once per HTTP process type and hands to every child.

Why one socket shared by file descriptor, and never ``SO_REUSEPORT``: the accept queue belongs to
the socket, not to a process. While ``up`` holds the socket, a web child can close its copy and
drain while its siblings (or its successor) keep accepting from the same queue; connections that
arrive while no child is accepting wait in the backlog instead of being refused. With
``SO_REUSEPORT`` each process has its own queue, and the connections queued on a socket are reset
when its process closes it.

In the child the socket is always file descriptor 3 (``SD_LISTEN_FDS_START``), with
``LISTEN_FDS=1``, ``LISTEN_FDNAMES=<type>`` and ``LISTEN_PID`` as systemd socket activation sets
them, so ``crashonly web --fd 3`` and any server that understands socket activation can use it.
"""

from __future__ import annotations

import errno
import fcntl
import socket

from . import PortInUse, SupervisorError

__all__ = ["CHILD_FD", "bind_listener"]

CHILD_FD = 3  # SD_LISTEN_FDS_START: where the child finds the socket


def bind_listener(host: str, port: int, *, what: str) -> socket.socket:
    """Bind and listen on ``host:port`` (port 0: the kernel picks one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SupervisorError(f"cannot resolve --host {host!r}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # REUSEADDR only lets us rebind a port whose old connections linger in TIME_WAIT; it
        # does not let two live listeners share the port (that is REUSEPORT, which we avoid).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"port {port} on {host} ({what}) is already in use; stop whatever holds it "
                f"or choose another base port with --port"
            ) from None
        raise SupervisorError(f"cannot listen on {host}:{port} ({what}): {exc}") from None
    if sock.fileno() <= CHILD_FD:
        # posix_spawn's dup2 onto the same number would keep FD_CLOEXEC on some libcs;
        # keep the parent's copy well away from the numbers children use.
        high = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
        sock.close()
        sock = socket.socket(family, kind, proto, fileno=high)
    return sock
