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
from crashonly.web.sessions import (
    Session,
    SessionConfig,
    SessionManager,
    SessionTooLarge,
    use_stored_key,
)
from crashonly.web.stores import (
    SessionStore,
    SessionStoreError,
    SQLStore,
    default_store_url,
    open_store,
    sessions_beside,
)
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
        assert not store.save(sid, b'{"a":0}', 60, new=False)  # no such session: not created
        assert store.load(sid) is None
        assert store.save(sid, b'{"a":1}', 60, new=True)
        assert store.load(sid) == b'{"a":1}'
        assert not store.save(sid, b'{"a":9}', 60, new=True)  # taken: not overwritten
        assert store.save(sid, b'{"a":2}', 60, new=False)
        assert store.load(sid) == b'{"a":2}'
        store.delete(sid)
        assert store.load(sid) is None
        assert not store.save(sid, b'{"a":3}', 60, new=False)  # deleted stays deleted
        assert store.load(sid) is None
        store.delete(sid)  # twice is fine
    finally:
        store.close()


def test_stored_key_is_made_once_and_agreed_on(any_store_url: str) -> None:
    """Web processes starting together, each with its own connection: one key for all."""
    import threading

    stores = [open_store(any_store_url) for _ in range(6)]
    for store in stores:  # a fresh key for this test (the store may hold one from another)
        if isinstance(store, SQLStore):
            with store._cursor() as cur:
                cur.execute(f"DELETE FROM {store.secrets_table}")
            break
        store.client.delete(store.secret_key)
        break
    keys: list[str] = []
    barrier = threading.Barrier(len(stores))

    def start(store: SessionStore) -> None:
        barrier.wait()
        keys.append(store.secret())

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(keys) == len(stores) and len(set(keys)) == 1
        assert len(keys[0]) >= 32
        assert stores[0].secret() == keys[0]  # and it stays
    finally:
        for store in stores:
            store.close()


def test_sessions_beside_the_queue_database() -> None:
    assert sessions_beside("sqlite:///shop.db") == "sqlite:///shop.sessions.db"
    assert sessions_beside("sqlite:////var/lib/q.sqlite") == "sqlite:////var/lib/q.sessions.sqlite"
    assert sessions_beside("sqlite:///data/queue") == "sqlite:///data/queue.sessions.db"
    assert sessions_beside("postgresql://u@h/db") == "postgresql://u@h/db"
    assert default_store_url({"DATABASE_URL": "sqlite:///a.db"}) == "sqlite:///a.sessions.db"
    assert default_store_url({}) == "sqlite:///crashonly.sessions.db"
    assert default_store_url({"REDIS_URL": "redis://r", "DATABASE_URL": "x"}) == "redis://r"


