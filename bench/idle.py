"""What a stack costs while it does nothing, after groups came and went.

A stack (web server, scheduler, provider, one group of one machine) runs
``CYCLES`` groups of one machine through start and termination, then sits
idle for ``WINDOW`` seconds, during which the CPU time of all its processes
is counted, and that of a bare Celery worker (concurrency 1, same Redis)
idling beside it: the least an idle process attached to a broker costs.
Each role's memory (RSS) and open file descriptors are taken before the
cycles and after the window: what a start and a termination leave behind
shows as growth.
"""

from __future__ import annotations

import os
import time

import psutil

from bench import harness
from bench.harness import result

TITLE = "Idle stack"
CYCLES = 20
WINDOW = 60.0
ROLES = ("web", "scheduler", "provider", "machines")


def role_processes(popens, without_simulations: bool = False) -> dict[str, list[psutil.Process]]:
    """A stack's live processes by role: the machines are the provider's children.

    With ``without_simulations`` a running simulation (it carries its task's
    id) is left out of the machines: it is the task's, not the machine's.
    """
    procs = {role: [] for role in ROLES}
    for popen in popens:
        try:
            root = psutil.Process(popen.pid)
            role, tree = _role_of(root), root.children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        if role == "provider":
            procs["provider"].append(root)
            procs["machines"] += [
                p for p in tree if not (without_simulations and "SIMDECK_TASK_ID" in environ_of(p))
            ]
        else:
            procs[role] += [root, *tree]
    return procs


def environ_of(proc: psutil.Process) -> dict:
    """A process' environment, empty once it is gone or out of reach."""
    try:
        return proc.environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return {}


def _role_of(proc: psutil.Process) -> str:
    cmdline = " ".join(proc.cmdline())
    if "runprovider" in cmdline:
        return "provider"
    if "--beat" in cmdline:
        return "scheduler"
    return "web"


def snapshot(procs: dict[str, list[psutil.Process]]) -> dict[str, dict[str, float]]:
    """Per role: how many processes, their summed RSS (MB) and open file descriptors."""
    out = {}
    for role, members in procs.items():
        rss = fds = count = 0
        for proc in members:
            try:
                rss += proc.memory_info().rss
                fds += proc.num_fds()
                count += 1
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        out[role] = {"processes": count, "rss_mb": rss / 2**20, "fds": fds}
    return out


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return total


def cycle(stack: harness.Stack, n: int) -> None:
    """One group of one machine started until online, then terminated until its machine is gone."""
    from tasks_app import services
    from tasks_app.models import Machine, MachineGroup

    group = services.create_group(
        stack.user, machine_type=stack.machine_type, name=f"{stack.group_name}-c{n}", num_machines=1
    )
    services.start_group(group)
    _until(lambda: Machine.objects.filter(group=group, state=Machine.State.ONLINE).exists(), stack)
    services.terminate_group(group, reason="Idle benchmark cycle.")
    _until(
        lambda: (
            MachineGroup.objects.get(pk=group.pk).state == MachineGroup.State.TERMINATED
            and not Machine.objects.filter(
                group=group, state__in=["provisioning", "online", "stopping"]
            ).exists()
        ),
        stack,
    )


def _until(predicate, stack: harness.Stack, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"A group cycle did not finish in time; logs:\n{stack.logs()}")
        time.sleep(0.2)


def measure(cycles: int, window: float) -> dict:
    from django.conf import settings

    from bench.bare_celery import Workers

    queue = f"bench-bare-idle-{os.getpid()}"
    with (
        harness.Stack(machines=1) as stack,
        Workers(settings.CELERY_BROKER_URL, queue, 1, harness.home() / "logs") as workers,
    ):
        time.sleep(5)  # past the start's own work
        before = snapshot(role_processes(stack._processes.procs))
        for n in range(cycles):
            cycle(stack, n)
        time.sleep(5)  # the last termination's echoes
        procs = [p for members in role_processes(stack._processes.procs).values() for p in members]
        bare = [psutil.Process(workers.procs[0].pid), *psutil.Process(workers.procs[0].pid).children()]
        ours0, bare0, began = cpu_seconds(procs), cpu_seconds(bare), time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - began
        ours = (cpu_seconds(procs) - ours0) / elapsed * 100
        bare_cpu = (cpu_seconds(bare) - bare0) / elapsed * 100
        after = snapshot(role_processes(stack._processes.procs))
    return {"before": before, "after": after, "cpu": ours, "bare_cpu": bare_cpu, "processes": len(procs)}


def run(quick: bool = False) -> list[dict]:
    harness.setup_django()
    cycles, window = (2, 10.0) if quick else (CYCLES, WINDOW)
    m = measure(cycles, window)
    figures = [
        result(
            "idle",
            "CPU of the whole stack, idle",
            "% of a core",
            m["cpu"],
            m["bare_cpu"],
            "bare Celery worker, concurrency 1, idle",
            f"{m['processes']} processes over {window:.0f} s, after {cycles} group start/terminate cycles",
        )
    ]
    for role in ROLES:
        b, a = m["before"][role], m["after"][role]
        note = f"{a['processes']} processes after {cycles} cycles ({b['processes']} before)"
        for metric, unit, key in (("RSS", "MB", "rss_mb"), ("open fds", "fds", "fds")):
            figures.append(
                result(
                    "idle",
                    f"{role} {metric}",
                    unit,
                    a[key],
                    b[key] or None,
                    "the same before the cycles",
                    note,
                )
            )
    return figures


if __name__ == "__main__":
    from bench.__main__ import main

    raise SystemExit(main(["idle"]))
