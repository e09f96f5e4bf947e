"""Sessions: the manager against every real store, then real web processes sharing them."""

from __future__ import annotations

import json
import secrets
import signal
import time
from pathlib import Path

import httpx
import pytest

from crashonly.errors import ConfigError, SerializationError
from crashonly.web.sessions import Session, SessionConfig, SessionManager, SessionTooLarge
from crashonly.web.stores import SessionStoreError, SQLStore, open_store
from tests.web.harness import KEY, Web
from tests.web.stores import any_store_url, store_url

__all__ = ["any_store_url"]  # a fixture, used by name


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def cookie_of(set_cookie: str) -> str:
    return set_cookie.split(";")[0]


# --- stores -----------------------------------------------------------------------------------

def test_store_contract(any_store_url: str) -> None:
    store = open_store(any_store_url)
    sid = secrets.token_urlsafe(32)
    try:
        assert store.load(sid) is None
        store.save(sid, b'{"a":1}', 60)
        assert store.load(sid) == b'{"a":1}'
        store.save(sid, b'{"a":2}', 60)
        assert store.load(sid) == b'{"a":2}'
        store.delete(sid)
        assert store.load(sid) is None
        store.delete(sid)  # twice is fine
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["redis", "memcached"])
def test_service_expires_what_it_stores(kind: str, tmp_path: Path,
                                        request: pytest.FixtureRequest) -> None:
    store = open_store(store_url(kind, tmp_path, request))
    sid = secrets.token_urlsafe(32)
    try:
        store.save(sid, b"x", 1)
        assert store.load(sid) == b"x"
        deadline = time.monotonic() + 3
        while store.load(sid) is not None:
            assert time.monotonic() < deadline, "the store kept an expired session"
            time.sleep(0.1)
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_sql_store_hides_then_purges_expired_rows(kind: str, tmp_path: Path,
                                                  request: pytest.FixtureRequest) -> None:
    clock = Clock()
    store = SQLStore(store_url(kind, tmp_path, request), clock=clock)
    try:
        store.save("old" * 15, b"a", 10)
        store.save("new" * 15, b"b", 100)
        clock.now += 11
        assert store.load("old" * 15) is None  # invisible at once
        assert store.purge() == 1  # and gone from the table at the next purge
        assert store.load("new" * 15) == b"b"
    finally:
        store.close()


def test_sql_store_shares_the_queue_database(tmp_path: Path) -> None:
    import crashonly

    url = f"sqlite:///{tmp_path / 'queue.db'}"
    app = crashonly.App(url)
    app.migrate()
    store = SQLStore(url)
    try:
        store.save("s" * 43, b"{}", 60)
        handle = app.enqueue("anything")
        assert app.get_job(handle.id).state.value == "ready"
        assert store.load("s" * 43) == b"{}"
    finally:
        store.close()
        app.close()


def test_unreachable_store_is_a_store_error() -> None:
    store = open_store("redis://127.0.0.1:1/0")
    with pytest.raises(SessionStoreError, match=r"127\.0\.0\.1:1"):
        store.load("x")
    store.close()
    with pytest.raises(ConfigError, match="unsupported session store"):
        open_store("mongodb://x")


# --- the manager, on a real store ---------------------------------------------------------------

@pytest.fixture
def manager(tmp_path: Path) -> SessionManager:
    return SessionManager(store=f"sqlite:///{tmp_path / 's.db'}", secret_key="k1",
                          config=SessionConfig(idle_timeout=100, max_age=1000, max_size=2000),
                          clock=Clock())


def test_new_session_is_saved_with_a_signed_random_id(manager: SessionManager) -> None:
    session = manager.open(None)
    assert session.is_new and manager.commit(session, https=False) is None  # empty: nothing
    session["user"] = "ana"
    set_cookie = manager.commit(session, https=False)
    assert set_cookie is not None
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
    assert "Secure" not in set_cookie and "Max-Age=1000" in set_cookie
    value = cookie_of(set_cookie).split("=", 1)[1]
    assert value.startswith(str(session.id)) and "ana" not in set_cookie
    again = manager.open(cookie_of(set_cookie))
    assert again == {"user": "ana"} and again.id == session.id
    assert "Secure" in (manager.commit(Session({"a": 1}), https=True) or "")


