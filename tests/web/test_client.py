"""crashonly.client against servers that never heal, and redirects to other hosts (real
sockets, real TLS)."""

from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crashonly import client


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers a final job view; a path under /go/ redirects to the URL after it."""

    seen: list[tuple[int, dict[str, str]]]

    def do_GET(self) -> None:
        self.seen.append((self.server.server_address[1], dict(self.headers)))
        if self.path.startswith("/go/"):
            target = self.path[len("/go/"):]
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"state": "done", "final": True, "result": 7}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[tuple[list[str], list[tuple[int, dict[str, str]]]]]:
    seen: list[tuple[int, dict[str, str]]] = []
    handler = type("Handler", (Recorder,), {"seen": seen})
    made = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in made]
    for t in threads:
        t.start()
    yield [f"http://127.0.0.1:{s.server_address[1]}" for s in made], seen
    for s in made:
        s.shutdown()
        s.server_close()


def test_credentials_do_not_follow_a_redirect_to_another_host(servers: Any) -> None:
    (a, b), seen = servers
    secret = {"Authorization": "Bearer s3cret", "Cookie": "session=abc"}
    # same origin: the credentials go along
    assert client.wait(f"{a}/go/{a}/jobs", 1, timeout=5, headers=secret) == 7
    assert [h.get("Authorization") for _, h in seen] == ["Bearer s3cret"] * 2
    seen.clear()
    # another origin (another port): they do not
    assert client.wait(f"{a}/go/{b}/jobs", 1, timeout=5, headers=secret) == 7
    (_first, to_a), (_second, to_b) = seen
    assert to_a["Authorization"] == "Bearer s3cret" and to_a["Cookie"] == "session=abc"
    assert "Authorization" not in to_b and "Cookie" not in to_b, to_b


def test_a_wrong_scheme_fails_at_once() -> None:
    for url in ("ftp://127.0.0.1/jobs", "127.0.0.1:8000/jobs", "file:///etc/passwd"):
        started = time.monotonic()
        with pytest.raises(ValueError, match="http:// or https://"):
            client.wait(url, 1)
        with pytest.raises(ValueError):
            next(client.events(url, 1))
        assert time.monotonic() - started < 1


def test_tls_failures_are_not_retried(tmp_path: Path, servers: Any) -> None:
    (plain, _), _ = servers
    # TLS spoken to a plain-HTTP port
    started = time.monotonic()
    with pytest.raises(client.ClientError, match="TLS"):
        client.wait(plain.replace("http://", "https://") + "/jobs", 1)
    assert time.monotonic() - started < 2
    # a certificate that does not verify (self-signed)
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    handler = type("Handler", (Recorder,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        with pytest.raises(client.ClientError, match="CERTIFICATE_VERIFY_FAILED"):
            client.wait(f"https://127.0.0.1:{server.server_address[1]}/jobs", 1)
        with pytest.raises(client.ClientError, match="CERTIFICATE_VERIFY_FAILED"):
            next(client.events(f"https://127.0.0.1:{server.server_address[1]}/jobs", 1))
        assert time.monotonic() - started < 2
    finally:
        server.shutdown()
        server.server_close()
