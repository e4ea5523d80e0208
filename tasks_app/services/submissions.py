"""Submitting tasks: one or a batch, their input uploaded or inline, then queued.

A task joins its group's queue once its input is stored and checked; the
machines hear of it (a token on the broker) only after that commits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from tasks_app import access, audit, broker, inputs, lifecycle, quotas, storage
from tasks_app import simulators as sims
from tasks_app.errors import Refused
from tasks_app.lifecycle import Status
from tasks_app.models import Activity, Batch, Machine, MachineGroup, Project, Task
from tasks_app.services import project_storage
from tasks_app.services import remote_assets as remote_assets_service
from tasks_app.services.budgets import check_submission as check_budget
from tasks_app.services.groups import lock_group_shared, parse_duration
from tasks_app.services.metadata import validate_metadata
from tasks_app.services.projects import project_of_task


def _checked_parameters(simulator: str, parameters: dict | None, input_files: list[str]):
    """The simulator's adapter and the parameters as it validated them."""
    inputs.texts("parameters", parameters or {})
    inputs.texts("input_files", list(input_files))
    try:
        adapter = sims.get(simulator)
        return adapter, adapter.validate(dict(parameters or {}), list(input_files))
    except sims.UnknownSimulator as exc:
        raise Refused(str(exc), field="simulator", code="unknown_simulator") from None
    except sims.InvalidParameters as exc:
        raise Refused(str(exc), field=exc.field) from None


def _machine_reports(group: MachineGroup) -> list[dict[str, str]]:
    """What the group's online machines found installed when they started (name -> version).

    A machine that has reported nothing (it predates the reports) is left out.
    An elastic group's are not read: its tasks wait for a machine that has
    what they need (see :func:`_check_group_fits`).
    """
    if group.is_elastic:
        return []
    online = Machine.objects.filter(group=group, state=Machine.State.ONLINE).exclude(simulators={})
    return list(online.values_list("simulators", flat=True))


def _check_group_fits(adapter, parameters: dict, group: MachineGroup, reports: list[dict[str, str]]) -> None:
    """Refuse a task the group's machines cannot run: too many MPI processes, a simulator or version none has.

    Where no machine has reported yet (the group is starting), the machine
    that takes the task checks the same when it starts it. An elastic group
    takes the task whatever its machines have now: only a machine that has
    the simulator claims it (lifecycle.claim_head).
    """
    n_vcpus = parameters.get("n_vcpus")
    vcpus = settings.SIMDECK_MACHINE_TYPES.get(group.machine_type, {}).get("vcpus")
    if n_vcpus and vcpus and n_vcpus > vcpus:
        raise Refused(
            f"n_vcpus={n_vcpus} is more than the {vcpus} vCPUs of a {group.machine_type} machine "
            f"(machine group {group.name}). Ask for at most {vcpus}, or use a group of a larger "
            "machine type.",
            field="n_vcpus",
        )
    if not reports or group.is_elastic:
        # An elastic group's next machines may find what its machines now
        # lack (an admin installs it): the task waits for one that has it,
        # and its page says why (views/waiting.py).
        return
    versions = sorted({report[adapter.name] for report in reports if adapter.name in report})
    if not versions:
        offered = sorted(
            {sims.get(name).label for report in reports for name in report if name in sims.REGISTRY}
        )
        raise Refused(
            f"No machine of group {group.name} has {adapter.label}: they have {', '.join(offered)}. "
            f"Submit it to a group whose machines have {adapter.label} (simdeck resources available lists "
            "them), or ask an admin to install it on these machines.",
            code="simulator_unavailable",
            field="simulator",
            status=409,
        )
    unfit = [adapter.unfit(version, parameters) for version in versions]
    if all(unfit):
        field = "distribution" if "distribution" in unfit[0] else "version"
        raise Refused(
            f"No machine of group {group.name} can run this task: they have {adapter.label} "
            f"{', '.join(versions)}, and {unfit[0]}. Ask for a version they have, or leave {field} out.",
            code="simulator_unavailable",
            field=field,
            status=409,
        )


