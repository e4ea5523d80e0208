"""OpenFOAM (CFD), Debian's ``openfoam`` package: ESI-OpenCFD's v1912, its programs in /usr/bin.

Its programs find their own configuration through the variables its
``etc/bashrc`` sets (``WM_PROJECT_DIR`` above all); they are read once from
that file and given to every command. A case may also be run by a shell
script of the input (``shell_script``), which then runs with the same
variables and may call mpirun itself (Open MPI set up as for ``n_vcpus``).
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
from pathlib import Path, PurePosixPath

from tasks_app.simulators.base import InvalidParameters, SimulatorMissing
from tasks_app.simulators.debian import package_programs
from tasks_app.simulators.programs import ErrorMarker, ProgramSuite
from tasks_app.simulators.progress import Furthest, ProgressReader

# A solver prints the simulated time at each step: "Time = 0.005" (the
# Foundation's recent releases add the unit: "Time = 0.005s").
TIME_LINE = re.compile(rb"^Time = ([-+0-9.eE]+)s?[ \t]*\r?$", re.MULTILINE)
# One entry of a dictionary: "endTime         0.5;".
ENTRY = r"^[ \t]*{}[ \t]+([^;\s]+)[ \t]*;"

# Where OpenFOAM's etc/bashrc is: Debian's package, then openfoam.com's packages.
BASHRC_PLACES = ("/usr/share/openfoam/etc/bashrc", "/usr/lib/openfoam/openfoam*/etc/bashrc")
DISTRIBUTIONS = ("esi", "foundation")


def find_bashrc() -> Path | None:
    chosen = os.environ.get("SIMDECK_OPENFOAM_BASHRC")
    if chosen:
        return Path(chosen) if Path(chosen).is_file() else None
    for place in BASHRC_PLACES:
        found = sorted(Path("/").glob(place.lstrip("/")))
        if found:
            return found[-1]
    return None


@functools.cache
def foam_environment() -> dict[str, str]:
    """The WM_* and FOAM_* variables OpenFOAM's bashrc sets, read in a clean shell."""
    bashrc = find_bashrc()
    if bashrc is None:
        raise SimulatorMissing(
            "OpenFOAM is not installed on this machine (no etc/bashrc under /usr/share/openfoam). "
            "Install the Debian package: 'apt-get install openfoam'."
        )
    # Debian's bashrc complains of helper scripts it does not ship; the variables are set all the same.
    script = f". {shlex.quote(str(bashrc))} >/dev/null 2>&1; env -0"
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        env={"HOME": "/tmp", "USER": "simdeck", "PATH": "/usr/bin:/bin"},
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    env = {}
    for entry in done.stdout.decode(errors="replace").split("\0"):
        name, _, value = entry.partition("=")
        if name.startswith(("WM_", "FOAM_")) and value:
            env[name] = value
    if "WM_PROJECT_DIR" not in env:
        raise SimulatorMissing(
            f"OpenFOAM's {bashrc} did not set WM_PROJECT_DIR; the installation looks broken."
        )
    return env


