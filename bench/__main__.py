"""``./dev bench [NAME [ARGS...]]``: list the benchmarks, or run one (results: bench/RESULTS.md)."""

from __future__ import annotations

import ast
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benchmarks() -> dict[str, str]:
    found = {}
    for path in sorted(HERE.glob("*.py")):
        if path.name.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        found[path.stem] = doc.strip().splitlines()[0] if doc else ""
    return found


def main() -> int:
    known = benchmarks()
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "list"):
        print("usage: ./dev bench NAME [ARGS...]   (each takes --help)\n")
        for name, line in known.items():
            print(f"  {name:<18} {line}")
        print("\nResults, commands and machines are recorded in bench/RESULTS.md.")
        return 0
    name = sys.argv[1]
    if name not in known:
        print(f"unknown benchmark {name!r}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    sys.argv = [str(HERE / f"{name}.py"), *sys.argv[2:]]
    sys.path.insert(0, str(HERE))
    runpy.run_path(str(HERE / f"{name}.py"), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