def test_sqlite_session_file_is_private_and_keeps_no_key_readable_by_others(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.sessions.db'}"
    store = SQLStore(url)
    try:
        assert (tmp_path / "q.sessions.db").stat().st_mode & 0o777 == 0o600
        assert len(store.secret()) >= 32
    finally:
        store.close()
    shared = tmp_path / "world.db"
    shared.touch(mode=0o644)
    shared.chmod(0o644)
    store = SQLStore(f"sqlite:///{shared}")
    try:
        with pytest.raises(SessionStoreError, match="readable by other users"):
            store.secret()
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["redis", "memcached"])
def test_service_expires_what_it_stores(kind: str, tmp_path: Path,
                                        request: pytest.FixtureRequest) -> None:
    store = open_store(store_url(kind, tmp_path, request))
    sid = secrets.token_urlsafe(32)
    try:
        store.save(sid, b"x", 1, new=True)
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
        store.save("old" * 15, b"a", 10, new=True)
        store.save("new" * 15, b"b", 100, new=True)
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
        store.save("s" * 43, b"{}", 60, new=True)
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
    return SessionManager(store=f"sqlite:///{tmp_path / 's.db'}", secret_key=KEY,
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
    old_key, new_key = "old-" + KEY, "new-" + KEY
    old = SessionManager(store=url, secret_key=old_key)
    session = old.open(None)
    session["a"] = 1
    cookie = cookie_of(old.commit(session, https=False) or "")
    assert SessionManager(store=url, secret_key=new_key).open(cookie) == {}
    assert SessionManager(store=url, secret_key=f"{new_key},{old_key}").open(cookie) == {"a": 1}


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
    with pytest.raises(ConfigError, match=r"CRASHONLY_SECRET_KEY.*token_urlsafe"):
        SessionManager(store="sqlite:///:memory:")


@pytest.mark.parametrize("secret", ["Qz", "Qz" * 15 + "W", f"{KEY},QzShort"])
def test_a_short_key_is_refused_without_being_shown(
        monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    with pytest.raises(ConfigError, match="at least 32") as caught:
        SessionManager(store="sqlite:///:memory:", secret_key=secret)
    assert "Qz" not in str(caught.value)
    monkeypatch.setenv("CRASHONLY_SECRET_KEY", secret)
    with pytest.raises(ConfigError, match=r"\$CRASHONLY_SECRET_KEY holds a key of"):
        SessionManager(store="sqlite:///:memory:")


def test_stored_key_signs_for_every_manager_of_the_store(
        any_store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two web processes without a configured key (on loopback): one's cookie is valid for
    the other, because both use the key kept in the store."""
    monkeypatch.delenv("CRASHONLY_SECRET_KEY", raising=False)
    use_stored_key()
    try:
        a, b = SessionManager(store=any_store_url), SessionManager(store=any_store_url)
        try:
            session = a.open(None)
            session["user"] = "ana"
            cookie = cookie_of(a.commit(session, https=False) or "")
            assert b.open(cookie) == {"user": "ana"}
            assert a.stored_key and b.stored_key
        finally:
            a.store.close()
            b.store.close()
    finally:
        use_stored_key(False)
    with pytest.raises(ConfigError):  # only where crashonly web allowed it
        SessionManager(store=any_store_url)


def test_a_replaced_stored_key_is_picked_up(tmp_path: Path, request: pytest.FixtureRequest,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Memcached may evict the key: a process starting then makes a new one, and a process
    holding the old one adopts the new one when a cookie signed with it arrives."""
    monkeypatch.delenv("CRASHONLY_SECRET_KEY", raising=False)
    url = store_url("memcached", tmp_path, request)
    use_stored_key()
    old = SessionManager(store=url)
    try:
        session = old.open(None)
        session["n"] = 1
        old.commit(session, https=False)
        client = old.store.client
        client.delete(old.store.secret_key, noreply=False)  # evicted
        new = SessionManager(store=url)
        session = new.open(None)
        session["n"] = 2
        cookie = cookie_of(new.commit(session, https=False) or "")
        old._key_read -= 10  # as if the last read were older than the re-read interval
        assert old.open(cookie) == {"n": 2}
        new.store.close()
    finally:
        old.store.close()
        use_stored_key(False)


def test_logout_is_not_undone_by_a_concurrent_request(any_store_url: str) -> None:
    """Request B loaded the session; request A logs out; B then saves its change. An upsert
    would bring the session back, logged in; a conditional write does not."""
    manager = SessionManager(store=open_store(any_store_url), secret_key=KEY)
    try:
        logout_then_late_save(manager)
    finally:
        manager.store.close()


def logout_then_late_save(manager: SessionManager) -> None:
    session = manager.open(None)
    session["user"] = "ana"
    cookie = cookie_of(manager.commit(session, https=False) or "")
    b = manager.open(cookie)  # B starts
    a = manager.open(cookie)  # A starts, and logs out
    a.clear()
    manager.commit(a, https=False)
    b["cart"] = ["tea"]  # B finishes after the logout
    assert manager.commit(b, https=False) is None
    assert manager.open(cookie) == {}
    sid = b.id
    assert sid is not None and manager.store.load(sid) is None
    # the same after a rotation (login): the old id stays dead
    session = manager.open(None)
    session["cart"] = [1]
    old = cookie_of(manager.commit(session, https=False) or "")
    late = manager.open(old)
    login = manager.open(old)
    login["user"] = "ana"
    login.rotate()
    new = cookie_of(manager.commit(login, https=False) or "")
    late["cart"].append(2)
    manager.commit(late, https=False)
    assert manager.open(old) == {}
    assert manager.open(new) == {"cart": [1], "user": "ana"}


class CountingStore(SQLStore):
    """A real SQLite store that counts its reads."""

    loads = 0

    def load(self, sid: str) -> bytes | None:
        self.loads += 1
        return super().load(sid)


def test_a_cookie_sent_700_times_is_looked_up_once(tmp_path: Path) -> None:
    store = CountingStore(f"sqlite:///{tmp_path / 's.db'}")
    manager = SessionManager(store=store, secret_key=KEY)
    session = manager.open(None)
    session["user"] = "ana"
    cookie = cookie_of(manager.commit(session, https=False) or "")
    assert manager.open("; ".join([cookie] * 700)) == {"user": "ana"}
    assert store.loads == 1
    # distinct, validly signed but unknown ids: a bounded number of lookups
    store.loads = 0
    others = []
    for _ in range(50):
        other = manager.open(None)
        other["x"] = 1
        others.append(cookie_of(manager.commit(other, https=False) or ""))
        manager.store.delete(str(other.id))
    assert manager.open("; ".join(others)) == {}
    assert store.loads == 2
    store.close()


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