def _terminated(group: MachineGroup, how: str) -> Refused:
    return Refused(
        f"Machine group {group.name} {how}; start a new group and submit there.",
        code="terminated",
        field="machine_group",
        status=409,
    )


def _check_submission(
    user, machine_group: MachineGroup, input_files: list[str], remote_assets: list[str] | None = None
) -> None:
    """What every submission needs whatever its tasks: an input, an open group, the right to use it."""
    if not input_files and not remote_assets:
        raise Refused(
            "The input folder is empty; add the files the simulation needs (or name files of "
            "storage in remote_assets).",
            field="input_files",
        )
    if not machine_group.is_accepting_tasks:
        raise _terminated(machine_group, "is terminated")
    if not access.can(user, "submit", machine_group):
        raise Refused(
            access.refusal(user, "submit", machine_group), field="machine_group", code="forbidden", status=403
        )


def create_task(
    user,
    *,
    simulator: str,
    parameters: dict,
    machine_group: MachineGroup,
    input_files: list[str],
    project: str | None = None,
    resubmit_on_preemption: bool = False,
    time_to_live: str | int | None = None,
    metadata: dict | None = None,
    request_key: str | None = None,
    remote_assets: list[str] | None = None,
    storage_dir: str = "",
    batch: str | None = None,
    batch_size: int | None = None,
    on_finish_cleanup: list[str] | None = None,
) -> Task:
    """A new task waiting for its input. Every call makes a new task.

    ``request_key`` is the client's key for its request; a second task with
    the same key of the same user violates a constraint (see the API). A
    sweep sent task by task (each its own input) is a batch as well: its
    first task gives ``batch_size``, the next ones name the ``batch``.
    ``remote_assets`` are paths of storage the machine adds to the input
    (:mod:`tasks_app.services.remote_assets`); ``storage_dir`` a folder of the
    project's storage the outputs are also kept in; ``on_finish_cleanup``
    command lines run after the simulation, before its outputs are stored.
    """
    cleanup = checked_cleanup(on_finish_cleanup)
    joined = _batch_joined(user, batch, machine_group, 1) if batch else None
    if batch_size is not None and not 1 <= batch_size <= SWEEP_MAX_TASKS:
        raise Refused(
            f"batch_size is how many tasks the whole sweep holds: from 1 to {SWEEP_MAX_TASKS:,}, "
            f"not {batch_size}.",
            field="batch_size",
        )
    assets = []
    if remote_assets:
        # Read with the user's rights in the group's project, so those are checked first.
        inputs.texts("input_files", list(input_files))
        _check_submission(user, machine_group, input_files, remote_assets)
        assets = remote_assets_service.resolve(
            user, project_of_task(machine_group, project), remote_assets, input_files
        )
    placed = [name for asset in assets for name in asset.files]
    adapter, parameters = _checked_parameters(simulator, parameters, [*input_files, *placed])
    metadata = validate_metadata(metadata or {})
    _check_submission(user, machine_group, input_files, remote_assets)
    _check_group_fits(adapter, parameters, machine_group, _machine_reports(machine_group))
    target = project_of_task(machine_group, project)
    check_budget(target.pk)
    storage_dir = project_storage.check_storage_dir(target, storage_dir)
    held = quotas.holders(user, target)  # one read for both checks
    quotas.check_storage(user, target, doing="submit tasks", held=held)
    ttl = quotas.task_ttl(user, target, parse_duration(time_to_live), held)
    task = _new_task(
        user, target, machine_group, adapter, parameters, metadata, resubmit_on_preemption, ttl, request_key
    )
    task.storage_dir = storage_dir
    task.cleanup_commands = cleanup
    if joined is None and batch_size is not None:  # the first task of a sweep: its batch starts
        joined = _new_batch(user, machine_group, batch_size, 1)
    elif joined is not None:
        _close_when_full(joined, 1)
    task.batch = joined
    task.save(force_insert=True)
    remote_assets_service.save([task], assets)
    return task


