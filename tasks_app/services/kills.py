"""Killing tasks: at once before a machine holds them, through their machine after."""

from __future__ import annotations

from tasks_app import audit, lifecycle
from tasks_app.lifecycle import Status
from tasks_app.models import Task
from tasks_app.statuses import KILLABLE


def kill_task(task: Task, *, actor=None) -> tuple[bool, str]:
    """Kill a task. Returns (changed, what happened) for the caller to show.

    A task that has not reached a machine ends at once and never runs; one
    on a machine goes to pending-kill and its machine stops the simulator.
    """
    for _ in range(3):  # the task may move while we look; look again
        status = Status(task.status)
        if status in lifecycle.TERMINAL:
            return False, f"Task {task.id} already ended ({status.label}); nothing to kill."
        if status == Status.PENDING_KILL:
            return False, f"Task {task.id} is already being killed."
        if status not in KILLABLE:
            return False, f"Task {task.id} is {status.label} and cannot be killed now; try again in a moment."
        # Not yet on a machine, it ends at once; on one, its machine stops it.
        new = Status.KILLED if Status.KILLED in lifecycle.TRANSITIONS[status] else Status.PENDING_KILL
        who = actor.username if actor else "the system"
        if lifecycle.transition(task, new, reason=f"Kill requested by {who}.", actor=actor):
            if actor is not None:
                audit.record(
                    "killed", actor, f"Task {task.id} killed by {who}.", task=task, before=status, after=new
                )
            if new == Status.KILLED:
                return True, f"Task {task.id} was killed before it ran."
            return True, f"Task {task.id} is being stopped by its machine."
        task.refresh_from_db()
    return False, f"Task {task.id} keeps changing status; try again."


def kill_all(tasks, *, actor=None) -> list[tuple[str, bool, str]]:
    """Kill every task of ``tasks`` that has not ended; returns (id, changed, message) each."""
    active = tasks.filter(status__in=KILLABLE).order_by("created_at")
    return [(task.id, *kill_task(task, actor=actor)) for task in active]
