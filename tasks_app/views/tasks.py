"""Task pages: the table, one task, its logs, files, metadata and actions."""

from __future__ import annotations

import time
from pathlib import PurePosixPath

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from tasks_app import access, archives, downloads, lifecycle, services, storage
from tasks_app import simulators as sims
from tasks_app.errors import Refused
from tasks_app.executor import questions
from tasks_app.forms import (
    SORTS,
    BulkForm,
    MetadataEntryForm,
    ResubmitForm,
    SavedViewForm,
    TaskFilterForm,
    add_refusal,
)
from tasks_app.lifecycle import Status
from tasks_app.models import Activity, MachineGroup, Membership, Role, Task
from tasks_app.resubmit import resubmit
from tasks_app.services import previews
from tasks_app.statuses import COMPUTING, KILLABLE, PHASE_LABELS, STATUS_GROUPS
from tasks_app.views import bulk, diagram, filetree, logs, review, table, waiting
from tasks_app.views.common import page_or_partial, wants_partial
from tasks_app.views.resources import resources_context

HISTORY_SHOWN = 10
# htmx stops an ``every`` poll when the answer has this status; an ended task never changes.
STOP_POLLING = 286

# -- the table -------------------------------------------------------------------


@login_required
@require_GET
def task_list(request: HttpRequest) -> HttpResponse:
    saved_views = list(bulk.visible_views(request.user).order_by("name"))
    if not request.GET:
        # A bare visit opens the user's default view, in the address so it shows.
        default = next((v for v in saved_views if v.is_default and v.owner_id == request.user.pk), None)
        if default and default.query:
            return redirect(reverse("task-list") + f"?{default.query}")
    form = TaskFilterForm(request.GET)
    tasks = access.visible_tasks(request.user).select_related("machine_group", "project", "owner")
    if form.is_valid():
        tasks = table.filtered(tasks, form)
        sort, column = form.cleaned_data["sort"], form.cleaned_data["col"]
    else:
        tasks, sort, column = tasks.none(), "-created", ""
    page = table.paginate(table.with_comment_counts(tasks), sort, request.GET.get("after", ""))
    context = {
        "form": form,
        "page": page,
        "review_states": Task.Review.choices,
        "column": column,
        "sort": sort,
        "sorts": SORTS,
        "status_groups": [(k, v[0]) for k, v in STATUS_GROUPS.items()],
        "statuses": list(Status),
        "projects": access.visible_projects(request.user).order_by("name").values_list("name", flat=True),
        "groups": access.visible_groups(request.user).order_by("name").values_list("name", flat=True),
        "simulators": sorted(sims.REGISTRY),
        "query": _query_without(request, "after", "clear"),
        # The table's live socket follows this filter and page (see tasks_app.sockets.pages).
        "live_query": urlencode(
            [(k, v) for k, v in request.GET.items() if k != "clear" and v]
            + [("rendered", f"{time.time():.3f}")]
        ),
        "saved_views": saved_views,
        "bulk_form": BulkForm(initial={"filter": _query_without(request, "after", "clear")}),
        "view_form": SavedViewForm(initial={"query": _query_without(request, "after", "clear")}),
    }
    return page_or_partial(request, "tasks/task_list.html", "results", context)


def _query_without(request: HttpRequest, *names: str) -> str:
    """The current filter as a query string, minus ``names`` (for links that change them)."""
    return urlencode([(k, v) for k, v in request.GET.items() if k not in names and v])


# -- one task --------------------------------------------------------------------


def header_context(task: Task, message: str = "", position: int | None = None, *, user=None) -> dict:
    """What the task header partial needs; the live socket renders it too.

    ``position`` may be given when the caller already knows it (the socket
    learns it from the queue order broadcast once for all viewers). ``user``
    is who looks: buttons their role does not allow are left out.
    """
    if position is None:
        position = task.position_in_queue()
    allowed = access.allowed(user, task) if user is not None else set()
    return {
        "task": task,
        "guidance": task.guidance,
        "position": position,
        "wait": waiting.why_waiting(task, position),
        "killable": "kill" in allowed and task.status_enum in KILLABLE,
        "allowed": allowed,
        "message": message,
    }