def test_forged_and_malformed_cookies_give_a_fresh_session(manager: SessionManager) -> None:
    session = manager.open(None)
    session["user"] = "ana"
    cookie = cookie_of(manager.commit(session, https=False) or "")
    sid, sig = cookie.split("=", 1)[1].split(".")
    forged = [
        f"session={secrets.token_urlsafe(32)}.{sig}",  # another id, copied signature
        f"session={sid}.{sig[:-1]}A" if sig[-1] != "A" else f"session={sid}.{sig[:-1]}B",
        f"session={sid}", "session=", "session=..", "session=" + "a" * 5000,
        "session=\x00\xff", "garbage", ";;;", f"session={sid}.{sig}.extra",
    ]
    for header in forged:
        fresh = manager.open(header)
        assert fresh.is_new and fresh == {}, header
    # a stale cookie next to a good one: the good one wins
    assert manager.open(f"session=bad.bad; {cookie}") == {"user": "ana"}
    # a forged cookie is deleted, not kept
    fresh = manager.open(forged[0])
    assert "Max-Age=0" in (manager.commit(fresh, https=False) or "")


def test_key_rotation_accepts_old_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    old = SessionManager(store=url, secret_key="old")
    session = old.open(None)
    session["a"] = 1
    cookie = cookie_of(old.commit(session, https=False) or "")
    assert SessionManager(store=url, secret_key="new").open(cookie) == {}
    assert SessionManager(store=url, secret_key="new,old").open(cookie) == {"a": 1}


def test_rotate_keeps_data_and_kills_the_old_id(manager: SessionManager) -> None:
    session = manager.open(None)
    session["cart"] = [1]
    first = cookie_of(manager.commit(session, https=False) or "")
    session = manager.open(first)
    session["user"] = "ana"
    session.rotate()
    second = cookie_of(manager.commit(session, https=False) or "")
    assert second != first
    assert manager.open(second) == {"cart": [1], "user": "ana"}
    assert manager.open(first) == {}


def test_nested_changes_are_saved_and_clear_deletes(manager: SessionManager) -> None:
    session = manager.open(None)
    session["cart"] = []
    cookie = cookie_of(manager.commit(session, https=False) or "")
    session = manager.open(cookie)
    session["cart"].append({"sku": "A"})
    assert manager.commit(session, https=False) is None  # same id: no new cookie
    session = manager.open(cookie)
    assert session == {"cart": [{"sku": "A"}]}
    sid = session.id
    session.clear()
    assert "Max-Age=0" in (manager.commit(session, https=False) or "")
    assert sid is not None and manager.store.load(sid) is None


def test_idle_and_absolute_expiry(manager: SessionManager) -> None:
    clock = manager.clock
    assert isinstance(clock, Clock)
    session = manager.open(None)
    session["a"] = 1
    cookie = cookie_of(manager.commit(session, https=False) or "")
    clock.now += 99
    assert manager.open(cookie) == {"a": 1}  # used: idle time starts again
    manager.commit(manager.open(cookie), https=False)
    clock.now += 99
    assert manager.open(cookie) == {"a": 1}
    clock.now += 101
    assert manager.open(cookie) == {}  # idle too long
    session = manager.open(None)
    session["b"] = 1
    cookie = cookie_of(manager.commit(session, https=False) or "")
    for _ in range(12):  # busy all the time, but no session lives past max_age
        clock.now += 90
        s = manager.open(cookie)
        if s:
            manager.commit(s, https=False)
    assert manager.open(cookie) == {}


def test_too_large_and_non_json_data_are_refused(manager: SessionManager) -> None:
    session = manager.open(None)
    session["blob"] = "x" * 5000
    with pytest.raises(SessionTooLarge):
        manager.commit(session, https=False)
    assert session.id is None
    session = manager.open(None)
    session["when"] = object()
    with pytest.raises(SerializationError):
        manager.commit(session, https=False)


