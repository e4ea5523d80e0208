"""Tasks: list, create, upload the input, look up, kill, and their metadata."""

from __future__ import annotations

import base64
import datetime as dt
import re

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from ninja import Header, Query, Router
from ninja.responses import Status as Reply

from tasks_app import access, downloads, inputs, lifecycle, resource_use, services, storage
from tasks_app.api import schemas as s
from tasks_app.api.common import ERRORS, links, task_for, tasks_for
from tasks_app.lifecycle import Status
from tasks_app.models import Task
from tasks_app.task_filter import TaskFilter

router = Router(tags=["tasks"])


# -- listing -------------------------------------------------------------------


def _encode_cursor(task: Task) -> str:
    raw = f"{task.created_at.isoformat()}|{task.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        created, task_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return dt.datetime.fromisoformat(created), task_id
    except ValueError:
        raise services.Refused("The cursor is not one this API gave out.", field="cursor") from None


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _split(values: list[str] | None) -> list[str]:
    """Repeated parameters and comma-separated ones, alike."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def task_filter(f: s.TaskFilters) -> TaskFilter:
    """The filter the query parameters ask for; a 400 naming the parameter when one makes no sense."""
    try:
        statuses = frozenset(lifecycle.parse_status(x) for x in _split(f.status)) or None
    except ValueError as exc:
        raise services.Refused(str(exc), field="status") from None
    metadata = []
    for pair in f.metadata or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise services.Refused(f"Write metadata filters as key=value, not {pair!r}.", field="metadata")
        metadata.append((key, value))
    if f.review and f.review not in Task.Review.values:
        choices = ", ".join(Task.Review.values)
        raise services.Refused(
            f"Unknown review state {f.review!r}; choose one of: {choices}.", field="review"
        )
    return TaskFilter(
        statuses=statuses,
        ids=tuple(_split(f.id)),
        project=f.project or "",
        simulator=f.simulator or "",
        machine_group=f.machine_group or "",
        owner=f.owner or "",
        review=f.review or "",
        metadata=tuple(metadata),
        created_from=f.created_after and _aware(f.created_after),
        created_before=f.created_before and _aware(f.created_before),
    )


@router.get("", response={200: s.TaskPage, **ERRORS})
def list_tasks(request: HttpRequest, filters: Query[s.TaskFilters]):
    """Tasks newest first, a page at a time.

    Pages are cut by a cursor (the creation time and id of the last task
    seen), so a page never repeats or skips a task while new ones arrive,
    and no page costs more than the one before it.
    """
    qs = task_filter(filters).apply(tasks_for(request.user))
    if filters.cursor:
        created, task_id = _decode_cursor(filters.cursor)
        qs = qs.filter(created_at__lte=created).exclude(created_at=created, id__gte=task_id)
    limit = filters.limit
    items = list(qs.order_by("-created_at", "-id")[: limit + 1])
    next_cursor = _encode_cursor(items[limit - 1]) if len(items) > limit else None
    return {"items": items[:limit], "next_cursor": next_cursor}


# -- submitting ----------------------------------------------------------------


# Inputs up to this size may come inside the POST that creates the task
# (base64 adds a third, and the body must stay under DATA_UPLOAD_MAX_MEMORY_SIZE).
INLINE_INPUT_MAX_BYTES = 1024 * 1024


def _inline_input(payload: s.TaskIn | s.TaskBatchIn) -> bytes | None:
    """The input archive sent inside the request, checked for size; None when it was not."""
    if payload.input_archive is None:
        return None
    try:
        data = base64.b64decode(payload.input_archive, validate=True)
    except ValueError:
        raise services.Refused(
            "input_archive is not valid base64; send the zipped input folder base64-encoded.",
            field="input_archive",
        ) from None
    if len(data) > INLINE_INPUT_MAX_BYTES:
        raise services.Refused(
            f"The inline input has {len(data)} bytes; at most {INLINE_INPUT_MAX_BYTES} may come "
            "inside the request. Leave input_archive out and PUT the archive to upload_url.",
            code="too_large",
            field="input_archive",
            status=413,
        )
    if not payload.input_sha256 or len(payload.input_sha256) != 64:
        raise services.Refused(
            "Send the SHA-256 (hex) of the archive in input_sha256 along with input_archive.",
            field="input_sha256",
        )
    return data


REQUEST_KEY = re.compile(r"[A-Za-z0-9._:-]{8,80}")


KEY_HEADER = Header(
    None,
    alias="Idempotency-Key",
    description="The client's key for this request (8 to 80 of A-Z a-z 0-9 . _ : -, e.g. a UUID): "
    "sent again with the same key, the request answers with what it made the first time.",
)


def _request_key(key: str | None) -> str | None:
    """The client's ``Idempotency-Key`` header, checked; None when it sent none."""
    if key is None:
        return None
    if not REQUEST_KEY.fullmatch(key):
        raise services.Refused(
            "The Idempotency-Key header must be 8 to 80 letters, digits or . _ : - "
            "(a UUID is a good key); send a new one for each new request.",
            field="Idempotency-Key",
        )
    return key


