"""Every ending of the lifecycle, caused the way it happens in life.

Real signals to real worker processes, real time limits (shortened), real
disk and memory use. Nothing here writes a status: each test makes the event
happen and then reads what the platform made of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import simdeck
from tasks_app import services
from tasks_app.lifecycle import Status
from tasks_app.models import Activity, Machine, MachineGroup, Task
from tests.helpers import ROOT, processes_of, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

INPUT = ROOT / "examples" / "commands-mesh-solve"


@pytest.fixture
def alice_client(client_for, alice_key):
    return client_for(alice_key)


def start_group(**options) -> simdeck.resources.MachineGroup:
    return simdeck.resources.MachineGroup("n2-standard-2", **options).start()


def submit(mg, *commands: str, **options) -> simdeck.tasks.Task:
    return simdeck.simulators.Commands().run(input_dir=INPUT, commands=list(commands), on=mg, **options)


def statuses_of(task) -> list[str]:
    return list(Task.objects.get(pk=task.id).events.values_list("to_status", flat=True))


def wait_status(task, *statuses: Status, timeout: float = 60) -> str:
    return wait_for(
        lambda: (s := Task.objects.get(pk=task.id).status) in statuses and s,
        timeout=timeout,
        message=f"task {task.id} to be {' or '.join(statuses)}",
    )


def machine_of(task) -> Machine:
    return Machine.objects.get(pk=Task.objects.get(pk=task.id).machine_id)


def test_kill_ends_a_queued_task_at_once_and_stops_a_running_one(stack, alice_client, capsys):
    mg = start_group()
    running = submit(
        mg,
        # The shell reports SIGTERM; its child ignores it and must be SIGKILLed.
        "echo partial > partial.txt; echo started; trap 'echo got-term; exit 143' TERM; "
        "sh -c \"trap '' TERM; sleep 300\" & wait",
    )
    wait_status(running, Status.STARTED)
    queued = submit(mg, "echo should-not-run")
    later = submit(mg, "echo later")
    assert queued.get_position_in_queue() == 0
    assert later.get_position_in_queue() == 1

    queued.kill()
    assert queued.status == "killed"
    assert statuses_of(queued) == [Status.SUBMITTED, Status.KILLED]
    assert later.get_position_in_queue() == 0

    assert running.kill(wait_timeout=30) is True
    assert Status.PENDING_KILL in statuses_of(running)
    assert statuses_of(running)[-1] == Status.KILLED
    assert processes_of(running.id) == []
    outputs = Path(running.download_outputs())
    assert (outputs / "partial.txt").read_text() == "partial\n"
    stdout = (outputs / "stdout.txt").read_text()
    assert "started" in stdout and "got-term" in stdout

    capsys.readouterr()
    queued.kill()
    assert "already ended" in capsys.readouterr().err
    assert queued.status == "killed"
    assert later.wait(polling_period=0.3, silent_mode=True) == "success"


def test_sync_context_kills_on_an_error_and_plain_wait_leaves_the_task_running(
    stack, alice_client, alice_key
):
    mg = start_group()
    task = submit(mg, "sleep 300")
    wait_status(task, Status.STARTED)
    with pytest.raises(RuntimeError, match="analysis crashed"), task.sync_context():
        raise RuntimeError("analysis crashed")
    wait_status(task, Status.KILLED, timeout=30)

    other = submit(mg, "sleep 300")
    waiter = subprocess.Popen(
        [sys.executable, "-c", f"import simdeck; simdeck.tasks.Task({other.id!r}).wait()"],
        cwd=ROOT,
        env=dict(os.environ, SIMDECK_API_URL=stack.url, SIMDECK_API_KEY=alice_key),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Ctrl+C reaches it as from a terminal: a child inherits an ignored
        # SIGINT, and something earlier in a full test run leaves it ignored here.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_status(other, Status.STARTED)
    waiter.send_signal(signal.SIGINT)  # Ctrl+C
    try:
        waiter.wait(timeout=40)
    except subprocess.TimeoutExpired:
        waiter.kill()
        out, err = waiter.communicate()
        raise AssertionError(f"Ctrl+C did not stop the wait:\n{out.decode()}\n{err.decode()}") from None
    assert waiter.returncode != 0
    assert Task.objects.get(pk=other.id).status == Status.STARTED
    other.kill(wait_timeout=30)


def test_a_task_past_its_time_to_live_is_stopped(stack, alice_client):
    mg = start_group()
    task = submit(mg, "echo thinking; sleep 300", time_to_live="2s")
    assert task.wait(polling_period=0.3, silent_mode=True) == "ttl-exceeded"
    info = task.get_info()
    assert "time to live of 2 seconds" in info["error_detail"]
    assert info["status_label"] == "Task Timed Out"
    assert "thinking" in (Path(task.download_outputs()) / "stdout.txt").read_text()


def test_a_group_past_its_time_to_live_stops_itself(stack, alice_client):
    mg = start_group(auto_terminate_minutes=0.15)  # 9 seconds
    running = submit(mg, "echo working; sleep 300")
    wait_status(running, Status.STARTED)
    queued = submit(mg, "echo never")
    wait_status(running, Status.EXECUTOR_TERMINATED_TTL, timeout=30)
    assert Task.objects.get(pk=queued.id).status == Status.ZOMBIE
    wait_for(lambda: mg.status == "terminated", 40, message="the group to terminate")
    group = MachineGroup.objects.get(name=mg.name)
    assert "time to live" in group.termination_reason
    assert Activity.objects.filter(group=group, kind="group-stopped-itself").exists()
    assert "working" in alice_client.http.get(f"/tasks/{running.id}/logs/stdout").text


def test_an_idle_group_stops_itself(stack, alice_client):
    mg = start_group(max_idle_time=0.1)  # 6 seconds from its machine coming online
    task = submit(mg, "true")
    assert task.wait(polling_period=0.3, silent_mode=True) == "success"
    wait_for(lambda: mg.status == "terminated", 40, message="the idle group to terminate")
    assert "idle" in MachineGroup.objects.get(name=mg.name).termination_reason


def test_terminating_a_group_ends_queued_tasks_as_zombies_and_running_ones_by_user(stack, alice_client):
    mg = start_group()
    running = submit(mg, "echo halfway; sleep 300")
    wait_status(running, Status.STARTED)
    queued = submit(mg, "echo never")
    mg.terminate()
    assert Task.objects.get(pk=queued.id).status == Status.ZOMBIE
    assert Task.objects.get(pk=running.id).status == Status.EXECUTOR_TERMINATED_BY_USER
    wait_for(lambda: mg.status == "terminated", 40, message="the group to terminate")
    assert processes_of(running.id) == []
    assert "halfway" in alice_client.http.get(f"/tasks/{running.id}/logs/stdout").text
    assert alice_client.http.get(f"/tasks/{queued.id}/logs/stdout").status_code == 404


def test_a_reclaimed_spot_machine_preempts_its_task_which_is_resubmitted(stack, alice_client):
    mg = start_group(spot=True)
    # The first attempt lasts until it is reclaimed, however long that takes; the next is quick.
    task = submit(
        mg, '[ "$SIMDECK_TASK_ATTEMPT" = 1 ] && sleep 120; echo finished', resubmit_on_preemption=True
    )
    stubborn = submit(mg, "echo second")
    wait_status(task, Status.STARTED)
    machine = machine_of(task)
    reclaim = stack.manage("reclaim", machine.name)
    assert reclaim.returncode == 0, reclaim.stderr
    assert task.wait(polling_period=0.3, silent_mode=True) == "success"
    history = statuses_of(task)
    assert history[: history.index(Status.SPOT_PREEMPTED) + 2][-2:] == [
        Status.SPOT_PREEMPTED,
        Status.SUBMITTED,
    ]
    info = Task.objects.get(pk=task.id)
    assert info.attempt == 2
    assert info.machine_id != machine.pk, "it ran again on the replacement machine"
    # Back at the front of the queue: it ran before the task queued after it first.
    assert stubborn.wait(polling_period=0.3, silent_mode=True) == "success"
    assert info.started_at < Task.objects.get(pk=stubborn.id).started_at
    assert Machine.objects.get(pk=machine.pk).state == Machine.State.RECLAIMED
    wait_for(lambda: mg.refresh()["machines_online"] == 1, 30, message="a replacement machine")


def test_a_spot_task_without_resubmission_stays_preempted(stack, alice_client):
    mg = start_group(spot=True)
    task = submit(mg, "sleep 300")
    wait_status(task, Status.STARTED)
    machine = machine_of(task).name
    alice_client.post(f"/machine-groups/{mg.name}/machines/{machine}/reclaim")  # the API's way
    assert task.wait(polling_period=0.3, silent_mode=True) == "spot-instance-preempted"
    wait_for(lambda: processes_of(task.id) == [], 20, message="the reclaimed machine's processes to go")
    again = stack.manage("reclaim", machine)  # the operator's way, too late
    assert again.returncode != 0 and "only a running machine" in again.stderr
    with pytest.raises(simdeck.SimdeckError, match="only a running machine"):
        alice_client.post(f"/machine-groups/{mg.name}/machines/{machine}/reclaim")


def test_spot_rehearsals_reclaim_machines_at_random(stack, alice_client):
    # About one machine in five reclaimed at each half-second check.
    stack.restart_provider(SIMDECK_SPOT_RECLAIM_RATE="1440")
    mg = start_group(spot=True)
    task = submit(mg, "sleep 300")
    assert task.wait(polling_period=0.3, silent_mode=True) == "spot-instance-preempted"
    assert "at random" in Task.objects.get(pk=task.id).error_detail
    assert Activity.objects.filter(group__name=mg.name, kind="machine-reclaimed").exists()


def test_a_killed_worker_is_replaced_and_its_task_resubmitted(stack, alice_client):
    mg = start_group()
    task = submit(mg, "sleep 3; echo done", resubmit_on_preemption=True)
    wait_status(task, Status.STARTED)
    machine = machine_of(task)
    os.kill(machine.pid, signal.SIGKILL)
    assert task.wait(polling_period=0.3, silent_mode=True) == "success"
    assert Status.EXECUTOR_TERMINATED in statuses_of(task)
    assert Machine.objects.get(pk=machine.pk).state == Machine.State.LOST
    assert Task.objects.get(pk=task.id).attempt == 2
    wait_for(lambda: mg.refresh()["machines_online"] == 1, 30, message="the group back to its size")


def test_a_machine_that_stops_heartbeating_is_reaped(stack, alice_client):
    mg = start_group()
    task = submit(mg, "sleep 300")
    wait_status(task, Status.STARTED)
    machine = machine_of(task)
    frozen = [psutil.Process(machine.pid), *psutil.Process(machine.pid).children(recursive=True)]
    for proc in frozen:
        proc.suspend()  # as if its host stopped answering
    try:
        wait_status(task, Status.EXECUTOR_TERMINATED, timeout=30)
    finally:
        for proc in frozen:
            try:
                proc.resume()
            except psutil.NoSuchProcess:
                pass
    assert "heartbeat" in Task.objects.get(pk=task.id).error_detail
    wait_for(lambda: processes_of(task.id) == [], 20, message="the lost machine's processes to be gone")
    wait_for(lambda: mg.refresh()["machines_online"] == 1, 30, message="a replacement machine")


def test_a_work_directory_outgrowing_the_disk_is_a_runtime_error(stack, alice_client):
    stack.restart_provider(SIMDECK_DISK_GB_BYTES=str(2**20))  # 1 "GB" = 1 MiB
    mg = start_group(data_disk_gb=1)
    task = submit(mg, "head -c 3000000 /dev/zero > big.bin; sleep 300")
    assert task.wait(polling_period=0.3, silent_mode=True) == "executor-failed"
    assert "outgrew the machine's disk" in task.get_info()["error_detail"]

    roomy = start_group(data_disk_gb=1, auto_resize_disk_max_gb=4)
    grows = submit(roomy, "head -c 2500000 /dev/zero > big.bin; sleep 3")
    assert grows.wait(polling_period=0.3, silent_mode=True) == "success"
    resized = Activity.objects.filter(task_id=grows.id, kind="disk-resized")
    assert resized.exists()
    assert resized.last().data["to_gb"] == 3


def test_a_task_using_more_memory_than_its_machine_is_a_runtime_error(stack, alice_client):
    stack.restart_provider(SIMDECK_MEMORY_GB_BYTES=str(64 * 2**20))  # 1 "GB" = 64 MiB
    mg = simdeck.resources.MachineGroup("e2-micro").start()
    task = submit(mg, "python -c 'import time; big = bytearray(200 * 2**20); time.sleep(300)'")
    assert task.wait(polling_period=0.3, silent_mode=True) == "executor-failed"
    assert "memory" in task.get_info()["error_detail"]
    assert processes_of(task.id) == []


def unstarted_group(client) -> str:
    return client.post("/machine-groups", json={"machine_type": "n2-standard-2"})["name"]


def test_an_input_that_cannot_be_fetched_is_a_runtime_error(stack, alice_client):
    name = unstarted_group(alice_client)
    task = submit(name, "cat mesh.csv")
    # While no machine is up yet, the stored input disappears.
    (stack.home / "storage" / Task.objects.get(pk=task.id).input_path).unlink()
    alice_client.post(f"/machine-groups/{name}/start")
    assert task.wait(polling_period=0.3, silent_mode=True) == "executor-failed"
    assert "input could not be fetched" in task.get_info()["error_detail"]


def test_a_queued_task_whose_message_was_lost_still_runs(stack, alice_client):
    from console.celery import app

    name = unstarted_group(alice_client)
    task = submit(name, "echo recovered")
    # The broker forgets the queue, as after a restart without persistence.
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(MachineGroup.objects.get(name=name).queue_name)
    alice_client.post(f"/machine-groups/{name}/start")
    assert task.wait(polling_period=0.3, silent_mode=True) == "success"
    alice_client.post(f"/machine-groups/{name}/terminate")


def test_an_elastic_group_grows_while_tasks_wait_and_shrinks_when_idle(stack, alice_client):
    client = alice_client
    info = client.post(
        "/machine-groups",
        json={"machine_type": "n2-standard-2", "min_machines": 1, "max_machines": 2, "start": True},
    )
    name = info["name"]
    wait_for(lambda: client.get(f"/machine-groups/{name}")["machines_online"] == 1, 30, message="one machine")
    tasks = [submit(name, "sleep 4") for _ in range(2)]
    wait_for(
        lambda: client.get(f"/machine-groups/{name}")["machines_online"] == 2, 30, message="a second machine"
    )
    for task in tasks:
        assert task.wait(polling_period=0.3, silent_mode=True) == "success"
    assert {Task.objects.get(pk=t.id).machine_id for t in tasks}.__len__() == 2
    wait_for(
        lambda: client.get(f"/machine-groups/{name}")["machines_online"] == 1, 30, message="shrinking back"
    )
    services.terminate_group(MachineGroup.objects.get(name=name))
