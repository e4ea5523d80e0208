"""What every part of the API shares: the error responses and the task queryset."""

from __future__ import annotations

from django.shortcuts import get_object_or_404

from tasks_app import access
from tasks_app.api import schemas as s

# Documented on every operation that can refuse; the body is always s.Error.
ERRORS = {400: s.Error, 401: s.Error, 403: s.Error, 404: s.Error, 409: s.Error, 413: s.Error}
MACHINE_ERRORS = {**ERRORS, 502: s.Error, 503: s.Error}


def tasks_for(user):
    """The tasks ``user`` may see, with what the task schemas read."""
    return access.visible_tasks(user).select_related("project", "owner", "machine_group", "machine")


def task_for(user, task_id: str):
    """One task for ``user`` (404 otherwise, as in :func:`access.task_for`), in one query."""
    return get_object_or_404(tasks_for(user), pk=task_id)