class OpenFoam(ProgramSuite):
    name = "openfoam"
    label = "OpenFOAM"
    package = "openfoam"
    version_program = "blockMesh"
    example_commands = ("blockMesh", "icoFoam")
    extra_parameters = frozenset({"shell_script", "distribution"})
    error_markers = (
        ErrorMarker(
            re.compile(r"FOAM FATAL (IO )?ERROR"),
            "OpenFOAM stopped on the case's setup: the quoted lines name the dictionary, the entry and "
            "the file. Check that entry's spelling and value; a case written for another OpenFOAM "
            "release or distribution may use keywords this one does not know.",
            following=6,
        ),
    )

    # Solvers and utilities are single words: icoFoam, blockMesh, decomposePar.
    program_pattern = re.compile(r"[A-Za-z][A-Za-z0-9]*")

    def programs(self) -> frozenset[str]:
        listed = package_programs(self.package)
        if listed:
            return listed
        try:
            foam_bin = foam_environment().get("FOAM_APPBIN")
        except SimulatorMissing:
            return frozenset()
        return (
            frozenset(p.name for p in Path(foam_bin).iterdir())
            if foam_bin and Path(foam_bin).is_dir()
            else frozenset()
        )

    def programs_hint(self) -> str:
        return " (any of the installed OpenFOAM solvers and utilities)"

    def detect_version(self) -> str:
        return foam_environment().get("WM_PROJECT_VERSION", "unknown")

    @staticmethod
    def distribution_of(version: str) -> str:
        # ESI-OpenCFD numbers its releases v1912, v2412; the Foundation 10, 11, 12.
        return "esi" if version.lower().startswith("v") else "foundation"

    def unfit(self, installed_version: str, parameters: dict) -> str | None:
        wanted = parameters.get("distribution")
        if wanted and wanted != self.distribution_of(installed_version):
            return f"the task asks for OpenFOAM's {wanted} distribution"
        return super().unfit(installed_version, parameters)

    def environment(self) -> dict[str, str]:
        return foam_environment()

    def validate_commands(self, parameters: dict, input_files: list[str]) -> dict:
        distribution = parameters.get("distribution")
        out = {}
        if distribution is not None:
            if distribution not in DISTRIBUTIONS:
                raise InvalidParameters(
                    f"distribution must be one of {', '.join(DISTRIBUTIONS)}, not {distribution!r}.",
                    field="distribution",
                )
            out["distribution"] = distribution
        script = parameters.get("shell_script")
        commands = parameters.get("commands")
        if (script is None) == (commands is None):
            raise InvalidParameters(
                "Give either commands (e.g. ['blockMesh', 'icoFoam']) or shell_script (a script of the "
                "input folder that runs the case), not both and not neither.",
                field="commands" if commands is not None else "shell_script",
            )
        if script is not None:
            names = {str(PurePosixPath(n)) for n in input_files}
            if not isinstance(script, str) or str(PurePosixPath(script)) not in names or ".." in script:
                found = sorted(n for n in names if n.endswith(".sh")) or ["none"]
                raise InvalidParameters(
                    f"shell_script {script!r} is not a file of the input folder. "
                    f"Scripts there: {', '.join(found)}.",
                    field="shell_script",
                )
            return out | {"shell_script": str(PurePosixPath(script))}
        commands = self.checked_commands(commands)
        parallel = [i for i, c in enumerate(commands, start=1) if self.runs_under_mpi(shlex.split(c))]
        if parallel and not parameters.get("n_vcpus"):
            raise InvalidParameters(
                f"Command {parallel[0]} runs in parallel (-parallel): give n_vcpus=N, the numberOfSubdomains "
                "of system/decomposeParDict, and run decomposePar before it.",
                field="n_vcpus",
            )
        return out | {"commands": commands}

    def command_lines(self, parameters: dict) -> list[str]:
        if "shell_script" in parameters:
            return [shlex.join(["bash", parameters["shell_script"]])]
        return parameters["commands"]

    def runs_under_mpi(self, argv: list[str]) -> bool:
        return "-parallel" in argv

    def progress_reader(self, workdir: Path, parameters: dict) -> ProgressReader:
        """The solver's simulated time between the case's startTime and endTime.

        Only where ``system/controlDict`` stops at a fixed ``endTime`` (a
        case may stop otherwise, or compute its times with ``#calc``); a
        solver whose output a script sends to a file shows nothing here.
        """
        try:
            control = (Path(workdir) / "system" / "controlDict").read_text(errors="replace")
        except OSError:
            return ProgressReader()
        entries = {}
        for name in ("stopAt", "startTime", "endTime"):
            found = re.search(ENTRY.format(name), control, re.MULTILINE)
            entries[name] = found.group(1) if found else None
        try:
            start, end = float(entries["startTime"] or 0), float(entries["endTime"] or "")
        except ValueError:
            return ProgressReader()
        if entries["stopAt"] not in (None, "endTime") or end <= start:
            return ProgressReader()
        return SolverTime(start, end)


class SolverTime(Furthest):
    """How far the solver's simulated time is from the start to the end of the case."""

    def __init__(self, start: float, end: float):
        super().__init__()
        self.start, self.end = start, end

    def fraction(self, data: bytes) -> float | None:
        if b"Time = " not in data:
            return None
        times = TIME_LINE.findall(data)
        try:
            return (float(times[-1]) - self.start) / (self.end - self.start) if times else None
        except ValueError:
            return None
