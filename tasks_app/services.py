"""Operations on tasks and machine groups, shared by the API and the console.

Each function checks what it needs, changes the database in one
transaction, and queues work for machines only after that transaction
commits (a machine must never see a task the database does not have yet).
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Iterable

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.utils import timezone

from tasks_app import audit, inputs, lifecycle, live, storage
from tasks_app import simulators as sims
from tasks_app.errors import Refused
from tasks_app.lifecycle import Status
from tasks_app.models import Activity, Machine, MachineGroup, Project, Task

# -- projects ------------------------------------------------------------------

PROJECT_NAME = re.compile(r"^[\w.\- ]{1,128}$")


def project_to_use(user, name: str | None, action: str = "submit") -> Project:
    """The project a new task or group goes into: the user's personal one by default.

    A name no project has yet makes a new project with the user as its
    maintainer. An existing project needs the role ``action`` asks for
    (see :mod:`tasks_app.access`); one the user cannot see is refused as
    unknown, like any object of another team.
    """
    from django.db import IntegrityError

    from tasks_app import access

    if not (name or "").strip():
        return access.personal_project(user)
    name = inputs.text("project", name.strip())
    if not PROJECT_NAME.match(name):
        raise Refused(
            "A project name has 1 to 128 letters, digits, spaces, dots, dashes or underscores.",
            field="project",
        )
    project = Project.objects.filter(name=name).first()
    if project is None:
        try:
            return access.new_project(user, name)
        except IntegrityError:  # made by someone else a moment ago
            project = Project.objects.get(name=name)
    if not access.visible_projects(user).filter(pk=project.pk).exists():
        raise Refused(
            f"Project {name!r} is taken by a team you are not in; choose another name, "
            "or ask one of its maintainers to add you.",
            field="project",
            code="not_found",
            status=404,
        )
    if not access.can(user, action, project):
        raise Refused(access.refusal(user, action, project), field="project", code="forbidden", status=403)
    return project


# -- machine groups ------------------------------------------------------------


def parse_duration(text: str | int | None) -> int | None:
    """Seconds in ``90s``, ``10m``, ``1h30m``, ``2h`` (a bare number is seconds), at most a year."""
    if text is None or text == "":
        return None
    if isinstance(text, int | float):
        seconds = text
    else:
        match = re.fullmatch(r"\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s?)?\s*", str(text))
        if not match or not any(match.groups()):
            raise Refused(
                f"Cannot read the duration {text!r}; write it like 90s, 10m or 1h30m.",
                field="time_to_live",
            )
        h, m, s = (int(g or 0) for g in match.groups())
        seconds = h * 3600 + m * 60 + s
    return inputs.number("time_to_live", seconds)


def create_group(
    user,
    *,
    machine_type: str,
    name: str | None = None,
    project: str | None = None,
    num_machines: int = 1,
    spot: bool = False,
    data_disk_gb: int = 10,
    auto_resize_disk_max_gb: int | None = None,
    max_idle_time: float | None = 3,
    auto_terminate_minutes: float | None = None,
    min_machines: int | None = None,
    max_machines: int | None = None,
    resubmit_on_preemption: bool = False,
    provider: str = "local",
    provider_options: dict | None = None,
) -> MachineGroup:
    from tasks_app import providers

    provider_options = providers.clean_options(provider, provider_options)
    types = settings.SIMDECK_MACHINE_TYPES
    if machine_type not in types:
        raise Refused(
            f"Unknown machine type {machine_type!r}. Available: {', '.join(sorted(types))}.",
            field="machine_type",
            code="unknown_machine_type",
        )
    num_machines = inputs.number("num_machines", num_machines)
    min_machines = inputs.number("min_machines", min_machines)
    max_machines = inputs.number("max_machines", max_machines)
    data_disk_gb = inputs.number("data_disk_gb", data_disk_gb)
    auto_resize_disk_max_gb = inputs.number("auto_resize_disk_max_gb", auto_resize_disk_max_gb)
    max_idle_time = inputs.number("max_idle_time", max_idle_time)
    auto_terminate_minutes = inputs.number("auto_terminate_minutes", auto_terminate_minutes)
    if max_machines is not None or min_machines is not None:
        min_machines = 1 if min_machines is None else min_machines
        max_machines = max(min_machines, 2) if max_machines is None else max_machines
        if min_machines > max_machines:
            raise Refused(
                f"An elastic group needs min_machines <= max_machines; got {min_machines} > {max_machines}.",
                field="max_machines",
            )
        num_machines = max(min_machines, 1)
    if auto_resize_disk_max_gb is not None and auto_resize_disk_max_gb < data_disk_gb:
        raise Refused(
            "auto_resize_disk_max_gb must be at least data_disk_gb.", field="auto_resize_disk_max_gb"
        )
    name = name or f"{machine_type}-{secrets.token_hex(3)}"
    inputs.text("name", name)
    if not re.fullmatch(r"[a-z0-9][a-z0-9\-]{0,62}", name):
        raise Refused(
            "A machine group name has lowercase letters, digits and dashes (at most 63).", field="name"
        )
    if MachineGroup.objects.filter(name=name).exists():
        raise Refused(
            f"A machine group named {name!r} already exists.", field="name", code="conflict", status=409
        )
    from tasks_app import quotas

    target = project_to_use(user, project, "manage-groups")
    auto_terminate_minutes = quotas.group_ttl(user, target, auto_terminate_minutes)
    return MachineGroup.objects.create(
        name=name,
        owner=user,
        project=target,
        machine_type=machine_type,
        num_machines=num_machines,
        spot=spot,
        data_disk_gb=data_disk_gb,
        auto_resize_disk_max_gb=auto_resize_disk_max_gb,
        max_idle_time_minutes=max_idle_time,
        auto_terminate_minutes=auto_terminate_minutes,
        min_machines=min_machines,
        max_machines=max_machines,
        resubmit_on_preemption=resubmit_on_preemption,
        provider=provider,
        provider_options=provider_options,
    )


# The providers sleep until what the database asks of them changes; this wakes them.
PROVIDER_CHANNEL = "simdeck_provider"


def wake_providers() -> None:
    """Tell the providers the wish changed. PostgreSQL delivers it at commit, and never for a rollback."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, '')", [PROVIDER_CHANNEL])


