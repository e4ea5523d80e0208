"""Machine groups: pools of machines that run tasks, started and terminated by you.

mg = simdeck.resources.MachineGroup("c2-standard-4", num_machines=2)
mg.start()
...
mg.terminate()
"""

from __future__ import annotations

import datetime as dt
import sys
import time

from simdeck import api, durations
from simdeck.errors import SimdeckError


class MachineGroup:
    """A named pool of ``num_machines`` identical machines.

    Nothing is created on the server until :meth:`start` (or a ``run()``
    that targets the group) asks for it. ``max_idle_time`` and
    ``auto_terminate_minutes`` are minutes: the group stops itself after
    that long without a task, or after that long in all. Both also take a
    ``datetime.timedelta`` or text such as ``"2 hours"`` or ``"90 minutes"``;
    ``auto_terminate_ts`` (a datetime) stops the group at that moment instead.

    ``provider`` says what runs the machines: ``"local"`` (the server's host,
    the default) or ``"slurm"`` (one pilot job per machine on the server's
    Slurm cluster), with ``provider_options`` such as
    ``{"partition": "debug", "account": "lab", "qos": "normal"}``. On Slurm,
    ``auto_terminate_minutes`` is each job's time limit as well.

    ``spot`` groups (the default, as on Inductiva) may have their machines
    reclaimed where the server rehearses it (``SIMDECK_SPOT_RECLAIM_RATE``);
    ``resubmit_on_preemption`` then queues their tasks again. ``zone`` and
    ``threads_per_core`` are taken for scripts written for Inductiva: this
    server has no zones, and its machines run their type's vCPUs as they
    are, so only ``zone=None`` and ``threads_per_core=2`` are accepted.
    """

    def __init__(
        self,
        machine_type: str,
        num_machines: int = 1,
        spot: bool = True,
        data_disk_gb: int = 10,
        auto_resize_disk_max_gb: int | None = None,
        max_idle_time: float | dt.timedelta | str | None = 3,
        auto_terminate_minutes: float | dt.timedelta | str | None = None,
        *,
        auto_terminate_ts: dt.datetime | None = None,
        name: str | None = None,
        project: str | None = None,
        resubmit_on_preemption: bool = False,
        provider: str = "local",
        provider_options: dict[str, str] | None = None,
        zone: str | None = None,
        threads_per_core: int = 2,
    ):
        _check_zone(zone)
        _check_threads_per_core(threads_per_core)
        if not isinstance(num_machines, int) or num_machines < 1:
            raise ValueError(f"num_machines must be a whole number of at least 1, not {num_machines!r}.")
        if not 1 <= data_disk_gb <= 65536:
            raise ValueError(f"data_disk_gb must be between 1 and 65536, not {data_disk_gb!r}.")
        self.machine_type = machine_type
        self.num_machines = num_machines
        self.spot = spot
        self.data_disk_gb = data_disk_gb
        self.auto_resize_disk_max_gb = auto_resize_disk_max_gb
        self.max_idle_time = durations.minutes(max_idle_time, "max_idle_time")
        self.auto_terminate_minutes = durations.minutes(auto_terminate_minutes, "auto_terminate_minutes")
        if auto_terminate_ts is not None:
            if auto_terminate_minutes is not None:
                raise ValueError("Give auto_terminate_ts or auto_terminate_minutes, not both.")
            durations.until(auto_terminate_ts, "auto_terminate_ts")  # checked now, counted at start
        self.auto_terminate_ts = auto_terminate_ts
        self.project = project
        self.resubmit_on_preemption = resubmit_on_preemption
        self.provider = provider
        self.provider_options = dict(provider_options or {})
        self.zone = zone
        self.threads_per_core = threads_per_core
        self._name = name
        self._info: dict | None = None
        self._client = api.client()

    @classmethod
    def _from_info(cls, info: dict) -> MachineGroup:
        group = cls.__new__(ElasticMachineGroup if info.get("max_machines") is not None else MachineGroup)
        MachineGroup.__init__(
            group,
            info["machine_type"],
            num_machines=info["num_machines"],
            spot=info["spot"],
            data_disk_gb=info["data_disk_gb"],
            auto_resize_disk_max_gb=info["auto_resize_disk_max_gb"],
            max_idle_time=info["max_idle_time"],
            auto_terminate_minutes=info["auto_terminate_minutes"],
            name=info["name"],
            project=info["project"],
            resubmit_on_preemption=info.get("resubmit_on_preemption", False),
            provider=info.get("provider", "local"),
            provider_options=info.get("provider_options"),
        )
        if isinstance(group, ElasticMachineGroup):
            group.min_machines = info["min_machines"]
            group.max_machines = info["max_machines"]
        group._info = info
        return group

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self._name!r}, machine_type={self.machine_type!r}, "
            f"num_machines={self.num_machines})"
        )

    # -- server state --------------------------------------------------------

    def _request_body(self) -> dict:
        return {
            "machine_type": self.machine_type,
            "name": self._name,
            "project": self.project,
            "num_machines": self.num_machines,
            "spot": self.spot,
            "data_disk_gb": self.data_disk_gb,
            "auto_resize_disk_max_gb": self.auto_resize_disk_max_gb,
            "max_idle_time": self.max_idle_time,
            "auto_terminate_minutes": (
                durations.until(self.auto_terminate_ts, "auto_terminate_ts")
                if self.auto_terminate_ts is not None
                else self.auto_terminate_minutes
            ),
            "resubmit_on_preemption": self.resubmit_on_preemption,
            "provider": self.provider,
            "provider_options": self.provider_options,
        }

    def _create(self, start: bool = False) -> dict:
        self._info = self._client.post("/machine-groups", json={**self._request_body(), "start": start})
        self._name = self._info["name"]
        return self._info

    def refresh(self) -> dict:
        """Ask the server for the group's current state; returns it."""
        if self._name is None:
            raise SimdeckError("This machine group has not been created yet; call start() first.")
        self._info = self._client.get(f"/machine-groups/{self._name}")
        return self._info

    @property
    def id(self) -> int | None:
        return self._info["id"] if self._info else None

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def status(self) -> str:
        """``not created``, ``created``, ``started``, ``terminating`` or ``terminated``."""
        return self.refresh()["state"] if self._name else "not created"

    @property
    def info(self) -> dict:
        return self.refresh()

    @property
    def n_vcpus(self) -> int:
        """vCPUs of one machine."""
        return (self._info or self.refresh())["n_vcpus"]

    @property
    def memory_gb(self) -> float:
        """Memory of one machine, in GB."""
        return (self._info or self.refresh())["memory_gb"]

    @property
    def _wanted_online(self) -> int:
        return self.num_machines

    # -- actions -------------------------------------------------------------

    def start(self, wait: bool = True, timeout: float = 120.0) -> MachineGroup:
        """Create the group if needed and bring its machines up; with ``wait``, until they are online."""
        if self._info is None and self._name is not None:
            try:
                self.refresh()
            except SimdeckError:
                self._info = None
        if self._info is None:
            # Created and started in one request: a start the server refuses
            # (quota, provider) leaves no group behind.
            self._create(start=True)
        else:
            self._info = self._client.post(f"/machine-groups/{self._name}/start")
        print(f"Starting machine group {self._name} ({self._describe()})…", file=sys.stderr)
        if wait:
            deadline = time.monotonic() + timeout
            while self._info["machines_online"] < self._wanted_online:
                if time.monotonic() > deadline:
                    raise SimdeckError(
                        f"Machine group {self._name} has {self._info['machines_online']} of "
                        f"{self._wanted_online} machines online after {timeout:.0f} s; see the console."
                    )
                time.sleep(0.5)
                self.refresh()
            print(f"Machine group {self._name} is up.", file=sys.stderr)
        return self

    def estimate_cloud_cost(self, verbose: bool = True) -> float:
        """What the group costs an hour with all its machines up (an elastic group's maximum).

        Before the group exists, from the server's price of its machine type;
        after, as the server counts it. Prices are set by the server's admin
        (0 unless set). ``verbose`` also prints it, with what the group cost so
        far once it exists.
        """
        if self._name is None:
            types = {t["name"]: t for t in self._client.get("/machine-types")}
            kind = types.get(self.machine_type)
            if kind is None:
                raise SimdeckError(
                    f"This server offers no machine type {self.machine_type!r}; "
                    f"it offers: {', '.join(sorted(types))}."
                )
            per_hour, currency = kind["price_per_hour"] * self._wanted_maximum, kind["currency"]
            so_far = ""
        else:
            usage = self.usage()
            per_hour, currency = usage["estimated_cost_per_hour"], usage["currency"]
            so_far = f"; so far {usage['machine_hours']:.3g} machine-hours, {usage['cost']:.2f} {currency}"
        if verbose:
            print(
                f"Estimated cost of machine group {self._name or self.machine_type}: "
                f"{per_hour:.2f} {currency} per hour{so_far}.",
                file=sys.stderr,
            )
        return per_hour

    def usage(self) -> dict:
        """The group's machine-hours so far (idle included), core-hours and cost, as counted by the server."""
        if self._name is None:
            raise SimdeckError("This machine group has not been created yet; call start() first.")
        return self._client.get(f"/machine-groups/{self._name}/usage")

    @property
    def _wanted_maximum(self) -> int:
        return self.num_machines

    def _describe(self) -> str:
        where = f", on {self.provider}" if self.provider != "local" else ""
        return f"{self.num_machines} × {self.machine_type}{', spot' if self.spot else ''}{where}"

    def ensure_started(self) -> None:
        """Start the group unless it is started (used by ``run()``)."""
        if self._info is None or self._info["state"] == "created":
            self.start(wait=False)

    def terminate(self) -> None:
        """Shut the group down: queued tasks end as zombies, running ones are stopped."""
        if self._name is None:
            return
        self._info = self._client.post(f"/machine-groups/{self._name}/terminate")
        print(f"Machine group {self._name} is terminating.", file=sys.stderr)


