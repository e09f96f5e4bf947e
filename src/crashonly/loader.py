"""Finding the user's :class:`~crashonly.App` from ``MODULE:ATTR`` (or ``$CRASHONLY_APP``)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from .app import App
from .errors import ConfigError, CrashonlyError

__all__ = ["load_app"]


def import_object(spec: str, what: str = "MODULE:ATTR, e.g. myproject.tasks:app") -> Any:
    """Import ``module:attr`` (``attr`` defaults to ``app`` and may be dotted) with the working
    directory on ``sys.path``, as gunicorn and celery do; every failure is a :class:`ConfigError`
    naming the cause (with the traceback when the module itself raised)."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "app"
    if not module_name:
        raise ConfigError(f"malformed app {spec!r}: expected {what}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        import traceback  # error path only: loaded lazily (start-up time)

        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(
                f"cannot import {module_name!r}: no such module (run from the folder that holds "
                "it, or install it)"
            ) from None
        raise ConfigError(
            f"importing {module_name!r} failed:\n{traceback.format_exc().rstrip()}"
        ) from exc
    except CrashonlyError:
        raise
    except Exception as exc:
        import traceback

        raise ConfigError(
            f"importing {module_name!r} failed:\n{traceback.format_exc().rstrip()}"
        ) from exc
    found: Any = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise ConfigError(f"{module_name} has no attribute {attr!r}")
        found = getattr(found, part)
    return found


def load_app(spec: str | None) -> App:
    """The :class:`~crashonly.App` named by ``spec`` (or ``$CRASHONLY_APP``)."""
    spec = spec or os.environ.get("CRASHONLY_APP")
    if not spec:
        raise ConfigError("no app given: pass MODULE:ATTR (or --app, or set CRASHONLY_APP)")
    app = import_object(spec)
    if not isinstance(app, App):
        raise ConfigError(f"{spec} is {type(app).__name__}, not a crashonly.App")
    probe_queue = os.environ.get("CRASHONLY_CHAOS_PROBE")
    if probe_queue:
        # Set by `crashonly chaos` for the formation it runs: add its probe task to the user's
        # app, so the user's own worker command runs it (docs/chaos.md).
        from .chaos.probe import install

        install(app, queue=probe_queue)
    return app