def start_group(group: MachineGroup) -> MachineGroup:
    """Ask for the group's machines (within the quotas); its provider brings them up."""
    from tasks_app import providers, quotas

    if group.state == MachineGroup.State.CREATED:
        providers.check_start(group)  # before any lock: it may ask Slurm
    with transaction.atomic():
        # One start at a time per project and per owner, so quotas hold.
        Project.objects.select_for_update().filter(pk=group.project_id).first()
        get_user_model().objects.select_for_update().filter(pk=group.owner_id).first()
        group.refresh_from_db()
        if group.state == MachineGroup.State.CREATED:
            quotas.check_start(group)
        updated = MachineGroup.objects.filter(pk=group.pk, state=MachineGroup.State.CREATED).update(
            state=MachineGroup.State.STARTED, started_at=timezone.now()
        )
        if updated:
            wake_providers()
    group.refresh_from_db()
    if not updated and group.state != MachineGroup.State.STARTED:
        raise Refused(
            f"Machine group {group.name} was terminated; start a new group instead.",
            code="terminated",
            status=409,
        )
    return group


def terminate_group(
    group: MachineGroup, *, actor=None, reason: str = "", ending: Status = Status.EXECUTOR_TERMINATED_BY_USER
) -> MachineGroup:
    """Take the group down. Queued tasks end as zombies, running ones with ``ending``.

    Tasks already finalizing are left to finish: their machine stops once
    their outputs are stored.
    """
    with transaction.atomic():
        updated = MachineGroup.objects.filter(
            pk=group.pk, state__in=[MachineGroup.State.CREATED, MachineGroup.State.STARTED]
        ).update(
            state=MachineGroup.State.TERMINATING,
            terminated_at=timezone.now(),
            termination_reason=reason or "Terminated by its owner.",
        )
        group.refresh_from_db()
        if not updated:
            return group
        wake_providers()
        why = reason or f"Machine group {group.name} was terminated."
        if actor is not None:
            audit.record(
                "group-terminated",
                actor,
                why,
                group=group,
                before=MachineGroup.State.STARTED if group.started_at else MachineGroup.State.CREATED,
                after=MachineGroup.State.TERMINATING,
            )
        # Its tasks end with it, in the same transaction: nobody sees the
        # group down with a task still queued. Locked in one statement, in id
        # order, and each machine locks one task at a time, so this cannot
        # close a cycle of waits; accept_input() locks the group before its
        # task, as here. (It used to lock the task first: a deadlock.)
        ends = dict.fromkeys([Status.PENDING_INPUT, Status.SUBMITTED], Status.ZOMBIE)
        ends |= dict.fromkeys([Status.PREPARING, Status.STARTED], ending)
        ends[Status.PENDING_KILL] = Status.KILLED
        tasks = Task.objects.select_for_update().filter(machine_group=group, status__in=list(ends))
        for task in tasks.order_by("id"):
            new = ends[Status(task.status)]
            detail = {} if new == Status.ZOMBIE else {"error_detail": why}
            lifecycle.transition(task, new, reason=why, actor=actor, **detail)
    return group


