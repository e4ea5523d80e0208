"""The JSON API (``/api/v1/``) used by the Python client and the CLI.

Endpoints are thin: they find the object through :mod:`tasks_app.access`
(404 for anything the caller may not see), call :mod:`tasks_app.services`,
and shape the answer with :mod:`tasks_app.api.schemas`. Every error body is
``{"error": code, "message": text, "field": name-or-null}``.
"""

from __future__ import annotations

import base64
import datetime as dt

from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest
from ninja import NinjaAPI, Query
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.responses import Status as Reply
from ninja.security import HttpBearer

from tasks_app import access, lifecycle, services, storage
from tasks_app import simulators as sims
from tasks_app.api import schemas as s
from tasks_app.lifecycle import Status
from tasks_app.models import APIKey, Task


class KeyAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str):
        user = APIKey.authenticate(token)
        if user is not None:
            request.user = user
        return user


api = NinjaAPI(
    title="Simdeck API",
    version="1",
    description="Submit simulation tasks, follow them and collect their outputs.",
    auth=KeyAuth(),
    urls_namespace="api",
)

ERRORS = {400: s.Error, 401: s.Error, 404: s.Error, 409: s.Error}


def _error(request, status: int, code: str, message: str, field: str | None = None):
    return api.create_response(request, {"error": code, "message": message, "field": field}, status=status)


@api.exception_handler(services.Refused)
def _refused(request, exc: services.Refused):
    return _error(request, exc.status, exc.code, str(exc), exc.field)


@api.exception_handler(Http404)
def _not_found(request, exc):
    return _error(request, 404, "not_found", "No such object, or it is not yours to see. Check the id.")


@api.exception_handler(AuthenticationError)
def _unauthenticated(request, exc):
    return _error(
        request,
        401,
        "unauthenticated",
        "Missing or invalid API key. Send 'Authorization: Bearer <key>'; "
        "create a key with 'manage.py createapikey USERNAME' or in the console.",
    )


@api.exception_handler(ValidationError)
def _invalid(request, exc: ValidationError):
    first = exc.errors[0] if exc.errors else {}
    loc = [str(p) for p in first.get("loc", []) if p not in ("body", "query", "path", "payload")]
    field = ".".join(loc) or None
    return _error(
        request, 400, "invalid", f"{field or 'request'}: {first.get('msg', 'invalid value')}.", field
    )


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    return _error(request, exc.status_code, "error", str(exc))


# -- who am I, what is there ---------------------------------------------------


@api.get("/whoami", tags=["account"])
def whoami(request):
    return {"username": request.user.username, "is_staff": request.user.is_staff}


@api.get("/statuses", response=list[s.StatusOut], tags=["reference"], auth=None)
def statuses(request):
    """Every status of the task lifecycle, with its guidance."""
    return [
        {
            "value": st.value,
            "label": st.label,
            "terminal": st in lifecycle.TERMINAL,
            "next": [n.value for n in sorted(lifecycle.TRANSITIONS[st])],
            **vars(lifecycle.GUIDANCE[st]),
        }
        for st in Status
    ]


@api.get("/machine-types", response=list[s.MachineTypeOut], tags=["machine groups"])
def machine_types(request):
    return [{"name": name, **spec} for name, spec in sorted(settings.SIMDECK_MACHINE_TYPES.items())]


@api.get("/simulators", response=list[s.SimulatorOut], tags=["simulators"])
def simulators(request):
    """The simulators this server knows, and whether its own host has them."""
    out = []
    for sim in sims.REGISTRY.values():
        try:
            out.append({"name": sim.name, "label": sim.label, "version": sim.version(), "available": True})
        except sims.SimulatorMissing as exc:
            out.append(
                {
                    "name": sim.name,
                    "label": sim.label,
                    "version": None,
                    "available": False,
                    "problem": str(exc),
                }
            )
    return out


# -- machine groups ------------------------------------------------------------


def _groups(user):
    return access.visible_groups(user).select_related("project").prefetch_related("machines")


