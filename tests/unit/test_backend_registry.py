"""The backend seam: schemes, third-party backends by entry point, capabilities that are enforced.

The third-party backend is a real installed distribution (a ``.dist-info`` with an
``entry_points.txt`` on ``sys.path``), wrapping SQLite under the ``myscheme://`` scheme; it
declares the capabilities named in ``$MYSCHEME_LACKS`` off.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import crashonly
from crashonly import backends
from crashonly.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = '''
import dataclasses
import os

from crashonly.backends.sqlite import SQLiteBackend


class MyBackend(SQLiteBackend):
    """SQLite under another scheme, lacking what $MYSCHEME_LACKS names."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        super().__init__("sqlite" + url[len("myscheme"):], create=create)
        self.url = url
        lacks = [c for c in os.environ.get("MYSCHEME_LACKS", "").split(",") if c]
        self.capabilities = dataclasses.replace(self.capabilities, **dict.fromkeys(lacks, False))
'''


def install_plugin(folder: Path) -> Path:
    """An installed distribution advertising ``myscheme`` in the ``crashonly.backends`` group."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "myscheme_backend.py").write_text(PLUGIN)
    info = folder / "myscheme_backend-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myscheme-backend\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[crashonly.backends]\nmyscheme = myscheme_backend:MyBackend\n"
    )
    return folder


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = install_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))  # forget it afterwards
    monkeypatch.delenv("MYSCHEME_LACKS", raising=False)
    yield folder
    sys.modules.pop("myscheme_backend", None)


def test_a_third_party_backend_is_opened_by_its_entry_point(plugin: Path, tmp_path: Path) -> None:
    assert "myscheme_backend" not in sys.modules
    app = crashonly.App(f"myscheme:///{tmp_path / 'q.db'}")

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    try:
        handle = add.enqueue(2, 3)
        assert type(app.backend).__name__ == "MyBackend"
        assert app.drain() == 1
        assert handle.wait(timeout=5) == 5
    finally:
        app.close()


def test_in_process_registration_needs_no_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    opened: list[str] = []

    def factory(url: str, *, create: bool = True) -> backends.Backend:
        opened.append(url)
        return backends.open_backend("sqlite" + url[len("mine+x"):], create=create)

    backends.register("Mine", factory)
    backend = backends.open_backend(f"mine+x:///{tmp_path / 'q.db'}")
    backend.close()
    assert opened == [f"mine+x:///{tmp_path / 'q.db'}"]
    with pytest.raises(ConfigError, match="not a valid scheme"):
        backends.register("my scheme", factory)


def test_an_unknown_scheme_is_one_line_naming_the_known_ones(plugin: Path) -> None:
    with pytest.raises(ConfigError) as err:
        backends.open_backend("nosuch://user:secret@host/db")
    message = str(err.value)
    assert "\n" not in message and "secret" not in message
    for scheme in ("'nosuch://'", "sqlite://", "postgresql://", "myscheme://"):
        assert scheme in message, message
    assert "myscheme_backend" not in sys.modules  # listed, not imported


def test_the_built_in_schemes_read_no_package_metadata(tmp_path: Path) -> None:
    """Start-up stays fast: opening SQLite never scans the installed distributions."""
    code = (
        "import sys; from crashonly.backends import open_backend; "
        f"open_backend('sqlite:///{tmp_path / 'q.db'}').close(); "
        "print('importlib.metadata' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out


def test_what_a_backend_lacks_is_refused_at_declaration_or_enqueue(
    plugin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MYSCHEME_LACKS", "transactional,priorities,delays,unique_keys")
    app = crashonly.App(f"myscheme:///{tmp_path / 'q.db'}")
    try:
        @app.task(name="plain")
        def plain() -> None: ...

        # Declared before the backend opened: refused when it opens, before anything is stored.
        @app.task(name="tx", transactional=True)
        def tx() -> None: ...

        with pytest.raises(ConfigError, match=r"task tx \(transactional=True\) needs a backend "
                           r"with transactional, and the myscheme:// backend declares none"):
            plain.enqueue()
        del app.tasks["tx"]
        assert app.backend.list() == []
        # Declared after: refused at declaration.
        with pytest.raises(ConfigError, match="transactional"):
            app.task(name="tx2", transactional=True)(lambda: None)
        with pytest.raises(ConfigError, match=r"priority=5\) needs a backend with priorities"):
            app.task(name="urgent", priority=5)(lambda: None)
        assert set(app.tasks) == {"plain"}
        for options, capability in [
            ({"connection": object()}, "transactional"), ({"priority": 1}, "priorities"),
            ({"delay": 5}, "delays"), ({"run_at": 1e9}, "delays"), ({"unique_key": "k"}, "unique_keys"),
        ]:
            with pytest.raises(ConfigError, match=f"{next(iter(options))}=.* {capability},"):
                plain.options(**options).enqueue()
            with pytest.raises(ConfigError, match=capability):
                app.enqueue("plain", **options)
        assert app.backend.list() == []
        plain.enqueue()  # what it has still works
        assert len(app.backend.list()) == 1
    finally:
        app.close()


def test_results_and_inspection_are_refused_when_lacking(
    plugin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MYSCHEME_LACKS", "results,inspection")
    app = crashonly.App(f"myscheme:///{tmp_path / 'q.db'}")
    try:
        handle = app.enqueue("t")
        with pytest.raises(ConfigError, match="result needs a backend with results"):
            handle.wait(timeout=1)
        with pytest.raises(ConfigError, match="results"):
            app.get_job(handle.id)
        for call in (app.list_jobs, app.stats, app.retry_all_buried,
                     lambda: app.retry(handle.id), lambda: app.delete(handle.id)):
            with pytest.raises(ConfigError, match="needs a backend with inspection"):
                call()
    finally:
        app.close()


def test_transactional_without_fencing_is_refused() -> None:
    with pytest.raises(ValueError, match="fencing"):
        backends.Capabilities(transactional=True)


def test_the_contract_suite_skips_exactly_what_the_outside_backend_lacks(tmp_path: Path) -> None:
    """The whole contract suite against the plug-in, lacking priorities: only the tests of
    priorities are skipped (and dialect tests of SQLite/PostgreSQL files), everything else
    passes."""
    folder = install_plugin(tmp_path / "site")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)]),
        "CRASHONLY_CONTRACT_URL": "myscheme:///{tmp}/q.db",
        "MYSCHEME_LACKS": "priorities",
    }
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/semantics", "-q", "-rs", "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path / "runs")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=170,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    skips = [line for line in out.stdout.splitlines() if line.startswith("SKIPPED")]
    capability_skips = [line for line in skips if "declares no" in line]
    assert capability_skips and all("myscheme declares no priorities" in s for s in capability_skips), skips
    others = [line for line in skips if "declares no" not in line]
    assert all("SQLite file only" in s or "PostgreSQL" in s or "empty parameter set" in s
               for s in others), others


def test_a_worker_refuses_a_task_its_backend_cannot_run_at_start_up(
    plugin: Path, tmp_path: Path
) -> None:
    """Not when the job runs: ``crashonly worker`` stops at once, one line, nothing claimed."""
    (tmp_path / "txapp.py").write_text(
        "import crashonly\n"
        f"app = crashonly.App('myscheme:///{tmp_path / 'q.db'}')\n"
        "@app.task(name='tx', transactional=True)\n"
        "def tx() -> None: ...\n"
    )
    env = {**os.environ, "MYSCHEME_LACKS": "transactional",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(plugin), str(ROOT / "src")])}
    out = subprocess.run([sys.executable, "-m", "crashonly.cli", "worker", "txapp:app"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out
    assert out.stderr.strip().splitlines() == [
        "crashonly: error: task tx (transactional=True) needs a backend with transactional, and "
        'the myscheme:// backend declares none (docs/backends.md, "Capabilities")'
    ], out.stderr
