"""LAMMPS (molecular dynamics), Debian's ``lammps`` package: ``lmp``, run on the task's input script."""

from __future__ import annotations

import re
import shlex
from pathlib import PurePosixPath

from tasks_app.simulators.base import InvalidParameters
from tasks_app.simulators.programs import ErrorMarker, ProgramSuite, run_for_output


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