CLEANUP_MAX_COMMANDS = 20
CLEANUP_MAX_CHARS = 4096


def checked_cleanup(commands: list[str] | None) -> list[str]:
    """The command lines of ``on_finish_cleanup``, refused unless each is a short non-empty line."""
    if not commands:
        return []
    if not isinstance(commands, list) or len(commands) > CLEANUP_MAX_COMMANDS:
        raise Refused(
            f"on_finish_cleanup is a list of at most {CLEANUP_MAX_COMMANDS} shell command lines.",
            field="on_finish_cleanup",
        )
    inputs.texts("on_finish_cleanup", commands)
    for i, command in enumerate(commands):
        if not isinstance(command, str) or not command.strip() or len(command) > CLEANUP_MAX_CHARS:
            raise Refused(
                f"on_finish_cleanup[{i}] must be a shell command line of 1 to {CLEANUP_MAX_CHARS} "
                "characters, e.g. 'rm -rf scratch'.",
                field=f"on_finish_cleanup.{i}",
            )
        if "\n" in command or "\r" in command:
            raise Refused(
                f"on_finish_cleanup[{i}] holds a line break: give each command as an item of the list.",
                field=f"on_finish_cleanup.{i}",
            )
    return [c.strip() for c in commands]


def _new_task(
    user,
    project: Project,
    machine_group: MachineGroup,
    adapter,
    parameters: dict,
    metadata: dict,
    resubmit_on_preemption: bool,
    ttl: int | None,
    request_key: str | None,
) -> Task:
    """A checked task, not saved yet: one alone or one of a batch is the same row."""
    return Task(
        owner=user,
        project=project,
        machine_group=machine_group,
        simulator=adapter.name,
        parameters=parameters,
        metadata=metadata,
        resubmit_on_preemption=resubmit_on_preemption or machine_group.resubmit_on_preemption,
        time_to_live_seconds=ttl,
        request_key=request_key,
    )


def _require_pending_input(task: Task) -> None:
    if task.status != Status.PENDING_INPUT:
        raise Refused(
            f"Task {task.id} already has its input (it is {task.get_status_display()}).",
            code="conflict",
            status=409,
        )


def _require_direct_uploads() -> None:
    if not storage.direct_uploads():
        raise Refused(
            "This server stores files itself, not in a bucket: upload the input to the task's upload_url.",
            code="no_direct_upload",
            status=409,
        )


def start_direct_input(task: Task, *, size: int) -> dict:
    """Presigned PUTs for sending the input straight to the bucket, which spares the web server."""
    _require_pending_input(task)
    _require_direct_uploads()
    return storage.start_direct_upload(task.id, size)


def accept_direct_input(
    task: Task, *, upload_id: str | None, etags: dict[int, str], size: int, sha256: str, actor=None
) -> Task:
    """Check an input sent straight to the bucket and put the task in its group's queue."""
    _require_pending_input(task)
    _require_direct_uploads()
    try:
        name, size, digest = storage.finish_direct_upload(
            task.id, upload_id, etags, expected_size=size, expected_sha256=sha256
        )
    except storage.UploadError as exc:
        raise Refused(str(exc), code="bad_upload", field="input") from None
    return _queue_input(task, name, size, digest, actor)


def accept_input(task: Task, chunks: Iterable[bytes], *, size: int, sha256: str, actor=None) -> Task:
    """Store the uploaded input archive and put the task in its group's queue."""
    _require_pending_input(task)
    try:
        name, size, digest = storage.receive_upload(
            task.id,
            chunks,
            expected_size=size,
            expected_sha256=sha256,
            max_bytes=settings.SIMDECK_MAX_UPLOAD_BYTES,
        )
    except storage.UploadError as exc:
        raise Refused(str(exc), code="bad_upload", field="input") from None
    return _queue_input(task, name, size, digest, actor)


