"""The task lifecycle: which moves between statuses exist, and making them.

This module is the only place that changes ``Task.status`` (what each
status means is :mod:`tasks_app.statuses`'). A move is one guarded
``UPDATE ... WHERE status = <old>`` (compare-and-set) together with the
event row that records it, in one SQL statement written by
:mod:`tasks_app.lifecycle_sql`. When two processes race (a worker starting
a task while a user kills it), exactly one update matches and the other
learns it lost.
"""

from __future__ import annotations

import contextlib
import datetime as dt

from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from tasks_app import lifecycle_sql, live
from tasks_app.models import Activity, Task, TaskEvent

# The statuses and their facts, which the rest of the code reads here too.
from tasks_app.statuses import (  # noqa: F401
    ACTIVE,
    ALIASES,
    FAILURES,
    GUIDANCE,
    KILLABLE,
    ON_MACHINE,
    QUEUED,
    TERMINAL,
    Guidance,
    Status,
    parse_status,
)

S = Status

# Endings caused by the machine rather than the simulation. They can strike
# whenever a machine holds the task, including while outputs are uploaded.
MACHINE_ENDINGS = frozenset(
    {
        S.SPOT_PREEMPTED,
        S.EXECUTOR_TERMINATED,
        S.EXECUTOR_TERMINATED_BY_USER,
        S.EXECUTOR_TERMINATED_TTL,
        S.EXECUTOR_FAILED,
    }
)

TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.PENDING_INPUT: frozenset({S.SUBMITTED, S.KILLED, S.ZOMBIE}),
    S.SUBMITTED: frozenset({S.PREPARING, S.KILLED, S.ZOMBIE}),
    S.PREPARING: frozenset({S.STARTED, S.PENDING_KILL} | MACHINE_ENDINGS),
    S.STARTED: frozenset({S.FINALIZING, S.PENDING_KILL, S.TTL_EXCEEDED} | MACHINE_ENDINGS),
    S.FINALIZING: frozenset({S.SUCCESS, S.FAILED} | MACHINE_ENDINGS),
    S.PENDING_KILL: frozenset({S.KILLED}),
    S.SUCCESS: frozenset(),
    S.FAILED: frozenset(),
    S.KILLED: frozenset(),
    S.ZOMBIE: frozenset(),
    # Only these two come back: the task did nothing wrong, its machine went
    # away, so it may be queued again when the user asked for resubmission.
    S.SPOT_PREEMPTED: frozenset({S.SUBMITTED}),
    S.EXECUTOR_TERMINATED: frozenset({S.SUBMITTED}),
    S.EXECUTOR_TERMINATED_BY_USER: frozenset(),
    S.EXECUTOR_TERMINATED_TTL: frozenset(),
    S.EXECUTOR_FAILED: frozenset(),
    S.TTL_EXCEEDED: frozenset(),
}

# The phase each status starts, for the timestamps stored on the task.
PHASE_FIELD: dict[Status, str] = {
    S.SUBMITTED: "submitted_at",
    S.PREPARING: "preparing_at",
    S.STARTED: "started_at",
    S.FINALIZING: "finalizing_at",
}


def can_transition(old: str, new: str) -> bool:
    return Status(new) in TRANSITIONS[Status(old)]


class IllegalTransition(Exception):
    """A move the lifecycle does not allow (a programming error, not a race)."""


def transition(
    task,
    new: Status,
    *,
    reason: str = "",
    actor=None,
    by_machine=None,
    expected: Status | None = None,
    at: dt.datetime | None = None,
    passing: list[tuple[Status, str, dt.datetime]] = (),
    in_attempt: int | None = None,
    **fields,
) -> bool:
    """Move ``task`` to ``new`` if it is still in the status we last saw.

    Returns True when this call made the move, False when another process
    changed the task first (the caller should then re-read and decide again).
    ``fields`` are extra columns written in the same update, e.g. the exit code.
    ``actor`` (a user) or ``by_machine`` says who made the change, for the event.
    ``passing`` lists the statuses the task went through on the way, as
    ``(status, reason, at)``, each recorded by the same update with an event
    of its own: a machine whose simulation was over in a moment, with little
    to store, moves it from preparing through started and finalizing to its
    ending in one write instead of three. ``in_attempt`` guards the move
    further: the task must still be in that attempt (a machine's moves: a
    task reclaimed and claimed again meanwhile, by another machine, back in
    the same status, is no longer this machine's to move).
    """
    old = Status(expected or task.status)
    now = at or timezone.now()
    steps = [(Status(status), why, when) for status, why, when in passing]
    steps.append((Status(new), reason, now))
    values = dict(fields, status=new, status_changed_at=now)
    events, before = [], old
    actor_id = actor.pk if actor is not None else None
    machine_id = by_machine.pk if by_machine is not None else None
    for status, why, when in steps:
        if status not in TRANSITIONS[before]:
            raise IllegalTransition(f"A task cannot go from {before.value} to {status.value}.")
        if status in PHASE_FIELD:
            values[PHASE_FIELD[status]] = when
        # The event's columns, in the order of lifecycle_sql.EVENT_COLUMNS.
        events.append((task.pk, before.value, status.value, when, why, actor_id, machine_id))
        before = status
    if new in TERMINAL:
        values["ended_at"] = now
    if new == S.SUBMITTED and old == S.PENDING_INPUT:
        values["queued_at"] = now
    elif new == S.SUBMITTED:
        # Back in the queue after losing its machine. ``queued_at`` stays as
        # it was, so the task keeps its place ahead of later submissions.
        values["machine"] = None
        values["ended_at"] = None
    reported = new in FAILURES and new != S.KILLED
    # One statement moves the task and writes its events (see lifecycle_sql.move_and_record).
    # Standing alone it is a transaction of its own, one round trip to the
    # database; an activity row to write with it, or a caller's transaction
    # (a claim, an upload), makes it part of a larger one. No savepoint is
    # needed: an update that matches nothing is no error, and any error
    # undoes the whole.
    with transaction.atomic(savepoint=False) if reported else contextlib.nullcontext():
        if not lifecycle_sql.move_and_record(task.pk, old, values, events, in_attempt):
            return False
        if reported:
            # The project's activity feed tells of failures next to what people did
            # (a kill is told by whoever killed it).
            Activity.objects.create(
                kind="failed",
                project_id=task.project_id,
                task_id=task.pk,
                message=f"Task {task.pk} ended as {Status(new).label}.",
                data={"before": old.value, "after": Status(new).value},
            )
        # Viewers learn of it once it is committed, never before.
        queue_changed = old == S.SUBMITTED or (new == S.SUBMITTED and old != S.PENDING_INPUT)
        args = (task.pk, task.machine_group_id, task.owner_id, Status(new).value)
        project = task.project_id
        transaction.on_commit(lambda: live.task_changed(*args, left_queue=queue_changed, project_id=project))
        if new in TERMINAL and old in (S.PENDING_INPUT, S.SUBMITTED):
            # No machine holds it to close its log (it may hold an earlier
            # attempt's lines); whoever follows it must still be told it ended.
            transaction.on_commit(lambda: live.close_log(task.pk))
    for name, value in values.items():
        if not hasattr(value, "resolve_expression"):  # F() etc.: re-read if needed
            setattr(task, name, value)
    return True