# -- tasks ---------------------------------------------------------------------


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


def _terminated(group: MachineGroup, how: str) -> Refused:
    return Refused(
        f"Machine group {group.name} {how}; start a new group and submit there.",
        code="terminated",
        field="machine_group",
        status=409,
    )


def _check_submission(user, machine_group: MachineGroup, input_files: list[str]) -> None:
    """What every submission needs whatever its tasks: an input, an open group, the right to use it."""
    from tasks_app import access

    if not input_files:
        raise Refused("The input folder is empty; add the files the simulation needs.", field="input_files")
    if not machine_group.is_accepting_tasks:
        raise _terminated(machine_group, "is terminated")
    if not access.can(user, "submit", machine_group):
        raise Refused(
            access.refusal(user, "submit", machine_group), field="machine_group", code="forbidden", status=403
        )


def project_of_task(machine_group: MachineGroup, name: str | None) -> Project:
    """The project a task on ``machine_group`` is filed in: the group's own.

    The team that owns the machines sees, stops and pays for what runs on
    them, so naming another project is refused rather than followed.
    """
    project = machine_group.project
    name = inputs.text("project", (name or "").strip())
    if name and name != project.name:
        raise Refused(
            f"project {name!r} is not the one of machine group {machine_group.name}: the group belongs "
            f"to project {project.name!r}, where its tasks are filed. Leave project out (or give "
            f"{project.name!r}), or submit to a machine group of project {name!r}.",
            field="project",
        )
    return project


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
) -> Task:
    """A new task waiting for its input. Every call makes a new task.

    ``request_key`` is the client's key for its request; a second task with
    the same key of the same user violates a constraint (see the API).
    """
    adapter, parameters = _checked_parameters(simulator, parameters, input_files)
    metadata = validate_metadata(metadata or {})
    _check_submission(user, machine_group, input_files)
    from tasks_app import quotas

    target = project_of_task(machine_group, project)
    ttl = quotas.task_ttl(user, target, parse_duration(time_to_live))
    return Task.objects.create(
        owner=user,
        project=target,
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
    with transaction.atomic():
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
) -> list[Task]:
    """Many tasks at once, all or none, sharing one machine group and one input archive.

    Each spec holds what :func:`create_task` takes besides the group and
    the input (``simulator``, ``parameters``, ``project``, ``time_to_live``,
    ``metadata``, ``resubmit_on_preemption``) and is checked as it would
    check it; the first spec refused refuses the batch, its index named in
    the message and in ``field`` (``tasks.<index>.<field>``). With the
    archive the tasks are queued at once; without, each waits for its input.
    """
    from tasks_app import quotas

    if not specs:
        raise Refused("The batch holds no tasks; give at least one in tasks.", field="tasks")
    if len(specs) > BATCH_MAX_TASKS:
        raise Refused(
            f"A batch holds at most {BATCH_MAX_TASKS} tasks; this one has {len(specs)}. Split it.",
            field="tasks",
        )
    _check_submission(user, machine_group, input_files)
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
    for index, spec in enumerate(specs):
        try:
            adapter, parameters = _checked_parameters(spec["simulator"], spec.get("parameters"), input_files)
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
            Task(
                owner=user,
                project=target,
                machine_group=machine_group,
                simulator=adapter.name,
                parameters=parameters,
                metadata=metadata,
                resubmit_on_preemption=bool(spec.get("resubmit_on_preemption"))
                or machine_group.resubmit_on_preemption,
                time_to_live_seconds=ttls[asked],
                request_key=batch_key(request_key, index) if request_key else None,
            )
        )
    with transaction.atomic():
        # The group before its tasks, as accept_input() and terminate_group() lock them.
        group = lock_group_shared(machine_group.pk)
        if not group.is_accepting_tasks:
            raise _terminated(group, "was terminated meanwhile")
        if input_archive is not None:
            now = timezone.now()
            for position, task in enumerate(tasks):
                task.input_path = storage.save_input(task.id, input_archive)
                task.input_size, task.input_sha256 = len(input_archive), digest
                # Queued in the order given, though all at once (see lifecycle.transition_many).
                task.queued_at = now + dt.timedelta(microseconds=position)
        Task.objects.bulk_create(tasks)
        if input_archive is None:
            return tasks
        lifecycle.transition_many(tasks, Status.SUBMITTED, reason="Input received; queued.", actor=user)
        transaction.on_commit(lambda: publish_tokens(group, len(tasks)))
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


