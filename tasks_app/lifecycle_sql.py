"""The SQL of a task's moves, one statement each: the guarded update, its events, the claim.

:mod:`tasks_app.lifecycle` decides what a move is; this module writes it
to the database as cheaply as it goes, because machines make these moves
thousands of times: each move and its event rows are one statement (one
round trip, its own transaction), statements are built once per shape, and
they run bound on the server, where PostgreSQL keeps them prepared.
"""

from __future__ import annotations

import datetime as dt
import functools

import psycopg
from django.db import connections, transaction

from tasks_app.models import Machine, MachineGroup, Task, TaskAsset, TaskEvent
from tasks_app.statuses import Status

# The columns of an event row, as transition() lists them.
EVENT_COLUMNS = ("task_id", "from_status", "to_status", "at", "reason", "actor_id", "machine_id")


def move_and_record(pk, old: Status, values: dict, events: list, in_attempt: int | None) -> bool:
    """The guarded update of task ``pk`` from ``old`` and the insert of ``events``, as one statement.

    ``WITH moved AS (UPDATE ... RETURNING id) INSERT ... SELECT ... FROM moved``:
    the events are written exactly when the update matched, so a move that
    lost its race writes nothing, and a move on a machine costs one round
    trip instead of four (BEGIN, UPDATE, INSERT, COMMIT). The update stays an
    ordinary UPDATE of the task table, which its triggers see as any other.
    ``events`` are rows of :data:`EVENT_COLUMNS`. Returns whether the task moved.
    """
    if any(hasattr(value, "resolve_expression") for value in values.values()):
        return _move_by_orm(pk, old, values, events, in_attempt)
    connection = connections[Task.objects.db]
    sql, fields = _move_sql(connection.alias, tuple(values), in_attempt is not None, len(events))
    update_params = [
        field.get_db_prep_save(
            value.prepare_database_save(field) if hasattr(value, "prepare_database_save") else value,
            connection,
        )
        for field, value in zip(fields, values.values(), strict=True)
    ]
    update_params += [pk, old.value] if in_attempt is None else [pk, old.value, in_attempt]
    with prepared_cursor(connection) as cursor:
        cursor.execute(sql, [*update_params, *(value for event in events for value in event)])
        return cursor.fetchone() is not None


def _move_by_orm(pk, old: Status, values: dict, events: list, in_attempt: int | None) -> bool:
    """:func:`move_and_record` for values that are expressions (``F()``): an update and an insert.

    No machine moves a task this way, so its two statements cost nothing
    that matters; the ORM compiles the expressions.
    """
    guard = {"pk": pk, "status": old.value}
    if in_attempt is not None:
        guard["attempt"] = in_attempt
    with transaction.atomic(savepoint=False):
        if not Task.objects.filter(**guard).update(**values):
            return False
        TaskEvent.objects.bulk_create(
            TaskEvent(**dict(zip(EVENT_COLUMNS, event, strict=True))) for event in events
        )
    return True


@functools.cache
def _move_sql(alias: str, names: tuple[str, ...], attempt_guard: bool, count: int):
    """The statement of a move that sets ``names`` and records ``count`` events, with the fields it sets.

    A machine moves every task it runs the same few ways: building the
    statement anew each time cost more Python than the database takes to
    run it.
    """
    connection = connections[alias]
    q = connection.ops.quote_name
    fields = [Task._meta.get_field(name) for name in names]
    guard = [Task._meta.pk.column, "status"] + (["attempt"] if attempt_guard else [])
    update = (
        f"UPDATE {q(Task._meta.db_table)} SET {', '.join(f'{q(f.column)} = %s' for f in fields)} "
        f"WHERE {' AND '.join(f'{q(column)} = %s' for column in guard)}"
    )
    return _with_events(update, count, connection), fields


def _with_events(update_sql: str, count: int, connection) -> str:
    """``update_sql`` made to record ``count`` events of the task it moves, and answer whether it did."""
    q = connection.ops.quote_name
    table = q(TaskEvent._meta.db_table)
    columns = ", ".join(q(column) for column in EVENT_COLUMNS)
    placeholders = ", ".join(["%s"] * len(EVENT_COLUMNS))
    # One INSERT per event, each typed by its target columns (a UNION of
    # rows would type a NULL as text). The last one answers whether it moved.
    insert = f"INSERT INTO {table} ({columns}) SELECT {placeholders} FROM moved"
    earlier = "".join(f", passed{i} AS ({insert})" for i in range(count - 1))
    return f"WITH moved AS ({update_sql} RETURNING {q(Task._meta.pk.column)}){earlier} {insert} RETURNING 1"


