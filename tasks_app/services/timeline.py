"""A task's timeline: each status it went through, for how long, and the time per phase."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone

from tasks_app import lifecycle
from tasks_app.lifecycle import Status
from tasks_app.models import Task
from tasks_app.statuses import PHASE_OF, PHASES


def timeline(task: Task, events: list | None = None, now: dt.datetime | None = None) -> list[dict]:
    """Each status the task went through, when it began and how long it lasted.

    The first entry is the task's creation (waiting for input), which has no
    event of its own. The last one lasts until now unless it is an ending.
    """
    now = now or timezone.now()
    events = list(task.events.all()) if events is None else events
    steps = [(Status.PENDING_INPUT, task.created_at)] + [(Status(e.to_status), e.at) for e in events]
    entries = []
    for i, (status, at) in enumerate(steps):
        following = steps[i + 1][1] if i + 1 < len(steps) else None
        last = following is None
        ongoing = last and status not in lifecycle.TERMINAL
        if following is not None:
            duration = (following - at).total_seconds()
        elif ongoing:
            duration = (now - at).total_seconds()
        else:
            duration = None  # an ending lasts forever; it has no duration
        entries.append(
            {
                "status": status.value,
                "label": status.label,
                "at": at,
                "duration_seconds": duration,
                "ongoing": ongoing,
            }
        )
    return entries


def time_breakdown(entries: list[dict]) -> dict[str, float | None]:
    """Seconds spent in each phase; None for a phase the task never reached."""
    totals: dict[str, float | None] = dict.fromkeys(PHASES)
    for entry in entries:
        phase = PHASE_OF.get(Status(entry["status"]))
        if phase and entry["duration_seconds"] is not None:
            totals[phase] = (totals[phase] or 0.0) + entry["duration_seconds"]
    return totals


def total_time(task: Task, now: dt.datetime | None = None) -> float:
    """Seconds from creation to the end, or to now while it lasts."""
    return ((task.ended_at or now or timezone.now()) - task.created_at).total_seconds()
