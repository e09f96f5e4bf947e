"""The three inputs of `up` (Procfile, .env, formation) and the shell script it runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from crashonly.errors import CrashonlyError
from crashonly.supervisor import EnvFileError, FormationError, ProcfileError
from crashonly.supervisor.envfile import parse_env, read_env
from crashonly.supervisor.formation import parse_formation, resolve_formation
from crashonly.supervisor.process import shell_script, speaks_notify
from crashonly.supervisor.procfile import parse_procfile

HERE = Path("Procfile")


def test_procfile_types_in_order_with_comments_and_blank_lines() -> None:
    procfile = parse_procfile(
        "# the app\n\nweb: crashonly web app:app --fd 3\nworker:crashonly worker app:app\n"
        "clock-2 :  python clock.py  \n", HERE)
    assert procfile.names() == ["web", "worker", "clock-2"]
    assert procfile.get("clock-2").command == "python clock.py"
    assert procfile.get("web").serves_http
    assert not procfile.get("worker").serves_http


def test_a_type_that_reads_port_serves_http() -> None:
    procfile = parse_procfile("api: server --port $PORT\nadmin: server -p ${PORT}\n", HERE)
    assert [t.serves_http for t in procfile.types] == [True, True]


@pytest.mark.parametrize(("text", "message"), [
    ("web: ok\nthis line has no colon\n", "Procfile:2: expected `name: command`"),
    ("web app: ok\n", "Procfile:1: expected"),
    ("web:\n", "process type 'web' has no command"),
    ("web: a\nweb: b\n", "Procfile:2: process type 'web' is defined twice"),
    ("# nothing\n\n", "no process types"),
])
def test_procfile_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ProcfileError, match=message.replace("(", r"\(")) as info:
        parse_procfile(text, HERE)
    assert isinstance(info.value, CrashonlyError)


def test_env_file_syntax() -> None:
    env = parse_env(
        "# comment\nexport A=1\nB = two words # trailing comment\nC='lit $X # kept'\n"
        'D="line\\nnext \\"q\\""\nE=\n', HERE)
    assert env == {"A": "1", "B": "two words", "C": "lit $X # kept", "D": 'line\nnext "q"',
                   "E": ""}


def test_env_file_errors(tmp_path: Path) -> None:
    with pytest.raises(EnvFileError, match=r"\.env:2: expected KEY=value"):
        parse_env("A=1\nnot an assignment\n", Path(".env"))
    with pytest.raises(EnvFileError, match="unterminated double quote"):
        parse_env('A="open\n', Path(".env"))
    with pytest.raises(EnvFileError, match=r"no \.env file at"):
        read_env(tmp_path / "missing.env", required=True)
    assert read_env(tmp_path / "missing.env", required=False) == {}


def test_env_file_quotes_multiline_and_secrets_never_echoed() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBg\nkqhkiG9w0BAQEF\n-----END PRIVATE KEY-----"
    env = parse_env(f'A=1\nKEY="{pem}" # the PEM\nCERT=\'{pem}\'\r\nB=2\n', HERE)
    assert env == {"A": "1", "KEY": pem, "CERT": pem, "B": "2"}
    # text after the closing quote is an error naming the line, not a value cut short
    for text, line in (('A=1\nTOKEN="abc"def\n', 2), ("T='abc' extra", 1),
                       ('A=1\nP="x\ny"z\n', 2)):
        with pytest.raises(EnvFileError, match=rf"\.env:{line}: text after the closing quote"):
            parse_env(text, Path(".env"))
    # a malformed line's error never shows the line: it may be a secret pasted wrongly
    for text in ("hunter2-secret-value\n", "A=1\n1PASSWORD=hunter2-secret-value\n",
                 "-----BEGIN hunter2-secret-value\n"):
        with pytest.raises(EnvFileError) as info:
            parse_env(text, Path(".env"))
        assert "hunter2" not in str(info.value) and "expected KEY=value" in str(info.value)


def test_formation_parsing_and_resolution() -> None:
    assert parse_formation("web=2,worker=3") == {"web": 2, "worker": 3}
    assert parse_formation("web=2 worker=0") == {"web": 2, "worker": 0}
    names = ["web", "worker", "clock"]
    assert resolve_formation({"web": 2}, names) == {"web": 2, "worker": 1, "clock": 1}
    assert resolve_formation({"all": 0, "web": 1}, names) == {"web": 1, "worker": 0, "clock": 0}
    assert resolve_formation({"worker": 4}, names, default=None) == {"worker": 4}
    with pytest.raises(FormationError, match=r"unknown process type 'wbe'.*web, worker, clock"):
        resolve_formation({"wbe": 1}, names)
    for bad in ("web", "web=x", "web=-1", "", "web=1000"):
        with pytest.raises(FormationError):
            parse_formation(bad)


def _run(script: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True,
                          env=env, check=True).stdout


def test_simple_commands_are_execd_so_listen_pid_names_the_program() -> None:
    # A python child prints its own pid and LISTEN_PID: equal only if the shell exec'd it.
    command = ("""FOO='a b' python3 -c 'import os; """
               """print(os.getpid(), os.environ["LISTEN_PID"], os.environ["FOO"])'""")
    script = shell_script(command, listen_pid=True, root=None)
    assert "exec python3" in script
    pid, listen_pid, foo = _run(script).split(maxsplit=2)
    assert pid == listen_pid
    assert foo.strip() == "a b"


def test_compound_commands_keep_their_shell(tmp_path: Path) -> None:
    script = shell_script("echo one && echo two | cat", listen_pid=False, root=tmp_path)
    assert "exec echo" not in script
    assert _run(script) == "one\ntwo\n"
    assert _run(shell_script("pwd", listen_pid=False, root=tmp_path)).strip() == str(tmp_path)


def test_crashonly_commands_are_known_to_speak_notify() -> None:
    assert speaks_notify("crashonly web app:app --fd 3")
    assert speaks_notify("DEBUG=1 exec /venv/bin/crashonly worker app:app")
    assert speaks_notify("python -m crashonly worker app:app")
    assert not speaks_notify("gunicorn app:app")
    assert not speaks_notify("echo crashonly")