def prepared_cursor(connection):
    """A cursor whose statements PostgreSQL keeps prepared on ``connection``.

    Django binds parameters on the client, so the server parses and plans
    every statement anew. A machine runs the same claim and the same few
    moves thousands of times, and planning them took as long as running
    them. Bound on the server, psycopg prepares a statement once it has
    run a few times on a connection (``prepare_threshold``, set in
    console/settings.py) and from then on sends only its parameters.
    """
    connection.ensure_connection()
    connection.validate_thread_sharing()
    # psycopg's own cursor binds on the server (Django's binds on the client),
    # wrapped as Django wraps its cursors: errors translated, queries logged in DEBUG.
    cursor = psycopg.Cursor(connection.connection)
    return (
        connection.make_debug_cursor(cursor) if connection.queries_logged else connection.make_cursor(cursor)
    )


def _task_from_row(connection, row):
    """A Task from a row of all its concrete columns, in field order, as a queryset would build it."""
    values = list(row)
    for i, converters in _task_converters(connection.alias):
        for convert, expression in converters:
            values[i] = convert(values[i], expression, connection)
    return Task.from_db(connection.alias, None, values)


@functools.cache
def _task_converters(alias: str) -> list:
    """``(index, [(converter, column)])`` for the Task columns whose database value needs converting."""
    connection = connections[alias]
    found = []
    for i, field in enumerate(Task._meta.concrete_fields):
        column = field.get_col(Task._meta.db_table)
        converters = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        if converters:
            found.append((i, [(convert, column) for convert in converters]))
    return found


def claim(group_id: int, machine_id: int, *, reason: str, at: dt.datetime) -> tuple[Task | None, bool]:
    """Claim the head of the group's queue for the machine, as ``lifecycle.claim_head`` says.

    Returns the task as it now is, or None, and whether the machine is still online.
    The task's ``has_assets`` says whether it asked for remote assets, which
    a machine then fetches (most tasks do not, and need not be asked);
    ``allow_network``, whether its group lets it reach the network now (an
    admin may change that while the group runs).
    """
    connection = connections[Task.objects.db]
    params = [machine_id, group_id, at, at, machine_id, at, reason, machine_id]
    with prepared_cursor(connection) as cursor:
        cursor.execute(_claim_sql(connection.alias), params)
        *row, has_assets, allow_network, online = cursor.fetchone()
    if row[0] is None:
        return None, online
    task = _task_from_row(connection, row)
    task.has_assets, task.allow_network = has_assets, allow_network
    return task, True


@functools.cache
def _claim_sql(alias: str) -> str:
    """The statement of :func:`claim`, written once per database."""
    connection = connections[alias]
    q = connection.ops.quote_name
    columns = [f.column for f in Task._meta.concrete_fields]
    # The statuses are written into the statement, not passed: prepared once,
    # its plan is made for any parameters, and only a known status lets it
    # use the partial index of the queue (task_queue, status = 'submitted').
    online, submitted, preparing = (
        _literal(v) for v in (Machine.State.ONLINE, Status.SUBMITTED, Status.PREPARING)
    )
    # A machine of an elastic group that reported what it has takes only
    # tasks of a simulator it has; the others wait for a machine that has it.
    return f"""
        WITH machine AS MATERIALIZED (
            SELECT m.id, CASE WHEN g.max_machines IS NULL OR m.simulators = '{{}}'::jsonb
                              THEN NULL ELSE m.simulators END AS picky, g.allow_network
            FROM {q(Machine._meta.db_table)} AS m
            JOIN {q(MachineGroup._meta.db_table)} AS g ON g.id = m.group_id
            WHERE m.id = %s AND m.state = {online} FOR NO KEY UPDATE OF m
        ), head AS (
            SELECT id FROM {q(Task._meta.db_table)}
            WHERE machine_group_id = %s AND status = {submitted} AND EXISTS (SELECT FROM machine)
              AND ((SELECT picky FROM machine) IS NULL
                   OR jsonb_exists((SELECT picky FROM machine), simulator))
            ORDER BY queued_at, id LIMIT 1 FOR UPDATE SKIP LOCKED
        ), moved AS (
            UPDATE {q(Task._meta.db_table)} AS task
            SET status = {preparing}, status_changed_at = %s, {q("preparing_at")} = %s,
                machine_id = %s, attempt = task.attempt + 1
            FROM head WHERE task.id = head.id AND task.status = {submitted}
            RETURNING {", ".join(f"task.{q(c)}" for c in columns)}
        ), recorded AS (
            INSERT INTO {q(TaskEvent._meta.db_table)}
                (task_id, from_status, to_status, at, reason, machine_id)
            SELECT id, {submitted}, {preparing}, %s, %s, %s FROM moved
        )
        SELECT moved.*,
               EXISTS (SELECT FROM {q(TaskAsset._meta.db_table)} AS a WHERE a.task_id = moved.id)
                   AS has_assets,
               (SELECT allow_network FROM machine) AS allow_network,
               EXISTS (SELECT FROM machine) AS machine_online
        FROM (SELECT) AS one LEFT JOIN moved ON true
    """


def _literal(value: str) -> str:
    """``value`` as an SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"
