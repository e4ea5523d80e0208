"""Memory of an idle machine: a Simdeck machine against a bare Celery worker of the same shape.

A machine is a Celery worker (prefork, concurrency 1) and its pool
process; the baseline is bare Celery started the same way
(``bench/bare_celery.py``) in the same run. Each side's memory is the PSS
(proportional set size: shared pages split among the processes sharing
them) of the worker and its pool process together, so pages the pool
process shares with the worker it forked from count once. It is taken
twice: once both sides are ready, and again after each has run one task
of ``true`` (what a machine imports for its first task stays). Each
figure is the median of a few readings a second apart.
"""

from __future__ import annotations

import os
import statistics
import time

import psutil

from bench import harness
from bench.harness import result

TITLE = "Memory of an idle machine"
BASELINE = "bare Celery worker, concurrency 1"
READINGS = 5


def pss(pid: int) -> float:
    """PSS of a process and its descendants, in MB."""
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return total / 2**20


def settled(pid: int, readings: int) -> float:
    """The median of ``readings`` PSS readings a second apart, once the process tree is quiet."""
    values = []
    for _ in range(readings):
        time.sleep(1)
        values.append(pss(pid))
    return statistics.median(values)


def one_task_on_simdeck(stack: harness.Stack) -> None:
    from tasks_app.lifecycle import TERMINAL
    from tasks_app.models import Task

    client = harness.api_client(stack)
    task_id = harness.submit_commands(client, stack.group_name, ["true"])
    deadline = time.monotonic() + 120
    while Task.objects.get(pk=task_id).status not in TERMINAL:
        if time.monotonic() > deadline:
            raise RuntimeError(f"The task did not end; logs:\n{stack.logs()}")
        time.sleep(0.2)


def measure(readings: int) -> dict[str, float]:
    from django.conf import settings

    from bench.bare_celery import Workers
    from tasks_app.models import Machine

    queue = f"bench-bare-memory-{os.getpid()}"
    with (
        harness.Stack(machines=1) as stack,
        Workers(settings.CELERY_BROKER_URL, queue, 1, harness.home() / "logs") as workers,
    ):
        machine = Machine.objects.get(group=stack.group, state=Machine.State.ONLINE)
        bare = workers.procs[0].pid
        figures = {"ours_ready": settled(machine.pid, readings), "bare_ready": settled(bare, readings)}
        one_task_on_simdeck(stack)
        workers.run(["sh", "-c", "true"]).get(timeout=60)
        figures["ours_after"] = settled(machine.pid, readings)
        figures["bare_after"] = settled(bare, readings)
        figures["processes"] = len(psutil.Process(machine.pid).children(recursive=True)) + 1
    return figures


def run(quick: bool = False) -> list[dict]:
    harness.setup_django()
    m = measure(2 if quick else READINGS)
    note = f"PSS of the worker and its pool process ({m['processes']} processes on the machine)"
    return [
        result("memory", "idle machine, ready", "MB", m["ours_ready"], m["bare_ready"], BASELINE, note),
        result(
            "memory",
            "idle machine, after one task",
            "MB",
            m["ours_after"],
            m["bare_after"],
            BASELINE,
            note,
        ),
    ]


if __name__ == "__main__":
    from bench.__main__ import main

    raise SystemExit(main(["memory"]))
