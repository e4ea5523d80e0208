"""Projects: the folders tasks and machine groups are filed in."""

from __future__ import annotations

from django.db.models import Count, Q
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router

from tasks_app import lifecycle, services
from tasks_app.api import schemas as s
from tasks_app.api.common import ERRORS
from tasks_app.lifecycle import Status

router = Router(tags=["projects"])


def _projects(user):
    # Count only the tasks this user may see: a project is shared, its tasks need not be.
    mine = Q() if user.is_staff else Q(tasks__owner=user)
    return services.visible_projects(user).annotate(
        num_tasks=Count("tasks", filter=mine, distinct=True),
        active=Count("tasks", filter=mine & Q(tasks__status__in=lifecycle.ACTIVE), distinct=True),
        succeeded=Count("tasks", filter=mine & Q(tasks__status=Status.SUCCESS), distinct=True),
        failed=Count("tasks", filter=mine & Q(tasks__status__in=lifecycle.FAILURES), distinct=True),
    )


@router.get("", response={200: list[s.ProjectOut], **ERRORS})
def list_projects(request: HttpRequest):
    """Projects you have tasks or machine groups in, by name."""
    return list(_projects(request.user).order_by("name"))


@router.get("/{name}", response={200: s.ProjectOut, **ERRORS})
def get_project(request: HttpRequest, name: str):
    return get_object_or_404(_projects(request.user), name=name)
