"""Who may see and change what: one place every door goes through.

Querysets are scoped to what the user may see; an object outside that scope
answers 404, so an id from elsewhere reveals nothing.
"""

from __future__ import annotations

from django.shortcuts import get_object_or_404

from tasks_app.models import MachineGroup, Task


def visible_tasks(user):
    qs = Task.objects.all()
    return qs if user.is_staff else qs.filter(owner=user)


def visible_groups(user):
    qs = MachineGroup.objects.all()
    return qs if user.is_staff else qs.filter(owner=user)


def task_for(user, task_id: str) -> Task:
    return get_object_or_404(
        visible_tasks(user).select_related("machine_group", "project", "owner"), pk=task_id
    )


def group_for(user, ref: str | int) -> MachineGroup:
    """A machine group by id or by name."""
    qs = visible_groups(user)
    if isinstance(ref, int) or str(ref).isdigit():
        return get_object_or_404(qs, pk=int(ref))
    return get_object_or_404(qs, name=ref)
