"""The local provider: placement of machines on the host, and its own footprint."""

import os
import signal
import time

import psutil
import pytest

import simdeck
from tasks_app import services
from tasks_app.models import Machine, MachineGroup
from tasks_app.providers.local import QUIET_SECONDS, LocalProvider, cpu_set
from tests.helpers import ROOT, wait_for

INPUT = ROOT / "examples" / "commands-mesh-solve"
IDLE_SECONDS = 5


def test_small_machines_are_pinned_to_different_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert cpu_set(1, slot=0) == [0]
    assert cpu_set(1, slot=1) == [1]
    assert cpu_set(2, slot=1) == [2, 3]
    assert cpu_set(2, slot=2) == [0, 1]
    assert cpu_set(4, slot=5) is None  # the type asks for the whole host: share it


@pytest.mark.django_db(transaction=True)
def test_an_idle_provider_sleeps_until_a_group_starts_or_ends(alice, settings, tmp_path):
    """Nothing to watch but notices: it sleeps long, and a start or a termination wakes it at once."""
    settings.SIMDECK_HOME = tmp_path
    provider = LocalProvider()
    provider.listen()
    try:
        provider.reconcile()
        assert provider.quiet()
        group = services.create_group(alice, machine_type="c2-standard-4", name="lab", project="dambreak")
        assert not provider.wait_for_exit(0.1)  # a group created is not one started
        services.start_group(group)
        assert provider.wait_for_exit(600)
        services.terminate_group(group, reason="Done.")
        assert provider.wait_for_exit(600)
        assert not provider.wait_for_exit(0.1)  # each notice wakes it once
    finally:
        provider.close_notices()


# -- the provider's own footprint, for real --------------------------------------------


def provider_cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def group_cycle() -> None:
    """What an operator does all day: start a group, run a task on it, terminate it."""
    mg = simdeck.resources.MachineGroup("n2-standard-2", num_machines=1).start()
    task = simdeck.simulators.Commands().run(input_dir=INPUT, commands=["echo done"], on=mg)
    assert task.wait(polling_period=0.5, silent_mode=True) == "success"
    mg.terminate()
    wait_for(
        lambda: (
            not MachineGroup.objects.exclude(state=MachineGroup.State.TERMINATED).exists()
            and not Machine.objects.filter(state__in=[Machine.State.ONLINE, Machine.State.STOPPING]).exists()
        ),
        60,
        message="the group and its machine to end",
    )


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_the_provider_idles_and_keeps_no_descriptor_after_groups_end(stack, client_for, alice_key):
    client_for(alice_key)
    provider = psutil.Process(stack.provider.pid)
    fds = []
    for _ in range(3):
        group_cycle()
        time.sleep(1)  # one more round, so the machine's exit has been seen
        fds.append(provider.num_fds())
    # Idle, it sleeps between rounds: a stale descriptor would wake it at once, every time.
    before = provider_cpu_seconds(provider)
    time.sleep(IDLE_SECONDS)
    used = provider_cpu_seconds(provider) - before

    # Every cycle leaves the provider as the one before did: nothing held per ended machine.
    assert fds[1:] == fds[:1] * (len(fds) - 1), f"open descriptors after each cycle: {fds}"
    assert used < IDLE_SECONDS * 0.1, f"{used:.2f} s of CPU in {IDLE_SECONDS} idle seconds"
    # Asleep between rounds for up to QUIET_SECONDS, a stop wakes it at once.
    stack.provider.send_signal(signal.SIGTERM)
    stack.provider.wait(timeout=QUIET_SECONDS / 3)