def lock_group_shared(group_id: int) -> MachineGroup:
    """The group, locked against a change of state until the transaction ends."""
    table = MachineGroup._meta.db_table
    return MachineGroup.objects.raw(f"SELECT * FROM {table} WHERE id = %s FOR SHARE", [group_id])[0]


def enqueue(task: Task, group: MachineGroup) -> None:
    """Tell the group's machines that a task waits; sent once the transaction commits."""
    transaction.on_commit(lambda: publish_tokens(group, 1))


def publish_tokens(group: MachineGroup, count: int) -> None:
    """Put ``count`` "a task is waiting" messages in the group's queue.

    They carry no task id: the machine that receives one claims the head of
    the queue in the database, so the order is the database's. Many go out
    in one Redis pipeline (kombu's publish batch), not a round trip each.
    """
    from celery.utils import uuid
    from kombu.serialization import dumps

    from console.celery import app
    from tasks_app.tasks import run_next

    # The messages are those apply_async() sends, built and published a level
    # below it: for a sweep of a thousand tasks, apply_async's routing, its
    # settings lookups and the queue's declaration on every message took
    # half the time the server spent creating the tasks. The messages differ
    # only in their id, so one is built and serialized, and each copy gets
    # an id of its own.
    queue = app.amqp.queues[group.queue_name]
    headers, properties, body, _sent = app.amqp.as_task_v2(uuid(), run_next.name, args=(group.pk,))
    content_type, content_encoding, payload = dumps(body, serializer=app.conf.task_serializer)
    with app.producer_or_acquire() as producer, producer.batch():
        producer.maybe_declare(queue)
        for _ in range(count):
            token_id = uuid()
            producer.publish(
                payload,
                exchange="",  # the default exchange: straight to the queue of that name
                routing_key=queue.name,
                headers={**headers, "id": token_id, "root_id": token_id},
                content_type=content_type,
                content_encoding=content_encoding,
                **{**properties, "correlation_id": token_id},
            )


def machine_lost(machine: Machine, reason: str) -> None:
    """A machine vanished: its task ends as runner-terminated, requeued if asked."""
    _machine_gone(machine, Machine.State.LOST, Status.EXECUTOR_TERMINATED, reason)


def reclaim_machine(machine: Machine, *, reason: str = "", actor=None) -> None:
    """Take a spot machine back, as a cloud provider would: its task is preempted."""
    if not machine.group.spot:
        raise Refused(
            f"Machine {machine.name} is not a spot machine; only spot groups can be reclaimed.",
            code="not_spot",
            status=409,
        )
    reason = reason or f"Spot machine {machine.name} was reclaimed."
    if not _machine_gone(machine, Machine.State.RECLAIMED, Status.SPOT_PREEMPTED, reason, actor=actor):
        machine.refresh_from_db()
        raise Refused(
            f"Machine {machine.name} is {machine.get_state_display().lower()}; only a running machine "
            "can be reclaimed.",
            code="conflict",
            status=409,
        )
    Activity.objects.create(
        kind="machine-reclaimed", group=machine.group, machine=machine, actor=actor, message=reason
    )


def runner_lost(machine: Machine, reason: str) -> None:
    """The process running a task on ``machine`` died while the machine lives on (killed, out of memory).

    Its task ends as runner-terminated, requeued if asked, as when the
    whole machine is lost; the machine takes the next task.
    """
    with transaction.atomic():
        _end_tasks_on(machine, Status.EXECUTOR_TERMINATED, reason, close_logs=True)