def _made_by(request: HttpRequest, key: str | None, group_name: str) -> list[Task]:
    """The tasks an earlier request with this key made (in order), or none.

    A key stands for one request: used again for another, it is refused.
    """
    if key is None:
        return []
    earlier = list(
        Task.objects.filter(owner=request.user, request_key__in=[key, services.batch_key(key, 0)])
        .select_related("machine_group")
        .only("id", "request_key", "batch_id", "machine_group__name")
    )
    if not earlier:
        return []
    if earlier[0].machine_group.name != group_name:
        raise services.Refused(
            f"Idempotency-Key {key} was used for another request (task {earlier[0].id}); "
            "send a new key for each new request.",
            code="conflict",
            field="Idempotency-Key",
            status=409,
        )
    if earlier[0].request_key == key:
        return earlier
    batch = Task.objects.filter(owner=request.user, request_key__startswith=f"{key}#")
    return sorted(batch, key=lambda t: int(t.request_key.rsplit("#", 1)[1]))


def _created(task: Task) -> Task:
    """A task as ``POST /tasks`` answers it; ``upload_url`` while it waits for its input."""
    task.upload_url = f"/api/v1/tasks/{task.id}/input" if task.status == Status.PENDING_INPUT else None
    return task


NEW_TASK = {"task_id": "$response.body#/id"}


@router.post(
    "",
    response={201: s.TaskCreated, **ERRORS},
    openapi_extra=links(
        201,
        NEW_TASK,
        "tasks.upload_input",
        "tasks.get_task",
        "tasks.task_position",
        "tasks.kill_task",
        "tasks.update_metadata",
        "review.add_comment",
        "files.read_logs",
    ),
)
def create_task(request: HttpRequest, payload: s.TaskIn, idempotency_key: str | None = KEY_HEADER):
    """Create a task. With ``input_archive`` it is queued at once; otherwise it waits for its
    input: PUT the archive to ``upload_url``.

    With an ``Idempotency-Key`` header, the same request sent again (after a
    timeout, a restart) answers with the task the first one made.
    """
    inline = _inline_input(payload)
    key = _request_key(idempotency_key)
    # services.create_task() checks that the user may submit to the group.
    group = access.group_for(request.user, payload.machine_group)
    if earlier := _made_by(request, key, group.name):
        return Reply(201, _created(task_for(request.user, earlier[0].id)))
    # With its input inline, a task that cannot take it is not made at all.
    try:
        with transaction.atomic():
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
                request_key=key,
                remote_assets=payload.remote_assets,
                storage_dir=payload.storage_dir,
                on_finish_cleanup=payload.on_finish_cleanup,
                batch=payload.batch,
                batch_size=payload.batch_size,
            )
            if inline is not None:
                services.accept_input(
                    task, [inline], size=len(inline), sha256=payload.input_sha256, actor=request.user
                )
    except IntegrityError:
        # The same request, sent twice at once: the other one made the task.
        if earlier := _made_by(request, key, group.name):
            return Reply(201, _created(task_for(request.user, earlier[0].id)))
        raise
    except services.Refused:
        if payload.batch:  # the client's sweep stops here (after the rollback of this request)
            services.end_sweep(request.user, payload.batch)
        raise
    # Everything the answer shows is at hand: no need to read the task again.
    task.owner, task.machine_group = request.user, group
    return Reply(201, _created(task))


@router.post(
    "/batch",
    response={201: s.TaskBatchCreated, **ERRORS},
    openapi_extra=links(
        201,
        {"task_id": "$response.body#/tasks/0/id"},
        "tasks.upload_input",
        "tasks.get_task",
        "tasks.kill_task",
    ),
)
def create_batch(request: HttpRequest, payload: s.TaskBatchIn, idempotency_key: str | None = KEY_HEADER):
    """Create many tasks in one request, all or none: a parameter sweep over one input.

    Every task is checked as ``POST /tasks`` checks one; the first refused
    refuses the whole batch, and the answer names its index (the message
    starts "Task <index> of the batch", ``field`` is ``tasks.<index>.<field>``).
    With ``input_archive`` the tasks are queued at once; otherwise PUT the
    archive to each task's ``upload_url``.
    """
    inline = _inline_input(payload)
    key = _request_key(idempotency_key)
    group = access.group_for(request.user, payload.machine_group)
    tasks = _made_by(request, key, group.name)
    if not tasks:
        try:
            tasks = services.create_tasks(
                request.user,
                [spec.model_dump() for spec in payload.tasks],
                machine_group=group,
                input_files=payload.input_files,
                input_archive=inline,
                input_sha256=payload.input_sha256 or "",
                request_key=key,
                batch=payload.batch,
                batch_size=payload.batch_size,
                remote_assets=payload.remote_assets,
                storage_dir=payload.storage_dir,
                on_finish_cleanup=payload.on_finish_cleanup,
            )
        except IntegrityError:
            # The same batch, sent twice at once: the other one made the tasks.
            if not (tasks := _made_by(request, key, group.name)):
                raise
    items = [{"id": t.id, "status": t.status, "upload_url": _created(t).upload_url} for t in tasks]
    return Reply(201, {"machine_group": group.name, "batch": tasks[0].batch_id, "tasks": items})


