"""The control socket behind ``crashonly restart`` and ``crashonly scale``.

A Linux abstract-namespace unix stream socket named from the Procfile's absolute path
(``@crashonly-up/<sha256 prefix>``): nothing is written to disk (P3: no state on the local
filesystem, and no stale socket file after a SIGKILL; the kernel frees the name when ``up``
dies), ``restart``/``scale`` find the right ``up`` from the same ``-f Procfile``, and a second
``up`` on the same Procfile is refused instead of fighting the first over its children.
Abstract sockets have no file permissions, so ``up`` answers only peers running as its own user
(or root), checked with ``SO_PEERCRED``.

Protocol: one JSON object per line each way. Requests: ``{"op": "restart", "types": [...]}``
(answered when the rolling restart has finished), ``{"op": "scale", "counts": {...}}``,
``{"op": "status"}``. Replies: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

from . import ControlError

__all__ = ["Connection", "listen", "request", "socket_name"]

_UCRED = struct.Struct("3i")
MAX_REQUEST = 64 * 1024


def socket_name(procfile: Path) -> str:
    digest = hashlib.sha256(str(procfile.resolve()).encode()).hexdigest()[:24]
    return f"crashonly-up/{digest}"


def listen(procfile: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind("\0" + socket_name(procfile))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ControlError(
                f"another `crashonly up` is already running {procfile.resolve()}; stop it "
                "first, or use `crashonly restart` / `crashonly scale` to change it"
            ) from None
        raise ControlError(f"cannot open the control socket: {exc}") from None
    sock.listen(16)
    sock.setblocking(False)
    return sock


class Connection:
    """One client of the control socket, read without blocking ``up``'s loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.trusted = self._peer_uid() in (os.getuid(), 0)

    def _peer_uid(self) -> int:
        raw = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        uid: int = _UCRED.unpack(raw)[1]
        return uid

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
        except ValueError:
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
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect("\0" + socket_name(procfile))
        except (ConnectionRefusedError, FileNotFoundError):
            raise ControlError(
                f"no `crashonly up` is running {procfile.resolve()} (start one, or point -f at "
                "the Procfile it runs)"
            ) from None
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
    finally:
        sock.close()
    reply: dict[str, Any] = json.loads(data)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "`crashonly up` refused the request")))
    return reply