class ElasticMachineGroup(MachineGroup):
    """A group that grows from ``min_machines`` towards ``max_machines`` while tasks wait,
    and shrinks back when machines idle."""

    def __init__(
        self,
        machine_type: str,
        min_machines: int = 1,
        max_machines: int = 2,
        spot: bool = True,
        data_disk_gb: int = 10,
        auto_resize_disk_max_gb: int | None = None,
        max_idle_time: float | dt.timedelta | str | None = 3,
        auto_terminate_minutes: float | dt.timedelta | str | None = None,
        *,
        auto_terminate_ts: dt.datetime | None = None,
        name: str | None = None,
        project: str | None = None,
        resubmit_on_preemption: bool = False,
        provider: str = "local",
        provider_options: dict[str, str] | None = None,
        zone: str | None = None,
        threads_per_core: int = 2,
    ):
        if not isinstance(min_machines, int) or min_machines < 1:
            raise ValueError(f"min_machines must be a whole number of at least 1, not {min_machines!r}.")
        if not isinstance(max_machines, int) or max_machines < min_machines:
            raise ValueError(
                f"max_machines must be at least min_machines ({min_machines}), not {max_machines!r}."
            )
        super().__init__(
            machine_type,
            num_machines=min_machines,
            spot=spot,
            data_disk_gb=data_disk_gb,
            auto_resize_disk_max_gb=auto_resize_disk_max_gb,
            max_idle_time=max_idle_time,
            auto_terminate_minutes=auto_terminate_minutes,
            auto_terminate_ts=auto_terminate_ts,
            name=name,
            project=project,
            resubmit_on_preemption=resubmit_on_preemption,
            provider=provider,
            provider_options=provider_options,
            zone=zone,
            threads_per_core=threads_per_core,
        )
        self.min_machines = min_machines
        self.max_machines = max_machines

    def _request_body(self) -> dict:
        return {
            **super()._request_body(),
            "min_machines": self.min_machines,
            "max_machines": self.max_machines,
        }

    @property
    def _wanted_online(self) -> int:
        return self.min_machines

    @property
    def _wanted_maximum(self) -> int:
        return self.max_machines

    def _describe(self) -> str:
        return (
            f"{self.min_machines} to {self.max_machines} × {self.machine_type}{', spot' if self.spot else ''}"
        )


