"""Housekeeping the scheduler runs every few seconds.

Each job reads the database, decides, and acts through the same services the
API uses; running one twice, or on two schedulers at once, is harmless
because every change is a guarded update.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db.models import Max, Min, Q
from django.utils import timezone

from tasks_app import lifecycle, services, task_counts
from tasks_app.lifecycle import Status
from tasks_app.models import Activity, Machine, MachineGroup, Task

log = logging.getLogger(__name__)
G = MachineGroup.State
BUSY = [Status.PENDING_INPUT, Status.SUBMITTED, *lifecycle.ON_MACHINE]
# A machine that never came online after this long is given up on.
PROVISIONING_TIMEOUT = dt.timedelta(minutes=3)


def enforce_group_limits(now: dt.datetime | None = None) -> list[str]:
    """Stop groups past their time to live or idle for too long; returns their names."""
    now = now or timezone.now()
    stopped = []
    groups = MachineGroup.objects.filter(state=G.STARTED).filter(
        Q(auto_terminate_minutes__isnull=False) | Q(max_idle_time_minutes__isnull=False)
    )
    for group in groups:
        reason = _limit_reached(group, now)
        if reason:
            services.terminate_group(group, reason=reason, ending=Status.EXECUTOR_TERMINATED_TTL)
            Activity.objects.create(kind="group-stopped-itself", group=group, message=reason)
            stopped.append(group.name)
    return stopped


def _limit_reached(group: MachineGroup, now: dt.datetime) -> str | None:
    if group.auto_terminate_minutes is not None:
        limit = dt.timedelta(minutes=group.auto_terminate_minutes)
        if now - group.started_at > limit:
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
        if now - idle_since > dt.timedelta(minutes=group.max_idle_time_minutes):
            return f"Machine group {group.name} was idle for {_minutes(group.max_idle_time_minutes)}."
    return None


def _minutes(value: float) -> str:
    return f"{value:g} minute{'s' if value != 1 else ''}"


def reap_lost_machines(now: dt.datetime | None = None) -> list[str]:
    """Machines whose heartbeat stopped are lost; their tasks end or are requeued."""
    now = now or timezone.now()
    silent = now - dt.timedelta(seconds=settings.SIMDECK_MACHINE_LOST_SECONDS)
    lost = Machine.objects.filter(
        Q(state=Machine.State.ONLINE, last_heartbeat_at__lt=silent)
        | Q(state=Machine.State.PROVISIONING, created_at__lt=now - PROVISIONING_TIMEOUT)
    ).select_related("group")
    names = []
    for machine in lost:
        services.machine_lost(machine, f"Machine {machine.name} stopped sending heartbeats.")
        names.append(machine.name)
    return names


def restore_lost_tokens() -> int:
    """Re-announce queued tasks whose broker message went missing (e.g. a broker restart)."""
    from console.celery import app

    published = 0
    groups = MachineGroup.objects.filter(state=G.STARTED, tasks__status=Status.SUBMITTED).distinct()
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        for group in groups:
            queued = Task.objects.queued_in(group.pk).count()
            try:
                waiting = channel.queue_declare(queue=group.queue_name, passive=True).message_count
            except Exception:  # the queue does not exist (yet): nothing waits in it
                channel = conn.channel()
                waiting = 0
            if queued > waiting:
                services.publish_tokens(group, queued - waiting)
                published += queued - waiting
    if published:
        log.info("Re-announced %s queued tasks", published)
    return published


def housekeeping() -> dict:
    return {
        "groups_stopped": enforce_group_limits(),
        "machines_lost": reap_lost_machines(),
        "tokens_restored": restore_lost_tokens(),
        "task_counts_folded": task_counts.fold(),
    }
