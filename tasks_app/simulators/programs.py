"""Simulators that are suites of programs installed from Debian (GROMACS, LAMMPS, OpenFOAM, Quantum ESPRESSO).

A task of one of them is a list of command lines, each starting with one of
that suite's programs: they are parsed at submit and run without a shell,
so a GROMACS task runs GROMACS and nothing else. With ``n_vcpus`` the
suite's MPI programs run under ``mpirun``, inside the task's sandbox, on
its one machine; the settings below make Open MPI work there (no network
but loopback, no ``/sys``, no ssh).

When a command fails, the simulator's own error line is looked for in its
output (:meth:`ProgramSuite.diagnose`) and quoted in the task's guidance,
with what it usually means.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from tasks_app.simulators.base import Diagnosis, InvalidParameters, Invocation, Simulator, SimulatorMissing

# Open MPI inside a sandbox, on one machine:
# - ob1 with the shared memory and self transports only: UCX and TCP look for
#   network interfaces under /sys, which the sandbox does not have;
# - no single-copy transfers (CMA needs ptrace rights the sandbox denies);
# - the "isolated" launcher: every rank is a child of mpirun, no ssh or rsh;
# - oversubscription allowed: a machine type may offer more vCPUs than the
#   host has cores, and the kernel's CPU limit is what holds the task;
# - no binding of ranks to cores: Open MPI would pick cores from the whole
#   host, outside the ones the machine is pinned to, and the ranks keep the
#   machine's instead;
# - ranks that wait yield their core: busy-polling ranks sharing a core
#   (more ranks than cores) run tens of times slower;
# - root allowed: only where an admin turned the sandbox off and machines
#   run as root (in a sandbox no process is root);
# - a program started without mpirun runs alone, without starting Open
#   MPI's daemon first: a third of a second less, for each such command.
MPI_ENVIRONMENT = {
    "OMPI_MCA_pml": "ob1",
    "OMPI_MCA_btl": "self,vader",
    "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
    "OMPI_MCA_osc": "^ucx",
    "OMPI_MCA_plm": "isolated",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
    "OMPI_MCA_hwloc_base_binding_policy": "none",
    "OMPI_MCA_mpi_yield_when_idle": "1",
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_ess_singleton_isolated": "1",
}
# Open MPI and its hwloc read the CPU topology here; without it each rank
# prints a warning and treats the machine as one core.
CPU_TOPOLOGY = Path("/sys/devices/system/cpu")
# Characters that only mean something to a shell; commands run without one.
SHELL_SYNTAX = re.compile(r"[|&;<>`$(){}\n]")
# How many lines of output are searched for the simulator's error line.
DIAGNOSE_BYTES = 256 * 1024


@dataclasses.dataclass(frozen=True)
class ErrorMarker:
    """Where a simulator writes its error: a line matching ``start``, and the lines after it."""

    start: re.Pattern[str]
    recommendation: str
    # Lines after the matching one that belong to the message; it ends
    # earlier at an empty line or one matching ``end``.
    following: int = 0
    end: re.Pattern[str] | None = None


class ProgramSuite(Simulator):
    """A simulator run as command lines naming its own programs."""

    #: The Debian package that installs it, named in "missing" messages.
    package = ""
    #: The program asked for the version.
    version_program = ""
    #: Whether ``n_vcpus`` applies (its programs are MPI programs).
    mpi = True
    #: Examples of commands, for error messages.
    example_commands: tuple[str, ...] = ()
    error_markers: tuple[ErrorMarker, ...] = ()
    #: Parameters beyond commands, n_vcpus, use_hwthread and version.
    extra_parameters: frozenset[str] = frozenset()
    #: What its programs are called, for a host that does not have it
    #: installed (a server whose machines run elsewhere): commands are then
    #: checked against this, and the machine checks the rest.
    program_pattern: re.Pattern[str] = re.compile(r"(?!)")

    # -- what is installed -----------------------------------------------------

    def programs(self) -> frozenset[str]:
        """The program names a command may start with, as installed here (empty where it is not)."""
        raise NotImplementedError

    def is_program(self, name: str, installed: frozenset[str]) -> bool:
        return name in installed if installed else bool(self.program_pattern.fullmatch(name))

    def detect_version(self) -> str:
        """The installed version, read from the program itself."""
        raise NotImplementedError

    def version(self) -> str:
        return self._detected()

    @functools.cache  # noqa: B019 - one adapter per simulator for the process' life
    def _detected(self) -> str:
        if shutil.which(self.version_program) is None:
            raise SimulatorMissing(
                f"{self.label} is not installed on this machine ({self.version_program} is not on PATH). "
                f"Install the Debian package: 'apt-get install {self.package}'."
            )
        return self.detect_version()

    def sandbox_folders(self) -> list[Path]:
        folders = super().sandbox_folders()
        if CPU_TOPOLOGY.is_dir():
            folders.append(CPU_TOPOLOGY)
        return folders

    # -- parameters --------------------------------------------------------------

    def validate(self, parameters: dict, input_files: list[str]) -> dict:
        if not isinstance(parameters, dict):
            raise InvalidParameters("Parameters must be a JSON object.")
        allowed = {"commands", "version"} | self.extra_parameters
        if self.mpi:
            allowed |= {"n_vcpus", "use_hwthread"}
        unknown = sorted(set(parameters) - allowed)
        if unknown:
            raise InvalidParameters(
                f"{self.label} takes no parameter {unknown[0]!r}; it accepts: {', '.join(sorted(allowed))}.",
                field=unknown[0],
            )
        out = self.validate_commands(parameters, input_files)
        out |= _checked_version(parameters.get("version"))
        if self.mpi:
            out |= _checked_mpi(parameters.get("n_vcpus"), parameters.get("use_hwthread"))
        return out

    def validate_commands(self, parameters: dict, input_files: list[str]) -> dict:
        return {"commands": self.checked_commands(parameters.get("commands"))}

    def checked_commands(self, commands: object) -> list[str]:
        examples = ", ".join(repr(c) for c in self.example_commands)
        if isinstance(commands, str):
            commands = [commands]
        if not isinstance(commands, list) or not commands:
            raise InvalidParameters(
                f"Give 'commands' as a non-empty list of {self.label} command lines, e.g. [{examples}].",
                field="commands",
            )
        programs = self.programs()
        checked = []
        for i, command in enumerate(commands, start=1):
            if not isinstance(command, str) or not command.strip():
                raise InvalidParameters(
                    f"Command {i} is empty or not a string; each command is one line of text.",
                    field="commands",
                )
            command = command.strip()
            if shell := SHELL_SYNTAX.search(command):
                raise InvalidParameters(
                    f"Command {i} ({command!r}) uses shell syntax ({shell.group()!r}); "
                    f"{self.label} commands run without a shell: one program and its arguments per command. "
                    "Write files with the program's own options (e.g. -o, -deffnm, -log).",
                    field="commands",
                )
            try:
                words = shlex.split(command)
            except ValueError as exc:
                raise InvalidParameters(
                    f"Command {i} ({command!r}) cannot be read: {exc}.", field="commands"
                ) from None
            program = words[0]
            if program in ("mpirun", "mpiexec", "srun"):
                raise InvalidParameters(
                    f"Command {i} starts with {program}; Simdeck starts MPI itself. "
                    + (
                        "Give n_vcpus=N to run the MPI programs on N processes."
                        if self.mpi
                        else f"{self.label} runs its threads by itself."
                    ),
                    field="commands",
                )
            if not self.is_program(program, programs):
                raise InvalidParameters(
                    f"Command {i} runs {program!r}, which is not a {self.label} program. "
                    f"{self.label} commands start with one of its programs, e.g. {examples}"
                    f"{self.programs_hint()}. To run other programs, use the Commands simulator.",
                    field="commands",
                )
            checked.append(command)
        return checked

    def programs_hint(self) -> str:
        programs = self.programs()
        return f" (its programs: {', '.join(sorted(programs))})" if programs else ""

    # -- running -------------------------------------------------------------------

    def invocations(self, workdir: Path, parameters: dict, run_dir: Path | None = None) -> list[Invocation]:
        if "commands" in parameters:
            # Again, against the programs this machine has: the server may have
            # checked them by their names only.
            self.checked_commands(parameters["commands"])
        return [self.invocation(command, parameters) for command in self.command_lines(parameters)]

    def command_lines(self, parameters: dict) -> list[str]:
        return parameters["commands"]

    def invocation(self, command: str, parameters: dict) -> Invocation:
        argv = shlex.split(command)
        # Open MPI's settings for the sandbox go to every command: a program run
        # without mpirun still starts MPI (as a singleton), and so may a script.
        env = MPI_ENVIRONMENT | self.environment()
        n_vcpus = parameters.get("n_vcpus")
        if n_vcpus and self.runs_under_mpi(argv):
            argv = mpirun(n_vcpus, parameters.get("use_hwthread", False)) + argv
            # Each rank is one process: threads on top would oversubscribe the machine.
            env["OMP_NUM_THREADS"] = "1"
        return Invocation(argv=argv, env=env, display=shlex.join(argv))

    def runs_under_mpi(self, argv: list[str]) -> bool:
        """Whether this command line runs on ``n_vcpus`` MPI processes."""
        return self.mpi

    def environment(self) -> dict[str, str]:
        """Variables every command of this simulator needs."""
        return {}

    # -- when it failed ------------------------------------------------------------

    def diagnose(self, *logs: Path) -> Diagnosis | None:
        """The simulator's error message in its output (the last one), with a recommendation."""
        found = None
        for log in logs:
            lines = _tail_lines(log)
            for at, line in enumerate(lines):
                for marker in self.error_markers:
                    if marker.start.search(line):
                        found = Diagnosis(_quote(lines, at, marker), marker.recommendation)
        return found


