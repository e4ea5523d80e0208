"""What tasks and machines used, and what that is estimated to cost.

The figures, one definition each, shared by the console, the API and the CLI:

- a task's **computing time**: the seconds its simulation computed, over all
  its attempts (``Task.computing_seconds``, kept by a trigger; an attempt
  still computing adds its time so far);
- its **core-seconds**: computing time × the vCPUs of its machine type; its
  **memory GB-hours**: computing time × the type's memory, in hours;
- its **estimated cost**: computing hours × the type's price per hour
  (:class:`~tasks_app.models.MachinePrice`, 0 unless an admin set one);
- a machine group's **machine-hours**: the lifetime of each of its machines,
  from its creation to its stop (or now), idle time included, and their cost
  at the same price.

Tasks count in the day and month they ended in, tasks still computing in
the current ones; machines in every day they were up, cut at the edges of
the period asked about. Vcpus, memory and prices are the catalog's at the
moment of asking. Days and months are UTC.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from decimal import Decimal

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum, Value
from django.db.models.functions import Coalesce, Greatest, Least, TruncDay
from django.utils import timezone

from tasks_app.errors import Refused
from tasks_app.models import Machine, MachineGroup, MachinePrice, Task
from tasks_app.statuses import COMPUTING

MONTH = re.compile(r"(\d{4})-(\d{2})")


@dataclasses.dataclass(frozen=True)
class MachineType:
    name: str
    vcpus: int
    memory_gb: float
    price_per_hour: Decimal


def catalog() -> dict[str, MachineType]:
    """The machine types with their prices (one query)."""
    prices = dict(MachinePrice.objects.values_list("machine_type", "price_per_hour"))
    return {
        name: MachineType(name, int(spec["vcpus"]), float(spec["memory_gb"]), prices.get(name, Decimal(0)))
        for name, spec in settings.SIMDECK_MACHINE_TYPES.items()
    }


def currency() -> str:
    return settings.SIMDECK_CURRENCY


@dataclasses.dataclass
class Usage:
    """What some tasks used: sums that add up across tasks, groups, users and projects."""

    tasks: int = 0
    computing_seconds: float = 0.0
    core_seconds: float = 0.0
    memory_gb_hours: float = 0.0
    cost: float = 0.0

    def add(self, kind: MachineType | None, seconds: float, tasks: int = 1) -> None:
        self.tasks += tasks
        self.computing_seconds += seconds
        if kind is not None:  # a type taken out of the catalog: time, but no cores or price
            self.core_seconds += seconds * kind.vcpus
            self.memory_gb_hours += seconds * kind.memory_gb / 3600
            self.cost += seconds / 3600 * float(kind.price_per_hour)

    def as_dict(self) -> dict:
        return {
            "tasks": self.tasks,
            "computing_seconds": round(self.computing_seconds, 3),
            "core_seconds": round(self.core_seconds, 3),
            "core_hours": round(self.core_seconds / 3600, 4),
            "memory_gb_hours": round(self.memory_gb_hours, 4),
            "estimated_cost": round(self.cost, 4),
        }


def computing_seconds(task: Task, now: dt.datetime | None = None) -> float:
    """The task's computing time so far, the attempt still computing included."""
    seconds = task.computing_seconds
    if task.status_enum in COMPUTING and task.started_at:
        seconds += max(0.0, ((now or timezone.now()) - task.started_at).total_seconds())
    return seconds


def task_usage(task: Task, types: dict[str, MachineType] | None = None) -> dict:
    """One task's usage and estimated cost, with the price it was estimated at."""
    types = catalog() if types is None else types
    kind = types.get(task.machine_group.machine_type)
    usage = Usage()
    usage.add(kind, computing_seconds(task))
    return usage.as_dict() | {
        "price_per_hour": float(kind.price_per_hour) if kind else None,
        "currency": currency(),
    }


# -- machine groups -------------------------------------------------------------------


def _machine_time(start: dt.datetime | None, end: dt.datetime | None, now: dt.datetime):
    """A machine's time up, as an SQL expression, cut to [start, end) when given."""
    until = Coalesce(F("stopped_at"), Value(now))
    since = F("created_at")
    if end is not None:
        until = Least(until, Value(end))
    if start is not None:
        since = Greatest(since, Value(start))
    return ExpressionWrapper(until - since, output_field=DurationField())


def group_usage(group: MachineGroup, types: dict[str, MachineType] | None = None) -> dict:
    """A group's machine-hours, idle time included, their cost, and what it costs an hour now."""
    types = catalog() if types is None else types
    kind = types.get(group.machine_type)
    now = timezone.now()
    up = Machine.objects.filter(group=group).aggregate(t=Sum(_machine_time(None, None, now)))["t"]
    hours = up.total_seconds() / 3600 if up else 0.0
    price = float(kind.price_per_hour) if kind else 0.0
    return {
        "machine_hours": round(hours, 4),
        "core_hours": round(hours * (kind.vcpus if kind else 0), 4),
        "cost": round(hours * price, 4),
        "price_per_hour": price,
        "estimated_cost_per_hour": round(price * machines_billed(group), 4),
        "currency": currency(),
    }


