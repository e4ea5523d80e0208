"""Housekeeping the scheduler runs every few seconds (and the notifications of what ended).

Each job reads the database, decides, and acts through the same services the
API uses; running one twice, or on two schedulers at once, is harmless
because every change is a guarded update.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Min, Q
from django.utils import timezone

from tasks_app import broker, lifecycle, services, storage, task_counts
from tasks_app.lifecycle import Status
from tasks_app.models import Activity, Machine, MachineGroup, Task
from tasks_app.services import budgets, hosts, notifications

log = logging.getLogger(__name__)
G = MachineGroup.State
BUSY = [Status.PENDING_INPUT, Status.SUBMITTED, *lifecycle.ON_MACHINE]
# A machine that never came online after this long is given up on.
PROVISIONING_TIMEOUT = dt.timedelta(minutes=3)


def _each(rows, job: str, act) -> list:
    """``act(row)`` for every row, logging a row that fails and going on with the next.

    One bad row (a value nothing foresaw, a database error on one update)
    must not stop the job for everyone else's groups, machines and tasks.
    """
    done = []
    for row in rows:
        try:
            with transaction.atomic():
                result = act(row)
        except Exception:
            log.exception("Housekeeping (%s) failed for %r; going on with the others", job, row)
            continue
        if result is not None:
            done.append(result)
    return done


def enforce_group_limits(now: dt.datetime | None = None) -> list[str]:
    """Stop groups past their time to live or idle for too long; returns their names."""
    now = now or timezone.now()
    groups = MachineGroup.objects.filter(state=G.STARTED).filter(
        Q(auto_terminate_minutes__isnull=False) | Q(max_idle_time_minutes__isnull=False)
    )

    def enforce(group: MachineGroup) -> str | None:
        reason = _limit_reached(group, now)
        if not reason:
            return None
        services.terminate_group(group, reason=reason, ending=Status.EXECUTOR_TERMINATED_TTL)
        Activity.objects.create(kind="group-stopped-itself", group=group, message=reason)
        return group.name

    return _each(groups, "group limits", enforce)


def _minutes_since(moment: dt.datetime, now: dt.datetime) -> float:
    # Compared as numbers of minutes: a limit no timedelta can hold is simply never reached.
    return (now - moment).total_seconds() / 60


def _limit_reached(group: MachineGroup, now: dt.datetime) -> str | None:
    if group.auto_terminate_minutes is not None:
        if _minutes_since(group.started_at, now) > group.auto_terminate_minutes:
            ttl = _minutes(group.auto_terminate_minutes)
            return f"Machine group {group.name} reached its time to live of {ttl}."
    if group.max_idle_time_minutes is not None and not group.tasks.filter(status__in=BUSY).exists():
        # Idle time counts from the first machine online: a group whose
        # machines are still booting has had no chance to work yet.
        first_online = group.machines.aggregate(first=Min("online_at"))["first"]
        if first_online is None:
            return None
        last = group.tasks.aggregate(last=Max("ended_at"))["last"]
        idle_since = max(filter(None, [group.started_at, first_online, last]))
        if _minutes_since(idle_since, now) > group.max_idle_time_minutes:
            return f"Machine group {group.name} was idle for {_minutes(group.max_idle_time_minutes)}."
    return None


def _minutes(value: float) -> str:
    return f"{value:g} minute{'s' if value != 1 else ''}"


def clean_abandoned_uploads(older_than_minutes: int) -> int:
    """End tasks whose input never arrived; returns how many."""
    cutoff = timezone.now() - dt.timedelta(minutes=older_than_minutes)
    abandoned = Task.objects.filter(status=Status.PENDING_INPUT, created_at__lt=cutoff)

    def clean(task: Task) -> bool | None:
        ended = lifecycle.transition(
            task,
            Status.KILLED,
            reason=f"No input arrived within {older_than_minutes} minutes; the task was cleaned up.",
            error_detail="The input upload never completed. Submit the simulation again.",
        )
        if ended:
            storage.discard_direct_upload(task.id)
        return True if ended else None

    return len(_each(abandoned, "abandoned uploads", clean))


def reap_lost_machines(now: dt.datetime | None = None) -> list[str]:
    """Machines whose heartbeat stopped are lost; their tasks end or are requeued."""
    now = now or timezone.now()
    silent = now - dt.timedelta(seconds=settings.SIMDECK_MACHINE_LOST_SECONDS)
    lost = Machine.objects.filter(
        Q(state=Machine.State.ONLINE, last_heartbeat_at__lt=silent)
        # A pilot job may wait in Slurm's queue for hours; the Slurm provider watches those.
        | Q(state=Machine.State.PROVISIONING, created_at__lt=now - PROVISIONING_TIMEOUT, job_id="")
    ).select_related("group")

    def reap(machine: Machine) -> str:
        services.machine_lost(machine, f"Machine {machine.name} stopped sending heartbeats.")
        return machine.name

    return _each(lost, "lost machines", reap)


def restore_lost_tokens() -> int:
    """Re-announce queued tasks whose broker message went missing (e.g. a broker restart)."""
    groups = list(MachineGroup.objects.filter(state=G.STARTED, tasks__status=Status.SUBMITTED).distinct())
    if not groups:
        return 0  # nothing queued, nothing to ask the broker: an idle platform stays off the network
    with broker.tokens_waiting() as waiting_in:

        def restore(group: MachineGroup) -> int:
            queued = Task.objects.queued_in(group.pk).count()
            waiting = waiting_in(group)
            if queued <= waiting:
                return 0
            broker.publish_tokens(group, queued - waiting)
            return queued - waiting

        published = sum(_each(groups, "lost tokens", restore))
    if published:
        log.info("Re-announced %s queued tasks", published)
    return published


# Budgets' use is measured this often (four queries whatever the number of tasks, when any is set).
BUDGET_SECONDS = 60.0
_budgets_measured = -BUDGET_SECONDS


def measure_budgets() -> int | None:
    """Keep the level each budget reached (its banner, its notifications); about once a minute."""
    global _budgets_measured
    now = time.monotonic()
    if now - _budgets_measured < BUDGET_SECONDS:
        return None
    _budgets_measured = now
    return budgets.record_levels()


def queue_notifications() -> int:
    """Keep a delivery for each ending a destination wants to hear of, then send what is due
    (services.notifications); returns how many were kept."""
    kept = notifications.queue()
    notifications.send_due()
    return kept


JOBS = {
    "groups_stopped": enforce_group_limits,
    "machines_lost": reap_lost_machines,
    "hosts_groups_terminated": hosts.settle,
    "tokens_restored": restore_lost_tokens,
    "task_counts_folded": task_counts.fold,
    "sweeps_closed": services.close_silent_sweeps,
    # Before the notifications, so a level reached is told in the same round.
    "budgets_reached": measure_budgets,
    "notifications_queued": queue_notifications,
}


def run() -> dict:
    """Every job, each on its own: one that fails is logged and the others still run."""
    results = {}
    for name, job in JOBS.items():
        try:
            results[name] = job()
        except Exception:
            log.exception("Housekeeping job %s failed; the others went on", name)
            results[name] = None
    return results