def _machine_gone(machine: Machine, state: str, ending: Status, reason: str, actor=None) -> bool:
    with transaction.atomic():
        updated = Machine.objects.filter(
            pk=machine.pk,
            state__in=[Machine.State.PROVISIONING, Machine.State.ONLINE, Machine.State.STOPPING],
        ).update(state=state, stopped_at=timezone.now())
        if not updated:
            return False
        wake_providers()  # the machine's processes are to go
        _end_tasks_on(machine, ending, reason, actor=actor, close_logs=state == Machine.State.LOST)
    return True


def _end_tasks_on(machine: Machine, ending: Status, reason: str, actor=None, *, close_logs: bool) -> None:
    """End the tasks ``machine`` was running with ``ending``; requeue those that ask for it.

    ``close_logs``: their runner is gone without closing the log it was
    writing. A resubmitted task's next attempt opens its stream afresh.
    """
    for task in Task.objects.filter(machine=machine, status__in=lifecycle.ON_MACHINE):
        if task.status == Status.PENDING_KILL:
            lifecycle.transition(task, Status.KILLED, reason=reason, by_machine=machine, actor=actor)
            if close_logs:
                transaction.on_commit(lambda task_id=task.pk: live.close_log(task_id))
            continue
        if ending not in lifecycle.TRANSITIONS[Status(task.status)]:
            continue
        if not lifecycle.transition(
            task, ending, reason=reason, by_machine=machine, actor=actor, error_detail=reason
        ):
            continue
        group = MachineGroup.objects.get(pk=task.machine_group_id)
        if task.resubmit_on_preemption and group.is_accepting_tasks:
            lifecycle.transition(task, Status.SUBMITTED, reason="Resubmitted after losing its machine.")
            enqueue(task, group)
        elif close_logs:
            transaction.on_commit(lambda task_id=task.pk: live.close_log(task_id))


def kill_task(task: Task, *, actor=None) -> tuple[bool, str]:
    """Kill a task. Returns (changed, what happened) for the caller to show.

    A task that has not reached a machine ends at once and never runs; one
    on a machine goes to pending-kill and its machine stops the simulator.
    """
    for _ in range(3):  # the task may move while we look; look again
        status = Status(task.status)
        if status in lifecycle.TERMINAL:
            return False, f"Task {task.id} already ended ({status.label}); nothing to kill."
        if status == Status.PENDING_KILL:
            return False, f"Task {task.id} is already being killed."
        new = Status.KILLED if status in (Status.PENDING_INPUT, Status.SUBMITTED) else Status.PENDING_KILL
        if new not in lifecycle.TRANSITIONS[status]:
            return False, f"Task {task.id} is {status.label} and cannot be killed now; try again in a moment."
        who = actor.username if actor else "the system"
        if lifecycle.transition(task, new, reason=f"Kill requested by {who}.", actor=actor):
            if actor is not None:
                audit.record(
                    "killed", actor, f"Task {task.id} killed by {who}.", task=task, before=status, after=new
                )
            if new == Status.KILLED:
                return True, f"Task {task.id} was killed before it ran."
            return True, f"Task {task.id} is being stopped by its machine."
        task.refresh_from_db()
    return False, f"Task {task.id} keeps changing status; try again."


def kill_all(tasks, *, actor=None) -> list[tuple[str, bool, str]]:
    """Kill every task of ``tasks`` that has not ended; returns (id, changed, message) each."""
    active = tasks.filter(status__in=lifecycle.ACTIVE - {Status.PENDING_KILL}).order_by("created_at")
    return [(task.id, *kill_task(task, actor=actor)) for task in active]


# -- metadata ------------------------------------------------------------------


def set_metadata(task: Task, metadata: dict, *, actor=None, merge: bool, remove: Iterable[str] = ()) -> dict:
    """Replace (or, with ``merge``, update) a task's metadata; returns the result.

    ``remove`` drops keys in the same change (a renamed key is one edit).
    """
    metadata = validate_metadata(metadata)
    with transaction.atomic():
        locked = Task.objects.select_for_update().get(pk=task.pk)
        new = {**locked.metadata, **metadata} if merge else metadata
        new = {k: v for k, v in new.items() if k not in set(remove) or k in metadata}
        Task.objects.filter(pk=task.pk).update(metadata=new)
        _audit_metadata(task, actor, locked.metadata, new)
    task.metadata = new
    return new


def _audit_metadata(task: Task, actor, before: dict, after: dict) -> None:
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if actor is None or not changed:
        return
    audit.record(
        "metadata-edited",
        actor,
        f"Metadata changed: {', '.join(changed)}.",
        task=task,
        before=dict(before),
        after=dict(after),
    )


