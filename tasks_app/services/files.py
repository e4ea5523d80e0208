"""A task's stored files: the output listing, one output or input file, removing them.

Sizes and deletions go straight to Django's storage API, which
:mod:`tasks_app.storage` wraps only for names and uploads.
"""

from __future__ import annotations

from django.core.files.storage import default_storage

from tasks_app import archives, lifecycle, storage
from tasks_app.errors import Refused
from tasks_app.lifecycle import Status
from tasks_app.models import Task


def missing_outputs(task: Task) -> Refused:
    """The refusal that says why a task has no outputs to give."""
    status = Status(task.status)
    if task.output_files is not None:
        why = "its outputs were removed from the server"
    elif status in lifecycle.TERMINAL:
        why = f"it ended as {status.label} without storing outputs"
    else:
        why = f"it is {status.label}; outputs are stored when it finishes"
    return Refused(f"Task {task.id} has no outputs: {why}.", code="no_outputs", status=404)


def output_listing(task: Task) -> dict:
    """Files in the task's output archive, with their sizes, read from the archive's index."""
    if not storage.exists(task.output_path):
        raise missing_outputs(task)
    with storage.open_file(task.output_path) as f:
        files = [
            {"path": i.filename, "size": i.file_size, "compressed_size": i.compress_size}
            for i in archives.file_entries(f)
        ]
    return {
        "files": files,
        "total_size": sum(f["size"] for f in files),
        "archive_size": default_storage.size(task.output_path),
    }


def missing_input(task: Task) -> Refused:
    """The refusal that says why a task has no input to give."""
    why = "was removed from the server" if task.input_size is not None else "has not been uploaded"
    return Refused(f"The input of task {task.id} {why}.", code="no_inputs", status=404)


def open_output_file(task: Task, path: str):
    """A stream of one file of the outputs and its size; the caller closes it."""
    if not storage.exists(task.output_path):
        raise missing_outputs(task)
    return _open_member(task, task.output_path, path, "output")


def open_input_file(task: Task, path: str):
    """A stream of one file of the input as uploaded, and its size; the caller closes it."""
    if not storage.exists(task.input_path):
        raise missing_input(task)
    return _open_member(task, task.input_path, path, "input")


def _open_member(task: Task, archive_name: str, path: str, what: str):
    f = storage.open_file(archive_name)
    try:
        try:
            member, size = archives.open_file(f, path)
        except KeyError:
            raise Refused(
                f"Task {task.id} has no {what} file {path!r}; paths are relative to its "
                f"{what} folder (download the whole {what} to see them).",
                code="not_found",
                field="path",
                status=404,
            ) from None
        return member, size, f
    except BaseException:
        f.close()
        raise


def remove_outputs(task: Task, *, actor=None) -> dict:
    """Delete the task's stored input and output archives to free space; logs stay."""
    if Status(task.status) not in lifecycle.TERMINAL:
        raise Refused(
            f"Task {task.id} is {task.get_status_display()}; its files can be removed once it has ended.",
            code="conflict",
            status=409,
        )
    removed, freed = [], 0
    for name in (task.output_path, task.input_path):
        if storage.exists(name):
            freed += default_storage.size(name)
            default_storage.delete(name)
            removed.append(name)
    Task.objects.filter(pk=task.pk).update(output_path="", input_path="")
    task.output_path = task.input_path = ""
    return {"removed": removed, "freed_bytes": freed}
