"""Finding the user's :class:`~crashonly.App` from ``MODULE:ATTR`` (or ``$CRASHONLY_APP``)."""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from .app import App
from .errors import ConfigError

__all__ = ["load_app"]


def load_app(spec: str | None) -> App:
    """Import ``module:attr`` (``attr`` defaults to ``app``) with the working directory on
    ``sys.path``, as gunicorn and celery do."""
    spec = spec or os.environ.get("CRASHONLY_APP")
    if not spec:
        raise ConfigError("no app given: pass MODULE:ATTR (or --app, or set CRASHONLY_APP)")
    module_name, _, attr = spec.partition(":")
    attr = attr or "app"
    if not module_name:
        raise ConfigError(f"malformed app {spec!r}: expected MODULE:ATTR, e.g. myproject.tasks:app")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(
                f"cannot import {module_name!r}: no such module (run from the folder that holds "
                "it, or install it)"
            ) from None
        raise ConfigError(
            f"importing {module_name!r} failed:\n{traceback.format_exc().rstrip()}"
        ) from exc
    except Exception as exc:
        raise ConfigError(
            f"importing {module_name!r} failed:\n{traceback.format_exc().rstrip()}"
        ) from exc
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        found = type(app).__name__ if app is not None else "nothing"
        raise ConfigError(f"{module_name}:{attr} is {found}, not a crashonly.App")
    probe_queue = os.environ.get("CRASHONLY_CHAOS_PROBE")
    if probe_queue:
        # Set by `crashonly chaos` for the formation it runs: add its probe task to the user's
        # app, so the user's own worker command runs it (docs/chaos.md).
        from .chaos.probe import install

        install(app, queue=probe_queue)
    return app
