"""A task's resource use: current figures and three small charts over time.

The same partial is part of the task page, has its own URL, and is what the
task's live socket pushes whenever the machine writes a sample
(:class:`tasks_app.sockets.consumers.TaskEventsConsumer`).
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from tasks_app import access, lifecycle, resource_use
from tasks_app.models import Task
from tasks_app.views.common import page_or_partial

CHARTS = (
    ("cpu_percent", "CPU", "percent"),
    ("memory_bytes", "Memory", "bytes"),
    ("disk_bytes", "Work disk", "bytes"),
)


def resources_context(task: Task) -> dict:
    """What the resources partial needs: one query, whatever the task's age."""
    usage = resource_use.usage(task.id)
    charts = []
    if usage.points:
        for field, label, unit in CHARTS:
            chart = resource_use.chart(usage, field, unit)
            chart |= {"field": field, "label": label, "unit": unit}
            charts.append(chart)
    return {
        "task": task,
        "usage": usage,
        "charts": charts,
        # Kept on the page while the task may still run, so a live update has a place to go.
        "show_resources": bool(usage.points) or task.status_enum in lifecycle.ACTIVE,
        "measuring": task.status_enum in lifecycle.ON_MACHINE,
    }


@login_required
@require_GET
def task_resources(request: HttpRequest, task_id: str) -> HttpResponse:
    task = access.task_for(request.user, task_id)
    return page_or_partial(request, "tasks/task_resources.html", "resources", resources_context(task))