@api.get("/machine-groups", response=list[s.GroupOut], tags=["machine groups"])
def list_groups(request, include_terminated: bool = False):
    qs = _groups(request.user).order_by("-created_at")
    if not include_terminated:
        qs = qs.exclude(state="terminated")
    return list(qs)


@api.post("/machine-groups", response={201: s.GroupOut, **ERRORS}, tags=["machine groups"])
def create_group(request, payload: s.GroupIn):
    data = payload.dict()
    start = data.pop("start")
    group = services.create_group(request.user, **data)
    if start:
        services.start_group(group)
    return Reply(201, _groups(request.user).get(pk=group.pk))


@api.get("/machine-groups/{ref}", response={200: s.GroupOut, **ERRORS}, tags=["machine groups"])
def get_group(request, ref: str):
    return _groups(request.user).get(pk=access.group_for(request.user, ref).pk)


@api.post("/machine-groups/{ref}/start", response={200: s.GroupOut, **ERRORS}, tags=["machine groups"])
def start_group(request, ref: str):
    group = services.start_group(access.group_for(request.user, ref))
    return _groups(request.user).get(pk=group.pk)


@api.post("/machine-groups/{ref}/terminate", response={200: s.GroupOut, **ERRORS}, tags=["machine groups"])
def terminate_group(request, ref: str):
    group = access.group_for(request.user, ref)
    services.terminate_group(group, actor=request.user, reason=f"Terminated by {request.user.username}.")
    return _groups(request.user).get(pk=group.pk)


# -- tasks ---------------------------------------------------------------------


def _tasks(user):
    return access.visible_tasks(user).select_related("project", "owner", "machine_group", "machine")


def _encode_cursor(task: Task) -> str:
    raw = f"{task.created_at.isoformat()}|{task.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        created, task_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return dt.datetime.fromisoformat(created), task_id
    except ValueError:
        raise services.Refused("The cursor is not one this API gave out.", field="cursor") from None


@api.get("/tasks", response={200: s.TaskPage, **ERRORS}, tags=["tasks"])
def list_tasks(
    request,
    status: list[str] = Query(None, description="Statuses to include; aliases like 'completed' work."),
    project: str | None = None,
    simulator: str | None = None,
    machine_group: str | None = None,
    metadata: list[str] = Query(None, description="key=value pairs that must all match."),
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = None,
):
    """Tasks newest first, a page at a time."""
    qs = _tasks(request.user)
    if status:
        try:
            qs = qs.filter(status__in=[lifecycle.parse_status(x) for x in status])
        except ValueError as exc:
            raise services.Refused(str(exc), field="status") from None
    if project:
        qs = qs.filter(project__name=project)
    if simulator:
        qs = qs.filter(simulator=simulator.lower())
    if machine_group:
        qs = qs.filter(machine_group__name=machine_group)
    for pair in metadata or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise services.Refused(f"Write metadata filters as key=value, not {pair!r}.", field="metadata")
        qs = qs.filter(metadata__contains={key: value})
    if cursor:
        created, task_id = _decode_cursor(cursor)
        qs = qs.filter(created_at__lte=created).exclude(created_at=created, id__gte=task_id)
    items = list(qs.order_by("-created_at", "-id")[: limit + 1])
    next_cursor = _encode_cursor(items[limit - 1]) if len(items) > limit else None
    return {"items": items[:limit], "next_cursor": next_cursor}


@api.post("/tasks", response={201: s.TaskCreated, **ERRORS}, tags=["tasks"])
def create_task(request, payload: s.TaskIn):
    """Create a task waiting for its input; then PUT the input archive to ``upload_url``."""
    group = access.group_for(request.user, payload.machine_group)
    task = services.create_task(
        request.user,
        simulator=payload.simulator,
        parameters=payload.parameters,
        machine_group=group,
        input_files=payload.input_files,
        project=payload.project,
        resubmit_on_preemption=payload.resubmit_on_preemption,
        time_to_live=payload.time_to_live,
        metadata=payload.metadata,
    )
    task = _tasks(request.user).get(pk=task.pk)
    task.upload_url = f"/api/v1/tasks/{task.id}/input"
    return Reply(201, task)


