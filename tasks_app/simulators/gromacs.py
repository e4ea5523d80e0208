"""GROMACS (molecular dynamics), Debian's ``gromacs`` package: ``gmx`` and its MPI build ``gmx_mpi``.

``gmx`` runs its own threads (thread-MPI and OpenMP, as many as the
machine type's vCPUs); ``n_vcpus`` runs ``gmx_mpi`` commands under mpirun.
"""

from __future__ import annotations

import re
import shutil

from tasks_app.simulators.base import InvalidParameters
from tasks_app.simulators.programs import ErrorMarker, ProgramSuite, run_for_output

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
