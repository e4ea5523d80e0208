"""Console pages at scale: server time of the main pages with 100,000 tasks and with a million.

The benchmark database gets N tasks (100,000, then a million; ``--tasks``
for one other size, ``--quick`` 2,000) in
eight projects of three owners each, on sixteen machine groups, created over
the last sixty days: metadata, statuses over the whole lifecycle (most ended,
a few hundred waiting or running among the newest), every status change as
an event, and resource samples for one task in a hundred. They are made by
``INSERT … SELECT`` over ``generate_series`` in the database itself, so a
million take a minute or two, and kept: a later run with the same N reuses
them. Everything is named ``console-bench-…``; other benchmarks' data in the
same database is left alone.

Before the pages are timed the tables are vacuumed, as autovacuum keeps a
live instance (the benchmarks before this one leave dead index entries
behind), and the sixteen groups count as started: the overview and the
groups page count the queued and running tasks of the groups that are up.

Each page is then requested in-process through Django's test client
(``DEBUG`` off, a logged-in session), a few times to warm up and then
``REQUESTS`` times, as a staff user who sees every task (the largest
tables) and, for the tasks table, as a member of one project. The figure is
the 95th percentile of the server time against the console's target of
100 ms; the note has the median and the number of SQL queries.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from urllib.parse import urlencode

from bench import harness
from bench.harness import percentiles, result

TITLE = "Console pages at scale"
TARGET_MS = 100.0
REQUESTS = 20
WARMUP = 3
PREFIX = "console-bench"
PROJECTS = 8
OWNERS_PER_PROJECT = 3
GROUPS_PER_PROJECT = 2
SPAN_DAYS = 60
# The newest tasks hold the active ones, one in three of them.
ACTIVE_SHARE = 0.02
SAMPLED_SHARE = 100  # one task in this many has resource samples
SAMPLES_PER_TASK = 60

ACTIVE_CYCLE = [
    *["submitted"] * 8,
    *["started"] * 3,
    "preparing-to-compute",
    "finalizing",
    "pending-input",
    "pending-kill",
]
# Endings by share in a hundred.
ENDINGS = [
    ("success", 75),
    ("failed", 10),
    ("killed", 5),
    ("executor-failed", 3),
    ("ttl-exceeded", 2),
    ("zombie", 1),
    ("spot-instance-preempted", 1),
    ("executor-terminated", 1),
    ("executor-terminated-by-user", 1),
    ("executor-terminated-TTL-exceeded", 1),
]

# Up to the simulator starting: each change and the task column holding its time.
_TO_STARTED = [
    ("pending-input>submitted", "submitted_at"),
    ("submitted>preparing-to-compute", "preparing_at"),
    ("preparing-to-compute>started", "started_at"),
]
# Each status's changes (from>to) with the task column holding its time.
PATHS: dict[str, list[tuple[str, str]]] = {
    "pending-input": [],
    "submitted": [("pending-input>submitted", "submitted_at")],
    "preparing-to-compute": [
        ("pending-input>submitted", "submitted_at"),
        ("submitted>preparing-to-compute", "preparing_at"),
    ],
    "started": list(_TO_STARTED),
    "finalizing": [
        *list(_TO_STARTED),
        ("started>finalizing", "finalizing_at"),
    ],
    "pending-kill": [
        *list(_TO_STARTED),
        ("started>pending-kill", "status_changed_at"),
    ],
    "killed": [("pending-input>submitted", "submitted_at"), ("submitted>killed", "ended_at")],
    "zombie": [("pending-input>submitted", "submitted_at"), ("submitted>zombie", "ended_at")],
}
for _status in ("success", "failed"):
    PATHS[_status] = [
        *list(_TO_STARTED),
        ("started>finalizing", "finalizing_at"),
        (f"finalizing>{_status}", "ended_at"),
    ]
for _status in (
    "executor-failed",
    "ttl-exceeded",
    "spot-instance-preempted",
    "executor-terminated",
    "executor-terminated-by-user",
    "executor-terminated-TTL-exceeded",
):
    PATHS[_status] = [
        *list(_TO_STARTED),
        (f"started>{_status}", "ended_at"),
    ]

# Phase times, from the columns of the generating query (see fill).
PHASE_SQL = {
    "submitted_at": "b.created + interval '2 seconds'",
    "queued_at": "b.created + interval '2 seconds'",
    "preparing_at": "b.created + (2 + b.wait) * interval '1 second'",
    "started_at": "b.created + (17 + b.wait) * interval '1 second'",
    "finalizing_at": "b.created + (17 + b.wait + b.dur) * interval '1 second'",
    "ended_at": "b.created + (22 + b.wait + b.dur) * interval '1 second'",
}


def _status_sql(n: int) -> str:
    """The status of task number ``i`` (0 is the newest)."""
    active = f"(ARRAY[{', '.join(repr(s) for s in ACTIVE_CYCLE)}])[1 + (i / 3) %% {len(ACTIVE_CYCLE)}]"
    cases, upto = [], 0
    for status, share in ENDINGS:
        upto += share
        cases.append(f"WHEN (i * 7) %% 100 < {upto} THEN '{status}'")
    ended = f"CASE {' '.join(cases)} END"
    return f"CASE WHEN i < {int(n * ACTIVE_SHARE)} AND i %% 3 = 0 THEN {active} ELSE {ended} END"


def _column_sql(field, params: list) -> str:
    """The expression filling one column of the task table."""
    name = field.column
    uses = {s for s, path in PATHS.items() if any(col == name for _, col in path)}
    if name == "queued_at":
        uses = {s for s, path in PATHS.items() if any(col == "submitted_at" for _, col in path)}
    if name in PHASE_SQL:
        if name == "ended_at":
            uses = {s for s, path in PATHS.items() if path and path[-1][1] == "ended_at"}
        listed = ", ".join(f"'{s}'" for s in sorted(uses))
        return f"CASE WHEN b.st IN ({listed}) THEN {PHASE_SQL[name]} END" if uses else "NULL"
    fixed = {
        "id": "substr(md5(%s || b.i::text), 1, 25)",
        "owner_id": "(%s::int[])[1 + b.p * 3 + (b.i / 8) %% 3]",
        "project_id": "(%s::int[])[1 + b.p]",
        "machine_group_id": "(%s::int[])[1 + b.p * 2 + (b.i / 24) %% 2]",
        "simulator": "CASE WHEN b.i %% 3 = 0 THEN 'splishsplash' ELSE 'commands' END",
        "simulator_version": "CASE WHEN b.i %% 3 = 0 THEN '2.19.0' ELSE '1' END",
        "metadata": "jsonb_build_object('case', 'case-' || (b.i %% 200), 'sweep', 'sweep-' || (b.i %% 17), "
        "'note', 'run ' || b.i)",
        "parameters": "jsonb_build_object('commands', jsonb_build_array('python solve.py'))",
        "status": "b.st",
        "created_at": "b.created",
        "status_changed_at": "coalesce("
        + ", ".join(
            f"CASE WHEN b.st = '{s}' THEN {PHASE_SQL.get(path[-1][1], 'b.created')} END"
            for s, path in PATHS.items()
            if path and path[-1][1] != "status_changed_at"
        )
        + ", b.created + interval '30 seconds')",
        "attempt": "CASE WHEN b.st IN ('pending-input', 'submitted') THEN 0 ELSE 1 END",
        "exit_code": "CASE WHEN b.st = 'success' THEN 0 WHEN b.st = 'failed' THEN 1 END",
        "error_detail": "CASE WHEN b.st = 'failed' THEN 'The simulator exited with code 1.' ELSE '' END",
        "output_size": "CASE WHEN b.st = 'success' THEN 1000 + b.i %% 100000 END",
        "output_files": "CASE WHEN b.st = 'success' THEN 3 + b.i %% 40 END",
    }
    if name in fixed:
        return fixed[name]
    if field.null:
        return "NULL"
    default = field.get_default()  # "" for text without a default
    if default is not None:
        params.append(field.get_db_prep_save(default, _connection()))
        return "%s"
    raise RuntimeError(f"The console benchmark does not know how to fill Task.{field.name}; add it.")


def _connection():
    from django.db import connection

    return connection


def _people():
    """The owners, projects and groups of the generated tasks, made once."""
    from django.contrib.auth import get_user_model

    from tasks_app.models import MachineGroup, Membership, Project, Role

    user_model = get_user_model()
    staff, _ = user_model.objects.get_or_create(username=f"{PREFIX}-staff", defaults={"is_staff": True})
    owners, projects, groups = [], [], []
    for p in range(PROJECTS):
        project, _ = Project.objects.get_or_create(name=f"{PREFIX}-p{p}", defaults={"created_by": staff})
        projects.append(project)
        for k in range(OWNERS_PER_PROJECT):
            owner, _ = user_model.objects.get_or_create(username=f"{PREFIX}-u{p}-{k}")
            Membership.objects.get_or_create(project=project, user=owner, defaults={"role": Role.MEMBER})
            owners.append(owner)
        for g in range(GROUPS_PER_PROJECT):
            group, _ = MachineGroup.objects.get_or_create(
                name=f"{PREFIX}-g{p}-{g}",
                defaults={
                    "owner": owners[-1],
                    "project": project,
                    "machine_type": "c2-standard-4",
                    "num_machines": 4,
                    # Terminated, so no provider ever starts machines for it.
                    "state": MachineGroup.State.TERMINATED,
                },
            )
            groups.append(group)
    return staff, owners, projects, groups


def _ours():
    from tasks_app.models import Task

    return Task.objects.filter(project__name__startswith=f"{PREFIX}-p")


def fill(n: int) -> tuple[int, float]:
    """Make sure exactly ``n`` generated tasks exist; returns (n, seconds spent making them)."""
    from django.db import connection, transaction

    from tasks_app.models import ResourceSample, Task, TaskEvent

    staff, owners, projects, groups = _people()
    have = _ours().count()
    if have == n:
        return n, 0.0
    started = time.perf_counter()
    if have:
        _remove_ours()
    fields = [f for f in Task._meta.concrete_fields]
    params: list = []
    exprs = []
    for f in fields:
        expr = _column_sql(f, params)
        # Placeholders of the fixed expressions take their values in column order.
        if f.column == "id":
            params.append(f"{PREFIX}-{time.time_ns()}-")
        elif f.column == "owner_id":
            params.append([o.pk for o in owners])
        elif f.column == "project_id":
            params.append([p.pk for p in projects])
        elif f.column == "machine_group_id":
            params.append([g.pk for g in groups])
        exprs.append(expr)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    span = SPAN_DAYS * 86400
    tasks_sql = f"""
        INSERT INTO {Task._meta.db_table} ({columns})
        SELECT {", ".join(exprs)}
        FROM (
            SELECT i, i %% {PROJECTS} AS p, {_status_sql(n)} AS st,
                   now() - interval '2 hours' - (i::float8 * {span} / {n}) * interval '1 second' AS created,
                   (i * 13) %% 600 AS wait, 60 + (i * 37) %% 3540 AS dur
            FROM generate_series(0, {n - 1}) AS i
        ) AS b
    """
    steps = [
        (status, i + 1, *change.split(">"), col)
        for status, path in PATHS.items()
        for i, (change, col) in enumerate(path)
    ]
    values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(steps))
    time_of = " ".join(f"WHEN s.col = '{col}' THEN t.{col}" for col in {c for *_, c in steps})
    events_sql = f"""
        INSERT INTO {TaskEvent._meta.db_table} (task_id, from_status, to_status, at, reason)
        SELECT t.id, s.from_status, s.to_status, CASE {time_of} END, 'Generated for a benchmark.'
        FROM {Task._meta.db_table} t
        JOIN (VALUES {values}) AS s(status, n, from_status, to_status, col) ON s.status = t.status
        WHERE t.project_id = ANY(%s)
        ORDER BY t.created_at, s.n
    """
    samples_sql = f"""
        INSERT INTO {ResourceSample._meta.db_table} (task_id, at, cpu_percent, memory_bytes, disk_bytes)
        SELECT t.id, t.started_at + k * interval '10 seconds', 50 + (k * 37) %% 350,
               (200 + (k * 53) %% 800)::bigint * 1048576, (k * 3)::bigint * 1048576
        FROM {Task._meta.db_table} t, generate_series(0, {SAMPLES_PER_TASK - 1}) AS k
        WHERE t.project_id = ANY(%s) AND t.status = 'success' AND hashtext(t.id) %% {SAMPLED_SHARE} = 0
    """
    project_ids = [p.pk for p in projects]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(tasks_sql, params)
        cursor.execute(events_sql, [x for step in steps for x in step] + [project_ids])
        cursor.execute(samples_sql, [project_ids])
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Task._meta.db_table}")
        cursor.execute(f"ANALYZE {TaskEvent._meta.db_table}")
        cursor.execute(f"ANALYZE {ResourceSample._meta.db_table}")
    return n, time.perf_counter() - started


def _remove_ours() -> None:
    """Delete the generated tasks and what hangs on them, in SQL (the ORM would load them all)."""
    from django.db import connection, transaction

    from tasks_app.models import Project, Task

    projects = f"SELECT id FROM {Project._meta.db_table} WHERE name LIKE %s"
    mine = f"SELECT id FROM {Task._meta.db_table} WHERE project_id IN ({projects})"
    pattern = f"{PREFIX}-p%"
    with transaction.atomic(), connection.cursor() as cursor:
        for rel in Task._meta.related_objects:
            table = rel.related_model._meta.db_table
            column = rel.field.column
            if rel.on_delete.__name__ == "CASCADE":
                cursor.execute(f"DELETE FROM {table} WHERE {column} IN ({mine})", [pattern])
            else:
                cursor.execute(f"UPDATE {table} SET {column} = NULL WHERE {column} IN ({mine})", [pattern])
        cursor.execute(f"DELETE FROM {Task._meta.db_table} WHERE id IN ({mine})", [pattern])
    # The tables keep the space of what was deleted (a million tasks, their events and
    # samples) until rewritten: a smaller set measured in them would pay for scanning it.
    related = [rel.related_model._meta.db_table for rel in Task._meta.related_objects]
    with connection.cursor() as cursor:
        for table in dict.fromkeys([Task._meta.db_table, *related]):
            cursor.execute(f"VACUUM FULL {table}")


# -- measuring ----------------------------------------------------------------------


def _pages(staff, member_project) -> list[tuple[str, str, object]]:
    """(name, URL, user) of every page measured."""
    from django.urls import reverse

    from tasks_app.lifecycle import Status
    from tasks_app.models import ResourceSample
    from tasks_app.views import table

    ours = _ours()
    newest = list(ours.order_by("-created_at", "-id").values_list("created_at", "id")[:1])
    deep = list(
        ours.order_by("-created_at", "-id").values_list("created_at", "id")[ours.count() * 9 // 10 :][:1]
    )
    cursor = table._encode(list(deep[0] if deep else newest[0]))
    sampled = ResourceSample.objects.filter(task__in=ours).values_list("task_id", flat=True).first()
    queued = ours.filter(status=Status.SUBMITTED).order_by("created_at").values_list("id", flat=True).first()
    tasks = reverse("task-list")
    pages = [
        ("tasks table", f"{tasks}?clear=1", staff),
        ("status filter", f"{tasks}?{urlencode({'status': 'failed'})}", staff),
        ("metadata filter", f"{tasks}?{urlencode({'meta': 'case=case-7'})}", staff),
        ("deep cursor page", f"{tasks}?{urlencode({'sort': '-created', 'after': cursor})}", staff),
        ("tasks table, one project's member", f"{tasks}?clear=1", member_project),
    ]
    if sampled:
        pages.append(("task page (ended, with resource use)", reverse("task-detail", args=[sampled]), staff))
    if queued:
        pages.append(("task page (queued)", reverse("task-detail", args=[queued]), staff))
    pages += [
        ("overview", reverse("overview"), staff),
        ("machine groups", reverse("group-list"), staff),
        ("projects", reverse("project-list"), staff),
    ]
    return pages


def measure(url: str, user, requests: int) -> tuple[list[float], list[float], list[float], int]:
    """Times (ms) of ``requests`` GETs after a warm-up: wall clock, this process's CPU; then each
    query's time in one more request, and the last status. On a busy machine the CPU time
    (rendering, excluding the database) tells what the wall clock cannot."""
    from django.db import connection
    from django.test import Client

    client = Client()
    client.force_login(user)
    for _ in range(WARMUP):
        response = client.get(url)
    queries: list[float] = []

    def count(execute, sql, params, many, context):
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            queries.append(1000 * (time.perf_counter() - start))

    with connection.execute_wrapper(count):
        response = client.get(url)
    times, cpu = [], []
    for _ in range(requests):
        start, start_cpu = time.perf_counter(), time.process_time()
        response = client.get(url)
        times.append(1000 * (time.perf_counter() - start))
        cpu.append(1000 * (time.process_time() - start_cpu))
    return times, cpu, queries, response.status_code


def run(quick: bool = False, tasks: int | None = None) -> list[dict]:
    """The pages at 100,000 tasks (the console's target) and at a million (the benchmark's)."""
    harness.setup_django()
    from django.conf import settings

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    sizes = [tasks] if tasks else [2_000] if quick else [100_000, 1_000_000]
    requests = 5 if quick else REQUESTS
    return [row for n in sizes for row in measure_at(n, requests)]


def measure_at(n: int, requests: int) -> list[dict]:
    n, fill_seconds = fill(n)
    staff, owners, _projects, groups = _people()
    _vacuum()
    with _groups_up(groups):
        return _measure_pages(n, fill_seconds, staff, owners, requests)


def _vacuum() -> None:
    """Clear what earlier runs left behind, as autovacuum and the housekeeping do on a live instance.

    The benchmarks before this one move thousands of tasks through their
    statuses; until a vacuum, the indexes on status keep an entry for every
    version of those rows, and the pages' counts wade through them. Making
    and removing generated tasks appends rows to the summaries of task
    counts, which the scheduler's housekeeping would have folded within
    seconds; no scheduler runs here.
    """
    from django.db import connection

    from tasks_app import task_counts
    from tasks_app.models import ProjectHourCount, ProjectStatusCount, ResourceSample, Task, TaskEvent

    task_counts.fold()
    with connection.cursor() as cursor:
        for model in (Task, TaskEvent, ResourceSample, ProjectStatusCount, ProjectHourCount):
            cursor.execute(f"VACUUM ANALYZE {model._meta.db_table}")


@contextlib.contextmanager
def _groups_up(groups):
    """The generated groups counted as started while the pages are measured.

    The overview and the groups page count the queued and running tasks of
    groups that are up; terminated ones cost nothing, and would flatter the
    figures. They are terminated again afterwards (and by any benchmark
    stack that starts), so no provider ever gives them machines.
    """
    from tasks_app.models import MachineGroup

    ids = [g.pk for g in groups]
    MachineGroup.objects.filter(pk__in=ids).update(state=MachineGroup.State.STARTED)
    try:
        yield
    finally:
        MachineGroup.objects.filter(pk__in=ids).update(state=MachineGroup.State.TERMINATED)


def _measure_pages(n: int, fill_seconds: float, staff, owners, requests: int) -> list[dict]:
    out = []
    label = f"{n:,} tasks"
    if fill_seconds:
        out.append(
            result(
                "console_pages",
                f"generating {label}",
                "s",
                fill_seconds,
                note="INSERT … SELECT over generate_series, with events and resource samples; kept for reuse",
            )
        )
    for name, url, user in _pages(staff, owners[0]):
        times, cpu, queries, status = measure(url, user, requests)
        if status != 200:
            raise RuntimeError(f"{name} ({url}) answered {status}.")
        p = percentiles(times)
        out.append(
            result(
                "console_pages",
                f"{name}, p95 ({label})",
                "ms",
                p["p95"],
                baseline=TARGET_MS,
                baseline_name="target 100 ms",
                note=f"p50 {p['p50']:.1f} ms, Python CPU p50 {percentiles(cpu)['p50']:.1f} ms, "
                f"{len(queries)} queries taking {sum(queries):.1f} ms",
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--quick", action="store_true", help="2,000 tasks, 5 requests per page")
    parser.add_argument(
        "--tasks", type=int, default=None, help="how many tasks (default: 100,000, then 1,000,000)"
    )
    args = parser.parse_args()
    for row in run(quick=args.quick, tasks=args.tasks):
        ratio = f"  ({row['ratio']:.2f}× {row['baseline_name']})" if row["ratio"] is not None else ""
        print(f"{row['metric']:<60} {row['simdeck']:9.1f} {row['unit']}{ratio}  {row['note']}")


if __name__ == "__main__":
    main()
