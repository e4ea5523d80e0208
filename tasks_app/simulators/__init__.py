"""Simulator adapters, by the name the API and the client use."""

from __future__ import annotations

from tasks_app.simulators.base import (
    InvalidParameters,
    Invocation,
    Simulator,
    SimulatorMissing,
)
from tasks_app.simulators.commands import Commands
from tasks_app.simulators.splishsplash import SplishSplash

REGISTRY: dict[str, Simulator] = {s.name: s for s in (SplishSplash(), Commands())}


class UnknownSimulator(LookupError):
    def __init__(self, name: str):
        known = ", ".join(sorted(REGISTRY))
        super().__init__(f"Unknown simulator {name!r}. Available simulators: {known}.")


def get(name: str) -> Simulator:
    try:
        return REGISTRY[name.lower()]
    except KeyError:
        raise UnknownSimulator(name) from None


__all__ = [
    "REGISTRY",
    "InvalidParameters",
    "Invocation",
    "Simulator",
    "SimulatorMissing",
    "UnknownSimulator",
    "get",
]
