"""Speaks the notify protocol (STATUS=...) but never says READY=1."""

import os
import socket
import time

address = os.environ["NOTIFY_SOCKET"]
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
    sock.connect("\0" + address[1:])
    sock.sendall(b"STATUS=warming up forever")
print("booting", flush=True)
time.sleep(60)
