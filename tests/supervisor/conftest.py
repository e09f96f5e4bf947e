from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.supervisor.harness import Up


@pytest.fixture
def up(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[Callable[..., Up]]:
    """Start ``crashonly up`` on a Procfile text; every one started is killed at teardown."""
    started: list[Up] = []

    def start(procfile: str, *args: str) -> Up:
        instance = Up(tmp_path, procfile, list(args), subprocess_env)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.close()
