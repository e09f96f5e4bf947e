"""A small stdlib web server for the supervisor's tests: serves on the inherited socket.

Finds its listening socket through systemd's protocol (LISTEN_PID must be its own pid, so this
also checks that `up` exec'd it), says READY=1 on NOTIFY_SOCKET (after $READY_DELAY seconds),
answers every GET with its pid, and on SIGTERM stops accepting, finishes in-flight requests
and exits 0. `GET /slow` takes $SLOW seconds (default 0.5).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def notify(state: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect("\0" + address[1:] if address.startswith("@") else address)
            sock.sendall(state.encode())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        if self.path == "/slow":
            print("slow request started", flush=True)
            time.sleep(float(os.environ.get("SLOW", "0.5")))
        body = f"{os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for in-flight requests: that is the drain


def main() -> int:
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        print(f"bad socket activation: LISTEN_PID={os.environ.get('LISTEN_PID')} "
              f"pid={os.getpid()}", flush=True)
        return 2
    listener = socket.socket(fileno=3)
    listener.setblocking(False)  # siblings share the queue: a woken accept may find it empty
    server = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket = listener
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    time.sleep(float(os.environ.get("READY_DELAY", "0")))
    notify("READY=1")
    print(f"serving on fd 3 as pid {os.getpid()}", flush=True)
    # Poll: a process-directed signal may land on a server thread, and then a main thread
    # blocked in an untimed wait would never wake up to run the Python handler.
    while not stop.wait(0.1):
        pass
    server.shutdown()  # no more accept() here; the socket stays open in `up` and siblings
    listener.close()
    server.server_close()  # joins in-flight request threads
    print("drained", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
