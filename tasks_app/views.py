"""The web console: server-rendered pages, htmx for partial updates.

Views stay thin: find the objects through :mod:`tasks_app.access`, render.
Every view requires a login; the access layer scopes what it may show.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from tasks_app import access, lifecycle, services
from tasks_app.lifecycle import Status

PAGE_SIZE = 50


@login_required
@require_GET
def task_list(request: HttpRequest) -> HttpResponse:
    tasks = access.visible_tasks(request.user).select_related("machine_group", "project", "owner")
    status = request.GET.get("status", "")
    if status:
        try:
            tasks = tasks.filter(status=lifecycle.parse_status(status))
        except ValueError:
            tasks = tasks.none()
    page = list(tasks.order_by("-created_at", "-id")[:PAGE_SIZE])
    context = {"tasks": page, "statuses": list(Status), "status": status}
    template = "tasks/task_list.html#rows" if request.htmx else "tasks/task_list.html"
    return render(request, template, context)


@login_required
@require_GET
def task_detail(request: HttpRequest, task_id: str) -> HttpResponse:
    task = access.task_for(request.user, task_id)
    events = list(task.events.select_related("actor", "machine"))
    # How long each status lasted: until the next change, or until now.
    for event, following in zip(events, [*events[1:], None], strict=True):
        event.until = following.at if following else None
    template = "tasks/task_detail.html#header" if request.htmx else "tasks/task_detail.html"
    return render(request, template, _task_context(task, events))


def _task_context(task, events=None) -> dict:
    return {
        "task": task,
        "events": events,
        "guidance": task.guidance,
        "position": task.position_in_queue(),
        "killable": task.status_enum in lifecycle.ACTIVE - {Status.PENDING_KILL, Status.FINALIZING},
    }


@login_required
@require_POST
def task_kill(request: HttpRequest, task_id: str) -> HttpResponse:
    task = access.task_for(request.user, task_id)
    _, message = services.kill_task(task, actor=request.user)
    if not request.htmx:
        return redirect("task-detail", task_id=task.id)
    task.refresh_from_db()
    context = _task_context(task) | {"message": message}
    return render(request, "tasks/task_detail.html#header", context)


@login_required
@require_GET
def group_list(request: HttpRequest) -> HttpResponse:
    groups = (
        access.visible_groups(request.user)
        .annotate(
            online=Count("machines", filter=Q(machines__state="online"), distinct=True),
            queued=Count("tasks", filter=Q(tasks__status=Status.SUBMITTED), distinct=True),
            running=Count("tasks", filter=Q(tasks__status__in=lifecycle.ON_MACHINE), distinct=True),
        )
        .order_by("-created_at")
    )
    return render(request, "groups/group_list.html", {"groups": groups})


@login_required
@require_GET
def status_reference(request: HttpRequest) -> HttpResponse:
    rows = [
        {
            "status": st,
            "guidance": lifecycle.GUIDANCE[st],
            "terminal": st in lifecycle.TERMINAL,
            "next": sorted(lifecycle.TRANSITIONS[st]),
        }
        for st in Status
    ]
    return render(request, "statuses.html", {"rows": rows})


def home(request: HttpRequest) -> HttpResponse:
    return redirect("task-list")