def timeline_context(task: Task) -> dict:
    """The timeline, the time bar and the path on the diagram; the live socket renders them too."""
    events = list(task.events.select_related("actor", "machine"))
    steps = services.timeline(task, events)
    path = [s["status"] for s in steps]
    return {
        "task": task,
        "events": events,
        "steps": list(zip(steps, [None, *events], strict=True)),
        "bar": _bar(services.time_breakdown(steps)),
        "diagram": diagram.build(path),
    }


@login_required
@require_GET
def task_detail(request: HttpRequest, task_id: str) -> HttpResponse:
    task = access.task_for(request.user, task_id)
    if wants_partial(request):
        # The header polls while the task is active; it needs nothing else.
        response = page_or_partial(
            request, "tasks/task_detail.html", "header", header_context(task, user=request.user)
        )
        if task.is_terminal:
            response.status_code = STOP_POLLING
        return response
    context = (
        header_context(task, user=request.user)
        | timeline_context(task)
        | {
            "metadata": _metadata_context(task, user=request.user),
            "resubmissions": list(task.resubmissions.order_by("created_at").values_list("id", flat=True)),
            "original_id": task.resubmitted_from_id,
            "chain": services.task_chain(task, request.user),
            "has_input": bool(task.input_path),
            "has_outputs": bool(task.output_path),
            "streams": logs.STREAMS,
            # While a machine holds the task its log is followed live (WebSocket, see
            # tasks_app.sockets.consumers); once stored, it is paged from storage.
            "live_logs": task.status_enum in lifecycle.ON_MACHINE,
        }
    )
    context |= resources_context(task)
    # Not "usage": the resource-use partial on the same page reads that name.
    context["accounting"] = services.task_usage(task)
    context |= review.review_context(request.user, task, allowed=context["allowed"])
    return render(request, "tasks/task_detail.html", context)


# The narrowest a phase is drawn, in percent of the bar, so a short one stays visible.
PHASE_MIN_PERCENT = 0.8


def _bar(breakdown: dict[str, float | None]) -> list[dict]:
    """Phases as SVG rectangles (positions in percent): no inline style for the CSP to refuse."""
    total = sum(v or 0 for v in breakdown.values()) or 1
    phases = [(phase, seconds) for phase, seconds in breakdown.items() if seconds is not None]
    widths = [max(100 * seconds / total, PHASE_MIN_PERCENT) for _, seconds in phases]
    scale = 100 / (sum(widths) or 1)
    bar, offset = [], 0.0
    for (phase, seconds), width in zip(phases, widths, strict=True):
        bar.append(
            {
                "phase": phase,
                "label": PHASE_LABELS[phase],
                "seconds": seconds,
                "percent": 100 * seconds / total,
                "x": round(offset, 3),
                "width": round(width * scale, 3),
            }
        )
        offset += width * scale
    return bar


@login_required
@require_POST
def task_kill(request: HttpRequest, task_id: str) -> HttpResponse:
    task = access.task_for(request.user, task_id)
    access.require(request.user, "kill", task)
    _changed, message = services.kill_task(task, actor=request.user)
    if not request.htmx:
        messages.info(request, message)
        return redirect("task-detail", task_id=task.id)
    task.refresh_from_db()
    return render(request, "tasks/task_detail.html#header", header_context(task, message, user=request.user))


# -- logs ------------------------------------------------------------------------


def _int(value: str | None, default: int = 0) -> int:
    try:
        return max(0, int(value or default))
    except ValueError:
        return default


@login_required
@require_GET
def task_logs(request: HttpRequest, task_id: str) -> HttpResponse:
    """A page of a stored log: from an offset, filtered by text, or around the first error."""
    task = access.task_for(request.user, task_id)
    stream = request.GET.get("stream", "stdout")
    if stream not in logs.STREAMS:
        raise Http404("No such log.")
    query = request.GET.get("q", "").strip()[:200]
    offset = _int(request.GET.get("offset"))
    lines = min(_int(request.GET.get("lines"), logs.LINES_PER_PAGE) or logs.LINES_PER_PAGE, 2000)
    if request.GET.get("find") == "error":
        log = logs.first_error(task, stream, offset=offset)
    elif query:
        log = logs.search(task, stream, query, offset=offset, lines=lines)
    else:
        log = logs.read_page(task, stream, offset=offset, lines=lines)
    context = {
        "task": task,
        "log": log,
        "streams": logs.STREAMS,
        "lines": lines,
        "live": task.status_enum in lifecycle.ON_MACHINE,
    }
    return page_or_partial(request, "tasks/task_logs.html", "log", context)


