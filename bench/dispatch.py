"""Dispatch latency: from submitting a task through the API to its simulator process running.

The simulator stamps the wall clock the moment it starts (``date``, sent to
the benchmark over loopback: see :class:`Stamps`), and the benchmark
compares that with the clock read just before the first HTTP call of the
submission. Tasks go one at a time, each after
the previous one ended, so the machine is idle every time. The baseline is
bare Celery: ``delay()`` of a task that runs the same command, on the same
Redis, with a worker started the way a machine is. Both sides are up at
once and take turns, a block of tasks each (``ROUNDS`` blocks a side): a
shared host whose speed drifts during the run then slows both alike,
rather than whichever side ran last.
"""

from __future__ import annotations

import os
import time

from bench import harness
from bench.harness import percentiles, result

TITLE = "Dispatch latency"
WARMUP = 3
ROUNDS = 10


class Stamps:
    """Wall-clock stamps the simulators send to a TCP port on the host.

    A sandboxed simulation writes nowhere but its own folder (and reaches
    the host only where its group allows the network), so the stamp travels
    as a line over loopback: bash's ``/dev/tcp``, no process of its own.
    """

    def __init__(self, host: str = "127.0.0.1"):
        import socketserver
        import threading

        self.seen: dict[str, float] = {}
        self.arrived = threading.Condition()
        stamps = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                name, at = self.rfile.readline().decode().split()
                with stamps.arrived:
                    stamps.seen[name] = float(at)
                    stamps.arrived.notify_all()

        self.host = host
        self.server = socketserver.ThreadingTCPServer((host, 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def command(self, name: str) -> str:
        port = self.server.server_address[1]
        return f"bash -c 'echo \"{name} $(date +%s.%N)\" > /dev/tcp/{self.host}/{port}'"

    def wait(self, name: str, timeout: float = 60) -> float:
        """The epoch second the simulator named ``name`` stamped, once it arrives."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: name in self.seen, timeout):
                raise RuntimeError(f"No simulator started within {timeout} s (no stamp {name}).")
            return self.seen[name]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


STAGES = (
    "request until the task exists",
    "input stored and queued",
    "token delivery and claim",
    "input fetch and extract",
    "process spawn",
)


def dispatch_one(stack, client, group_name: str, stamp: str, stamps: Stamps) -> tuple[str, float, float]:
    """Submit one stamping task to ``group_name``; its id, when it was submitted and when it
    stamped, once it has ended (so that its machine is idle again)."""
    from tasks_app.lifecycle import TERMINAL
    from tasks_app.models import Task

    submitted = time.time()
    task_id = harness.submit_commands(client, group_name, [stamps.command(stamp)])
    began = stamps.wait(stamp)
    deadline = time.monotonic() + 60
    while Task.objects.filter(pk=task_id).values_list("status", flat=True).get() not in TERMINAL:
        if time.monotonic() > deadline:
            raise RuntimeError(f"Task {task_id} did not end; logs:\n{stack.logs()}")
        time.sleep(0.01)
    return task_id, submitted, began


def simdeck_block(
    stack, client, numbers: range, stamps: Stamps, latencies: list[float], stages: dict[str, list[float]]
) -> None:
    """Tasks ``numbers`` one at a time on the stack's idle machine; negative numbers are warm-ups."""
    from tasks_app.models import Task

    for i in numbers:
        task_id, submitted, began = dispatch_one(stack, client, stack.group_name, f"simdeck-{i}", stamps)
        if i < 0:
            continue
        latencies.append(began - submitted)
        t = Task.objects.get(pk=task_id)
        marks = [
            submitted,
            t.created_at.timestamp(),
            t.submitted_at.timestamp(),
            t.preparing_at.timestamp(),
            t.started_at.timestamp(),
            began,
        ]
        for name, (a, b) in zip(STAGES, zip(marks, marks[1:], strict=False), strict=True):
            stages[name].append(b - a)


def bare_block(workers, numbers: range, stamps: Stamps, latencies: list[float]) -> None:
    """The same through bare Celery."""
    for i in numbers:
        stamp = f"bare-{i}"
        submitted = time.time()
        outcome = workers.run(["sh", "-c", stamps.command(stamp)])
        began = stamps.wait(stamp)
        outcome.get(timeout=60)
        if i >= 0:
            latencies.append(began - submitted)


def measure(count: int, stamps: Stamps) -> tuple[list[float], dict[str, list[float]], list[float]]:
    """Simdeck's latencies and stages, and bare Celery's latencies, taken in turns."""
    from django.conf import settings

    from bench.bare_celery import Workers
    from tasks_app.models import MachineGroup

    ours: list[float] = []
    stages: dict[str, list[float]] = {name: [] for name in STAGES}
    bare: list[float] = []
    queue = f"bench-bare-dispatch-{os.getpid()}"
    with (
        harness.Stack(machines=1) as stack,
        harness.api_client(stack) as client,
        Workers(settings.CELERY_BROKER_URL, queue, 1, harness.home() / "logs") as workers,
    ):
        # The stamps reach the host over the network, which an admin allowed this group.
        MachineGroup.objects.filter(pk=stack.group.pk).update(allow_network=True)
        simdeck_block(stack, client, range(-WARMUP, 0), stamps, ours, stages)
        bare_block(workers, range(-WARMUP, 0), stamps, bare)
        rounds = min(ROUNDS, count)
        for r in range(rounds):
            block = range(r * count // rounds, (r + 1) * count // rounds)
            simdeck_block(stack, client, block, stamps, ours, stages)
            bare_block(workers, block, stamps, bare)
    return ours, stages, bare


def run(quick: bool = False) -> list[dict]:
    harness.setup_django()
    count = 5 if quick else 200
    stamps = Stamps()
    try:
        ours, stages, bare = measure(count, stamps)
    finally:
        stamps.close()
    p_ours, p_bare = percentiles(ours), percentiles(bare)
    turns = min(ROUNDS, count)
    note = f"{count} tasks, one at a time on an idle 1-machine group, in {turns} turns with bare Celery"
    figures = [
        result(
            "dispatch",
            f"submit to process start, {p}",
            "ms",
            p_ours[p] * 1000,
            p_bare[p] * 1000,
            baseline_name="bare Celery delay()",
            note=note,
        )
        for p in ("p50", "p95", "p99")
    ]
    for name, values in stages.items():
        figures.append(
            result("dispatch", f"stage p50: {name}", "ms", percentiles(values)["p50"] * 1000, note=note)
        )
    return figures


if __name__ == "__main__":
    from bench.__main__ import main

    raise SystemExit(main(["dispatch"]))