def claim_head(group_id: int, machine, *, reason: str, at: dt.datetime | None = None):
    """Move the head of the group's queue to preparing-to-compute on ``machine``.

    Returns ``(task, online)``: the task now held by the machine, or None
    when the queue is empty or the machine is no longer online (``online``
    tells which). It is :func:`transition` from submitted for whichever task
    heads the queue, in one statement: lock the machine, pick the head with
    ``SKIP LOCKED`` (machines claim side by side without waiting on each
    other), move it, write its event, and read it back. The machine row is
    locked before any task, as ``services.machines._machine_gone()`` locks them, so a
    machine lost or reclaimed a moment ago takes no task that nobody would
    then end; a task killed meanwhile no longer matches and is passed over.
    """
    task, online = lifecycle_sql.claim(group_id, machine.pk, reason=reason, at=at or timezone.now())
    if task is None:
        return None, online
    # Viewers learn of it once it is committed, never before.
    args = (task.pk, task.machine_group_id, task.owner_id, S.PREPARING.value)
    transaction.on_commit(lambda: live.task_changed(*args, left_queue=True, project_id=task.project_id))
    return task, True


def transition_many(
    tasks: list, new: Status, *, reason: str = "", actor=None, at: dt.datetime | None = None, **fields
):
    """Move ``tasks``, all in one status, to ``new`` together: one guarded update, one insert of events.

    For tasks this transaction made or holds locked (a batch submission), so
    none can have moved meanwhile: should any have, IllegalTransition is
    raised and the caller's transaction rolls back. Endings and returns to
    the queue have per-task consequences (the activity feed, closing logs,
    queue order) and go through :func:`transition` one at a time.
    """
    if not tasks:
        return
    old = Status(tasks[0].status)
    if any(t.status != old for t in tasks):
        raise IllegalTransition("The tasks to move together must all be in one status.")
    if new not in TRANSITIONS[old] or new in TERMINAL or (new == S.SUBMITTED and old != S.PENDING_INPUT):
        raise IllegalTransition(f"Tasks cannot go from {old.value} to {Status(new).value} together.")
    now = at or timezone.now()
    values = dict(fields, status=new, status_changed_at=now)
    if new in PHASE_FIELD:
        values[PHASE_FIELD[new]] = now
    if new == S.SUBMITTED:
        # A place in the queue the caller gave (the order of a batch) is kept.
        values["queued_at"] = Coalesce(F("queued_at"), Value(now))
    ids = [t.pk for t in tasks]
    with transaction.atomic(savepoint=False):
        if Task.objects.filter(pk__in=ids, status=old).update(**values) != len(ids):
            raise IllegalTransition(f"Some of the tasks left {old.value} while being moved together.")
        TaskEvent.objects.bulk_create(
            TaskEvent(task_id=pk, from_status=old, to_status=new, at=now, reason=reason, actor=actor)
            for pk in ids
        )
        changed = [(t.pk, t.machine_group_id, t.owner_id, t.project_id) for t in tasks]
        queue_changed = old == S.SUBMITTED
        transaction.on_commit(
            lambda: live.tasks_changed(changed, Status(new).value, left_queue=queue_changed)
        )
    for task in tasks:
        for name, value in values.items():
            if not hasattr(value, "resolve_expression"):
                setattr(task, name, value)
        task.queued_at = task.queued_at or (now if new == S.SUBMITTED else None)