@api.put("/tasks/{task_id}/input", response={200: s.TaskDetailOut, **ERRORS}, tags=["tasks"])
def upload_input(request, task_id: str):
    """The input folder as one zip archive, as the raw request body.

    Send the archive's size in ``X-Archive-Size`` and its SHA-256 (hex) in
    ``X-Content-SHA256``; the task joins its group's queue once both match
    what arrived.
    """
    task = access.task_for(request.user, task_id)
    try:
        size = int(request.headers.get("X-Archive-Size", ""))
    except ValueError:
        raise services.Refused("Send the archive's size in X-Archive-Size.", field="X-Archive-Size") from None
    sha256 = request.headers.get("X-Content-SHA256", "")
    if len(sha256) != 64:
        raise services.Refused(
            "Send the archive's SHA-256 (hex) in X-Content-SHA256.", field="X-Content-SHA256"
        )
    chunks = iter(lambda: request.read(storage.CHUNK), b"")
    services.accept_input(task, chunks, size=size, sha256=sha256, actor=request.user)
    return _tasks(request.user).get(pk=task.pk)


@api.get("/tasks/{task_id}", response={200: s.TaskDetailOut, **ERRORS}, tags=["tasks"])
def get_task(request, task_id: str):
    return access.task_for(request.user, task_id)


@api.get("/tasks/{task_id}/position", response={200: dict, **ERRORS}, tags=["tasks"])
def task_position(request, task_id: str):
    task = access.task_for(request.user, task_id)
    return {"id": task.id, "status": task.status, "position_in_queue": task.position_in_queue()}


@api.post("/tasks/{task_id}/kill", response={200: s.KillOut, **ERRORS}, tags=["tasks"])
def kill_task(request, task_id: str):
    """Kill a task: a queued one ends at once, a running one is stopped by its machine."""
    task = access.task_for(request.user, task_id)
    changed, message = services.kill_task(task, actor=request.user)
    return {"id": task.id, "status": task.status, "changed": changed, "message": message}


@api.get("/tasks/{task_id}/metadata", response={200: dict[str, str], **ERRORS}, tags=["metadata"])
def get_metadata(request, task_id: str):
    return access.task_for(request.user, task_id).metadata


@api.put("/tasks/{task_id}/metadata", response={200: dict[str, str], **ERRORS}, tags=["metadata"])
def set_metadata(request, task_id: str, payload: s.MetadataIn):
    """Replace all metadata of the task."""
    task = access.task_for(request.user, task_id)
    return services.set_metadata(task, payload.metadata, actor=request.user, merge=False)


@api.patch("/tasks/{task_id}/metadata", response={200: dict[str, str], **ERRORS}, tags=["metadata"])
def update_metadata(request, task_id: str, payload: s.MetadataIn):
    """Add or change the given keys, keeping the others."""
    task = access.task_for(request.user, task_id)
    return services.set_metadata(task, payload.metadata, actor=request.user, merge=True)


def _file(name: str, download_name: str):
    if not storage.exists(name):
        raise Http404
    return FileResponse(storage.open_file(name), as_attachment=True, filename=download_name)


@api.get("/tasks/{task_id}/outputs", tags=["outputs"], response={200: None, **ERRORS})
def download_outputs(request, task_id: str):
    """The outputs as one zip archive: files the simulation wrote, plus stdout.txt and stderr.txt."""
    task = access.task_for(request.user, task_id)
    if not task.output_path:
        raise services.Refused(
            f"Task {task.id} has no outputs ({task.get_status_display()}); "
            "outputs are stored when it finishes.",
            code="no_outputs",
            status=404,
        )
    return _file(task.output_path, f"{task.id}-outputs.zip")


@api.get("/tasks/{task_id}/logs/{stream}", tags=["outputs"], response={200: None, **ERRORS})
def download_log(request, task_id: str, stream: str):
    task = access.task_for(request.user, task_id)
    if stream not in ("stdout", "stderr"):
        raise services.Refused("The log stream is 'stdout' or 'stderr'.", field="stream")
    return _file(storage.log_name(task.id, stream), f"{task.id}-{stream}.txt")
