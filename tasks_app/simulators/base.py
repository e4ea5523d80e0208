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


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """The simulator's own words on why it stopped, and what that usually means."""

    quote: str
    recommendation: str


def version_matches(installed: str, wanted: str | None) -> bool:
    """Whether ``installed`` is the version asked for: the same, or ``wanted`` is its prefix ("2022")."""
    if not wanted:
        return True
    have, want = installed.lower().lstrip("v"), wanted.lower().lstrip("v")
    return have == want or have.startswith(want + ".")


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

    def unfit(self, installed_version: str, parameters: dict) -> str | None:
        """Why a machine with ``installed_version`` cannot run a task of these parameters; None if it can."""
        wanted = parameters.get("version")
        if not version_matches(installed_version, wanted):
            return f"the task asks for {self.label} {wanted}"
        return None

    def diagnose(self, *logs: Path) -> Diagnosis | None:
        """The simulator's own error message in its logs, with what it usually means (None: not found)."""
        return None

    def sandbox_folders(self) -> list[Path]:
        """Folders outside ``/usr`` the simulator needs, bound read-only into its sandbox.

        By default this Python's install, which runs the ``python`` of
        command lines and the simulators installed from PyPI.
        """
        return install_folders()
