"""Throughput: a thousand tasks of ``true`` through a 2-machine group, from first submit to last success.

Submission goes through the Python client as a parameter sweep does it
(``run_many``: one batch request per thousand tasks, the input inline) and
counts in the makespan. The baseline is bare Celery: two worker processes
(the two machines) running the same ``sh -c true`` per task, fed by
``delay()`` on the same Redis. Both run side by side, idle in turn, and
take turns: a Simdeck batch, then a bare batch, ``REPEATS`` times. A
machine whose speed drifts during the run (a shared host's does, by a
third within a minute) then slows both sides alike, rather than whichever
ran last. The figures are the medians of each side's batches.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from bench import harness
from bench.harness import result

TITLE = "Throughput"
COMMAND = "true"
MACHINES = 2
# A makespan of a few seconds on a shared machine varies by a second or so
# from run to run: each side runs this many batches and reports the median.
REPEATS = 5
BASELINE = "bare Celery, 2 workers"


def _submit_all(stack: harness.Stack, count: int) -> tuple[list[str], float]:
    """Submit ``count`` tasks as a sweep does; their ids and when the last request returned."""
    from simdeck import api, simulators

    os.environ["SIMDECK_URL"], os.environ["SIMDECK_API_KEY"] = stack.url, stack.api_key
    api.default_client.cache_clear()
    with tempfile.TemporaryDirectory(prefix="simdeck-bench-input-") as folder:
        (Path(folder) / harness.INPUT_NAME).write_text("benchmark input\n")
        tasks = simulators.Commands().run_many(folder, [{"commands": [COMMAND]}] * count, on=stack.group_name)
    if len(tasks) != count:
        raise RuntimeError(f"{len(tasks)} of {count} tasks were created.")
    return [t.id for t in tasks], time.time()


def simdeck_batch(stack: harness.Stack, count: int) -> tuple[float, float]:
    """Makespan of one batch on the stack's group, and the time submission alone took, in seconds."""
    from django.db.models import Max

    from tasks_app.lifecycle import TERMINAL, Status
    from tasks_app.models import Task

    began = time.time()
    ids, submitted = _submit_all(stack, count)
    tasks = Task.objects.filter(pk__in=ids)
    # The group runs nothing else: asking it is cheaper than asking for a thousand ids.
    unfinished = Task.objects.filter(machine_group=stack.group).exclude(status__in=TERMINAL)
    deadline = time.monotonic() + max(300, count)
    while unfinished.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"Tasks did not finish in time; logs:\n{stack.logs()}")
        time.sleep(0.2)
    failed = tasks.exclude(status=Status.SUCCESS).count()
    if failed:
        raise RuntimeError(f"{failed} of {count} tasks did not succeed; logs:\n{stack.logs()}")
    last = tasks.aggregate(last=Max("ended_at"))["last"].timestamp()
    return last - began, submitted - began


def bare_batch(workers, count: int) -> float:
    """Makespan of one batch of the same commands through bare Celery, in seconds."""
    began = time.time()
    pending = [workers.run(["sh", "-c", COMMAND]) for _ in range(count)]
    ended = [p.get(timeout=max(300, count)) for p in pending]
    return max(ended) - began


def measure(count: int, repeats: int) -> tuple[list[tuple[float, float]], list[float]]:
    """Each side's batches, taken in turns: Simdeck's (makespan, submission) and bare Celery's makespans."""
    from django.conf import settings

    from bench.bare_celery import Workers

    ours, bare = [], []
    queue = f"bench-bare-throughput-{os.getpid()}"
    with (
        harness.Stack(machines=MACHINES) as stack,
        Workers(settings.CELERY_BROKER_URL, queue, MACHINES, harness.home() / "logs") as workers,
    ):
        for _ in range(repeats):
            ours.append(simdeck_batch(stack, count))
            bare.append(bare_batch(workers, count))
    return ours, bare


def run(quick: bool = False) -> list[dict]:
    harness.setup_django()
    count, repeats = (20, 1) if quick else (1000, REPEATS)
    ours, bare = measure(count, repeats)
    makespans = [m for m, _ in ours]
    makespan, baseline = statistics.median(makespans), statistics.median(bare)
    spread = (
        f"; median of {repeats} runs each, taken in turns, "
        f"Simdeck {min(makespans):.2f}–{max(makespans):.2f} s, "
        f"bare {min(bare):.2f}–{max(bare):.2f} s"
        if repeats > 1
        else ""
    )
    note = f"{count} tasks of `{COMMAND}`, {MACHINES} machines (bare: {MACHINES} worker processes){spread}"
    return [
        result("throughput", "makespan", "s", makespan, baseline, baseline_name=BASELINE, note=note),
        result(
            "throughput",
            "tasks per second",
            "tasks/s",
            count / makespan,
            count / baseline,
            baseline_name=BASELINE,
            note=note,
            lower_is_better=False,
        ),
        result(
            "throughput",
            "submission through the API",
            "s",
            statistics.median(sub for _, sub in ours),
            note=f"{count} tasks with the client's run_many (one batch request, input inline)",
        ),
    ]


if __name__ == "__main__":
    from bench.__main__ import main

    raise SystemExit(main(["throughput"]))
