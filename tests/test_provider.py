"""The local provider: placement of machines on the host, and its own footprint."""

import os
import time

import psutil
import pytest

import simdeck
from tasks_app.models import Machine, MachineGroup
from tasks_app.providers.local import cpu_set
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
