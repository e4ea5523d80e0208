"""Simulator adapters, by the name the API and the client use."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tasks_app.simulators.base import (
    Diagnosis,
    InvalidParameters,
    Invocation,
    Simulator,
    SimulatorMissing,
    version_matches,
)
from tasks_app.simulators.commands import Commands
from tasks_app.simulators.gromacs import Gromacs
from tasks_app.simulators.lammps import Lammps
from tasks_app.simulators.openfoam import OpenFoam
from tasks_app.simulators.programs import ProgramSuite
from tasks_app.simulators.quantum_espresso import QuantumEspresso
from tasks_app.simulators.splishsplash import SplishSplash

REGISTRY: dict[str, Simulator] = {
    s.name: s for s in (SplishSplash(), Commands(), Gromacs(), Lammps(), OpenFoam(), QuantumEspresso())
}


class UnknownSimulator(LookupError):
    def __init__(self, name: str):
        known = ", ".join(sorted(REGISTRY))
        super().__init__(f"Unknown simulator {name!r}. Available simulators: {known}.")


def installed() -> dict[str, str]:
    """The simulators this machine has, and their versions: what a machine reports when it starts."""

    def version(simulator: Simulator) -> str | None:
        try:
            return simulator.version()
        except SimulatorMissing:
            return None

    # Together: some programs take a good part of a second to tell (MPI starting up).
    with ThreadPoolExecutor(max_workers=len(REGISTRY)) as pool:
        versions = dict(zip(REGISTRY, pool.map(version, REGISTRY.values()), strict=True))
    return {name: found for name, found in versions.items() if found is not None}


def get(name: str) -> Simulator:
    try:
        return REGISTRY[name.lower()]
    except KeyError:
        raise UnknownSimulator(name) from None


__all__ = [
    "REGISTRY",
    "Diagnosis",
    "ProgramSuite",
    "InvalidParameters",
    "Invocation",
    "Simulator",
    "SimulatorMissing",
    "UnknownSimulator",
    "get",
    "installed",
    "version_matches",
]
