"""What a machine asks of the platform while it runs a task, in one place.

A machine claims a task, moves it through its statuses, fetches its input,
sends its log lines, progress and resource samples, and stores its outputs.
:class:`Direct` does each of these against the database, storage and Redis,
as a machine on the server's own host (or a Slurm node that shares its
network and credentials) does. A machine elsewhere holds no such
credentials: it asks the server's machine interface over HTTP with a token
of its own (:mod:`tasks_app.executor.remote`), and the interface answers by
calling :class:`Direct` on its behalf (:mod:`tasks_app.api.machines`). The
executor (:mod:`tasks_app.executor.run`) is the same for both.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tasks_app import lifecycle, live, services, storage
from tasks_app.lifecycle import Status
from tasks_app.models import Activity, Machine, ResourceSample, Task
from tasks_app.services import project_storage, remote_assets

log = logging.getLogger(__name__)

# The fields a machine may write with a move: what it saw of its simulation.
# Where outputs were stored is written by whoever stored them, never taken from a machine.
MACHINE_FIELDS = frozenset(
    {"exit_code", "error_detail", "diagnosis", "simulator_version", "sandboxed", "progress", "progress_eta"}
)


def attempt_of(task: Task):
    """The task while it is still this attempt's.

    A machine thought lost (reclaimed, silent for too long) may wake up
    after its task was run again elsewhere: what it then writes must not
    land on the next attempt.
    """
    return Task.objects.filter(pk=task.id, attempt=task.attempt)


class Direct:
    """The platform reached directly: database, storage and the live log's Redis."""

    remote = False

    # -- claims and moves ----------------------------------------------------

    def claim(self, group_id: int, machine: Machine, reason: str) -> tuple[Task | None, bool]:
        """The head of the group's queue, now this machine's; and whether the machine is still online."""
        return lifecycle.claim_head(group_id, machine, reason=reason)

    def move(
        self,
        task: Task,
        new: Status,
        reason: str,
        *,
        machine: Machine,
        expected: Status,
        at: dt.datetime | None = None,
        passing: list = (),
        **fields,
    ) -> bool:
        """Move this attempt of ``task`` from ``expected`` to ``new``; a lost race re-reads its status."""
        moved = lifecycle.transition(
            task,
            new,
            reason=reason,
            by_machine=machine,
            expected=expected,
            in_attempt=task.attempt,
            at=at,
            passing=passing,
            **fields,
        )
        if not moved:
            self.refresh_status(task)
        return moved

    def refresh_status(self, task: Task) -> None:
        task.refresh_from_db(fields=["status"])

    def status(self, task: Task) -> str | None:
        """The status of this attempt of the task; None when another attempt took it."""
        return attempt_of(task).values_list("status", flat=True).first()

    def runner_lost(self, task: Task, machine: Machine, reason: str) -> None:
        """The machine and the simulation of ``task`` were stopped together from outside."""
        services.runner_lost(machine, reason)

    # -- while it runs ---------------------------------------------------------

    def record_progress(self, task: Task, fraction: float | None, eta: dt.datetime | None) -> None:
        """How far the simulation got, if the task still computes; its viewers are told."""
        computing = attempt_of(task).filter(status=Status.STARTED)  # never a later status's row
        if computing.update(progress=fraction, progress_eta=eta):
            live.progress_changed(task.id, task.owner_id, task.project_id, fraction, eta and eta.isoformat())

    def record_sample(self, task_id: str, cpu_percent: float, memory_bytes: int, disk_bytes: int) -> None:
        ResourceSample.objects.create(
            task_id=task_id, cpu_percent=cpu_percent, memory_bytes=memory_bytes, disk_bytes=disk_bytes
        )
        live.resources_sampled(task_id)

    def disk_resized(self, task: Task, machine: Machine, old_gb: int, new_gb: int, used: int) -> None:
        Activity.objects.create(
            kind="disk-resized",
            task_id=task.id,
            group_id=machine.group_id,
            machine=machine,
            message=f"The work disk grew from {old_gb} GB to {new_gb} GB.",
            data={"from_gb": old_gb, "to_gb": new_gb, "used_bytes": used},
        )

    # -- the live log ----------------------------------------------------------

    def begin_log(self, task: Task, at_once: bool = False) -> None:
        """Start the task's live log; a first attempt's mark goes with its first lines unless ``at_once``."""
        live.begin_log(task.id, first_attempt=task.attempt == 1 and not at_once)

    def append_log(self, task: Task, stream: str, data: bytes) -> None:
        live.append_log(task.id, stream, data)

    def end_log(self, task: Task) -> None:
        live.end_log(task.id)

    def close_log(self, task: Task) -> None:
        live.close_log(task.id)

    def release(self) -> None:
        """What is held for viewers goes out now (see ``live.together``)."""
        live.release()

    # -- files ---------------------------------------------------------------

    @contextlib.contextmanager
    def open_input(self, task: Task) -> Iterator[BinaryIO]:
        with storage.open_local(task.input_path) as archive:
            yield archive

    def stage_assets(self, task: Task, workdir: Path) -> list[Path]:
        """The files of storage the task asked for (``remote_assets``), placed in its folder."""
        if not getattr(task, "has_assets", True):  # known from its claim
            return []
        return remote_assets.place(remote_assets.plan(task), workdir, storage.open_local)

    def store_outputs(self, task: Task, archive: Path, size: int, count: int) -> dict:
        """Store the outputs' archive; the task's fields that say where (written by the caller)."""
        name = storage.save_file(storage.output_name(task.id, task.attempt), archive)
        if task.storage_dir:
            keep_outputs(task, name)
        return {"output_path": name, "output_size": size, "output_files": count}

    def record_outputs(self, task: Task, fields: dict) -> None:
        attempt_of(task).update(**fields)

    def store_log(self, task: Task, stream: str, path: Path) -> None:
        storage.save_file(storage.log_name(task.id, stream, task.attempt), path)


def keep_outputs(task: Task, name: str) -> None:
    """A copy of the outputs in the task's storage folder; its own outputs are stored whatever happens."""
    try:
        project_storage.keep_outputs(task, name)
    except Exception:
        log.warning("Task %s: its outputs could not be copied to its storage_dir", task.id, exc_info=True)
