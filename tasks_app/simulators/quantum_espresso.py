"""Quantum ESPRESSO (electronic structure), Debian's ``quantum-espresso``: ``pw.x`` and its siblings."""

from __future__ import annotations

import math
import re
import shlex
import shutil
from pathlib import Path

from tasks_app.simulators.debian import package_programs
from tasks_app.simulators.programs import ErrorMarker, ProgramSuite, run_for_output
from tasks_app.simulators.progress import ProgressReader

# pw.x's options that name its input file.
INPUT_OPTIONS = ("-in", "-inp", "-input", "-i")
# "conv_thr = 1.0d-8" (Fortran writes its exponents with d); QE's default otherwise.
CONV_THR = re.compile(r"^\s*conv_thr\s*=\s*([0-9.]+(?:[dDeE][-+]?\d+)?)", re.MULTILINE)
DEFAULT_CONV_THR = 1e-6
# Printed after each SCF iteration: "estimated scf accuracy    <       0.00005243 Ry".
ACCURACY = re.compile(rb"estimated scf accuracy\s+<\s+([0-9.]+(?:[eE][-+]?\d+)?)")

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

    def progress_reader(self, workdir: Path, parameters: dict) -> ProgressReader:
        """How far the SCF is from its convergence threshold, from pw.x's estimated accuracy.

        An SCF runs until its estimated accuracy is below ``conv_thr``, in
        as many iterations as that takes: the fraction is how many of the
        orders of magnitude between the first estimate and the threshold
        have been gained. A relaxation or dynamics run starts an SCF per
        step, and the bar starts over with each.
        """
        threshold = DEFAULT_CONV_THR
        for command in parameters.get("commands") or []:
            try:
                argv = shlex.split(command)
            except ValueError:
                continue
            named = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in INPUT_OPTIONS]
            if not named:
                continue
            try:
                found = CONV_THR.search((Path(workdir) / named[0]).read_text(errors="replace"))
                threshold = float(found.group(1).replace("d", "e").replace("D", "e")) if found else threshold
            except (OSError, ValueError):
                pass
            break
        return ScfAccuracy(threshold)


class ScfAccuracy(ProgressReader):
    """The SCF's estimated accuracy against its threshold, on a logarithmic scale."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.first: float | None = None

    def lines(self, data: bytes) -> float | None:
        told = super().lines(data)
        if told is not None:
            return told
        if b"estimated scf accuracy" not in data and b"Self-consistent Calculation" not in data:
            return None
        found = None
        for line in data.splitlines():
            if b"Self-consistent Calculation" in line:
                self.first = None  # a new SCF (the next ionic step) starts far off again
                continue
            match = ACCURACY.search(line)
            if not match:
                continue
            accuracy = float(match.group(1))
            if self.first is None:
                self.first = accuracy
            if accuracy <= self.threshold:
                found = 1.0
            elif self.first <= self.threshold or accuracy >= self.first:
                found = 0.0
            else:
                found = math.log(self.first / accuracy) / math.log(self.first / self.threshold)
        return found
