"""Machine groups: created within quota, started, terminated with the tasks they hold."""

from __future__ import annotations

import re
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from tasks_app import audit, inputs, lifecycle, provider_rules, quotas
from tasks_app.errors import Refused
from tasks_app.lifecycle import Status
from tasks_app.models import MachineGroup, Project, Task
from tasks_app.services.projects import project_to_use


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
    provider_options = provider_rules.clean_options(provider, provider_options)
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


def start_group(group: MachineGroup) -> MachineGroup:
    """Ask for the group's machines (within the quotas); its provider brings them up."""
    if group.state == MachineGroup.State.CREATED:
        provider_rules.check_start(group)  # before any lock: it may ask Slurm
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
            provider_rules.wake_providers()
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
        updated = MachineGroup.objects.filter(pk=group.pk, state__in=MachineGroup.ACCEPTING).update(
            state=MachineGroup.State.TERMINATING,
            terminated_at=timezone.now(),
            termination_reason=reason or "Terminated by its owner.",
        )
        group.refresh_from_db()
        if not updated:
            return group
        provider_rules.wake_providers()
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
        # task, as here: the other order would wait on this one, and this on it.
        ends = dict.fromkeys([Status.PENDING_INPUT, Status.SUBMITTED], Status.ZOMBIE)
        ends |= dict.fromkeys([Status.PREPARING, Status.STARTED], ending)
        ends[Status.PENDING_KILL] = Status.KILLED
        tasks = Task.objects.select_for_update().filter(machine_group=group, status__in=list(ends))
        for task in tasks.order_by("id"):
            new = ends[Status(task.status)]
            detail = {} if new == Status.ZOMBIE else {"error_detail": why}
            lifecycle.transition(task, new, reason=why, actor=actor, **detail)
    return group


def machines_wanted(group: MachineGroup) -> int:
    """How many machines the group should have now, whatever runs them."""
    if not group.is_elastic:
        return group.num_machines
    # Elastic: one machine per task waiting or running, within the bounds.
    demand = group.tasks.filter(status__in=[Status.SUBMITTED, *lifecycle.ON_MACHINE]).count()
    return max(group.min_machines or 0, min(group.max_machines, demand))


def lock_group_shared(group_id: int) -> MachineGroup:
    """The group, locked against a change of state until the transaction ends."""
    table = MachineGroup._meta.db_table
    return MachineGroup.objects.raw(f"SELECT * FROM {table} WHERE id = %s FOR SHARE", [group_id])[0]
