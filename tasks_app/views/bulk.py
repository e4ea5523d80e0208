"""Acting on many tasks at once, and saved views of the tasks table.

A bulk action first answers with a preview (how many tasks it would touch,
and how many of those it can act on); only a second, confirmed request acts.
Everything goes through the same services as a single task, one task at a
time, so each change is guarded and recorded as usual. One request handles
at most ``BULK_LIMIT`` tasks; the preview says so when more match.
"""

from __future__ import annotations

import csv
from urllib.parse import parse_qs, urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from tasks_app import access, lifecycle, services
from tasks_app.forms import BulkForm, SavedViewForm, TaskFilterForm
from tasks_app.models import SavedView
from tasks_app.resubmit import resubmit
from tasks_app.statuses import KILLABLE
from tasks_app.views import table
from tasks_app.views.common import page_or_partial

BULK_LIMIT = 1000
CSV_COLUMNS = [
    "id",
    "status",
    "simulator",
    "project",
    "owner",
    "machine_group",
    "created_at",
    "started_at",
    "ended_at",
    "duration_seconds",
    "exit_code",
    "metadata",
]


def _filtered_by_query(user, query: str) -> QuerySet | None:
    """The user's tasks matching a table query string, or None when it is invalid."""
    form = TaskFilterForm(QueryDict(query))
    if not form.is_valid():
        return None
    return table.filtered(access.visible_tasks(user), form)


def _targets(request: HttpRequest, form: BulkForm) -> QuerySet | None:
    if form.cleaned_data["scope"] == "selected":
        return access.visible_tasks(request.user).filter(pk__in=form.ids)
    return _filtered_by_query(request.user, form.cleaned_data["filter"])


ACTIONABLE = {
    "kill": lambda qs: qs.filter(status__in=KILLABLE),
    "metadata": lambda qs: qs,
    "resubmit": lambda qs: qs.filter(status__in=lifecycle.TERMINAL).exclude(input_path=""),
    "export": lambda qs: qs,
}
# What each action needs of the user's role on a task (see tasks_app.access).
PERMISSION = {"kill": "kill", "metadata": "edit", "resubmit": "resubmit"}


@login_required
@require_POST
def task_bulk(request: HttpRequest) -> HttpResponse:
    form = BulkForm(request.POST)
    context: dict = {"form": form}
    if not form.is_valid():
        return page_or_partial(request, "tasks/task_bulk.html", "preview", context, status=422)
    tasks = _targets(request, form)
    if tasks is None:
        form.add_error(None, "The table's filter is not valid; fix it first.")
        return page_or_partial(request, "tasks/task_bulk.html", "preview", context, status=422)
    action = form.cleaned_data["action"]
    if action == "export":
        return _csv_response(tasks.order_by("-created_at", "-id"))
    matching = tasks.count()
    # Rows the user's role does not allow are left out, and the preview says how many.
    permitted = access.actionable(request.user, PERMISSION[action], tasks)
    not_allowed = matching - permitted.count()
    actionable = ACTIONABLE[action](permitted)
    if not form.cleaned_data["confirm"]:
        context |= {
            "matching": matching,
            "not_allowed": not_allowed,
            "actionable": actionable.count(),
            "limit": BULK_LIMIT,
            "action_label": BulkForm.ACTIONS[action],
            "ids": form.ids,
        }
        return page_or_partial(request, "tasks/task_bulk.html", "preview", context)
    done = _apply(request, action, actionable.order_by("created_at")[:BULK_LIMIT], form)
    skipped = f" {not_allowed} skipped: your role does not allow it there." if not_allowed else ""
    messages.success(
        request, f"{BulkForm.ACTIONS[action]}: {done} task{'s' if done != 1 else ''} done.{skipped}"
    )
    url = reverse("task-list") + (f"?{form.cleaned_data['filter']}" if form.cleaned_data["filter"] else "")
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return redirect(url)


