"""``.env`` files: ``KEY=value`` lines, the format foreman, honcho and docker compose share.

Supported: comments (``#``), blank lines, an optional ``export`` prefix, single-quoted values
(taken literally), double-quoted values (``\\n``, ``\\"``, ``\\\\`` escapes), unquoted values with a
trailing `` # comment``. A quoted value may span lines (a PEM key, a certificate): the line
breaks are kept. After a closing quote only spaces and a `` # comment`` may follow; anything
else is an error, not silently cut. Values are not expanded: the Procfile command's shell
does that.

Errors name the file and line, never the line's text: a malformed line may hold a secret.

Precedence: a variable already in ``up``'s own environment wins over the file, so
``DATABASE_URL=… crashonly up`` does what it says (docker compose's rule, not foreman's).
"""

from __future__ import annotations

import re
from pathlib import Path

from . import EnvFileError

__all__ = ["parse_env", "read_env"]

_NAME = re.compile(r"(?:export\s+)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=[ \t]*")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}
_REST = re.compile(r"[ \t\r]*(?:#.*)?")


def _quoted(text: str, start: int, where: str) -> tuple[str, int]:
    """The value of the quoted string at ``text[start]`` and the index after its closing
    quote; it may span lines."""
    quote = text[start]
    if quote == "'":
        end = text.find("'", start + 1)
        if end < 0:
            raise EnvFileError(f"{where}: unterminated single quote")
        return text[start + 1:end], end + 1
    out: list[str] = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            out.append(_ESCAPES.get(text[i + 1], "\\" + text[i + 1]))
            i += 2
            continue
        if char == '"':
            return "".join(out), i + 1
        out.append(char)
        i += 1
    raise EnvFileError(f"{where}: unterminated double quote")


def parse_env(text: str, path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    pos, line = 0, 1
    while pos < len(text):
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        raw = text[pos:end]
        where = f"{path}:{line}"
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            pos, line = end + 1, line + 1
            continue
        start = pos + len(raw) - len(raw.lstrip())
        match = _NAME.match(text, start, end)
        if match is None:
            raise EnvFileError(f"{where}: expected KEY=value (the line is not shown: it may "
                               "hold a secret)")
        value_at = match.end()
        if value_at < end and text[value_at] in "'\"":
            value, after = _quoted(text, value_at, where)
            close = text.find("\n", after)
            close = len(text) if close < 0 else close
            if not _REST.fullmatch(text, after, close):
                raise EnvFileError(f"{where}: text after the closing quote of {match['key']} "
                                   "(quote the whole value, or put a space before a # comment)")
            line += text.count("\n", pos, close)
            end = close
        else:
            value = re.sub(r"\s+#.*$", "", text[value_at:end]).strip()
        env[match["key"]] = value
        pos, line = end + 1, line + 1
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
