"""The audit trail: one function that writes what a person did.

Rows are :class:`~tasks_app.models.Activity` with ``project`` set, so the
project's feed and the task and group pages read them with one query each.
Audited changes carry ``{"before": …, "after": …}`` in ``data``.
"""

from __future__ import annotations

from typing import Any

from tasks_app.models import Activity, MachineGroup, Project, Task

_UNSET = object()

MEMBERSHIP_KINDS = ("member-added", "role-changed", "member-removed")


def record(
    kind: str,
    actor,
    message: str,
    *,
    project: Project | None = None,
    task: Task | None = None,
    group: MachineGroup | None = None,
    before: Any = _UNSET,
    after: Any = _UNSET,
    **data: Any,
) -> Activity:
    """Write one event; ``project`` defaults to the task's or group's project."""
    project_id = project.pk if project is not None else None
    if project_id is None:
        # The ids, not the objects: the caller's task or group need not have its project loaded.
        project_id = task.project_id if task is not None else group.project_id if group is not None else None
    if before is not _UNSET:
        data["before"] = before
    if after is not _UNSET:
        data["after"] = after
    return Activity.objects.create(
        kind=kind,
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        message=message,
        project_id=project_id,
        task=task,
        group=group,
        data=data,
    )
