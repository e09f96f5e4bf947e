"""The control socket behind ``crashonly restart`` and ``crashonly scale``.

A Linux abstract-namespace unix stream socket. Nothing is written to disk (P3: no state on the
local filesystem, and no stale socket file after a SIGKILL; the kernel frees the name when
``up`` dies).

Abstract names have no permissions: any local user can bind any free name. So the name is
``@crashonly-up/<sha256 prefix of the Procfile's absolute path>/<128 random bits>``: the prefix
lets ``restart``/``scale`` find the ``up`` of a given ``-f Procfile`` (they list the listening
sockets in ``/proc/net/unix``), the random part means no one can take ``up``'s name before it
starts. Both sides check the other's credentials with ``SO_PEERCRED``: ``up`` answers only
peers running as its own user (or root), and a client talks only to an ``up`` running as its own
user (or root), so a socket another user bound under the same prefix is skipped, never obeyed.
A second ``up`` on the same Procfile finds the first the same way and refuses to start.

Protocol: one JSON object per line each way. Requests: ``{"op": "restart", "types": [...]}``
(answered when the rolling restart has finished), ``{"op": "scale", "counts": {...}}``,
``{"op": "status"}``. Replies: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import struct
from pathlib import Path
from typing import Any

from . import ControlError

__all__ = ["Connection", "listen", "request", "socket_prefix"]

_UCRED = struct.Struct("3i")
_ACCEPTCON = 0x10000  # /proc/net/unix flag of a listening socket
MAX_REQUEST = 64 * 1024
CONNECT_TIMEOUT = 2.0


def socket_prefix(procfile: Path) -> str:
    digest = hashlib.sha256(str(procfile.resolve()).encode()).hexdigest()[:24]
    return f"crashonly-up/{digest}/"


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected unix socket (for a client: the
    one that called ``listen``)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    uid: int = _UCRED.unpack(raw)[1]
    return uid


def trusted(uid: int) -> bool:
    return uid in (os.getuid(), 0)


def _listening(prefix: str) -> list[str]:
    """Abstract names of listening unix sockets starting with ``prefix`` (this network
    namespace), from ``/proc/net/unix``."""
    names = []
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as table:
            next(table, None)  # the header
            for line in table:
                fields = line.split()
                if len(fields) < 8 or not fields[7].startswith("@" + prefix):
                    continue
                if int(fields[3], 16) & _ACCEPTCON:
                    names.append(fields[7][1:])
    except OSError as exc:
        raise ControlError(f"cannot list the control sockets (/proc/net/unix: {exc})") from None
    return names


def _connect(name: str) -> socket.socket | None:
    """A connection to ``name`` if it is served by a trusted user, else None."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(CONNECT_TIMEOUT)  # a squatter that never accepts must not hang us
    try:
        sock.connect("\0" + name)
        if trusted(peer_uid(sock)):
            return sock
    except OSError:
        pass
    sock.close()
    return None


def _find(procfile: Path, *, besides: str | None = None) -> socket.socket | None:
    for name in _listening(socket_prefix(procfile)):
        if name != besides:
            sock = _connect(name)
            if sock is not None:
                return sock
    return None


def listen(procfile: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    name = socket_prefix(procfile) + secrets.token_hex(16)
    try:
        sock.bind("\0" + name)
        sock.listen(16)
        # Looked for after binding: two `up`s starting at once see each other and both refuse,
        # rather than both running.
        other = _find(procfile, besides=name)
    except OSError as exc:
        sock.close()
        raise ControlError(f"cannot open the control socket: {exc}") from None
    if other is not None:
        other.close()
        sock.close()
        raise ControlError(
            f"another `crashonly up` is already running {procfile.resolve()}; stop it "
            "first, or use `crashonly restart` / `crashonly scale` to change it"
        )
    sock.setblocking(False)
    return sock


class Connection:
    """One client of the control socket, read without blocking ``up``'s loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.trusted = trusted(peer_uid(sock))

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_request(self) -> dict[str, Any] | None:
        """The request once a full line has arrived; raises EOFError if the client left."""
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return None
        if not data:
            raise EOFError
        self.buffer += data
        if b"\n" not in self.buffer:
            if len(self.buffer) > MAX_REQUEST:
                raise EOFError
            return None
        line = self.buffer.split(b"\n", 1)[0]
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            return {"op": "invalid"}
        return request if isinstance(request, dict) else {"op": "invalid"}

    def reply(self, message: dict[str, Any]) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(2.0)  # a client that stops reading must not stall `up`
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            pass
        finally:
            self.sock.close()


def request(procfile: Path, message: dict[str, Any], *, timeout: float | None) -> dict[str, Any]:
    """Send one request to the ``up`` running ``procfile`` and return its reply."""
    sock = _find(procfile)
    if sock is None:
        raise ControlError(
            f"no `crashonly up` is running {procfile.resolve()} as this user (start one, or "
            "point -f at the Procfile it runs)")
    sock.settimeout(timeout)
    try:
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ControlError("`crashonly up` closed the connection without answering "
                                   "(did it stop?)")
            data += chunk
    except TimeoutError:
        raise ControlError(f"`crashonly up` did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise ControlError(f"lost the connection to `crashonly up`: {exc}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise ControlError("`crashonly up` sent a reply that is not a JSON object")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "`crashonly up` refused the request")))
    return reply
