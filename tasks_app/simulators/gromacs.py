"""GROMACS (molecular dynamics), Debian's ``gromacs`` package: ``gmx`` and its MPI build ``gmx_mpi``.

``gmx`` runs its own threads (thread-MPI and OpenMP, as many as the
machine type's vCPUs); ``n_vcpus`` runs ``gmx_mpi`` commands under mpirun.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

from tasks_app.simulators.base import InvalidParameters
from tasks_app.simulators.programs import ErrorMarker, ProgramSuite, run_for_output
from tasks_app.simulators.progress import ProgressReader

# What mdrun writes in its log: the number of steps (an energy minimisation's
# "Number of steps = 500", a dynamics run's "nsteps = 50000" among the
# parameters), a "Step Time" heading over each step it reports, and its end.
TOTAL_STEPS = re.compile(rb"^\s*(?:Number of steps\s*=|nsteps\s*=)\s*(-?\d+)\s*$")
STEP_HEADING = re.compile(rb"^\s*Step\s+Time\s*$")
FINISHED = (b"converged to", b"Finished mdrun")
LOG_READ_BYTES = 1 << 20

PROGRAMS = ("gmx", "gmx_d", "gmx_mpi", "gmx_mpi_d")
# GROMACS frames an error between lines of dashes: "Fatal error:" (or "Error in
# user input:") and the message, then "For more information and tips ...".
GROMACS_END = re.compile(r"^(For more information|-{10,})")


class Gromacs(ProgramSuite):
    name = "gromacs"
    label = "GROMACS"
    package = "gromacs"
    version_program = "gmx"
    example_commands = ("gmx grompp -f em.mdp -c box.gro -p topol.top -o em.tpr", "gmx mdrun -deffnm em")
    error_markers = (
        ErrorMarker(
            re.compile(r"^(Fatal error|Error in user input):"),
            "GROMACS refused the input: the quoted lines name the file and what does not fit. Most often "
            "the molecule counts under [ molecules ] in the topology do not match the coordinate file, an "
            "#include'd file is not in the input folder, or an .mdp option is misspelt (grompp's notes "
            "say which).",
            following=6,
            end=GROMACS_END,
        ),
    )

    program_pattern = re.compile("|".join(re.escape(p) for p in PROGRAMS))

    def programs(self) -> frozenset[str]:
        return frozenset(p for p in PROGRAMS if shutil.which(p))

    def detect_version(self) -> str:
        text = run_for_output(["gmx", "--version"])
        found = re.search(r"GROMACS version:\s*(\d[\w.]*)", text)
        return found.group(1) if found else "unknown"

    def validate_commands(self, parameters: dict, input_files: list[str]) -> dict:
        commands = self.checked_commands(parameters.get("commands"))
        if parameters.get("n_vcpus") and not any(self.runs_under_mpi(c.split()) for c in commands):
            raise InvalidParameters(
                "n_vcpus runs gmx_mpi commands on that many MPI processes, and none of the commands uses "
                "gmx_mpi. gmx runs its own threads on the machine's vCPUs (limit them with -nt N), or "
                "write gmx_mpi instead of gmx.",
                field="n_vcpus",
            )
        return {"commands": commands}

    def runs_under_mpi(self, argv: list[str]) -> bool:
        return argv[0].startswith("gmx_mpi")

    def progress_reader(self, workdir: Path, parameters: dict) -> ProgressReader:
        """Steps done against the run's number of steps, from the log of the mdrun running now.

        mdrun tells its progress only in its log file (``-deffnm NAME``:
        ``NAME.log``, ``-g FILE``, else ``md.log``); the newest of the
        commands' logs is the stage running now, and the bar starts over
        with each stage. An energy minimisation that converges before its
        maximum number of steps jumps to the end.
        """
        logs = []
        for command in parameters.get("commands") or []:
            try:
                argv = shlex.split(command)
            except ValueError:
                continue
            if "mdrun" not in argv:
                continue
            name = "md.log"
            for i, arg in enumerate(argv[:-1]):
                if arg == "-deffnm":
                    name = argv[i + 1] + ".log"
                elif arg == "-g":
                    name = argv[i + 1]
                    break
            logs.append(Path(workdir) / name)
        return MdrunLog(logs) if logs else ProgressReader()


class MdrunLog(ProgressReader):
    """Follows mdrun's log files, reading only what was added since the last look."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.offsets: dict[Path, int] = {}
        self.rest: dict[Path, bytes] = {}
        self.total: dict[Path, int] = {}
        self.step: dict[Path, float] = {}
        self.heading = False

    def look(self) -> float | None:
        try:
            newest = max(
                (p for p in self.paths if p.is_file() and not p.is_symlink()), key=lambda p: p.stat().st_mtime
            )
        except (ValueError, OSError):
            return None
        try:
            with open(newest, "rb") as f:
                f.seek(self.offsets.get(newest, 0))
                data = self.rest.get(newest, b"") + f.read(LOG_READ_BYTES)
                self.offsets[newest] = f.tell()
        except OSError:
            return None
        lines = data.split(b"\n")
        self.rest[newest] = lines.pop()  # a line still being written
        for line in lines:
            self.read_line(newest, line)
        total, step = self.total.get(newest), self.step.get(newest)
        if step is None or not total or total < 0:
            return None
        return min(1.0, max(0.0, step / total))

    def read_line(self, path: Path, line: bytes) -> None:
        if self.heading:
            self.heading = False
            words = line.split()
            if words and words[0].isdigit():
                self.step[path] = int(words[0])
            return
        if STEP_HEADING.match(line):
            self.heading = True
        elif found := TOTAL_STEPS.match(line):
            self.total.setdefault(path, int(found.group(1)))
        elif any(mark in line for mark in FINISHED) and self.total.get(path):
            self.step[path] = self.total[path]