def _queue_input(task: Task, name: str, size: int, digest: str, actor) -> Task:
    # Inside the request's own transaction (an input sent with the task) a
    # savepoint would cost two round trips and protect nothing: any failure
    # here rolls the whole request back.
    with transaction.atomic(savepoint=False):
        # The group before the task, in the order terminate_group() locks them,
        # or the two could wait on each other. A shared lock: uploads to one
        # group need not wait for each other, only for a termination.
        group = lock_group_shared(task.machine_group_id)
        stored = {"input_path": name, "input_size": size, "input_sha256": digest}
        if not group.is_accepting_tasks:
            Task.objects.filter(pk=task.pk).update(**stored)
            lifecycle.transition(task, Status.ZOMBIE, reason=f"Machine group {group.name} was terminated.")
            return task
        # Registered first, the token leaves on commit before viewers hear of
        # the change: a machine waits on it, a browser can wait a moment more.
        # Should the move lose a race, a machine drops the spare token.
        enqueue(task, group)
        moved = lifecycle.transition(
            task, Status.SUBMITTED, reason="Input received; queued.", actor=actor, **stored
        )
        if not moved:
            Task.objects.filter(pk=task.pk).update(**stored)
        else:
            audit.record(
                "submitted", actor or task.owner, f"Task {task.id} submitted to {group.name}.", task=task
            )
    return task


# The most tasks one batch request may create.
BATCH_MAX_TASKS = 1000


def batch_key(request_key: str, index: int) -> str:
    """The key of one task of a batch request: the request's, with the task's index."""
    return f"{request_key}#{index}"


def create_tasks(
    user,
    specs: list[dict],
    *,
    machine_group: MachineGroup,
    input_files: list[str],
    input_archive: bytes | None = None,
    input_sha256: str = "",
    request_key: str | None = None,
    batch: str | None = None,
    batch_size: int | None = None,
    remote_assets: list[str] | None = None,
    storage_dir: str = "",
    on_finish_cleanup: list[str] | None = None,
) -> list[Task]:
    """Many tasks at once, all or none, sharing one machine group and one input archive.

    They belong to one :class:`~tasks_app.models.Batch`: a new one holding
    ``batch_size`` tasks in all (these by default), or the one named by
    ``batch``, which an earlier request of the same sweep started. A refused
    request that names a batch ends its sweep: the batch keeps what it has.

    Each spec holds what :func:`create_task` takes besides the group and
    the input (``simulator``, ``parameters``, ``project``, ``time_to_live``,
    ``metadata``, ``resubmit_on_preemption``) and is checked as it would
    check it; the first spec refused refuses the batch, its index named in
    the message and in ``field`` (``tasks.<index>.<field>``). With the
    archive the tasks are queued at once; without, each waits for its input.
    ``remote_assets``, ``storage_dir`` and ``on_finish_cleanup`` are every
    task's, as :func:`create_task` takes them for one.
    """
    joined = _batch_joined(user, batch, machine_group, len(specs)) if batch else None
    if batch_size is not None and not len(specs) <= batch_size <= SWEEP_MAX_TASKS:
        raise Refused(
            f"batch_size is how many tasks the whole sweep holds: at least the {len(specs)} of this "
            f"request and at most {SWEEP_MAX_TASKS:,}, not {batch_size}.",
            field="batch_size",
        )
    try:
        return _create_tasks(
            user,
            specs,
            machine_group=machine_group,
            input_files=input_files,
            input_archive=input_archive,
            input_sha256=input_sha256,
            request_key=request_key,
            batch=joined,
            batch_size=batch_size or len(specs),
            remote_assets=remote_assets,
            storage_dir=storage_dir,
            on_finish_cleanup=on_finish_cleanup,
        )
    except Refused:
        if joined is not None:
            end_sweep(user, joined.pk)
        raise


def end_sweep(user, batch_id: str) -> None:
    """A request of the sweep was refused, and the client stops there: the batch is what was made."""
    _close(Batch.objects.filter(pk=batch_id, owner=user), timezone.now())


