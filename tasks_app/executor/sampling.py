"""Resource use of a running simulation, measured on its machine and kept as samples.

The executor's watch calls :meth:`ResourceMeter.tick` about once a second
with the pid of the command that runs. Each tick walks the command's process
tree once: its resident memory (summed over the tree) serves the memory
limit, and the CPU time every process of the tree has used since the
previous tick is added up. A process seen for the first time counts from
zero, since it started after the previous tick; what a process does between
its last tick and its exit (under a second) is the only CPU time missed.

Every so often a :class:`~tasks_app.models.ResourceSample` is written: CPU
as the average over the time since the previous sample (percent of one
core, so 200 means two cores busy), memory and work disk as they are at
that moment, through the machine's way to the platform
(:mod:`tasks_app.executor.plane`), which tells the task's viewers.

How often: every ``SIMDECK_RESOURCE_SAMPLE_SECONDS`` (10 s by default) for
the first :data:`SAMPLES_PER_STEP` samples, then the interval doubles after
each further :data:`SAMPLES_PER_STEP` samples. With 10 s that is an hour at
10 s, two hours at 20 s, four at 40 s and so on, so the rows of one task grow
with the logarithm of its age, not with its age: about 1,700 for a day,
3,400 for four weeks, 4,700 for a year. The task page draws at most a few
hundred points whatever the count (:mod:`tasks_app.resource_use`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psutil
from django.db import DatabaseError

from tasks_app.executor import PlaneError

log = logging.getLogger(__name__)

SAMPLES_PER_STEP = 360


def sample_interval(written: int, base_seconds: float) -> float:
    """Seconds to wait before the next sample when ``written`` samples exist."""
    return base_seconds * 2 ** (written // SAMPLES_PER_STEP)


class ResourceMeter:
    """Follows one task's process trees and writes its resource samples."""

    def __init__(
        self,
        task_id: str,
        base_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        record: Callable[[str, float, int, int], object],
    ):
        self.task_id = task_id
        self.write = record  # (task id, cpu percent, memory bytes, disk bytes)
        self.base_seconds = max(0.1, base_seconds)
        self.clock = clock
        self.written = 0
        self.memory_bytes = 0
        self.disk_bytes = 0
        # CPU seconds of each process seen at the last tick, by (pid, start time):
        # a pid the system reuses is another process.
        self._cpu_seen: dict[tuple[int, float], float] = {}
        self._cpu_since_sample = 0.0
        self._last_sample = clock()

    def tick(self, pid: int) -> int:
        """Measure the tree under ``pid``; returns its resident memory in bytes."""
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        memory = 0
        seen: dict[tuple[int, float], float] = {}
        for proc in procs:
            try:
                with proc.oneshot():
                    key = (proc.pid, proc.create_time())
                    times = proc.cpu_times()
                    rss = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # ended while we looked
            used = times.user + times.system
            seen[key] = used
            self._cpu_since_sample += max(0.0, used - self._cpu_seen.get(key, 0.0))
            memory += rss
        self._cpu_seen = seen
        self.memory_bytes = memory
        return memory

    def due(self) -> bool:
        return self.clock() - self._last_sample >= sample_interval(self.written, self.base_seconds)

    def record(self) -> bool:
        """Write a sample now (the watch calls it when :meth:`due`, or when stopping the task)."""
        now = self.clock()
        elapsed = now - self._last_sample
        if elapsed <= 0:
            return False
        cpu_percent = 100.0 * self._cpu_since_sample / elapsed
        try:
            self.write(self.task_id, round(cpu_percent, 1), self.memory_bytes, self.disk_bytes)
        except (DatabaseError, PlaneError):
            # A missed sample is a gap in a chart; it must not fail the task.
            log.warning("Could not record resource use of task %s", self.task_id, exc_info=True)
            return False
        finally:
            self._last_sample = now
            self._cpu_since_sample = 0.0
        self.written += 1
        return True
