"""Waiting for a job over HTTP, from any Python program, with the standard library only.

:func:`wait` long-polls the job-status router of :mod:`crashonly.web.jobs` and returns the
job's result. Web processes come and go (D3): when the one answering drains (``503``), dies
(connection reset or refused) or a proxy in front says ``502``/``504``, the client reconnects,
backing off from 50 ms to 1 s, until ``timeout``. :func:`events` does the same over server-sent
events, resuming with ``Last-Event-ID``.

What never heals is not retried: a URL that is not ``http://`` or ``https://`` is a
``ValueError`` at once, and a TLS failure (a certificate that does not verify, TLS spoken to
a plain-HTTP port) a :class:`ClientError`. Redirects are followed, but ``Authorization``,
``Cookie`` and ``Proxy-Authorization`` headers go only to the origin (scheme, host, port)
they were given for, never to another one a redirect names.

::

    CrashonlyError
    ├── JobNotFound      404: no such job (or not yours)
    ├── JobFailed        the job was buried; carries its last error line
    ├── JobTimeout       ``timeout`` passed first (the job goes on)
    └── ClientError      any other answer: an HTTP status the protocol does not use, or a
                         TLS failure (``status`` is None)
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

from .errors import CrashonlyError, JobFailed, JobNotFound, JobTimeout

__all__ = ["ClientError", "events", "wait"]

_RETRY_STATUS = frozenset({502, 503, 504})
_GONE = (ConnectionError, http.client.HTTPException, socket.timeout, TimeoutError, OSError)


class ClientError(CrashonlyError):
    """The server answered something the job-status protocol does not use (``status``), or
    could not be talked to in a way that retrying would fix (``status`` None)."""

    def __init__(self, status: int | None, body: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: {body[:200]}" if status is not None else body)


_CREDENTIALS = ("Authorization", "Cookie", "Proxy-authorization")  # as urllib capitalizes


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib copies every header onto a redirect, wherever it points: credentials stay
    with their origin."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            for name in _CREDENTIALS:
                new.remove_header(name)
        return new


_opener = urllib.request.build_opener(_Redirects)


def _check_url(base_url: str) -> None:
    scheme = urllib.parse.urlsplit(base_url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"crashonly.client needs an http:// or https:// URL, not {scheme!r}"
                         f" ({base_url[:80]!r})")


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind ``exc``, if that is what it is: it will fail the same way again."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return reason if isinstance(reason, ssl.SSLError) else None


def _open(request: urllib.request.Request, timeout: float) -> Any:
    try:
        return _opener.open(request, timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except _GONE as exc:
        failure = _tls_failure(exc)
        if failure is not None:
            raise ClientError(None, f"TLS failure talking to {request.full_url}: {failure}"
                              ) from None
        raise


def _url(base: str, job_id: int, suffix: str, query: dict[str, str] | None = None) -> str:
    url = f"{base.rstrip('/')}/{int(job_id)}{suffix}"
    return f"{url}?{urllib.parse.urlencode(query)}" if query else url


class _Backoff:
    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.delay = 0.05

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def sleep(self, what: str) -> None:
        left = self.left()
        if left is not None and left <= 0:
            raise JobTimeout(f"gave up waiting: {what}")
        pause = self.delay * (0.5 + random.random())
        time.sleep(pause if left is None else max(0.0, min(pause, left)))
        self.delay = min(1.0, self.delay * 2)

    def reset(self) -> None:
        self.delay = 0.05


def _final(job_id: int, view: dict[str, Any]) -> Any:
    if view.get("state") == "buried":
        raise JobFailed(job_id, view.get("error"))
    return view.get("result")


def wait(base_url: str, job_id: int, *, timeout: float | None = None, poll: float = 30.0,
         headers: Mapping[str, str] | None = None) -> Any:
    """Block until job ``job_id`` is done and return its result.

    ``base_url`` is where the router is mounted (``http://host:8000/jobs``); ``headers`` go with
    every request (a session cookie, an ``Authorization``). Raises :class:`JobFailed`,
    :class:`JobNotFound`, :class:`JobTimeout` (after ``timeout`` seconds) or
    :class:`ClientError`.
    """
    _check_url(base_url)
    deadline = None if timeout is None else time.monotonic() + timeout
    backoff = _Backoff(deadline)
    while True:
        left = backoff.left()
        if left is not None and left <= 0:
            raise JobTimeout(f"job {job_id} did not finish within {timeout} s")
        this_poll = poll if left is None else max(0.0, min(poll, left))
        url = _url(base_url, job_id, "/wait", {"timeout": f"{this_poll:.3f}"})
        request = urllib.request.Request(url, headers=dict(headers or {}))
        try:
            with _open(request, this_poll + 10) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
            exc.close()
        except _GONE as exc:  # refused, reset, closed mid-answer: the process went away
            backoff.sleep(f"job {job_id}: server unreachable ({exc})")
            continue
        if status in _RETRY_STATUS:
            if status == 503:
                backoff.reset()  # a draining server: another one is already there
                time.sleep(0.01)
            else:
                backoff.sleep(f"job {job_id}: HTTP {status}")
            continue
        if status == 404:
            raise JobNotFound(f"no job {job_id} at {base_url}")
        try:
            view = json.loads(body)
        except ValueError:
            backoff.sleep(f"job {job_id}: unreadable answer")
            continue
        if status == 200 and view.get("final"):
            return _final(job_id, view)
        if status not in (200, 202):
            raise ClientError(status, body.decode("utf-8", "replace"))
        backoff.reset()


def events(base_url: str, job_id: int, *, timeout: float | None = None,
           headers: Mapping[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Yield the job's states (its JSON view) as they change, ending after the final one;
    reconnects with ``Last-Event-ID`` so no state is repeated across reconnections."""
    _check_url(base_url)
    deadline = None if timeout is None else time.monotonic() + timeout
    backoff = _Backoff(deadline)
    last_id: str | None = None
    while True:
        request_headers = {"Accept": "text/event-stream", **dict(headers or {})}
        if last_id is not None:
            request_headers["Last-Event-ID"] = last_id
        request = urllib.request.Request(_url(base_url, job_id, "/events"),
                                         headers=request_headers)
        left = backoff.left()
        if left is not None and left <= 0:
            raise JobTimeout(f"job {job_id} did not finish within {timeout} s")
        try:
            with _open(request, 60 if left is None else left) as response:
                if response.status == 204:
                    return
                event_id: str | None = None
                kind, data = "message", list[str]()
                for raw in response:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if line == "":
                        if data and kind == "state":
                            view = json.loads("\n".join(data))
                            last_id = event_id or last_id
                            backoff.reset()
                            yield view
                            if view.get("final"):
                                return
                        event_id, kind, data = None, "message", []
                    elif line.startswith(":"):
                        continue
                    else:
                        field, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if field == "id":
                            event_id = value
                        elif field == "event":
                            kind = value
                        elif field == "data":
                            data.append(value)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 404:
                raise JobNotFound(f"no job {job_id} at {base_url}") from None
            if exc.code not in _RETRY_STATUS:
                raise ClientError(exc.code, "") from None
        except _GONE:
            pass
        backoff.sleep(f"job {job_id}: event stream ended")
