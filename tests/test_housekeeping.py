"""Housekeeping's limits on machine groups, decided from the database alone."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from tasks_app import housekeeping, services
from tasks_app.models import Machine, MachineGroup

pytestmark = pytest.mark.django_db


@pytest.fixture
def idle_group(alice) -> MachineGroup:
    group = services.start_group(
        services.create_group(alice, machine_type="c2-standard-4", name="idle-lab", max_idle_time=3)
    )
    MachineGroup.objects.filter(pk=group.pk).update(started_at=timezone.now() - dt.timedelta(minutes=10))
    return group


def test_a_group_whose_machines_are_still_booting_is_not_idle(idle_group):
    Machine.objects.create(group=idle_group, name="booting-1", state=Machine.State.PROVISIONING)
    assert housekeeping.enforce_group_limits() == []


def test_idle_time_counts_from_the_first_machine_online(idle_group):
    now = timezone.now()
    Machine.objects.create(
        group=idle_group, name="up-1", state=Machine.State.ONLINE, online_at=now - dt.timedelta(minutes=1)
    )
    assert housekeeping.enforce_group_limits(now) == []
    assert housekeeping.enforce_group_limits(now + dt.timedelta(minutes=2, seconds=30)) == ["idle-lab"]
    idle_group.refresh_from_db()
    assert "idle for 3 minutes" in idle_group.termination_reason
