"""Resubmitting a task: a new task with the same input, linked to the original.

The new task reuses the stored input archive of the original, so nothing is
uploaded again; it goes through :func:`services.accept_input` like any upload
(size and checksum checked, then queued), so a resubmission cannot skip a
step a normal submission takes. Parameters, group, time to live and metadata
may be changed on the way ("resubmit with edits").
"""

from __future__ import annotations

from django.db import transaction

from tasks_app import archives, services, storage
from tasks_app.models import Activity, MachineGroup, Task

CHUNK = 1 << 20


def resubmit(
    original: Task,
    *,
    actor,
    parameters: dict | None = None,
    machine_group: MachineGroup | None = None,
    time_to_live: str | int | None = None,
    metadata: dict | None = None,
) -> Task:
    """A new task repeating ``original``, with any of its settings replaced.

    Raises :class:`services.Refused` when the input is gone or the settings
    are invalid; nothing is created then.
    """
    if not storage.exists(original.input_path):
        raise services.Refused(
            f"Task {original.id} has no stored input any more (it never arrived or was removed), "
            "so it cannot be resubmitted; submit the simulation again from its folder.",
            code="no_input",
        )
    with storage.open_file(original.input_path) as f:
        try:
            input_files = archives.list_files(f)
        except archives.UnsafeArchive as exc:  # cannot happen for a checked upload, but say so
            raise services.Refused(str(exc), code="bad_input") from None
    group = machine_group or original.machine_group
    ttl = original.time_to_live_seconds if time_to_live is None else time_to_live
    with transaction.atomic():
        task = services.create_task(
            actor,
            simulator=original.simulator,
            parameters=original.parameters if parameters is None else parameters,
            machine_group=group,
            input_files=input_files,
            resubmit_on_preemption=original.resubmit_on_preemption,
            time_to_live=ttl or None,
            metadata=original.metadata if metadata is None else metadata,
            # Its files from storage again, checked again: the actor may not read what the owner could.
            remote_assets=list(original.assets.values_list("path", flat=True)) or None,
            storage_dir=original.storage_dir,
            on_finish_cleanup=original.cleanup_commands or None,
        )
        Task.objects.filter(pk=task.pk).update(resubmitted_from=original)
        task.resubmitted_from = original
        Activity.objects.create(
            kind="resubmitted",
            task=original,
            actor=actor,
            message=f"Resubmitted as task {task.id}.",
            data={"new_task": task.id},
        )
    with storage.open_file(original.input_path) as f:
        services.accept_input(
            task,
            iter(lambda: f.read(CHUNK), b""),
            size=original.input_size,
            sha256=original.input_sha256,
            actor=actor,
        )
    task.refresh_from_db()
    return task
