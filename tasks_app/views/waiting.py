"""Why a task is still waiting, in concrete terms, and when it may start.

The answer names the one thing holding the task now, in the order a person
would check: is there input, is the group up, is any machine online, are
they all busy (with what), how many tasks are ahead. The estimate uses how
long the group's recent tasks took on a machine; it is a guide, not a promise.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

from django.db.models import Avg, Count, F
from django.utils import timezone

from tasks_app import lifecycle, provider_rules
from tasks_app import simulators as sims
from tasks_app.lifecycle import Status
from tasks_app.models import Machine, MachineGroup, Task
from tasks_app.templatetags.simdeck import duration

RECENT_TASKS = 20
BUSY_SHOWN = 5


@dataclass
class Wait:
    reason: str
    detail: str = ""
    ahead: int | None = None
    busy: list[Task] = field(default_factory=list)
    busy_more: int = 0
    estimate: dt.datetime | None = None
    estimate_basis: str = ""
    start_group: bool = False

    @property
    def soon(self) -> bool:
        return self.estimate is not None and self.estimate - timezone.now() < dt.timedelta(minutes=1)


def recent_duration(group_id: int) -> tuple[dt.timedelta | None, int]:
    """Average time on a machine of the group's last finished tasks, and how many there were."""
    recent = (
        Task.objects.filter(machine_group_id=group_id, status=Status.SUCCESS, preparing_at__isnull=False)
        .order_by("-ended_at")
        .values_list("pk", flat=True)[:RECENT_TASKS]
    )
    row = Task.objects.filter(pk__in=list(recent)).aggregate(
        avg=Avg(F("ended_at") - F("preparing_at")), n=Count("pk")
    )
    return row["avg"], row["n"]


def why_waiting(task: Task, position: int | None) -> Wait | None:
    """The reason ``task`` has not started, or None when it is not waiting."""
    status = Status(task.status)
    group = task.machine_group
    if status == Status.PENDING_INPUT:
        return Wait(
            "Its input has not arrived yet.",
            "The client is still uploading the input archive, or the upload was interrupted.",
        )
    if status != Status.SUBMITTED:
        return None
    if group.state == MachineGroup.State.CREATED:
        return Wait(
            f"Machine group {group.name} has not been started.",
            "A group's machines come up only once it is started.",
            ahead=position,
            start_group=True,
        )
    if group.state != MachineGroup.State.STARTED:
        return Wait(
            f"Machine group {group.name} is {group.get_state_display().lower()}.",
            "The task will end when the group is gone; resubmit it to a running group.",
        )
    machines = list(
        Machine.objects.filter(group=group, state__in=[Machine.State.ONLINE, Machine.State.PROVISIONING])
    )
    online = [m for m in machines if m.state == Machine.State.ONLINE]
    running = list(
        Task.objects.filter(machine_group=group, status__in=lifecycle.ON_MACHINE)
        .select_related("machine")
        .order_by("preparing_at")[: max(len(online), 1) + BUSY_SHOWN]
    )
    average, basis = recent_duration(group.pk)
    wait = Wait("", ahead=position)
    if average is not None:
        wait.estimate_basis = f"from the average of its last {basis} finished tasks ({_short(average)} each)"
    if not online:
        starting = len(machines)
        wait.reason = f"No machine of {group.name} is online yet."
        wait.detail = provider_rules.waiting_detail(machines) or (
            f"{starting} machine{'s' if starting != 1 else ''} starting."
            if starting
            else "The group's provider has not started any machine; check that it runs."
        )
        return wait
    reports = [m.simulators for m in online if m.simulators]
    if group.is_elastic and reports and not any(task.simulator in r for r in reports):
        label = sims.REGISTRY[task.simulator].label if task.simulator in sims.REGISTRY else task.simulator
        wait.reason = f"No machine of {group.name} has {label}."
        wait.detail = (
            f"Its machines look for the installed simulators when they start, and none found {label}. "
            f"Once an admin installs it on their host, an idle machine is replaced by one that finds it "
            f"and the task starts; or submit it to a group whose machines have {label}."
        )
        return wait
    if len(running) >= len(online):
        shown = running[:BUSY_SHOWN]
        wait.reason = (
            f"The only machine of {group.name} is busy."
            if len(online) == 1
            else f"All {len(online)} machines of {group.name} are busy."
        )
        wait.busy = shown
        wait.busy_more = max(0, len(running) - len(shown))
    else:
        wait.reason = "A machine is free; it should take the task within seconds."
    if average is not None:
        wait.estimate = _estimate(position or 0, len(online), running, average)
    return wait


def _estimate(ahead: int, machines: int, running: list[Task], average: dt.timedelta) -> dt.datetime:
    """When a machine may take the task: the first free machine, then rounds of the queue."""
    now = timezone.now()
    if len(running) < machines:
        first_free = now
    else:
        remaining = [
            max(dt.timedelta(0), average - (now - (t.preparing_at or now))) for t in running[:machines]
        ]
        first_free = now + min(remaining)
    rounds = math.floor(ahead / max(machines, 1))
    return first_free + rounds * average


def _short(delta: dt.timedelta) -> str:
    return duration(delta)
