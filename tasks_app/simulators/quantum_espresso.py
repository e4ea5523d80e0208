"""Quantum ESPRESSO (electronic structure), Debian's ``quantum-espresso``: ``pw.x`` and its siblings."""

from __future__ import annotations

import re
import shutil

from tasks_app.simulators.debian import package_programs
from tasks_app.simulators.programs import ErrorMarker, ProgramSuite, run_for_output

# Where dpkg has no list (another install), the usual programs.
COMMON_PROGRAMS = (
    "pw.x",
    "ph.x",
    "pp.x",
    "dos.x",
    "projwfc.x",
    "bands.x",
    "q2r.x",
    "matdyn.x",
    "cp.x",
    "neb.x",
)


class QuantumEspresso(ProgramSuite):
    name = "quantumespresso"
    label = "Quantum ESPRESSO"
    package = "quantum-espresso"
    version_program = "pw.x"
    example_commands = ("pw.x -in si.scf.in",)
    error_markers = (
        ErrorMarker(
            re.compile(r"Error in routine"),
            "Quantum ESPRESSO refused the input; the routine named says where. read_namelists or "
            "iosys: a variable misspelt, misplaced in its namelist or given a value it does not take; "
            "readpp or read_pseudo: a pseudopotential file of ATOMIC_SPECIES is not in pseudo_dir; "
            "card_...: a card (ATOMIC_POSITIONS, K_POINTS) is malformed.",
            following=1,
            end=re.compile(r"^\s*%{10,}"),
        ),
    )

    program_pattern = re.compile(r"\w+\.x")

    def programs(self) -> frozenset[str]:
        listed = {p for p in package_programs(self.package) if p.endswith(".x")}
        return frozenset(listed or (p for p in COMMON_PROGRAMS if shutil.which(p)))

    def programs_hint(self) -> str:
        return " (see available_commands())"

    def detect_version(self) -> str:
        # "Program PWSCF v.6.7MaX starts on ..." (MaX: the European centre of excellence's build)
        found = re.search(r"Program PWSCF v\.?(\d+(?:\.\d+)*)", run_for_output(["pw.x"]))
        return found.group(1) if found else "unknown"