@login_required
@require_GET
def task_log_download(request: HttpRequest, task_id: str, stream: str) -> HttpResponse:
    """A log, whole or filtered: from storage, or from the machine while the task is on one."""
    task = access.task_for(request.user, task_id)
    if stream not in logs.STREAMS:
        raise Http404("A task's logs are stdout and stderr.")
    query = request.GET.get("q", "").strip()[:200]
    suffix = "-filtered" if query else ""
    name = storage.log_name(task.id, stream, task.attempt)
    if storage.exists(name):
        if not query:
            return downloads.stored_file(name, f"{task.id}-{stream}.txt")
        body = logs.stream_lines(task, stream, query)
    elif task.status_enum in lifecycle.ON_MACHINE:
        try:
            body = logs.stream_running(task, stream, query)
        except services.Refused as exc:
            return HttpResponse(str(exc), status=exc.status, content_type="text/plain")
        suffix += "-so-far"
    else:
        raise Http404("This task has no stored log of that name.")
    response = StreamingHttpResponse(body, content_type="text/plain")
    response["Content-Disposition"] = f'attachment; filename="{task.id}-{stream}{suffix}.txt"'
    return response


# -- files -----------------------------------------------------------------------

ARCHIVES = {"input": "input_path", "outputs": "output_path"}


def _archive_name(task: Task, which: str) -> str:
    if which not in ARCHIVES:
        raise Http404("No such archive.")
    name = getattr(task, ARCHIVES[which])
    if not storage.exists(name):
        raise Http404("These files are not stored (any more).")
    return name


@login_required
@require_GET
def task_files(request: HttpRequest, task_id: str) -> HttpResponse:
    """The input and output files as folder trees with sizes, read from the archives' indexes."""
    task = access.task_for(request.user, task_id)
    listings = []
    for which, label in (("outputs", "Outputs"), ("input", "Input")):
        name = getattr(task, ARCHIVES[which])
        entry = {"which": which, "label": label, "files": None, "archive_size": None}
        if storage.exists(name):
            with storage.open_file(name) as f:
                entry["files"] = [(i.filename, i.file_size) for i in archives.file_entries(f)]
            entry["archive_size"] = default_storage.size(name)
            entry["total"] = sum(size for _, size in entry["files"])
            entry["tree"] = filetree.rows(entry["files"])
        listings.append(entry)
    context = {"task": task, "listings": listings, "computing": Status(task.status) in COMPUTING}
    return page_or_partial(request, "tasks/task_files.html", "files", context)


# How many lines of the file written last a computing task's page shows, and how often it asks.
LATEST_LINES = 30
LATEST_EVERY_SECONDS = 5


@login_required
@require_GET
def task_latest_file(request: HttpRequest, task_id: str) -> HttpResponse:
    """While the task computes: the file it wrote last, with its last lines when it is text.

    Asked of the machine itself (outputs are stored only at the end); the
    page asks again every few seconds and stops once the task has left its
    machine, when the stored outputs take over.
    """
    task = access.task_for(request.user, task_id)
    context = {"task": task, "computing": True, "every": LATEST_EVERY_SECONDS}
    try:
        latest = questions.ask_machine(task, "last_modified")
        file = latest["file"]
        context |= {"file": file, "age": max(0.0, latest["now"] - file["modified"]) if file else None}
        if file and previews.kind(file["path"]) in ("text", "table"):
            read = questions.ask_machine(task, "read", files=[{"path": file["path"]}], lines=LATEST_LINES)
            context["text"] = read["files"][0].get("text", "")
        elif file:
            context["kind"] = previews.kind(file["path"])
    except questions.NotRunning:
        context["computing"] = False
    except Refused as exc:  # the machine did not answer this time: say so, ask again
        context["message"] = str(exc)
    return render(request, "tasks/task_files.html#latest", context)


