"""Memory of an idle machine: a Simdeck machine against a bare Celery worker of the same shape.

A machine is one Celery worker process running its task on a thread
(``--pool threads``, concurrency 1). The baseline is bare Celery
(``bench/bare_celery.py``) started in the same run with concurrency 1 in
Celery's default pool, prefork: the worker and one pool process, as a
Celery worker that runs one task at a time comes. A second baseline is a
bare worker in the machine's own pool (threads), one process too: against
it the ratio is what Simdeck itself adds (Django, its ORM and psycopg, the
machine's code). Memory is the PSS (proportional set size: shared pages
split among the processes sharing them) of a worker and its descendants
together, so pages a pool process shares with the worker it forked from
count once. It is taken twice: once ready, and again after one task of
``true`` (what a machine imports for its first task stays, and so does the
lasting sandbox it makes for it, which counts as the machine's). Each
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
BASELINE = "bare Celery worker, concurrency 1, prefork pool"
SAME_POOL = "bare Celery worker, concurrency 1, thread pool"
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

    figures = {}
    with harness.Stack(machines=1) as stack:
        machine = Machine.objects.get(group=stack.group, state=Machine.State.ONLINE)
        figures["ours_ready"] = settled(machine.pid, readings)
        figures["processes_ready"] = processes(machine.pid)
        one_task_on_simdeck(stack)
        figures["ours_after"] = settled(machine.pid, readings)
        figures["processes_after"] = processes(machine.pid)
        for pool in ("prefork", "threads"):
            queue = f"bench-bare-memory-{os.getpid()}-{pool}"
            with Workers(settings.CELERY_BROKER_URL, queue, 1, harness.home() / "logs", pool=pool) as workers:
                bare = workers.procs[0].pid
                figures[f"{pool}_ready"] = settled(bare, readings)
                workers.run(["sh", "-c", "true"]).get(timeout=60)
                figures[f"{pool}_after"] = settled(bare, readings)
    return figures


def processes(pid: int) -> int:
    return len(psutil.Process(pid).children(recursive=True)) + 1


def run(quick: bool = False) -> list[dict]:
    harness.setup_django()
    m = measure(2 if quick else READINGS)
    ready = f"PSS of the machine's {m['processes_ready']} process(es)"
    after = f"PSS of the machine's {m['processes_after']} processes (the worker and its lasting sandbox)"
    prefork, threads = "; the bare worker: worker and pool process", "; the bare worker: one process"
    return [
        result(
            "memory",
            "idle machine, ready",
            "MB",
            m["ours_ready"],
            m["prefork_ready"],
            BASELINE,
            ready + prefork,
        ),
        result(
            "memory",
            "idle machine, after one task",
            "MB",
            m["ours_after"],
            m["prefork_after"],
            BASELINE,
            after + prefork,
        ),
        result(
            "memory",
            "idle machine, ready, against the same pool",
            "MB",
            m["ours_ready"],
            m["threads_ready"],
            SAME_POOL,
            ready + threads,
        ),
        result(
            "memory",
            "idle machine, after one task, against the same pool",
            "MB",
            m["ours_after"],
            m["threads_after"],
            SAME_POOL,
            after + threads,
        ),
    ]


if __name__ == "__main__":
    from bench.__main__ import main

    raise SystemExit(main(["memory"]))
