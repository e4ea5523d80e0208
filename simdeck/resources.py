"""Machine groups: pools of machines that run tasks, started and terminated by you."""

from __future__ import annotations

import sys
import time

from simdeck import api
from simdeck.errors import SimdeckError


class MachineGroup:
    """A named pool of ``num_machines`` identical machines.

    Nothing is created on the server until :meth:`start` (or a ``run()``
    that targets the group) asks for it.
    """

    def __init__(
        self,
        machine_type: str,
        num_machines: int = 1,
        spot: bool = False,
        data_disk_gb: int = 10,
        auto_resize_disk_max_gb: int | None = None,
        max_idle_time: int | None = 3,
        auto_terminate_minutes: int | None = None,
        name: str | None = None,
        project: str | None = None,
    ):
        self.machine_type = machine_type
        self.num_machines = num_machines
        self.spot = spot
        self.data_disk_gb = data_disk_gb
        self.auto_resize_disk_max_gb = auto_resize_disk_max_gb
        self.max_idle_time = max_idle_time
        self.auto_terminate_minutes = auto_terminate_minutes
        self.project = project
        self._name = name
        self._info: dict | None = None
        self._client = api.client()

    @classmethod
    def _from_info(cls, info: dict) -> MachineGroup:
        group = cls(
            info["machine_type"],
            num_machines=info["num_machines"],
            spot=info["spot"],
            data_disk_gb=info["data_disk_gb"],
            auto_resize_disk_max_gb=info["auto_resize_disk_max_gb"],
            max_idle_time=info["max_idle_time"],
            auto_terminate_minutes=info["auto_terminate_minutes"],
            name=info["name"],
            project=info["project"],
        )
        group._info = info
        return group

    def __repr__(self) -> str:
        return (
            f"MachineGroup(name={self._name!r}, machine_type={self.machine_type!r}, "
            f"num_machines={self.num_machines})"
        )

    # -- server state --------------------------------------------------------

    def _create(self) -> dict:
        self._info = self._client.post(
            "/machine-groups",
            json={
                "machine_type": self.machine_type,
                "name": self._name,
                "project": self.project,
                "num_machines": self.num_machines,
                "spot": self.spot,
                "data_disk_gb": self.data_disk_gb,
                "auto_resize_disk_max_gb": self.auto_resize_disk_max_gb,
                "max_idle_time": self.max_idle_time,
                "auto_terminate_minutes": self.auto_terminate_minutes,
            },
        )
        self._name = self._info["name"]
        return self._info

    def refresh(self) -> dict:
        if self._name is None:
            raise SimdeckError("This machine group has not been created yet; call start() first.")
        self._info = self._client.get(f"/machine-groups/{self._name}")
        return self._info

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def id(self) -> int | None:
        return self._info["id"] if self._info else None

    @property
    def status(self) -> str:
        return self.refresh()["state"] if self._name else "not created"

    @property
    def n_vcpus(self) -> int:
        return (self._info or self.refresh())["n_vcpus"]

    # -- actions -------------------------------------------------------------

    def start(self, wait: bool = True, timeout: float = 120.0) -> MachineGroup:
        """Create the group if needed and bring its machines up."""
        if self._info is None and self._name is not None:
            try:
                self.refresh()
            except SimdeckError:
                self._info = None
        if self._info is None:
            self._create()
        self._info = self._client.post(f"/machine-groups/{self._name}/start")
        print(
            f"Starting machine group {self._name} ({self.num_machines} × {self.machine_type})…",
            file=sys.stderr,
        )
        if wait:
            deadline = time.monotonic() + timeout
            while self._info["machines_online"] < self.num_machines:
                if time.monotonic() > deadline:
                    raise SimdeckError(
                        f"Machine group {self._name} has {self._info['machines_online']} of "
                        f"{self.num_machines} machines online after {timeout:.0f} s; see the console."
                    )
                time.sleep(0.5)
                self.refresh()
            print(f"Machine group {self._name} is up.", file=sys.stderr)
        return self

    def ensure_started(self) -> None:
        if self._info is None or self._info["state"] == "created":
            self.start(wait=False)

    def terminate(self) -> None:
        """Shut the group down: queued tasks end as zombies, running ones are stopped."""
        if self._name is None:
            return
        self._info = self._client.post(f"/machine-groups/{self._name}/terminate")
        print(f"Machine group {self._name} is terminating.", file=sys.stderr)


def get() -> list[MachineGroup]:
    """Your machine groups that are not terminated."""
    return [MachineGroup._from_info(info) for info in api.client().get("/machine-groups")]


def get_by_name(name: str) -> MachineGroup:
    return MachineGroup._from_info(api.client().get(f"/machine-groups/{name}"))


def machine_types() -> list[dict]:
    return api.client().get("/machine-types")
