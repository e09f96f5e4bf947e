"""The Procfile: ``name: command`` lines, as foreman and honcho read them.

Blank lines and lines starting with ``#`` are ignored. Names are letters, digits, ``_`` and
``-``. Commands are shell commands (run with ``/bin/sh -c``, so ``$PORT`` and any environment
variable expand as in foreman). A line that is not ``name: command`` is an error that names the
file and line, rather than being skipped as foreman does: a typo should not silently drop a type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import ProcfileError

__all__ = ["ProcessType", "Procfile", "parse_procfile", "read_procfile"]

_LINE = re.compile(r"^(?P<name>[A-Za-z0-9_-]+)\s*:\s*(?P<command>.*?)\s*$")
_USES_PORT = re.compile(r"\$(PORT\b|\{PORT\})")


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessType:
    name: str
    command: str

    @property
    def serves_http(self) -> bool:
        """``web`` (the Heroku convention) or any command that reads ``$PORT``."""
        return self.name == "web" or bool(_USES_PORT.search(self.command))


@dataclass(frozen=True, kw_only=True, slots=True)
class Procfile:
    path: Path
    types: tuple[ProcessType, ...]

    def names(self) -> list[str]:
        return [t.name for t in self.types]

    def get(self, name: str) -> ProcessType:
        for process_type in self.types:
            if process_type.name == name:
                return process_type
        raise KeyError(name)


def parse_procfile(text: str, path: Path) -> Procfile:
    types: list[ProcessType] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        where = f"{path}:{number}"
        if match is None:
            raise ProcfileError(
                f"{where}: expected `name: command` (name made of letters, digits, _ or -), "
                f"got {line[:60]!r}"
            )
        name, command = match["name"], match["command"]
        if not command:
            raise ProcfileError(f"{where}: process type {name!r} has no command")
        if name in seen:
            raise ProcfileError(f"{where}: process type {name!r} is defined twice")
        seen.add(name)
        types.append(ProcessType(name=name, command=command))
    if not types:
        raise ProcfileError(f"{path}: no process types (expected lines like `web: COMMAND`)")
    return Procfile(path=path, types=tuple(types))


def read_procfile(path: Path) -> Procfile:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProcfileError(f"no Procfile at {path} (give one with -f PATH)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProcfileError(f"cannot read Procfile {path}: {exc}") from exc
    return parse_procfile(text, path.resolve())
