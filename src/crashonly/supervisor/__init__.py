"""``crashonly up``: a Procfile process manager that holds the listening sockets itself.

The folder is the architecture:

* :mod:`.procfile`, :mod:`.envfile`, :mod:`.formation`: the three inputs, parsed into values.
* :mod:`.sockets`: the listening sockets ``up`` binds once and hands to every web child.
* :mod:`.process`: one child process (spawned with ``posix_spawn``, its own process group).
* :mod:`.readiness`: the ``NOTIFY_SOCKET`` server side (``READY=1``).
* :mod:`.watchdog`: a tiny separate process that stops every child if ``up`` is SIGKILLed.
* :mod:`.manager`: the event loop: supervision, backoff, rolling restarts, scaling, shutdown.
* :mod:`.control`: the control socket behind ``crashonly restart`` and ``crashonly scale``.
* :mod:`.logs`: prefixed, timestamped, coloured output.
* :mod:`.cli`: the ``up``, ``restart`` and ``scale`` commands.

Nothing here imports anything outside the standard library: ``up`` must start fast.
Errors (all :class:`crashonly.errors.CrashonlyError`)::

    SupervisorError          a bad input or a running supervisor's refusal
    ├── ProcfileError            Procfile missing, empty or with a syntax error
    ├── EnvFileError             .env missing or malformed
    ├── FormationError           bad --formation / scale argument, unknown process type
    ├── PortInUse                the port for an HTTP type is taken
    └── ControlError             no `crashonly up` answers for this Procfile, or it refused
"""

from __future__ import annotations

from ..errors import CrashonlyError

__all__ = [
    "ControlError",
    "EnvFileError",
    "FormationError",
    "PortInUse",
    "ProcfileError",
    "SupervisorError",
]


class SupervisorError(CrashonlyError):
    """A problem with the process manager's input or with a running ``crashonly up``."""


class ProcfileError(SupervisorError):
    """The Procfile is missing, empty, or a line is not ``name: command``."""


class EnvFileError(SupervisorError):
    """The ``.env`` file is missing (when named explicitly) or a line is malformed."""


class FormationError(SupervisorError):
    """A formation (``web=2,worker=3``) is malformed or names a type the Procfile lacks."""


class PortInUse(SupervisorError):
    """The port an HTTP process type should listen on is already bound by someone else."""


class ControlError(SupervisorError):
    """``crashonly restart``/``scale`` found no running ``up``, or ``up`` refused the request."""
