"""Status changes, queue moves, progress and resource samples, told to whoever watches.

They go through the Channels layer to groups named after the task, its
machine group, its owner and its project; the WebSocket consumers
(:mod:`tasks_app.sockets`) render them for the browser or pass them on as
JSON. Called once the change is committed, never before.
"""

from __future__ import annotations

import logging

from tasks_app.live.messages import QueueMoved, ResourcesSampled, TaskChanged, TaskProgress
from tasks_app.live.publishing import (
    ALL_TASKS_GROUP,
    holding,
    listened,
    machine_group_group,
    owner_group,
    project_group,
    send,
    task_group,
)
from tasks_app.models import Task

log = logging.getLogger(__name__)


def task_changed(
    task_id: str,
    group_id: int,
    owner_id: int,
    status: str,
    left_queue: bool,
    project_id: int | None = None,
) -> None:
    """Tell viewers a task changed status (called after the change committed).

    Pages listing many tasks (the table, the overview) listen on the project
    groups of the projects their user belongs to (staff: on ``tasks.all``);
    they treat the event as a prompt to re-read what changed through the
    access layer, never as data to show. So only the task's own group hears
    of every change; the groups of many tasks get wake-ups, at most one per
    ``WAKE_SECONDS`` each (see :func:`tasks_app.live.publishing.send`). Groups nobody is in are
    skipped (see :func:`tasks_app.live.publishing.listened`).
    """
    tasks_changed([(task_id, group_id, owner_id, project_id)], status, left_queue)


def tasks_changed(changed: list[tuple[str, int, int, int | None]], status: str, left_queue: bool) -> None:
    """:func:`task_changed` for many tasks that moved together, e.g. a batch submission.

    ``changed`` holds (task, machine group, owner, project) ids. Each task's
    own group hears of its task; a group that lists many tasks hears once,
    of the last of its tasks (its pages re-read what they show anyway).
    """
    try:
        groups, deliver = _change_messages(changed, status, left_queue)
        held = holding()
        if held is not None:
            held.changes.append((groups, deliver))
        else:
            deliver(listened(groups))
    except Exception:  # the live view is a convenience; the change itself is stored
        log.warning("Could not publish the change of %s tasks", len(changed), exc_info=True)


def _change_messages(changed, status: str, left_queue: bool):
    """The groups that may hear of a change, and what sends it to those of them anyone is in."""
    messages, last = [], {}
    for task_id, group_id, owner_id, project_id in changed:
        event = TaskChanged(task=task_id, status=status, group=group_id).message()
        messages.append((task_group(task_id), event))
        names = [machine_group_group(group_id), owner_group(owner_id), ALL_TASKS_GROUP]
        if project_id is not None:
            names.append(project_group(project_id))
        last |= dict.fromkeys(names, event)

    def deliver(listened: set[str]) -> None:
        try:
            found = [(name, event) for name, event in messages if name in listened]
            if left_queue:
                queues = {c[1] for c in changed}
                found += [
                    (machine_group_group(g), queue_order(g))
                    for g in queues
                    if machine_group_group(g) in listened
                ]
            wakes = [(name, event) for name, event in last.items() if name in listened]
            if found or wakes:
                send(found, wakes=wakes)
        except Exception:  # the live view is a convenience; the change itself is stored
            log.warning("Could not publish the change of %s tasks", len(changed), exc_info=True)

    return {name for name, _ in messages} | set(last), deliver


def resources_sampled(task_id: str) -> None:
    """Tell the task's viewers a resource sample was written (they read it from the database)."""
    try:
        if listened({task_group(task_id)}):
            send([(task_group(task_id), ResourcesSampled(task=task_id).message())])
    except Exception:  # the sample itself is stored
        log.warning("Could not publish the resource use of task %s", task_id, exc_info=True)


def progress_changed(
    task_id: str, owner_id: int, project_id: int, progress: float | None, eta: str | None
) -> None:
    """Tell viewers how far a running task got (``eta``: ISO 8601, or None when no honest estimate).

    The task's own viewers get the figures; pages listing many tasks get a
    wake-up, as for a status change, and re-read them.
    """
    try:
        own = task_group(task_id)
        event = TaskProgress(task=task_id, progress=progress, eta=eta).message()
        heard = listened({own, owner_group(owner_id), project_group(project_id), ALL_TASKS_GROUP})
        messages = [(own, event)] if own in heard else []
        wakes = [(name, event) for name in sorted(heard - {own})]
        if messages or wakes:
            send(messages, wakes=wakes)
    except Exception:  # the progress itself is stored
        log.warning("Could not publish the progress of task %s", task_id, exc_info=True)


def queue_order(group_id: int) -> dict:
    """The group's queue order, sent once; each viewer finds its own position in it."""
    order = Task.objects.queued_in(group_id).order_by("queued_at", "id").values_list("id", flat=True)
    return QueueMoved(order=list(order[:10_000])).message()