def close_silent_sweeps(now: dt.datetime | None = None) -> int:
    """Close the sweeps that will get no more tasks, at what they hold; returns how many.

    A sweep's client that died, or was stopped, midway never sends the rest:
    its batch would wait for them forever, and its subscribers would never
    hear that it ended. A sweep is given up when no task joined it for as
    long as an input upload may take (``SIMDECK_PENDING_INPUT_TIMEOUT_MINUTES``:
    a client sends the next request as soon as the last upload is done), or
    at once when its group was terminated. One guarded update.
    """
    now = now or timezone.now()
    cutoff = now - dt.timedelta(minutes=settings.SIMDECK_PENDING_INPUT_TIMEOUT_MINUTES)
    recent = Task.objects.filter(batch=OuterRef("pk"), created_at__gte=cutoff)
    silent = Batch.objects.filter(closed_at__isnull=True).filter(
        (Q(created_at__lt=cutoff) & ~Exists(recent)) | ~Q(machine_group__state__in=MachineGroup.ACCEPTING)
    )
    return _close(Batch.objects.filter(pk__in=silent.values("pk")), now)


def _new_batch(user, group: MachineGroup, size: int, count: int) -> Batch:
    """A sweep's batch, made with its first ``count`` tasks: closed at once if they are all of it."""
    now = timezone.now()
    return Batch.objects.create(
        owner=user,
        project_id=group.project_id,
        machine_group_id=group.pk,
        size=size,
        created_at=now,
        closed_at=now if count >= size else None,
    )


def _close(batches, now: dt.datetime) -> int:
    """Close those of ``batches`` still open at what they hold; one guarded update."""
    held = Task.objects.filter(batch=OuterRef("pk")).order_by().values("batch").annotate(n=Count("pk"))
    return batches.filter(closed_at__isnull=True).update(
        size=Coalesce(Subquery(held.values("n")), 0), closed_at=now
    )


def _close_when_full(batch: Batch, added: int) -> None:
    """The request that brings a batch to its size is its sweep's last: the batch takes no more."""
    if batch.held + added >= batch.size:
        Batch.objects.filter(pk=batch.pk, closed_at__isnull=True).update(closed_at=timezone.now())


# A sweep of more tasks than this is a mistake (it could never be told to have ended).
SWEEP_MAX_TASKS = 1_000_000


def _batch_joined(user, batch_id: str, group: MachineGroup, count: int) -> Batch:
    """The batch an earlier request of the sweep started, with room for ``count`` more tasks."""
    found = Batch.objects.filter(pk=str(batch_id)[:100], owner=user).first()
    if found is None:
        raise Refused(
            f"No batch {batch_id} of yours: give the batch id the first request of the sweep answered, "
            "or none to start a new batch.",
            field="batch",
        )
    if found.closed_at is not None:
        raise Refused(
            f"Batch {found.id} takes no more tasks: it holds its {found.size}, or its sweep ended "
            f"early (a request of it was refused, or none came for "
            f"{settings.SIMDECK_PENDING_INPUT_TIMEOUT_MINUTES} minutes). Start a new batch: leave out "
            "batch and give batch_size.",
            field="batch",
        )
    if found.machine_group_id != group.pk:
        raise Refused(
            f"Batch {found.id} runs on another machine group; a batch's tasks share one group.",
            field="batch",
        )
    found.held = held = Task.objects.filter(batch=found).count()
    if held + count > found.size:
        raise Refused(
            f"Batch {found.id} was to hold {found.size} tasks and has {held}; these {count} would make "
            f"{held + count}. Start a new batch, or give the whole sweep's size in batch_size.",
            field="batch",
        )
    return found