def machines_billed(group: MachineGroup) -> int:
    """How many machines a group would run at most: an elastic group's maximum."""
    return group.max_machines if group.is_elastic and group.max_machines else group.num_machines


# -- periods ------------------------------------------------------------------------------


def month_bounds(text: str | None, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """The UTC month ``YYYY-MM`` (this one when empty) as [start, end)."""
    now = now or timezone.now()
    if not text:
        year, month = now.year, now.month
    else:
        match = MONTH.fullmatch(text.strip())
        if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 2000:
            raise Refused(f"month {text!r} is not a month: write it as YYYY-MM, e.g. 2026-12.", field="month")
        year, month = int(match.group(1)), int(match.group(2))
    start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=dt.UTC)
    return start, end


@dataclasses.dataclass
class Report:
    """A period's usage of some projects: in total, by day, by user, by project, and their machines."""

    start: dt.datetime
    end: dt.datetime
    total: Usage
    days: dict[dt.date, Usage]
    users: dict[str, Usage]
    projects: dict[int, Usage]
    machine_hours: dict[int, float]  # by project
    machine_cost: dict[int, float]

    def as_dict(self, names: dict[int, str]) -> dict:
        return {
            "month": f"{self.start:%Y-%m}",
            "start": self.start,
            "end": self.end,
            "currency": currency(),
            "total": self.total.as_dict()
            | {
                "machine_hours": round(sum(self.machine_hours.values()), 4),
                "machine_cost": round(sum(self.machine_cost.values()), 4),
            },
            "days": [{"day": day.isoformat(), **usage.as_dict()} for day, usage in sorted(self.days.items())],
            "users": [{"user": name, **usage.as_dict()} for name, usage in sorted(self.users.items())],
            "projects": [
                {
                    "project": names.get(pk, str(pk)),
                    **usage.as_dict(),
                    "machine_hours": round(self.machine_hours.get(pk, 0.0), 4),
                    "machine_cost": round(self.machine_cost.get(pk, 0.0), 4),
                }
                for pk, usage in sorted(self.projects.items(), key=lambda item: names.get(item[0], ""))
            ],
        }


def report(project_ids, start: dt.datetime, end: dt.datetime, now: dt.datetime | None = None) -> Report:
    """The usage of the projects ``project_ids`` (a list or a subquery) from ``start`` to ``end``.

    Three queries whatever the number of tasks and machines: the ended tasks
    summed by type, day, user and project; the tasks computing now (a few,
    read one by one for their time so far); the machines summed by type and
    project.
    """
    now = now or timezone.now()
    types = catalog()
    result = Report(start, end, Usage(), {}, {}, {}, {}, {})

    def add(kind_name: str, day: dt.date, user: str, project_id: int, seconds: float, tasks: int) -> None:
        kind = types.get(kind_name)
        for usage in (
            result.total,
            result.days.setdefault(day, Usage()),
            result.users.setdefault(user, Usage()),
            result.projects.setdefault(project_id, Usage()),
        ):
            usage.add(kind, seconds, tasks)

    ended = (
        Task.objects.filter(
            project_id__in=project_ids, ended_at__gte=start, ended_at__lt=end, computing_seconds__gt=0
        )
        .values("project_id", kind=F("machine_group__machine_type"), user=F("owner__username"))
        .annotate(
            day=TruncDay("ended_at", tzinfo=dt.UTC), tasks=Count("pk"), seconds=Sum("computing_seconds")
        )
    )
    for row in ended:
        add(row["kind"], row["day"].date(), row["user"], row["project_id"], row["seconds"], row["tasks"])
    if start <= now < end:
        computing = Task.objects.filter(
            project_id__in=project_ids, status__in=sorted(COMPUTING)
        ).select_related("machine_group", "owner")
        for task in computing:
            add(
                task.machine_group.machine_type,
                now.date(),
                task.owner.username,
                task.project_id,
                computing_seconds(task, now),
                1,
            )
    if start >= now:
        return result  # nothing has run in a period yet to come
    up = _machine_time(start, end, now)
    machines = (
        Machine.objects.filter(group__project_id__in=project_ids, created_at__lt=end)
        .filter(Q(stopped_at__isnull=True) | Q(stopped_at__gt=start))
        .values(project_id=F("group__project_id"), kind=F("group__machine_type"))
        .annotate(up=Sum(up))
    )
    for row in machines:
        hours = row["up"].total_seconds() / 3600 if row["up"] else 0.0
        kind = types.get(row["kind"])
        project_id = row["project_id"]
        result.machine_hours[project_id] = result.machine_hours.get(project_id, 0.0) + hours
        cost = hours * float(kind.price_per_hour) if kind else 0.0
        result.machine_cost[project_id] = result.machine_cost.get(project_id, 0.0) + cost
    return result