class MPICluster(MachineGroup):
    """Machines working together on one task over MPI, as Inductiva's ``MPICluster``.

    No provider of this server runs one task across several machines yet:
    each task runs on one machine, its MPI processes (``n_vcpus`` of
    ``run()``) on that machine's vCPUs. A cluster of one machine is
    therefore a plain group and is accepted; more machines are refused
    before anything is created, saying what to use instead.
    """

    def __init__(
        self,
        machine_type: str,
        num_machines: int = 2,
        threads_per_core: int = 2,
        data_disk_gb: int = 10,
        max_idle_time: float | dt.timedelta | str | None = 3,
        auto_terminate_ts: dt.datetime | None = None,
        auto_terminate_minutes: float | dt.timedelta | str | None = None,
        *,
        name: str | None = None,
        project: str | None = None,
        provider: str = "local",
        provider_options: dict[str, str] | None = None,
        zone: str | None = None,
    ):
        if num_machines != 1:
            raise ValueError(
                f"MPICluster with num_machines={num_machines!r}: the {provider!r} provider runs each "
                "task on one machine, so MPI cannot span machines here. Use MPICluster(..., "
                "num_machines=1) or a MachineGroup of a machine type with more vCPUs, and run() with "
                "n_vcpus=... to start that many MPI processes on it."
            )
        # Inductiva's clusters are never spot machines: one lost machine would end the whole run.
        super().__init__(
            machine_type,
            num_machines=1,
            spot=False,
            data_disk_gb=data_disk_gb,
            max_idle_time=max_idle_time,
            auto_terminate_minutes=auto_terminate_minutes,
            auto_terminate_ts=auto_terminate_ts,
            name=name,
            project=project,
            provider=provider,
            provider_options=provider_options,
            zone=zone,
            threads_per_core=threads_per_core,
        )