def mpirun(n_vcpus: int, use_hwthread: bool) -> list[str]:
    argv = ["mpirun", "-np", str(n_vcpus)]
    if use_hwthread:
        argv.append("--use-hwthread-cpus")
    return argv


def _checked_version(value: object) -> dict:
    if value is None or value == "":
        return {}
    if not isinstance(value, str) or len(value) > 64 or not re.fullmatch(r"[A-Za-z0-9._-]+", value):
        raise InvalidParameters(
            "version must be a version string such as '2022.5' (letters, digits, '.', '-', '_').",
            field="version",
        )
    return {"version": value}


def _checked_mpi(n_vcpus: object, use_hwthread: object) -> dict:
    out: dict = {}
    if n_vcpus is not None:
        if isinstance(n_vcpus, bool) or not isinstance(n_vcpus, int) or n_vcpus < 1:
            raise InvalidParameters(
                "n_vcpus must be a whole number of at least 1: the MPI processes to run.", field="n_vcpus"
            )
        out["n_vcpus"] = n_vcpus
    if use_hwthread is not None:
        if not isinstance(use_hwthread, bool):
            raise InvalidParameters("use_hwthread must be true or false.", field="use_hwthread")
        out["use_hwthread"] = use_hwthread
    return out


def run_for_output(argv: list[str]) -> str:
    """What a program prints (stdout and stderr) when asked its version.

    It runs in a folder of its own: pw.x, asked without an input, leaves
    files (CRASH, input_tmp.in) where it ran. Open MPI's settings make the
    MPI programs answer in a tenth of a second rather than half of one.
    """
    try:
        with tempfile.TemporaryDirectory(prefix="simdeck-version-") as scratch:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                errors="replace",
                stdin=subprocess.DEVNULL,
                timeout=30,
                env=os.environ | MPI_ENVIRONMENT,
                cwd=scratch,
            )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SimulatorMissing(f"{argv[0]} could not be run to read its version ({exc}).") from exc
    return done.stdout + done.stderr


def _tail_lines(path: Path) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - DIAGNOSE_BYTES))
            return f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def _quote(lines: list[str], at: int, marker: ErrorMarker) -> str:
    quoted = [lines[at]]
    for line in lines[at + 1 : at + 1 + marker.following]:
        if not line.strip() or (marker.end and marker.end.search(line)):
            break
        quoted.append(line)
    # Simulators align their messages with runs of spaces; one is enough in a sentence.
    return " ".join(" ".join(quoted).split())