@router.put("/{task_id}/input", response={200: s.TaskDetailOut, **ERRORS})
def upload_input(request: HttpRequest, task_id: str):
    """The input folder as one zip archive, as the raw request body.

    Send the archive's size in ``X-Archive-Size`` and its SHA-256 (hex) in
    ``X-Content-SHA256``; the task joins its group's queue once both match
    what arrived.
    """
    task = access.task_for(request.user, task_id)
    access.require(request.user, "upload", task)
    try:
        size = int(request.headers.get("X-Archive-Size", ""))
    except ValueError:
        raise services.Refused("Send the archive's size in X-Archive-Size.", field="X-Archive-Size") from None
    _check_upload_size(size, "X-Archive-Size")
    sha256 = request.headers.get("X-Content-SHA256", "")
    if len(sha256) != 64:
        raise services.Refused(
            "Send the archive's SHA-256 (hex) in X-Content-SHA256.", field="X-Content-SHA256"
        )
    chunks = iter(lambda: request.read(storage.CHUNK), b"")
    services.accept_input(task, chunks, size=size, sha256=sha256, actor=request.user)
    return task_for(request.user, task.pk)


@router.post("/{task_id}/input/direct", response={200: s.DirectUploadOut, **ERRORS})
def start_direct_upload(request: HttpRequest, task_id: str, payload: s.DirectUploadIn):
    """Where to PUT the input archive straight into the server's bucket, for big inputs.

    Answers 409 ``no_direct_upload`` when the server keeps files itself:
    upload to the task's ``upload_url`` then. Otherwise PUT each part's
    bytes to its presigned URL (no API key), keep each answer's ``ETag``
    header, and finish with ``POST …/input/direct/done``.
    """
    task = access.task_for(request.user, task_id)
    access.require(request.user, "upload", task)
    _check_upload_size(payload.size, "size")
    return services.start_direct_input(task, size=payload.size)


@router.post("/{task_id}/input/direct/done", response={200: s.TaskDetailOut, **ERRORS})
def finish_direct_upload(request: HttpRequest, task_id: str, payload: s.DirectUploadDoneIn):
    """The input sent straight to the bucket is complete: check it and queue the task.

    The size and SHA-256 are checked against what the bucket holds, as for
    an upload through this server.
    """
    task = access.task_for(request.user, task_id)
    access.require(request.user, "upload", task)
    _check_upload_size(payload.size, "size")
    etags = {part.number: part.etag for part in payload.parts}
    services.accept_direct_input(
        task,
        upload_id=payload.upload_id,
        etags=etags,
        size=payload.size,
        sha256=payload.sha256,
        actor=request.user,
    )
    return task_for(request.user, task.pk)


def _check_upload_size(size: int, field: str) -> None:
    limit = settings.SIMDECK_MAX_UPLOAD_BYTES
    if size > limit:
        # Said before a byte is sent, so a client does not upload gigabytes in vain.
        raise services.Refused(
            f"The input archive has {size} bytes; this server accepts at most {limit}.",
            code="too_large",
            field=field,
            status=413,
        )


@router.get("/{task_id}/input", response={200: None, **ERRORS}, tags=["files"])
def download_input(request: HttpRequest, task_id: str):
    """The input archive as it was uploaded."""
    task = access.task_for(request.user, task_id)
    if not storage.exists(task.input_path):
        raise services.missing_input(task)
    return downloads.stored_file(task.input_path, f"{task.id}-input.zip")


# -- killing many (before /{task_id}, which would take the path "kill" as an id) --


