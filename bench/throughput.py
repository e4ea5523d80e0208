"""Throughput: a thousand tasks of ``true`` through a 2-machine group, from first submit to last success.

Submission goes through the Python client as a parameter sweep does it
(``run_many``: one batch request per thousand tasks, the input inline) and
counts in the makespan. The baseline is bare Celery: two worker processes
(the two machines) running the same ``sh -c true`` per task, fed by
``delay()`` on the same Redis.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench import harness
from bench.harness import result

TITLE = "Throughput"
COMMAND = "true"
MACHINES = 2


def _submit_all(stack: harness.Stack, count: int) -> float:
    from simdeck import api, simulators

    os.environ["SIMDECK_URL"], os.environ["SIMDECK_API_KEY"] = stack.url, stack.api_key
    api.default_client.cache_clear()
    with tempfile.TemporaryDirectory(prefix="simdeck-bench-input-") as folder:
        (Path(folder) / harness.INPUT_NAME).write_text("benchmark input\n")
        tasks = simulators.Commands().run_many(folder, [{"commands": [COMMAND]}] * count, on=stack.group_name)
    if len(tasks) != count:
        raise RuntimeError(f"{len(tasks)} of {count} tasks were created.")
    return time.time()


def measure_simdeck(count: int) -> tuple[float, float]:
    """Makespan and the time submission alone took, in seconds."""
    from django.db.models import Max

    from tasks_app.lifecycle import TERMINAL, Status
    from tasks_app.models import Task

    with harness.Stack(machines=MACHINES) as stack:
        began = time.time()
        submitted = _submit_all(stack, count)
        tasks = Task.objects.filter(machine_group=stack.group)
        deadline = time.monotonic() + max(300, count)
        while tasks.exclude(status__in=TERMINAL).exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"Tasks did not finish in time; logs:\n{stack.logs()}")
            time.sleep(0.2)
        failed = tasks.exclude(status=Status.SUCCESS).count()
        if failed:
            raise RuntimeError(f"{failed} of {count} tasks did not succeed; logs:\n{stack.logs()}")
        last = tasks.aggregate(last=Max("ended_at"))["last"].timestamp()
    return last - began, submitted - began


def measure_bare(count: int) -> float:
    from django.conf import settings

    from bench.bare_celery import Workers

    queue = f"bench-bare-throughput-{os.getpid()}"
    with Workers(settings.CELERY_BROKER_URL, queue, MACHINES, harness.home() / "logs") as workers:
        began = time.time()
        pending = [workers.run(["sh", "-c", COMMAND]) for _ in range(count)]
        ended = [p.get(timeout=max(300, count)) for p in pending]
    return max(ended) - began


def run(quick: bool = False) -> list[dict]:
    harness.setup_django()
    count = 20 if quick else 1000
    ours, submission = measure_simdeck(count)
    bare = measure_bare(count)
    note = f"{count} tasks of `{COMMAND}`, {MACHINES} machines (bare: {MACHINES} worker processes)"
    return [
        result("throughput", "makespan", "s", ours, bare, baseline_name="bare Celery, 2 workers", note=note),
        result(
            "throughput",
            "tasks per second",
            "tasks/s",
            count / ours,
            count / bare,
            baseline_name="bare Celery, 2 workers",
            note=note,
            lower_is_better=False,
        ),
        result(
            "throughput",
            "submission through the API",
            "s",
            submission,
            note=f"{count} tasks with the client's run_many (one batch request, input inline)",
        ),
    ]


if __name__ == "__main__":
    from bench.__main__ import main

    raise SystemExit(main(["throughput"]))
