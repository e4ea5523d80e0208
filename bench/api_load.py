"""API under load: task list and task detail requests per second on loopback.

Several asynchronous clients keep requests in flight against daphne for a
fixed time, with a few thousand tasks in the database. The baseline is the
same server's ``/api/v1/statuses``, an endpoint that touches no database:
it gives what the server, middleware and API framework cost alone, so the
ratio shows what reading tasks adds.
"""

from __future__ import annotations

import asyncio
import random
import time

from bench import harness
from bench.harness import percentiles, result

TITLE = "API under load"
CLIENTS = 16


def seed_tasks(stack: harness.Stack, count: int) -> list[str]:
    """``count`` finished tasks of the stack's user, written straight to the database."""
    from django.utils import timezone

    from tasks_app.lifecycle import Status
    from tasks_app.models import Task

    now = timezone.now()
    project = stack.group.project
    tasks = [
        Task(
            owner=stack.user,
            project=project,
            machine_group=stack.group,
            simulator="commands",
            parameters={"commands": ["true"]},
            metadata={"batch": f"b{i % 20}", "case": str(i)},
            status=Status.SUCCESS,
            status_changed_at=now,
            created_at=now - timezone.timedelta(seconds=count - i),
            submitted_at=now,
            queued_at=now,
            ended_at=now,
            input_path="",
        )
        for i in range(count)
    ]
    Task.objects.bulk_create(tasks, batch_size=1000)
    return [t.id for t in tasks]


async def load(stack: harness.Stack, paths, seconds: float) -> tuple[float, list[float], int]:
    """Requests per second, latencies (s) and failures while CLIENTS clients fetch ``paths()``."""
    import httpx

    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with harness.api_client(stack, httpx.AsyncClient, limits=limits) as client:
        end = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal failures
            while time.monotonic() < end:
                began = time.perf_counter()
                response = await client.get(paths())
                latencies.append(time.perf_counter() - began)
                if response.status_code != 200:
                    failures += 1

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        elapsed = time.monotonic() - began
    return len(latencies) / elapsed, latencies, failures


def run(quick: bool = False) -> list[dict]:
    from tasks_app.models import Task

    harness.setup_django()
    count = 500 if quick else 5000
    seconds = 1.0 if quick else 15.0
    with harness.Stack(machines=1) as stack:
        ids = seed_tasks(stack, count)
        try:
            endpoints = {
                "trivial endpoint (/statuses)": lambda: "/api/v1/statuses",
                "task list (first page of 50)": lambda: "/api/v1/tasks",
                "task detail": lambda: f"/api/v1/tasks/{random.choice(ids)}",
            }
            # A short warm-up: connections, caches and code paths of every endpoint.
            for paths in endpoints.values():
                asyncio.run(load(stack, paths, 0.2 if quick else 1.0))
            measured = {name: asyncio.run(load(stack, paths, seconds)) for name, paths in endpoints.items()}
        finally:
            Task.objects.filter(machine_group=stack.group).delete()
    for name, (_, _, failures) in measured.items():
        if failures:
            raise RuntimeError(f"{failures} requests to the {name} failed.")
    base_rps, base_lat, _ = measured.pop("trivial endpoint (/statuses)")
    note = f"{CLIENTS} concurrent clients for {seconds:.0f} s each, {count} tasks in the database"
    figures = []
    for name, (rps, lat, _) in measured.items():
        figures.append(
            result(
                "api",
                f"{name}: requests per second",
                "req/s",
                rps,
                base_rps,
                baseline_name="/api/v1/statuses, same server",
                note=note,
                lower_is_better=False,
            )
        )
        figures.append(
            result(
                "api",
                f"{name}: latency p95",
                "ms",
                percentiles(lat)["p95"] * 1000,
                percentiles(base_lat)["p95"] * 1000,
                baseline_name="/api/v1/statuses, same server",
                note=note,
            )
        )
    return figures


if __name__ == "__main__":
    from bench.__main__ import main

    raise SystemExit(main(["api_load"]))