@router.post("/kill", response={200: list[s.KillOut], **ERRORS})
def kill_many(request: HttpRequest, payload: s.KillManyIn):
    """Kill the listed tasks, or with ``all`` every task of yours that has not ended.

    A listed task your role does not let you kill is left alone and answered
    with ``changed: false`` and the reason; one you cannot see answers 404.
    """
    if payload.all:
        qs = access.visible_tasks(request.user).filter(owner=request.user)
        if payload.project:
            qs = qs.filter(project__name=payload.project)
        results = services.kill_all(qs, actor=request.user)
    elif payload.ids:
        results = []
        tasks = [access.task_for(request.user, task_id) for task_id in payload.ids]
        roles = access.roles_of(request.user)
        for task in tasks:
            if access.can(request.user, "kill", task, roles=roles):
                results.append((task.id, *services.kill_task(task, actor=request.user)))
            else:
                results.append((task.id, False, access.refusal(request.user, "kill", task)))
    else:
        raise services.Refused("Name the tasks to kill in ids, or set all.", field="ids")
    status = dict(Task.objects.filter(pk__in=[r[0] for r in results]).values_list("id", "status"))
    return [{"id": i, "status": status[i], "changed": c, "message": m} for i, c, m in results]


# -- one task --------------------------------------------------------------------


# "batch" and "kill" name actions above, and their paths match before
# /{task_id}. Read as a task id, which is what a GET of them asks for, they
# name no task: the answer is GET /{task_id}'s 404, not a 405 of the action.
@router.get("/batch", response={200: s.TaskDetailOut, **ERRORS}, include_in_schema=False)
def get_task_named_batch(request: HttpRequest):
    return task_for(request.user, "batch")


@router.get("/kill", response={200: s.TaskDetailOut, **ERRORS}, include_in_schema=False)
def get_task_named_kill(request: HttpRequest):
    return task_for(request.user, "kill")


@router.get("/{task_id}", response={200: s.TaskDetailOut, **ERRORS})
def get_task(request: HttpRequest, task_id: str):
    """Everything about a task: status and guidance, timeline, time breakdown, outputs."""
    return task_for(request.user, task_id)


@router.get("/{task_id}/position", response={200: s.PositionOut, **ERRORS})
def task_position(request: HttpRequest, task_id: str):
    """How many tasks are ahead of this one in its group's queue (null when not queued)."""
    task = access.task_for(request.user, task_id)
    return {"id": task.id, "status": task.status, "position_in_queue": task.position_in_queue()}


@router.get("/{task_id}/resources", response={200: s.ResourcesOut, **ERRORS})
def task_resources(
    request: HttpRequest,
    task_id: str,
    points: int = Query(
        resource_use.POINTS,
        ge=1,
        le=resource_use.MAX_POINTS,
        description="At most this many points: the samples are cut into stretches of equal count.",
    ),
):
    """CPU, memory and work disk of the task over time, recorded by its machine while it ran."""
    task = access.task_for(request.user, task_id)
    usage = resource_use.usage(task.id, points)
    return {
        "id": task.id,
        "status": task.status,
        "samples": usage.samples,
        "started": usage.started,
        "span_seconds": usage.span_seconds,
        "latest": usage.latest,
        "peak": {
            "cpu_percent": usage.peak_cpu_percent,
            "memory_bytes": usage.peak_memory_bytes,
            "disk_bytes": usage.peak_disk_bytes,
        },
        "points": usage.points,
    }


@router.post("/{task_id}/kill", response={200: s.KillOut, **ERRORS})
def kill_task(request: HttpRequest, task_id: str):
    """Kill a task: a queued one ends at once, a running one is stopped by its machine."""
    task = access.task_for(request.user, task_id)
    access.require(request.user, "kill", task)
    changed, message = services.kill_task(task, actor=request.user)
    return {"id": task.id, "status": task.status, "changed": changed, "message": message}


# -- metadata ----------------------------------------------------------------------


@router.get("/{task_id}/metadata", response={200: dict[str, str], **ERRORS}, tags=["metadata"])
def get_metadata(request: HttpRequest, task_id: str):
    return access.task_for(request.user, task_id).metadata


@router.put("/{task_id}/metadata", response={200: dict[str, str], **ERRORS}, tags=["metadata"])
def set_metadata(request: HttpRequest, task_id: str, payload: s.MetadataIn):
    """Replace all metadata of the task."""
    task = access.task_for(request.user, task_id)
    access.require(request.user, "edit", task)
    return services.set_metadata(task, payload.metadata, actor=request.user, merge=False)


@router.patch("/{task_id}/metadata", response={200: dict[str, str], **ERRORS}, tags=["metadata"])
def update_metadata(request: HttpRequest, task_id: str, payload: s.MetadataIn):
    """Add or change the given keys, keeping the others."""
    task = access.task_for(request.user, task_id)
    access.require(request.user, "edit", task)
    return services.set_metadata(task, payload.metadata, actor=request.user, merge=True)


@router.delete("/{task_id}/metadata", response={200: dict[str, str], **ERRORS}, tags=["metadata"])
def unset_metadata(request: HttpRequest, task_id: str, key: list[str] = Query(...)):
    """Remove the given keys (repeat ``key``); keys that are not set are ignored."""
    task = access.task_for(request.user, task_id)
    access.require(request.user, "edit", task)
    inputs.texts("key", key)
    return services.unset_metadata(task, key, actor=request.user)