def validate_metadata(metadata: dict) -> dict:
    if not isinstance(metadata, dict):
        raise Refused("Metadata is a mapping of string keys to string values.", field="metadata")
    inputs.texts("metadata", metadata)
    for key, value in metadata.items():
        if not isinstance(key, str) or not key.strip():
            raise Refused(f"Metadata key {key!r} must be a non-empty string.", field="metadata")
        if not isinstance(value, str) or not value:
            raise Refused(
                f"Metadata value of {key!r} must be a non-empty string (got {value!r}).", field="metadata"
            )
        if len(key) > 200 or len(value) > 10_000:
            raise Refused(
                f"Metadata {key!r} is too long (keys 200, values 10000 characters).", field="metadata"
            )
    return dict(metadata)


# -- reading tasks for the client and the CLI ------------------------------------
#
# What the API's task pages, file listings and live views need beyond the
# model: the timeline with durations, stored outputs and logs, and questions
# to the machine running a task.

# Which phase of the time breakdown each status counts towards. A kill keeps
# the simulator running until the machine stops it, so it counts as computing.
PHASE_OF: dict[Status, str] = {
    Status.PENDING_INPUT: "waiting_for_input",
    Status.SUBMITTED: "in_queue",
    Status.PREPARING: "preparing",
    Status.STARTED: "computing",
    Status.PENDING_KILL: "computing",
    Status.FINALIZING: "finalizing",
}
PHASES = ("waiting_for_input", "in_queue", "preparing", "computing", "finalizing")


def timeline(task: Task, events: list | None = None, now: dt.datetime | None = None) -> list[dict]:
    """Each status the task went through, when it began and how long it lasted.

    The first entry is the task's creation (waiting for input), which has no
    event of its own. The last one lasts until now unless it is an ending.
    """
    now = now or timezone.now()
    events = list(task.events.all()) if events is None else events
    steps = [(Status.PENDING_INPUT, task.created_at)] + [(Status(e.to_status), e.at) for e in events]
    entries = []
    for i, (status, at) in enumerate(steps):
        following = steps[i + 1][1] if i + 1 < len(steps) else None
        last = following is None
        ongoing = last and status not in lifecycle.TERMINAL
        if following is not None:
            duration = (following - at).total_seconds()
        elif ongoing:
            duration = (now - at).total_seconds()
        else:
            duration = None  # an ending lasts forever; it has no duration
        entries.append(
            {
                "status": status.value,
                "label": status.label,
                "at": at,
                "duration_seconds": duration,
                "ongoing": ongoing,
            }
        )
    return entries


def time_breakdown(entries: list[dict]) -> dict[str, float | None]:
    """Seconds spent in each phase; None for a phase the task never reached."""
    totals: dict[str, float | None] = dict.fromkeys(PHASES)
    for entry in entries:
        phase = PHASE_OF.get(Status(entry["status"]))
        if phase and entry["duration_seconds"] is not None:
            totals[phase] = (totals[phase] or 0.0) + entry["duration_seconds"]
    return totals


def total_time(task: Task, now: dt.datetime | None = None) -> float:
    """Seconds from creation to the end, or to now while it lasts."""
    return ((task.ended_at or now or timezone.now()) - task.created_at).total_seconds()


# Outputs and inputs in storage. Sizes and deletions go straight to Django's
# storage API, which tasks_app.storage wraps only for names and uploads.


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
    import zipfile

    if not storage.exists(task.output_path):
        raise missing_outputs(task)
    with storage.open_file(task.output_path) as f, zipfile.ZipFile(f) as zf:
        files = [
            {"path": i.filename, "size": i.file_size, "compressed_size": i.compress_size}
            for i in zf.infolist()
            if not i.is_dir()
        ]
    return {
        "files": files,
        "total_size": sum(f["size"] for f in files),
        "archive_size": default_storage.size(task.output_path),
    }


def open_output_file(task: Task, path: str):
    """A stream of one file of the outputs and its size; the caller closes it."""
    import zipfile

    if not storage.exists(task.output_path):
        raise missing_outputs(task)
    f = storage.open_file(task.output_path)
    try:
        zf = zipfile.ZipFile(f)
        try:
            info = zf.getinfo(path)
        except KeyError:
            raise Refused(
                f"Task {task.id} has no output file {path!r}; list them with get_output_info().",
                code="not_found",
                field="path",
                status=404,
            ) from None
        return zf.open(info), info.file_size, f
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