@login_required
@require_GET
def task_archive_download(request: HttpRequest, task_id: str, which: str) -> HttpResponse:
    task = access.task_for(request.user, task_id)
    name = _archive_name(task, which)
    return downloads.stored_file(name, f"{task.id}-{which}.zip")


@login_required
@require_GET
def task_file_download(request: HttpRequest, task_id: str, which: str, path: str) -> HttpResponse:
    """One file out of an archive, unpacked on the way."""
    task = access.task_for(request.user, task_id)
    archive = storage.open_file(_archive_name(task, which))
    try:
        member, size = archives.open_file(archive, path)
    except KeyError:
        archive.close()
        raise Http404("No such file in this archive.") from None

    def chunks():
        try:
            while chunk := member.read(1 << 20):
                yield chunk
        finally:
            member.close()
            archive.close()

    shown = previews.content_type(path) if request.GET.get("inline") else None
    if shown and size <= previews.IMAGE_MAX_BYTES:
        # An image for the preview's <img>. An SVG may carry script: it runs in no <img>,
        # and this policy keeps it from running when the address is opened on its own.
        response = StreamingHttpResponse(chunks(), content_type=shown)
        response["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
        response["Content-Disposition"] = "inline"
    else:
        response = StreamingHttpResponse(chunks(), content_type="application/octet-stream")
        response["Content-Disposition"] = downloads.attachment(path)
    response["Content-Length"] = str(size)
    return response


@login_required
@require_GET
def task_file_preview(request: HttpRequest, task_id: str, which: str, path: str) -> HttpResponse:
    """A look at one file of an archive: an image, a table's head and chart, a text's head and tail."""
    task = access.task_for(request.user, task_id)
    kind = previews.kind(path)
    context = {"task": task, "which": which, "path": path, "kind": kind}
    if kind in ("table", "text"):
        with storage.open_file(_archive_name(task, which)) as archive:
            try:
                member, size = archives.open_file(archive, path)
            except KeyError:
                raise Http404("No such file in this archive.") from None
            with member:
                if kind == "table":
                    context["table"] = previews.table(
                        member, previews.TABLES[PurePosixPath(path).suffix.lower()]
                    )
                else:
                    context["text"] = previews.text(member, size)
        context["size"] = size
    elif kind in ("image", "svg"):
        with storage.open_file(_archive_name(task, which)) as archive:
            try:
                member, size = archives.open_file(archive, path)
            except KeyError:
                raise Http404("No such file in this archive.") from None
            member.close()
        context["size"] = size
        context["too_big"] = size > previews.IMAGE_MAX_BYTES
    return render(request, "tasks/task_preview.html", context)


# -- metadata --------------------------------------------------------------------


def _metadata_context(
    task: Task, form: MetadataEntryForm | None = None, editing: str = "", *, user=None
) -> dict:
    history = list(
        Activity.objects.filter(task=task, kind="metadata-edited")
        .select_related("actor")
        .order_by("-at", "-id")[:HISTORY_SHOWN]
    )
    return {
        "task": task,
        "items": sorted(task.metadata.items()),
        "form": form or MetadataEntryForm(),
        "editing": editing,
        "history": history,
        "can_edit": user is not None and access.can(user, "edit", task),
    }


@login_required
@require_http_methods(["GET", "POST"])
def task_metadata(request: HttpRequest, task_id: str) -> HttpResponse:
    """Add or change one key (POST), or show the editor, with ``edit=KEY`` to edit a key in place."""
    task = access.task_for(request.user, task_id)
    if request.method == "GET":
        key = request.GET.get("edit", "")
        form = None
        if key in task.metadata and access.can(request.user, "edit", task):
            form = MetadataEntryForm(initial={"original": key, "key": key, "value": task.metadata[key]})
        else:
            key = ""
        context = _metadata_context(task, form, key, user=request.user)
        return page_or_partial(request, "tasks/task_metadata.html", "metadata", context)
    access.require(request.user, "edit", task)
    form = MetadataEntryForm(request.POST)
    status = 200
    if form.is_valid():
        key, original = form.cleaned_data["key"], form.cleaned_data["original"]
        try:
            renamed = [original] if original and original != key else []
            services.set_metadata(
                task, {key: form.cleaned_data["value"]}, actor=request.user, merge=True, remove=renamed
            )
        except services.Refused as exc:
            form.add_error(None, str(exc))
            status = 422
        else:
            form = None
    else:
        status = 422
    editing = request.POST.get("original", "") if form is not None else ""
    if not request.htmx and status == 200:
        return redirect(reverse("task-detail", args=[task.id]) + "#metadata")
    context = _metadata_context(task, form, editing, user=request.user)
    # htmx swaps only successful answers by default; errors are part of the editor here.
    return page_or_partial(request, "tasks/task_metadata.html", "metadata", context, status=status)


@login_required
@require_POST
def task_metadata_delete(request: HttpRequest, task_id: str) -> HttpResponse:
    task = access.task_for(request.user, task_id)
    access.require(request.user, "edit", task)
    key = request.POST.get("key", "")
    if key in task.metadata:
        services.unset_metadata(task, [key], actor=request.user)
    if not request.htmx:
        return redirect(reverse("task-detail", args=[task.id]) + "#metadata")
    context = _metadata_context(task, user=request.user)
    return render(request, "tasks/task_metadata.html#metadata", context)


# -- resubmission ----------------------------------------------------------------


def _accepting_groups(user):
    """Groups still taking tasks that the user may submit to."""
    groups = access.visible_groups(user).filter(state__in=MachineGroup.ACCEPTING)
    if not user.is_staff:
        submitters = Membership.objects.filter(user=user).exclude(role=Role.VIEWER).values("project_id")
        groups = groups.filter(project_id__in=submitters)
    return groups.order_by("name")


@login_required
@require_POST
def task_resubmit(request: HttpRequest, task_id: str) -> HttpResponse:
    """The same task again, unchanged."""
    task = access.task_for(request.user, task_id)
    access.require(request.user, "resubmit", task)
    try:
        new = resubmit(task, actor=request.user)
    except services.Refused as exc:
        messages.error(request, str(exc))
        return _to(request, reverse("task-detail", args=[task.id]))
    messages.success(request, f"Resubmitted as task {new.id}.")
    return _to(request, reverse("task-detail", args=[new.id]))


@login_required
@require_http_methods(["GET", "POST"])
def task_resubmit_edit(request: HttpRequest, task_id: str) -> HttpResponse:
    """Resubmit with edits: parameters, group, time to live and metadata prefilled."""
    import json

    task = access.task_for(request.user, task_id)
    access.require(request.user, "resubmit", task)
    groups = _accepting_groups(request.user)
    if request.method == "POST":
        form = ResubmitForm(request.POST, groups=groups)
        if form.is_valid():
            data = form.cleaned_data
            try:
                new = resubmit(
                    task,
                    actor=request.user,
                    parameters=data["parameters"],
                    machine_group=data["machine_group"],
                    time_to_live=data["time_to_live"] or 0,
                    metadata=data["metadata"],
                )
            except services.Refused as exc:
                add_refusal(form, exc)
            else:
                messages.success(request, f"Resubmitted as task {new.id}.")
                return _to(request, reverse("task-detail", args=[new.id]))
    else:
        initial_group = task.machine_group if task.machine_group.is_accepting_tasks else groups.first()
        form = ResubmitForm(
            groups=groups,
            initial={
                "parameters": json.dumps(task.parameters, indent=2),
                "machine_group": initial_group,
                "time_to_live": f"{task.time_to_live_seconds}s" if task.time_to_live_seconds else "",
                "metadata": json.dumps(task.metadata, indent=2),
            },
        )
    return page_or_partial(request, "tasks/task_resubmit.html", "form", {"task": task, "form": form})


def _to(request: HttpRequest, url: str) -> HttpResponse:
    """Go to ``url``: a redirect, or for htmx a full navigation to it."""
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return redirect(url)