def test_a_secret_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRASHONLY_SECRET_KEY", raising=False)
    with pytest.raises(ConfigError, match="CRASHONLY_SECRET_KEY"):
        SessionManager(store="sqlite:///:memory:")


# --- real web processes ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["redis", "memcached", "sqlite", "postgres"])
def test_session_outlives_the_process_that_made_it(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest,
        subprocess_env: dict[str, str]) -> None:
    url = store_url(kind, tmp_path, request)
    env = {**subprocess_env, "CRASHONLY_SECRET_KEY": KEY, "SESSION_URL": url,
           "SESSION_IDLE": "1.5"}
    a = Web("tests.web.session_apps:session_app", env)
    b = Web("tests.web.session_apps:session_app", env)
    try:
        a.ready(), b.ready()
        with httpx.Client() as client:
            assert client.post(a.url + "/login", json={"user": "ana"}).status_code == 200
            assert client.post(a.url + "/cart", json={"sku": "A"}).json() == {"items": 1}
            seen = client.get(b.url + "/me").json()
            assert seen["user"] == "ana" and seen["pid"] == b.pid
            a.signal(signal.SIGKILL)
            a.wait(5)
            assert client.post(b.url + "/cart", json={"sku": "B"}).json() == {"items": 2}
            sid_cookie = client.cookies["session"]
            sid = sid_cookie.split(".")[0]
            store = open_store(url)
            try:
                assert store.load(sid) is not None
                time.sleep(1.6 if kind != "memcached" else 2.6)  # idle past SESSION_IDLE
                assert client.get(b.url + "/me").json()["user"] is None
                if isinstance(store, SQLStore):
                    store.purge()
                assert store.load(sid) is None  # gone from the store, not only refused
            finally:
                store.close()
    finally:
        a.stop()
        b.stop()


def test_bad_session_input_over_http(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    env = {**subprocess_env, "CRASHONLY_SECRET_KEY": KEY,
           "SESSION_URL": f"sqlite:///{tmp_path / 's.db'}"}
    web = Web("tests.web.session_apps:session_app", env).ready()
    try:
        with httpx.Client() as client:
            r = client.get(web.url + "/me", headers={"cookie": "session=forged.value"})
            assert r.status_code == 200 and r.json()["user"] is None
            r = client.get(web.url + "/me", headers={"cookie": b"session=" + "é".encode() * 3000})
            assert r.status_code in (200, 400, 431)
            r = client.post(web.url + "/big?n=10000")
            assert r.status_code == 413 and "session" not in r.cookies
            r = client.post(web.url + "/big?n=10")
            assert r.status_code == 200 and "session" in r.cookies
        assert web.popen.poll() is None
    finally:
        web.stop()


def test_store_down_gives_503_not_500(subprocess_env: dict[str, str]) -> None:
    env = {**subprocess_env, "CRASHONLY_SECRET_KEY": KEY, "SESSION_URL": "redis://127.0.0.1:1/0"}
    web = Web("tests.web.session_apps:session_app", env).ready()
    try:
        r = httpx.post(web.url + "/login", json={"user": "ana"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        r = httpx.get(web.url + "/me", cookies={"session": "a" * 43 + "." + "b" * 43})
        assert r.status_code in (200, 503)
        assert web.popen.poll() is None
    finally:
        web.stop()


def test_wsgi_sessions_share_the_store(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    env = {**subprocess_env, "CRASHONLY_SECRET_KEY": KEY,
           "SESSION_URL": f"sqlite:///{tmp_path / 's.db'}"}
    a = Web("tests.web.session_apps:wsgi_session_app", env)
    b = Web("tests.web.session_apps:wsgi_session_app", env)
    try:
        a.ready(), b.ready()
        with httpx.Client() as client:
            assert client.get(a.url + "/count").json() == {"n": 1}
            assert client.get(b.url + "/count").json() == {"n": 2}
            assert json.loads(client.get(a.url + "/").text) == {"n": 2}
    finally:
        a.stop()
        b.stop()