def unset_metadata(task: Task, keys: list[str], *, actor=None) -> dict:
    """Remove the given keys from the task's metadata; returns what is left."""
    with transaction.atomic():
        locked = Task.objects.select_for_update().get(pk=task.pk)
        new = {k: v for k, v in locked.metadata.items() if k not in set(keys)}
        Task.objects.filter(pk=task.pk).update(metadata=new)
        _audit_metadata(task, actor, locked.metadata, new)
    task.metadata = new
    return new


# Asking the machine that runs a task.

# Long enough for a machine busy computing to answer, short enough for a CLI.
MACHINE_ANSWER_SECONDS = 4.0


class NotRunning(Refused):
    """The task is not on a machine, so there is nothing to look at there."""

    def __init__(self, task: Task):
        status = Status(task.status)
        if status in lifecycle.TERMINAL:
            hint = f"Its files are in its outputs: simdeck tasks download {task.id}"
        else:
            hint = "Try again once it is In Progress."
        super().__init__(
            f"Task {task.id} is not running (it is {status.label}), so there is nothing to look at "
            f"on a machine. {hint}",
            code="not_running",
            status=409,
        )


def ask_machine(task: Task, op: str, **params) -> dict:
    """Ask the worker running ``task`` a question (see :mod:`tasks_app.executor.inspect`)."""
    from console.celery import app
    from tasks_app.executor import inspect

    machine = task.machine
    if Status(task.status) not in lifecycle.ON_MACHINE or machine is None or not machine.hostname:
        raise NotRunning(task)
    node = f"{machine.name}@{machine.hostname}"
    replies = app.control.broadcast(
        inspect.COMMAND,
        arguments={"task_id": task.id, "op": op, "params": params},
        destination=[node],
        reply=True,
        timeout=MACHINE_ANSWER_SECONDS,
        limit=1,
    )
    answer = next((r[node] for r in replies or [] if node in r), None)
    if answer is None:
        raise Refused(
            f"Machine {machine.name} did not answer within {MACHINE_ANSWER_SECONDS:.0f} s; "
            "it may be overloaded or gone. Try again in a moment.",
            code="machine_unavailable",
            status=503,
        )
    if answer.get("ok"):
        return answer
    if answer.get("error") == "not_here":
        task.refresh_from_db()  # it moved on while we asked
        raise NotRunning(task)
    if answer.get("error") == "invalid":
        raise Refused(answer.get("message", "Invalid request."), field=answer.get("field"))
    raise Refused(
        f"Machine {machine.name} could not answer: {answer.get('message') or answer.get('error')}",
        code="machine_error",
        status=502,
    )


def read_logs(
    task: Task, offsets: dict[str, int | None], *, tail_lines: int = 0, max_bytes: int = 64 * 1024
) -> dict:
    """New text of the task's logs since ``offsets`` (stream -> byte offset, None for a tail).

    While the task is on a machine the machine answers; afterwards the
    stored logs do. Offsets mean the same bytes in both, so a reader that
    follows a task across its end loses nothing and sees nothing twice.
    """
    from tasks_app.executor import inspect

    streams = [s for s in ("stdout", "stderr") if s in offsets]
    if Status(task.status) in lifecycle.ON_MACHINE:
        try:
            answer = ask_machine(
                task,
                "read",
                files=[{"path": f"{s}.txt", "offset": offsets[s]} for s in streams],
                lines=tail_lines,
                max_bytes=max_bytes,
            )
        except NotRunning:
            pass  # it just ended: the stored logs have the same bytes
        else:
            chunks = {}
            for stream, item in zip(streams, answer["files"], strict=True):
                chunks[stream] = _empty_chunk(offsets[stream]) if item.get("missing") else item
            return {"status": task.status, "live": True, **chunks}
    chunks = {}
    for stream in streams:
        name = storage.log_name(task.id, stream, task.attempt)
        if not storage.exists(name):
            chunks[stream] = _empty_chunk(offsets[stream])
            continue
        size = default_storage.size(name)
        with storage.open_file(name) as f:
            chunks[stream] = inspect.read_text(f, size, offsets[stream], tail_lines, max_bytes)
    return {"status": task.status, "live": False, **chunks}


def _empty_chunk(offset: int | None) -> dict:
    return {"offset": offset or 0, "next_offset": offset or 0, "size": 0, "text": ""}
