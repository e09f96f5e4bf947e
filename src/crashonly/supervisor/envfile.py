"""``.env`` files: ``KEY=value`` lines, the format foreman, honcho and docker compose share.

Supported: comments (``#``), blank lines, an optional ``export`` prefix, single-quoted values
(taken literally), double-quoted values (``\\n``, ``\\"``, ``\\\\`` escapes), unquoted values with a
trailing `` # comment``. Values are not expanded: the Procfile command's shell does that.

Precedence: a variable already in ``up``'s own environment wins over the file, so
``DATABASE_URL=… crashonly up`` does what it says (docker compose's rule, not foreman's).
"""

from __future__ import annotations

import re
from pathlib import Path

from . import EnvFileError

__all__ = ["parse_env", "read_env"]

_LINE = re.compile(r"^(?:export\s+)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>.*)$")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def _unquote(value: str, where: str) -> str:
    if value.startswith("'"):
        end = value.find("'", 1)
        if end < 0:
            raise EnvFileError(f"{where}: unterminated single quote")
        return value[1:end]
    if value.startswith('"'):
        out: list[str] = []
        i = 1
        while i < len(value):
            char = value[i]
            if char == "\\" and i + 1 < len(value):
                out.append(_ESCAPES.get(value[i + 1], "\\" + value[i + 1]))
                i += 2
                continue
            if char == '"':
                return "".join(out)
            out.append(char)
            i += 1
        raise EnvFileError(f"{where}: unterminated double quote")
    return re.sub(r"\s+#.*$", "", value).strip()


def parse_env(text: str, path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        where = f"{path}:{number}"
        if match is None:
            raise EnvFileError(f"{where}: expected KEY=value, got {line[:60]!r}")
        env[match["key"]] = _unquote(match["value"].strip(), where)
    return env


def read_env(path: Path, *, required: bool) -> dict[str, str]:
    """Read ``path``; a missing file is an error only when the user named it (``-e``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise EnvFileError(f"no .env file at {path} (check the -e path)") from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise EnvFileError(f"cannot read {path}: {exc}") from exc
    return parse_env(text, path)
