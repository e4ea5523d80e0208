"""Machines on Slurm against machines on the server's host, in the same run.

A Slurm cluster of two nodes on this host (tasks_app/testing/slurm.py: the
installed slurmctld and a slurmd per node, each node in a network namespace
of its own; needs root) serves a stack whose Slurm provider submits pilot
jobs to it. Two figures, each against the local provider as the baseline:

* dispatch: a task submitted through the API until its simulator process
  runs (it stamps the clock, as in the dispatch benchmark), one at a time,
  turn about on an idle local machine and an idle Slurm machine;
* machine start: a group started until its machine is online, which on
  Slurm includes ``sbatch``, the wait in Slurm's queue and the job's start.

The pilots reach the web server's machine interface (nothing else) through
a relay on the bridge, as compute nodes would reach it over the network.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench import harness
from bench.dispatch import Stamps, dispatch_one
from bench.harness import percentiles, result

TITLE = "Machines on Slurm"
NAME = "slurm_dispatch"
WARMUP = 2


def run(quick: bool = False) -> list[dict]:
    harness.setup_django()
    from django.conf import settings

    from tasks_app.testing import slurm as rig
    from tasks_app.testing.stack import free_port

    if why := rig.why_not():
        raise RuntimeError(f"No Slurm cluster can be started here: {why}.")
    count = 5 if quick else 50
    starts = 2 if quick else 5
    with tempfile.TemporaryDirectory(prefix="simdeck-slurm-bench-") as folder:
        cluster = rig.SlurmCluster(Path(folder)).start()
        # This process starts groups too, and asks the same cluster about them.
        providers, conf = settings.SIMDECK_PROVIDERS, os.environ.get("SLURM_CONF")
        machine_url = settings.SIMDECK_MACHINE_URL
        port = free_port()
        settings.SIMDECK_PROVIDERS = ["local", "slurm"]
        settings.SIMDECK_MACHINE_URL = f"http://{cluster.host}:{port}"
        os.environ.update(cluster.env)
        try:
            cluster.relay(f"http://127.0.0.1:{port}")  # the web server, where the nodes reach it
            env = {
                **cluster.env,
                "SIMDECK_PROVIDERS": "local,slurm",
                "SIMDECK_STACK_PORT": str(port),
                "SIMDECK_MACHINE_URL": settings.SIMDECK_MACHINE_URL,
                "SIMDECK_SLURM_ENV": json.dumps({"SIMDECK_HOME": folder + "/machines"}),
            }
            stamps = Stamps(host=cluster.host)  # where a sandbox on a node reaches the host
            try:
                with harness.Stack(machines=1, machine_type="n2-standard-2", env=env) as stack:
                    provider = [sys.executable, "manage.py", "runprovider", "--provider", "slurm"]
                    stack._processes.spawn("slurm-provider", [*provider, "--interval", "0.5"])
                    local_start, slurm_start = [], []
                    for i in range(starts):
                        local_start.append(_start(stack, f"{stack.group_name}-l{i}", "local"))
                        slurm_start.append(_start(stack, f"{stack.group_name}-s{i}", "slurm"))
                    slurm_group = _group(stack, f"{stack.group_name}-slurm", "slurm")
                    _wait_online(stack, slurm_group)
                    local, on_slurm = _dispatch(stack, stack.group, slurm_group, count, stamps)
            finally:
                stamps.close()
        finally:
            cluster.stop()
            settings.SIMDECK_PROVIDERS = providers
            settings.SIMDECK_MACHINE_URL = machine_url
            if conf is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = conf
    p_slurm, p_local = percentiles(on_slurm), percentiles(local)
    note = f"{count} tasks each, one at a time, turn about; 2 slurmd nodes on this host"
    figures = [
        result(
            NAME,
            f"submit to process start on a Slurm machine, {p}",
            "ms",
            p_slurm[p] * 1000,
            p_local[p] * 1000,
            baseline_name="the same on a local machine",
            note=note,
        )
        for p in ("p50", "p95")
    ]
    figures.append(
        result(
            NAME,
            "group start to its machine online",
            "s",
            percentiles(slurm_start)["p50"],
            percentiles(local_start)["p50"],
            baseline_name="a local machine",
            note=f"median of {starts}; on Slurm: sbatch, queue, job start, worker start",
        )
    )
    return figures


def _group(stack: harness.Stack, name: str, provider: str):
    from tasks_app import services

    group = services.create_group(
        stack.user, machine_type="n2-standard-2", name=name, max_idle_time=None, provider=provider
    )
    type(group).objects.filter(pk=group.pk).update(allow_network=True)  # the stamps reach the host
    return services.start_group(group)


def _wait_online(stack: harness.Stack, group) -> float:
    from tasks_app.models import Machine

    deadline = time.monotonic() + 120
    while not Machine.objects.filter(group=group, state=Machine.State.ONLINE).exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"No machine of {group.name} came online; logs:\n{stack.logs()}")
        time.sleep(0.05)
    return time.monotonic()


def _start(stack: harness.Stack, name: str, provider: str) -> float:
    """Seconds from starting a one-machine group to its machine online; the group is terminated after."""
    from tasks_app import services
    from tasks_app.models import MachineGroup

    began = time.monotonic()
    group = _group(stack, name, provider)
    took = _wait_online(stack, group) - began
    services.terminate_group(group, reason="Measured.")
    deadline = time.monotonic() + 60
    while MachineGroup.objects.filter(pk=group.pk).exclude(state=MachineGroup.State.TERMINATED).exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"Group {name} did not terminate; logs:\n{stack.logs()}")
        time.sleep(0.1)
    return took


def _dispatch(stack: harness.Stack, local_group, slurm_group, count: int, stamps: Stamps):
    from tasks_app.models import MachineGroup

    MachineGroup.objects.filter(pk=local_group.pk).update(allow_network=True)
    times: dict[str, list[float]] = {"local": [], "slurm": []}
    with harness.api_client(stack) as client:
        for i in range(WARMUP + count):
            for where, group in (("local", local_group), ("slurm", slurm_group)):
                _, submitted, began = dispatch_one(stack, client, group.name, f"{where}-{i}", stamps)
                if i >= WARMUP:
                    times[where].append(began - submitted)
    return times["local"], times["slurm"]


if __name__ == "__main__":
    from bench.__main__ import main

    raise SystemExit(main([NAME]))
