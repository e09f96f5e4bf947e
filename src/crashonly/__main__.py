"""``python -m crashonly``: the same command line as ``crashonly``."""

from .cli import main

raise SystemExit(main())