def _check_zone(zone: object) -> None:
    if zone is not None:
        raise ValueError(
            f"zone={zone!r}: this server has no zones; its machines run where provider= says "
            "('local' or 'slurm'). Leave zone out."
        )


def _check_threads_per_core(threads: object) -> None:
    if threads != 2:
        raise ValueError(
            f"threads_per_core={threads!r}: this server's machines run every vCPU of their type "
            "(two threads per core) and cannot turn hyperthreading off. Leave threads_per_core out, "
            "and give run() n_vcpus=... to use fewer vCPUs."
        )


def get(include_terminated: bool = False) -> list[MachineGroup]:
    """Your machine groups (not terminated ones, unless asked), newest first."""
    params = {"include_terminated": include_terminated}
    return [MachineGroup._from_info(info) for info in api.client().get("/machine-groups", params=params)]


def get_by_name(name: str) -> MachineGroup:
    """The machine group called ``name``; raises NotFound otherwise."""
    return MachineGroup._from_info(api.client().get(f"/machine-groups/{name}"))


def machine_types() -> list[dict]:
    """The machine types this server offers: name, vcpus, memory_gb."""
    return api.client().get("/machine-types")


__all__ = ["ElasticMachineGroup", "MPICluster", "MachineGroup", "get", "get_by_name", "machine_types"]
