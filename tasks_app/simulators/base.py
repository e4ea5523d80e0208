"""What every simulator adapter provides.

An adapter knows three things about a simulation program: how to find it on
this machine (and its version), how to check the parameters a user gave
before the task is created, and which command lines run it inside a task's
work directory. The executor runs those command lines; the adapter never
starts a process itself.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tasks_app.sandbox import install_folders
from tasks_app.simulators.progress import ProgressReader


class SimulatorMissing(Exception):
    """The simulator's program is not installed on this machine.

    The message names what is missing and how to install it: it becomes the
    task's error detail.
    """


class InvalidParameters(ValueError):
    """The parameters given to ``run()`` cannot work; the message says why."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(frozen=True)
class Invocation:
    """One command line the executor runs, in order, inside the work directory."""

    argv: list[str]
    # Extra environment variables for this command only.
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    # Shown in the task's log before the command's own output.
    display: str = ""


class Simulator:
    #: Name used by the API and the client (``"splishsplash"``).
    name: str = ""
    #: Human-readable name for the console.
    label: str = ""

    def version(self) -> str:
        """The installed version; raises :class:`SimulatorMissing` if absent."""
        raise NotImplementedError

    def validate(self, parameters: dict, input_files: list[str]) -> dict:
        """Check ``parameters`` against the names of the input files.

        Returns the normalised parameters to store on the task. Raises
        :class:`InvalidParameters` with a message meant for the user.
        """
        raise NotImplementedError

    def invocations(self, workdir: Path, parameters: dict, run_dir: Path | None = None) -> list[Invocation]:
        """The command lines that run the simulation in ``workdir``.

        ``run_dir`` is where the commands find that folder when they run (in
        the sandbox, :data:`tasks_app.sandbox.WORKDIR`); paths on their
        command lines use it.
        """
        raise NotImplementedError

    def progress_reader(self, workdir: Path, parameters: dict) -> ProgressReader:
        """What tells how far a run of this simulator got (see :mod:`tasks_app.simulators.progress`).

        By default ``SIMDECK_PROGRESS`` lines only; an adapter whose program
        shows its progress in its own way returns a reader that knows it.
        Called once the input is in ``workdir``, before the run.
        """
        return ProgressReader()

    def sandbox_folders(self) -> list[Path]:
        """Folders outside ``/usr`` the simulator needs, bound read-only into its sandbox.

        By default this Python's install, which runs the ``python`` of
        command lines and the simulators installed from PyPI.
        """
        return install_folders()
