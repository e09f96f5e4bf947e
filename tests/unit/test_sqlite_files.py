"""The SQLite files: who may read them, and what a full disk does to them."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import crashonly
from crashonly.backends.sqlite import JOURNAL_SIZE_LIMIT
from tests.conftest import IN_CI


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_files_are_created_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, which left the file 0644
    try:
        app = crashonly.App(f"sqlite:///{tmp_path / 'q.db'}")
        app.enqueue("t", args=["a secret argument"])
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == ["q.db", "q.db-shm", "q.db-wal"]
        assert {n: _mode(tmp_path / n) for n in names} == {n: 0o600 for n in names}
        app.close()
    finally:
        os.umask(old)


def test_an_existing_files_mode_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    path.touch()
    path.chmod(0o640)  # chosen by someone: a group of readers
    app = crashonly.App(f"sqlite:///{path}")
    app.enqueue("t")
    assert _mode(path) == 0o640 and _mode(tmp_path / "shared.db-wal") == 0o640
    app.close()


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs of the test's own (root only)."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("the disk-full test mounts a tmpfs: run it as root")
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "volume"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def _fill(path: Path) -> None:
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def test_a_full_disk_loses_nothing_and_the_wal_shrinks_back(small_volume: Path) -> None:
    wal = small_volume / "q.db-wal"
    app = crashonly.App(f"sqlite:///{small_volume / 'q.db'}")

    @app.task
    def t(x: str) -> None: ...

    t.enqueue_many([("b" * 5000,)] * 1500)  # one transaction: a WAL of ~8 MB
    assert wal.stat().st_size > 1.5 * JOURNAL_SIZE_LIMIT
    assert app.drain() == 1500
    assert wal.stat().st_size <= JOURNAL_SIZE_LIMIT  # shrunk when it restarted
    later = app.backend._last_purge + 61  # type: ignore[attr-defined]
    app.backend.store_clock = lambda: later  # type: ignore[attr-defined]  # the purge is due
    app.recover()  # the purge pass empties the WAL while nobody uses it
    assert wal.stat().st_size == 0
    app.backend.store_clock = None  # type: ignore[attr-defined]

    _fill(small_volume / "ballast")  # someone else fills the volume
    returned = 0
    with pytest.raises(crashonly.BackendUnavailable, match="disk is full") as caught:
        for _ in range(100_000):
            t.enqueue("x" * 3000)
            returned += 1
    assert "\n" not in str(caught.value) and "free space" in str(caught.value)
    assert app.stats()["default"]["ready"] == returned  # every enqueue that returned is kept

    (small_volume / "ballast").unlink()
    t.enqueue_many([("y",)] * 200)
    assert app.drain() == returned + 200
    assert app.stats()["default"]["done"] == 1500 + returned + 200
    assert wal.stat().st_size <= JOURNAL_SIZE_LIMIT
    app.close()


def test_processes_opening_a_fresh_file_at_once_all_get_in(tmp_path: Path) -> None:
    """Switching a fresh file to WAL is a race SQLite answers "locked" at once (no busy
    handler): the losers used to fail with "locked for longer than 30 s"."""
    import threading

    errors: list[Exception] = []
    for round_ in range(50):
        apps = [crashonly.App(f"sqlite:///{tmp_path / f'fresh{round_}.db'}") for _ in range(6)]
        barrier = threading.Barrier(len(apps))

        def enqueue(app: crashonly.App, b: threading.Barrier = barrier) -> None:
            b.wait()
            try:
                app.enqueue("t")
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=enqueue, args=(a,)) for a in apps]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for a in apps:
            a.close()
        assert not errors, f"round {round_}: {errors[0]}"
