"""Listening sockets: bound here, inherited by file descriptor, or handed over by systemd.

A web process never needs to own its port. ``crashonly up`` (and systemd socket activation)
holds the listening socket and hands it to each web process, so that one process can exit while
another keeps accepting: the kernel's accept queue belongs to the socket, not to a process.
That is why stopping here means *closing our descriptor*, never ``shutdown()``: ``shutdown`` acts
on the socket itself and would stop every process sharing it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping

from ..errors import ConfigError

__all__ = [
    "SD_LISTEN_FDS_START", "describe", "from_fd", "from_systemd", "is_loopback", "listen_tcp",
]

SD_LISTEN_FDS_START = 3


def listen_tcp(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """A new listening TCP socket on ``host:port`` (``port`` 0 picks a free one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: unknown host ({exc.strerror})"
                          ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        hint = " (another process is using it; pick another --port)" if exc.errno == 98 else ""
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    sock.setblocking(False)
    return sock


def from_fd(fd: int) -> socket.socket:
    """The listening socket on inherited descriptor ``fd`` (its family and type are detected)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigError(f"file descriptor {fd} is not an open socket ({exc.strerror})") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()  # not ours to close
        raise ConfigError(f"file descriptor {fd} is not a listening stream socket")
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


def from_systemd(environ: Mapping[str, str] | None = None) -> list[socket.socket]:
    """Sockets passed by the systemd protocol (``LISTEN_PID``/``LISTEN_FDS``, from fd 3 on);
    an empty list when none were passed to *this* process. The variables are removed so that
    our own children do not believe the sockets are theirs."""
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    if not pid or not count:
        return []
    try:
        if int(pid) != os.getpid():
            return []
        n = int(count)
    except ValueError:
        raise ConfigError(f"malformed LISTEN_PID={pid!r} / LISTEN_FDS={count!r}") from None
    if environ is None:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    return [from_fd(SD_LISTEN_FDS_START + i) for i in range(n)]


def describe(sock: socket.socket) -> str:
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{address or '(unnamed)'}"
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def is_loopback(sock: socket.socket) -> bool:
    """True when only this machine can connect: a TCP socket on a loopback address. A unix
    socket is not: a reverse proxy (nginx) commonly serves one to the whole network."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        return ipaddress.ip_address(sock.getsockname()[0]).is_loopback
    except ValueError:
        return False