def _create_tasks(
    user,
    specs: list[dict],
    *,
    machine_group: MachineGroup,
    input_files: list[str],
    input_archive: bytes | None,
    input_sha256: str,
    request_key: str | None,
    batch: Batch | None,
    batch_size: int,
    remote_assets: list[str] | None,
    storage_dir: str,
    on_finish_cleanup: list[str] | None,
) -> list[Task]:
    cleanup = checked_cleanup(on_finish_cleanup)
    if not specs:
        raise Refused("The batch holds no tasks; give at least one in tasks.", field="tasks")
    if len(specs) > BATCH_MAX_TASKS:
        raise Refused(
            f"A batch holds at most {BATCH_MAX_TASKS} tasks; this one has {len(specs)}. Split it.",
            field="tasks",
        )
    _check_submission(user, machine_group, input_files, remote_assets)
    # Every task takes the same: read once, with the user's rights in the group's project (checked above).
    assets = remote_assets_service.resolve(user, machine_group.project, remote_assets, input_files)
    placed = [name for asset in assets for name in asset.files]
    storage_dir = project_storage.check_storage_dir(machine_group.project, storage_dir)
    check_budget(machine_group.project_id)  # every task of a batch is filed in its group's project
    digest = ""
    if input_archive is not None:
        try:
            digest = storage.check_input(input_archive)
        except storage.UploadError as exc:
            raise Refused(str(exc), code="bad_upload", field="input_archive") from None
        if digest != input_sha256.lower():
            raise Refused(
                "The inline input is corrupt: its SHA-256 checksum does not match input_sha256.",
                code="bad_upload",
                field="input_archive",
            )
    # A sweep names the same few limits over and over: each is looked up once.
    ttls: dict[tuple[int, int | None], int | None] = {}
    tasks = []
    reports = _machine_reports(machine_group)
    for index, spec in enumerate(specs):
        try:
            adapter, parameters = _checked_parameters(
                spec["simulator"], spec.get("parameters"), [*input_files, *placed]
            )
            _check_group_fits(adapter, parameters, machine_group, reports)
            metadata = validate_metadata(spec.get("metadata") or {})
            target = project_of_task(machine_group, spec.get("project"))
            asked = (target.pk, parse_duration(spec.get("time_to_live")))
            if asked not in ttls:
                ttls[asked] = quotas.task_ttl(user, target, asked[1])
        except Refused as exc:
            field = f"tasks.{index}.{exc.field}" if exc.field else f"tasks.{index}"
            raise Refused(
                f"Task {index} of the batch: {exc}", code=exc.code, field=field, status=exc.status
            ) from None
        tasks.append(
            _new_task(
                user,
                target,
                machine_group,
                adapter,
                parameters,
                metadata,
                bool(spec.get("resubmit_on_preemption")),
                ttls[asked],
                batch_key(request_key, index) if request_key else None,
            )
        )
    for task in tasks:
        task.storage_dir, task.cleanup_commands = storage_dir, cleanup
    with transaction.atomic():
        # The group before its tasks, as accept_input() and terminate_group() lock them.
        group = lock_group_shared(machine_group.pk)
        if not group.is_accepting_tasks:
            raise _terminated(group, "was terminated meanwhile")
        if batch is None:
            batch = _new_batch(user, group, batch_size, len(tasks))
        else:
            _close_when_full(batch, len(tasks))
        for task in tasks:
            task.batch = batch
        if input_archive is not None:
            now = timezone.now()
            for position, task in enumerate(tasks):
                task.input_path = storage.save_input(task.id, input_archive)
                task.input_size, task.input_sha256 = len(input_archive), digest
                # Queued in the order given, though all at once (see lifecycle.transition_many).
                task.queued_at = now + dt.timedelta(microseconds=position)
        Task.objects.bulk_create(tasks)
        remote_assets_service.save(tasks, assets)
        if input_archive is None:
            return tasks
        lifecycle.transition_many(tasks, Status.SUBMITTED, reason="Input received; queued.", actor=user)
        transaction.on_commit(lambda: broker.publish_tokens(group, len(tasks)))
        Activity.objects.bulk_create(
            Activity(
                kind="submitted",
                actor=user,
                message=f"Task {task.id} submitted to {group.name}.",
                project_id=task.project_id,
                task=task,
                data={},
            )
            for task in tasks
        )
    return tasks


def enqueue(task: Task, group: MachineGroup) -> None:
    """Tell the group's machines that a task waits; sent once the transaction commits."""
    transaction.on_commit(lambda: broker.publish_tokens(group, 1))