def _apply(request: HttpRequest, action: str, tasks, form: BulkForm) -> int:
    done = 0
    for task in tasks.select_related("project", "machine_group"):
        if action == "kill":
            changed, _ = services.kill_task(task, actor=request.user)
            done += changed
        elif action == "metadata":
            key, value = form.cleaned_data["key"].strip(), form.cleaned_data["value"]
            try:
                services.set_metadata(task, {key: value}, actor=request.user, merge=True)
            except services.Refused:
                continue
            done += 1
        elif action == "resubmit":
            try:
                resubmit(task, actor=request.user)
            except services.Refused:
                continue
            done += 1
    return done


class _Echo:
    """A file-like object for csv.writer that hands each line back instead of storing it."""

    def write(self, value: str) -> str:
        return value


def _csv_response(tasks: QuerySet) -> StreamingHttpResponse:
    import json

    writer = csv.writer(_Echo())

    def rows():
        yield writer.writerow(CSV_COLUMNS)
        # A server-side cursor: a million rows never sit in memory at once.
        for t in tasks.select_related("project", "owner", "machine_group").iterator(chunk_size=2000):
            duration = t.duration
            yield writer.writerow(
                [
                    t.id,
                    t.status,
                    t.simulator,
                    t.project.name,
                    t.owner.username,
                    t.machine_group.name,
                    t.created_at.isoformat(),
                    t.started_at.isoformat() if t.started_at else "",
                    t.ended_at.isoformat() if t.ended_at else "",
                    f"{duration.total_seconds():.1f}" if duration else "",
                    "" if t.exit_code is None else t.exit_code,
                    json.dumps(t.metadata, ensure_ascii=False) if t.metadata else "",
                ]
            )

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="simdeck-tasks-{stamp}.csv"'
    return response


@login_required
@require_GET
def task_export(request: HttpRequest) -> HttpResponse:
    """Every task matching the table's filter, as CSV."""
    tasks = _filtered_by_query(request.user, request.GET.urlencode())
    if tasks is None:
        return HttpResponse("The filter is not valid.", status=400, content_type="text/plain")
    return _csv_response(tasks.order_by("-created_at", "-id"))


# -- saved views -------------------------------------------------------------------


def visible_views(user) -> QuerySet:
    projects = access.visible_projects(user).values("pk")
    return SavedView.objects.filter(Q(owner=user) | Q(project__in=projects)).select_related(
        "owner", "project"
    )


def clean_query(query: str) -> str:
    """Only the table's own filter fields, without the page cursor."""
    keep = set(TaskFilterForm.base_fields) - {"after"}
    pairs = [(k, v) for k, values in parse_qs(query).items() if k in keep for v in values if v]
    return urlencode(pairs)


@login_required
@require_POST
def saved_view_create(request: HttpRequest) -> HttpResponse:
    form = SavedViewForm(request.POST)
    if not form.is_valid():
        messages.error(request, "; ".join(e for errors in form.errors.values() for e in errors))
        return redirect(reverse("task-list") + f"?{clean_query(request.POST.get('query', ''))}")
    data = form.cleaned_data
    project = None
    if data["share"]:
        project = access.visible_projects(request.user).filter(name=data["project"]).first()
        if project is None:
            messages.error(request, f"You have no project named {data['project']!r} to share with.")
            return redirect(reverse("task-list") + f"?{clean_query(data['query'])}")
    if data["is_default"]:
        SavedView.objects.filter(owner=request.user, is_default=True).update(is_default=False)
    SavedView.objects.update_or_create(
        owner=request.user,
        name=data["name"],
        defaults={"query": clean_query(data["query"]), "project": project, "is_default": data["is_default"]},
    )
    messages.success(request, f"View “{data['name']}” saved.")
    return redirect(reverse("task-list") + f"?{clean_query(data['query'])}")


@login_required
@require_POST
def saved_view_delete(request: HttpRequest, view_id: int) -> HttpResponse:
    view = get_object_or_404(SavedView, pk=view_id, owner=request.user)
    view.delete()
    messages.success(request, f"View “{view.name}” deleted.")
    return redirect("task-list")
