"""A task's resource use over time, read back for the console and the API.

The machine writes samples while the task runs (:mod:`tasks_app.executor.sampling`);
a task of several weeks has a few thousand. Readers want a few hundred
points at most, so the samples are cut in order into at most ``points``
buckets of equal count and each bucket is summed up in the database, in one
query whatever the task's age: CPU as the bucket's average (what the
simulation used over that stretch), memory and disk as the bucket's highest
value (a peak must not vanish in an average). The last sample is read out of
the last bucket.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

from django.db import connection

from tasks_app.models import ResourceSample

POINTS = 200
MAX_POINTS = 2000

_BUCKETS = f"""
WITH numbered AS (
    SELECT at, id, cpu_percent, memory_bytes, disk_bytes,
           ntile(%s) OVER (ORDER BY at, id) AS bucket
    FROM {ResourceSample._meta.db_table}
    WHERE task_id = %s
)
SELECT min(at), max(at), count(*),
       avg(cpu_percent), max(cpu_percent), max(memory_bytes), max(disk_bytes),
       (array_agg(cpu_percent ORDER BY at DESC, id DESC))[1],
       (array_agg(memory_bytes ORDER BY at DESC, id DESC))[1],
       (array_agg(disk_bytes ORDER BY at DESC, id DESC))[1]
FROM numbered
GROUP BY bucket
ORDER BY bucket
"""


@dataclasses.dataclass(frozen=True)
class Point:
    """A stretch of samples summed up: from ``first`` to ``last``."""

    first: dt.datetime
    last: dt.datetime
    samples: int
    cpu_percent: float
    cpu_percent_max: float
    memory_bytes: int
    disk_bytes: int

    @property
    def at(self) -> dt.datetime:
        return self.first + (self.last - self.first) / 2


@dataclasses.dataclass(frozen=True)
class Latest:
    at: dt.datetime
    cpu_percent: float
    memory_bytes: int
    disk_bytes: int


@dataclasses.dataclass(frozen=True)
class Usage:
    points: list[Point]
    latest: Latest | None

    @property
    def samples(self) -> int:
        return sum(p.samples for p in self.points)

    @property
    def started(self) -> dt.datetime | None:
        return self.points[0].first if self.points else None

    @property
    def span_seconds(self) -> float:
        return (self.points[-1].last - self.points[0].first).total_seconds() if self.points else 0.0

    @property
    def peak_cpu_percent(self) -> float:
        return max((p.cpu_percent_max for p in self.points), default=0.0)

    @property
    def peak_memory_bytes(self) -> int:
        return max((p.memory_bytes for p in self.points), default=0)

    @property
    def peak_disk_bytes(self) -> int:
        return max((p.disk_bytes for p in self.points), default=0)


def usage(task_id: str, points: int = POINTS) -> Usage:
    """The task's samples cut down to at most ``points`` points (one query)."""
    points = max(1, min(points, MAX_POINTS))
    with connection.cursor() as cursor:
        cursor.execute(_BUCKETS, [points, task_id])
        rows = cursor.fetchall()
    result = [
        Point(
            first=r[0],
            last=r[1],
            samples=r[2],
            cpu_percent=float(r[3]),
            cpu_percent_max=float(r[4]),
            memory_bytes=int(r[5]),
            disk_bytes=int(r[6]),
        )
        for r in rows
    ]
    latest = None
    if rows:
        last = rows[-1]
        latest = Latest(
            at=last[1], cpu_percent=float(last[7]), memory_bytes=int(last[8]), disk_bytes=int(last[9])
        )
    return Usage(points=result, latest=latest)


# -- small charts ------------------------------------------------------------------

CHART_W, CHART_H = 300, 72


def axis_top(value: float, unit: str) -> float:
    """A round top for a chart's axis: whole cores for CPU, a power of two for bytes."""
    if unit == "percent":
        return 100.0 * max(1, math.ceil(value / 100))
    top = 1024.0 * 1024  # 1 MiB: an idle task's chart stays flat, not magnified
    while top < value:
        top *= 2
    return top


def chart(usage: Usage, field: str, unit: str) -> dict:
    """One small line chart of ``field`` over the task's samples, as SVG coordinates.

    x is time since the first sample, y the value against a round top; the
    template draws a polyline and the area under it.
    """
    values = [getattr(p, field) for p in usage.points]
    top = axis_top(max(values, default=0.0), unit)
    span = usage.span_seconds
    start = usage.started
    xs = [CHART_W * (p.at - start).total_seconds() / span if span else CHART_W / 2 for p in usage.points]
    ys = [CHART_H - CHART_H * v / top for v in values]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
    area = f"{xs[0]:.1f},{CHART_H} {line} {xs[-1]:.1f},{CHART_H}" if len(xs) > 1 else ""
    dot = f"{xs[0]:.1f},{ys[0]:.1f}".split(",") if len(xs) == 1 else None  # one sample: no line yet
    return {"w": CHART_W, "h": CHART_H, "line": line, "area": area, "dot": dot, "top": top}
