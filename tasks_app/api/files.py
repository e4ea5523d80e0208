"""A task's files: stored outputs and logs, and a look inside the machine while it runs.

Stored files are read from storage; from a bucket, whole files are a
redirect to a presigned URL of the bucket (302). The ``/machine/…`` operations ask the
worker running the task (a Celery remote-control command, see
:mod:`tasks_app.executor.inspect`) and answer 409 ``not_running`` when the
task is not on a machine.
"""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Query, Router

from tasks_app import access, downloads, services, storage
from tasks_app.api import schemas as s
from tasks_app.api.common import ERRORS, MACHINE_ERRORS
from tasks_app.executor import questions

router = Router(tags=["files"])


# -- stored outputs and logs -----------------------------------------------------


@router.get("/{task_id}/outputs", response={200: None, **ERRORS})
def download_outputs(request: HttpRequest, task_id: str):
    """The outputs as one zip archive: files the simulation wrote, plus stdout.txt and stderr.txt."""
    task = access.task_for(request.user, task_id)
    if not storage.exists(task.output_path):
        raise services.missing_outputs(task)
    return downloads.stored_file(task.output_path, f"{task.id}-outputs.zip")


@router.delete("/{task_id}/outputs", response={200: s.RemovedOut, **ERRORS})
def remove_outputs(request: HttpRequest, task_id: str):
    """Delete the stored input and output archives of an ended task; its logs stay."""
    task = access.task_for(request.user, task_id)
    access.require(request.user, "remove-files", task)
    return services.remove_outputs(task, actor=request.user)


@router.get("/{task_id}/outputs/files", response={200: s.OutputListingOut, **ERRORS})
def list_outputs(request: HttpRequest, task_id: str):
    """The files in the outputs, with their sizes, without downloading the archive."""
    return services.output_listing(access.task_for(request.user, task_id))


@router.get("/{task_id}/outputs/files/{path:path}", response={200: None, **ERRORS})
def download_output_file(request: HttpRequest, task_id: str, path: str):
    """One file of the outputs, unzipped on the way."""
    task = access.task_for(request.user, task_id)
    return downloads.archive_member(path, *services.open_output_file(task, path))


@router.get("/{task_id}/input/files/{path:path}", response={200: None, **ERRORS})
def download_input_file(request: HttpRequest, task_id: str, path: str):
    """One file of the input as uploaded, unzipped on the way."""
    task = access.task_for(request.user, task_id)
    return downloads.archive_member(path, *services.open_input_file(task, path))


@router.get("/{task_id}/logs/{stream}", response={200: None, **ERRORS})
def download_log(
    request: HttpRequest,
    task_id: str,
    stream: str,
    attempt: int | None = Query(
        None,
        ge=1,
        description="Which attempt's log, by default the last (a resubmitted task has several).",
    ),
):
    """A stored log, whole. Logs are stored when the task leaves its machine, one per attempt."""
    task = access.task_for(request.user, task_id)
    if stream not in ("stdout", "stderr"):
        raise services.Refused("The log stream is 'stdout' or 'stderr'.", field="stream")
    attempt = attempt or task.attempt
    if attempt > task.attempt:
        raise services.Refused(
            f"Task {task.id} has had {task.attempt} attempt{'s' if task.attempt != 1 else ''}; "
            f"there is no attempt {attempt}.",
            code="not_found",
            field="attempt",
            status=404,
        )
    name = storage.log_name(task.id, stream, attempt)
    if not storage.exists(name):
        raise services.Refused(
            f"Task {task.id} has no stored {stream} of attempt {attempt} "
            f"(it is {task.get_status_display()}); logs are stored when it leaves its machine.",
            code="no_logs",
            status=404,
        )
    return downloads.stored_file(name, f"{task.id}-{stream}.txt")


@router.get("/{task_id}/logs", response={200: s.LogsOut, **MACHINE_ERRORS})
def read_logs(
    request: HttpRequest,
    task_id: str,
    stream: list[str] = Query(["stdout", "stderr"], description="Which logs: stdout, stderr or both."),
    stdout_offset: int | None = Query(None, ge=0, description="Byte offset to read stdout from."),
    stderr_offset: int | None = Query(None, ge=0, description="Byte offset to read stderr from."),
    tail_lines: int = Query(0, ge=0, le=10_000, description="Without an offset: this many last lines."),
    max_bytes: int = Query(64 * 1024, ge=1, le=256 * 1024),
):
    """The logs in pieces, live from the machine while the task runs, from storage after.

    Read from an offset to follow a task: pass each ``next_offset`` back and
    stop once the task has ended and ``next_offset`` equals ``size``.
    """
    task = access.task_for(request.user, task_id)
    wanted = {x.strip() for value in stream for x in value.split(",")}
    if not wanted or wanted - {"stdout", "stderr"}:
        raise services.Refused("The log stream is 'stdout' or 'stderr'.", field="stream")
    given = {"stdout": stdout_offset, "stderr": stderr_offset}
    offsets = {name: given[name] for name in ("stdout", "stderr") if name in wanted}
    return questions.read_logs(task, offsets, tail_lines=tail_lines, max_bytes=max_bytes)


# -- inside the machine, while the task runs -------------------------------------


@router.get("/{task_id}/machine/files", response={200: s.MachineFilesOut, **MACHINE_ERRORS})
def machine_files(request: HttpRequest, task_id: str):
    """The files of the running task on its machine (stdout.txt and stderr.txt are its logs)."""
    return questions.ask_machine(access.task_for(request.user, task_id), "list_files")


@router.get("/{task_id}/machine/last-modified-file", response={200: s.LastModifiedOut, **MACHINE_ERRORS})
def machine_last_modified(request: HttpRequest, task_id: str):
    """The file the running task changed most recently."""
    return questions.ask_machine(access.task_for(request.user, task_id), "last_modified")


@router.get("/{task_id}/machine/tail", response={200: s.TailOut, **MACHINE_ERRORS})
def machine_tail(
    request: HttpRequest,
    task_id: str,
    path: list[str] = Query(..., description="Files to read, relative to the task's folder."),
    offset: list[int] = Query(None, description="For following: where to resume, one per path."),
    lines: int = Query(10, ge=0, le=10_000, description="Without offsets: this many last lines."),
    max_bytes: int = Query(64 * 1024, ge=1, le=256 * 1024),
):
    """The last lines of files of the running task, or what they gained since ``offset``."""
    task = access.task_for(request.user, task_id)
    if offset and len(offset) != len(path):
        raise services.Refused("Give one offset per path, or none.", field="offset")
    files = [{"path": p, "offset": offset[i] if offset else None} for i, p in enumerate(path)]
    return questions.ask_machine(task, "read", files=files, lines=lines, max_bytes=max_bytes)


@router.get("/{task_id}/machine/top", response={200: s.TopOut, **MACHINE_ERRORS})
def machine_top(request: HttpRequest, task_id: str):
    """The running task's processes with their CPU and memory use, its machine's share, the host's load."""
    task = access.task_for(request.user, task_id)
    return questions.ask_machine(task, "top") | {"machine": task.machine}
