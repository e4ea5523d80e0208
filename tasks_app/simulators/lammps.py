"""LAMMPS (molecular dynamics), Debian's ``lammps`` package: ``lmp``, run on the task's input script."""

from __future__ import annotations

import re
import shlex
from pathlib import Path, PurePosixPath

from tasks_app.simulators.base import InvalidParameters
from tasks_app.simulators.programs import ErrorMarker, ProgramSuite, run_for_output
from tasks_app.simulators.progress import Furthest, ProgressReader

# An input script's "run N" (its keywords after N change nothing of the count,
# except "upto", which runs to step N instead of N more).
RUN = re.compile(r"^[ \t]*run[ \t]+(\S+)(.*)$", re.MULTILINE)
# Commands that make the number of steps unknowable before the run.
UNCOUNTABLE = re.compile(r"^[ \t]*(include|jump|label|next|minimize|rerun|clear)\b", re.MULTILINE)


class Lammps(ProgramSuite):
    name = "lammps"
    label = "LAMMPS"
    package = "lammps"
    version_program = "lmp"
    example_commands = ("lmp -in melt.in",)
    extra_parameters = frozenset({"sim_config_filename"})
    error_markers = (
        ErrorMarker(
            re.compile(r"^ERROR( on proc \d+)?:"),
            "LAMMPS stopped at a command of the input script; the quoted line names the problem and, "
            "when it says 'Last command', which command. Check that command against the LAMMPS manual "
            "of this version, and that every file the script reads (data, potentials) is in the input "
            "folder.",
            following=1,
        ),
    )

    program_pattern = re.compile("lmp")

    def programs(self) -> frozenset[str]:
        return frozenset({"lmp"})

    def detect_version(self) -> str:
        # "Large-scale Atomic/Molecular Massively Parallel Simulator - 29 Sep 2021 - Update 2"
        found = re.search(r"(\d{1,2}) ([A-Z][a-z]{2}) (\d{4})", run_for_output(["lmp", "-h"]))
        if not found:
            return "unknown"
        # LAMMPS names its releases by date, as in "29Sep2021".
        day, month, year = found.groups()
        return f"{int(day)}{month}{year}"

    def validate_commands(self, parameters: dict, input_files: list[str]) -> dict:
        if "commands" in parameters:
            raise InvalidParameters(
                "LAMMPS runs one input script: give sim_config_filename (e.g. 'melt.in'), not commands.",
                field="commands",
            )
        value = parameters.get("sim_config_filename")
        scripts = sorted(
            name for name in input_files if "/" not in name and not name.endswith((".data", ".md"))
        )
        hint = f" Files at the top of the input folder: {', '.join(scripts[:10]) or 'none'}."
        if not isinstance(value, str) or not value:
            raise InvalidParameters(
                "sim_config_filename is required: the LAMMPS input script, relative to the input folder."
                + hint,
                field="sim_config_filename",
            )
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or "\\" in value:
            raise InvalidParameters(
                f"sim_config_filename {value!r} must be a path inside the input folder (relative, no '..')."
                + hint,
                field="sim_config_filename",
            )
        if str(path) not in {str(PurePosixPath(n)) for n in input_files}:
            raise InvalidParameters(
                f"sim_config_filename {value!r} is not in the input folder." + hint,
                field="sim_config_filename",
            )
        return {"sim_config_filename": str(path)}

    def command_lines(self, parameters: dict) -> list[str]:
        return [shlex.join(["lmp", "-in", parameters["sim_config_filename"]])]

    def progress_reader(self, workdir: Path, parameters: dict) -> ProgressReader:
        """Steps done against the steps of the script's ``run`` commands, from the thermo output.

        Only for a script whose runs can be counted before it starts: plain
        ``run N`` with N a number, no loops, includes or minimisations.
        """
        try:
            script = (Path(workdir) / parameters["sim_config_filename"]).read_text(errors="replace")
        except (OSError, KeyError):
            return ProgressReader()
        script = re.sub(r"#.*", "", script)
        runs = RUN.findall(script)
        if not runs or UNCOUNTABLE.search(script) or "$" in script:
            return ProgressReader()
        try:
            steps = [int(count) for count, rest in runs if "upto" not in rest.split()]
        except ValueError:
            return ProgressReader()
        if len(steps) != len(runs) or sum(steps) <= 0:
            return ProgressReader()
        return ThermoSteps(steps)


class ThermoSteps(Furthest):
    """Steps done, from the step column of LAMMPS' thermo lines.

    Each run prints a header whose first column is ``Step``, a line per
    ``thermo`` interval starting with the step number, and ``Loop time of``
    when it ends; the step number goes on from run to run.
    """

    def __init__(self, runs: list[int]):
        super().__init__()
        self.runs, self.total = runs, sum(runs)
        self.finished = 0  # runs ended
        self.first: int | None = None  # the first step of the current run
        self.in_table = False

    def fraction(self, data: bytes) -> float | None:
        found = None
        for line in data.splitlines():
            words = line.split()
            if not words:
                continue
            if words[0] == b"Step":
                self.in_table, self.first = True, None
            elif line.startswith(b"Loop time of"):
                self.in_table = False
                if self.finished < len(self.runs):
                    self.finished += 1
                found = self.done(0)
            elif self.in_table and words[0].isdigit():
                step = int(words[0])
                if self.first is None:
                    self.first = step
                found = self.done(step - self.first)
        return found

    def done(self, into_run: int) -> float:
        current = self.runs[self.finished] if self.finished < len(self.runs) else 0
        return (sum(self.runs[: self.finished]) + min(into_run, current)) / self.total
