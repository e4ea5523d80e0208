"""How many tasks each project has in each status, and how many ended each hour, without counting them.

Triggers on the task table (migration ``0005_project_status_counts``) append
a row to :class:`~tasks_app.models.ProjectStatusCount` for every change:
``-1`` where a task was, ``+1`` where it is now, with the compute time
(``ended_at - preparing_at``) it takes along. Summing a project's rows gives
its counts, so pages that show them cost the same with a hundred tasks or a
million, and appending never makes two workers wait for one counter row.

:func:`fold` (run by the scheduler's housekeeping) keeps the table small by
replacing the rows of each (project, status) by their sum; :func:`rebuild`
counts everything again from the task table, e.g. after restoring a backup
(``manage.py taskcounts --rebuild``).

:class:`~tasks_app.models.ProjectHourCount` is kept the same way (migration
``0009_project_hour_counts``) for the tasks that ended, by the hour they
ended in and their final status: the overview reads the last day from it
(:func:`ended_by_hour`).
"""

from __future__ import annotations

import datetime as dt

from django.db import connection, transaction
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum, Value
from django.db.models.functions import Coalesce, NullIf, TruncHour

from tasks_app import lifecycle
from tasks_app.lifecycle import Status
from tasks_app.models import ProjectHourCount, ProjectStatusCount, Task

# Folding and rebuilding take this advisory lock, so they never interleave:
# a fold's sums landing in the middle of a rebuild would be counted twice.
_LOCK = 0x7461736B  # "task"

COUNTS = ProjectStatusCount._meta.db_table
HOURS = ProjectHourCount._meta.db_table
TASKS = Task._meta.db_table


def fold() -> int:
    """Replace the rows of every (project, status) and (project, hour, status) that has several by their sum.

    Returns how many rows were folded away (0 when another fold is running).
    Rows appended while it runs are left for the next fold.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_LOCK])
        if not cursor.fetchone()[0]:
            return 0
        statuses = _fold(cursor, COUNTS, ["project_id", "status"], {"tasks": "0", "compute": "interval '0'"})
        return statuses + _fold(cursor, HOURS, ["project_id", "hour", "status"], {"tasks": "0"})


def _fold(cursor, table: str, keys: list[str], sums: dict[str, str]) -> int:
    """Fold ``table``'s rows per ``keys`` into one summing the columns of ``sums`` (column: its zero).

    A key whose sums are all zero (e.g. its tasks were deleted) goes away.
    Returns how many rows fewer there are.
    """
    key = ", ".join(keys)
    summed = ", ".join(f"sum({column})" for column in sums)
    cursor.execute(
        f"""
        WITH several AS (
            SELECT {key} FROM {table} GROUP BY {key} HAVING count(*) > 1
        ), folded AS (
            DELETE FROM {table} c USING several s
            WHERE {" AND ".join(f"c.{k} = s.{k}" for k in keys)}
            RETURNING {", ".join(f"c.{column}" for column in [*keys, *sums])}
        ), summed AS (
            INSERT INTO {table} ({key}, {", ".join(sums)})
            SELECT {key}, {summed} FROM folded
            GROUP BY {key}
            HAVING {" OR ".join(f"sum({column}) <> {zero}" for column, zero in sums.items())}
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM folded) - (SELECT count(*) FROM summed)
        """
    )
    return cursor.fetchone()[0]


def rebuild() -> None:
    """Count every project's tasks again from the task table.

    Task writes wait while it runs (a share lock on the task table), so no
    change slips between the count and the deletion of the old rows.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK])
        cursor.execute(f"LOCK TABLE {TASKS} IN SHARE MODE")
        cursor.execute(f"DELETE FROM {COUNTS}")
        cursor.execute(
            f"""
            INSERT INTO {COUNTS} (project_id, status, tasks, compute)
            SELECT project_id, status, count(*), sum(coalesce(ended_at - preparing_at, interval '0'))
            FROM {TASKS} GROUP BY project_id, status
            """
        )
        cursor.execute(f"DELETE FROM {HOURS}")
        cursor.execute(
            f"""
            INSERT INTO {HOURS} (project_id, hour, status, tasks)
            SELECT project_id, date_trunc('hour', ended_at, 'UTC'), status, count(*)
            FROM {TASKS} WHERE ended_at IS NOT NULL GROUP BY 1, 2, 3
            """
        )


def current(project_ids=None) -> dict[tuple[int, str], tuple[int, dt.timedelta]]:
    """{(project id, status): (tasks, compute)} from the summary, leaving out empty pairs."""
    rows = ProjectStatusCount.objects.all()
    if project_ids is not None:
        rows = rows.filter(project_id__in=project_ids)
    rows = rows.values("project_id", "status").annotate(n=Sum("tasks"), compute=Sum("compute"))
    return {(r["project_id"], r["status"]): (r["n"], r["compute"]) for r in rows if r["n"] or r["compute"]}


def counted(project_ids=None) -> dict[tuple[int, str], tuple[int, dt.timedelta]]:
    """The same as :func:`current`, counted from the task table (slow; for checks and tests)."""
    tasks = Task.objects.all()
    if project_ids is not None:
        tasks = tasks.filter(project_id__in=project_ids)
    on_machine = ExpressionWrapper(F("ended_at") - F("preparing_at"), output_field=DurationField())
    rows = tasks.values("project_id", "status").annotate(n=Count("pk"), compute=Sum(on_machine))
    return {(r["project_id"], r["status"]): (r["n"], r["compute"] or dt.timedelta()) for r in rows}


def project_totals(projects):
    """``projects`` annotated with ``total``, ``active``, ``succeeded``, ``failed`` (task counts)
    and ``compute`` (time on machines, None when none yet), from the summary."""
    tasks = "status_counts__tasks"
    status = "status_counts__status"

    def number(**where):
        return Coalesce(Sum(tasks, filter=Q(**where) if where else None), 0)

    return projects.annotate(
        total=number(),
        active=number(**{f"{status}__in": lifecycle.ACTIVE}),
        succeeded=number(**{status: Status.SUCCESS}),
        failed=number(**{f"{status}__in": lifecycle.FAILURES}),
        compute=NullIf(Sum("status_counts__compute"), Value(dt.timedelta(0))),
    )


def ended_by_hour(since: dt.datetime | None = None, project_ids=None) -> dict[tuple[dt.datetime, str], int]:
    """{(hour, final status): tasks} of the tasks that ended in the hours from ``since`` on (all without).

    ``since`` is the start of an hour (UTC); ``project_ids`` (ids or a
    subquery) limits it to those projects. Pairs with no tasks are left out.
    """
    rows = ProjectHourCount.objects.all()
    if since is not None:
        rows = rows.filter(hour__gte=since)
    if project_ids is not None:
        rows = rows.filter(project_id__in=project_ids)
    rows = rows.values("hour", "status").annotate(n=Sum("tasks"))
    return {(r["hour"], r["status"]): r["n"] for r in rows if r["n"]}


def ended_by_hour_counted(
    since: dt.datetime | None = None, project_ids=None
) -> dict[tuple[dt.datetime, str], int]:
    """The same as :func:`ended_by_hour`, counted from the task table (slow; for checks and tests)."""
    tasks = Task.objects.filter(ended_at__isnull=False)
    if since is not None:
        tasks = tasks.filter(ended_at__gte=since)
    if project_ids is not None:
        tasks = tasks.filter(project_id__in=project_ids)
    rows = tasks.annotate(hour=TruncHour("ended_at", tzinfo=dt.UTC)).values("hour", "status")
    return {(r["hour"], r["status"]): r["n"] for r in rows.annotate(n=Count("pk"))}
