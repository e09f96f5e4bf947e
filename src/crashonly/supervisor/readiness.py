"""The server side of the systemd notify protocol, one datagram socket per child.

Each child gets its own abstract-namespace socket, so a message says which child it is from
even when the child is a shell that forked the real server (a shared socket would need the
sender's pid, which a wrapper hides). The kernel picks the name (autobind, ``NOTIFY_SOCKET=@1a2b3``):
a name ``up`` chose would be predictable, and any local user could bind it first and make the
start fail. Abstract sockets have no file permissions, so messages whose sender runs as another
user are dropped.
"""

from __future__ import annotations

import os
import socket
import struct

__all__ = ["NotifySocket"]

_UCRED = struct.Struct("3i")  # pid, uid, gid


class NotifySocket:
    def __init__(self) -> None:
        self.sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self.sock.bind("")  # autobind: a free abstract name chosen by the kernel
            name: bytes = self.sock.getsockname()
        except OSError:
            self.sock.close()
            raise
        self.address = "@" + name[1:].decode()  # the NOTIFY_SOCKET value

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> list[str]:
        """Every ``KEY=VALUE`` assignment received so far (empty when none is pending)."""
        assignments: list[str] = []
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return assignments
            except OSError:
                return assignments
            uid = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    _, uid, _ = _UCRED.unpack(payload[: _UCRED.size])
            if uid not in (os.getuid(), 0):
                continue
            text = data.decode("utf-8", "replace")
            assignments.extend(line for line in text.splitlines() if "=" in line)

    def close(self) -> None:
        self.sock.close()
