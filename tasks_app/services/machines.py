"""Machines that went away (lost, reclaimed, their runner dead) and the tasks they held."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from tasks_app import lifecycle, live, provider_rules
from tasks_app.errors import Refused
from tasks_app.lifecycle import Status
from tasks_app.models import Activity, Machine, MachineGroup, Task
from tasks_app.services.submissions import enqueue


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
    """The task on ``machine`` was stopped with it from outside: one signal to the worker and the simulation.

    Its task ends as runner-terminated, requeued if asked, as when the
    whole machine is lost; the machine itself stops, and its provider says
    how (:mod:`tasks_app.executor.run`, ``Execution.taken_down``).
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
        provider_rules.wake_providers()  # the machine's processes are to go
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
