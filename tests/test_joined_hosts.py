"""Machines on hosts that joined with a token: ``simdeck-machine join URL --token …``.

The host process here gets nothing of the server but its address and a
join token: no database URL, no Redis, no secret key (its settings give it
a database that refuses every query), so whatever its machines do goes
through the machine interface with their own tokens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import simdeck
from tasks_app.lifecycle import Status
from tasks_app.models import JoinToken, Machine, MachineGroup, ResourceSample, Task
from tasks_app.services import hosts
from tests.helpers import ROOT, processes_of, task_status, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EXAMPLES = ROOT / "examples"
# What a machine elsewhere must never hold.
SERVER_SECRETS = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE")


def join_command() -> list[str]:
    """The installed command where there is one (``pip install`` of the project), else its module."""
    script = Path(sys.executable).parent / "simdeck-machine"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tasks_app.executor.remote"]


class Host:
    """A host that joined: one ``simdeck-machine join`` process, with only the URL and its token."""

    def __init__(self, url: str, token: str, home: Path, *args: str):
        home.mkdir(parents=True, exist_ok=True)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in SERVER_SECRETS and not k.startswith(("SIMDECK_", "AWS_", "PG"))
        }
        env |= {"SIMDECK_HOME": str(home), "SIMDECK_JOIN_TOKEN": token}
        self.log = home / "host.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*join_command(), "join", url, *args],
                cwd=home,  # not the checkout: the installed project is all it needs
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def joined(stack, tmp_path):
    """Start hosts joined to the stack with a fresh join token; they are killed at the end."""
    started: list[Host] = []

    def join(name: str = "workstation-1", *args: str) -> tuple[Host, JoinToken]:
        token, secret = hosts.issue_token(name)
        host = Host(stack.url, secret, tmp_path / name, *args)
        started.append(host)
        return host, token

    yield join
    for host in started:
        host.stop()


def online_machines(group_name: str):
    return Machine.objects.filter(group__name=group_name, state=Machine.State.ONLINE)


def test_a_joined_host_runs_tasks_with_nothing_but_its_token(stack, client_for, alice_key, joined):
    host, token = joined()
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("n2-standard-2", provider="hosts").start(timeout=90)
    [machine] = online_machines(mg.name)
    assert machine.join_token == token and machine.token_digest
    # The host's process holds none of the server's secrets.
    environ = Path(f"/proc/{host.proc.pid}/environ").read_bytes().split(b"\0")
    names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
    assert not names & set(SERVER_SECRETS)

    task = simdeck.simulators.Commands().run(
        input_dir=EXAMPLES / "commands-mesh-solve",
        commands=["python make_mesh.py", "python solve.py", "sleep 2"],
        on=mg,
    )
    assert task.wait(polling_period=0.3) == "success", host.output()
    row = Task.objects.get(pk=task.id)
    assert row.machine_id == machine.pk and row.sandboxed is True
    assert [e.to_status for e in row.events.order_by("at", "id")] == [
        Status.SUBMITTED,
        Status.PREPARING,
        Status.STARTED,
        Status.FINALIZING,
        Status.SUCCESS,
    ]
    outputs = Path(task.download_outputs())
    assert (outputs / "mesh.csv").exists()
    assert len((outputs / "results" / "solution.csv").read_text().splitlines()) > 1000
    assert "sweep" in (outputs / "stdout.txt").read_text().lower()
    assert ResourceSample.objects.filter(task_id=task.id).exists()  # samples came over the interface

    # Terminating the group stops its machine at the next heartbeat; the host waits for more work.
    mg.terminate()
    wait_for(lambda: MachineGroup.objects.get(name=mg.name).state == "terminated", 30, message="termination")
    assert Machine.objects.get(pk=machine.pk).state == Machine.State.STOPPED
    assert host.proc.poll() is None, host.output()


def test_revoking_the_join_token_stops_the_host_and_ends_its_task(stack, client_for, alice_key, joined):
    host, token = joined("workstation-2")
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("n2-standard-2", provider="hosts").start(timeout=90)
    [machine] = online_machines(mg.name)
    task = simdeck.simulators.Commands().run(
        input_dir=EXAMPLES / "commands-mesh-solve", commands=["sleep 120"], on=mg
    )
    wait_for(lambda: task_status(task.id) == Status.STARTED, 60, message="the task to start")
    wait_for(lambda: processes_of(task.id), 10, message="the simulation's processes")

    # While it runs, the machine answers questions about it, as a local one does.
    asked = httpx.Client(base_url=f"{stack.url}/api/v1", headers={"Authorization": f"Bearer {alice_key}"})
    files = asked.get(f"/tasks/{task.id}/machine/files")
    assert files.status_code == 200, files.text
    assert {"stdout.txt", "make_mesh.py"} <= {f["path"] for f in files.json()["files"]}
    top = asked.get(f"/tasks/{task.id}/machine/top").json()
    assert any("sleep" in p["command"] for p in top["processes"]), top

    assert stack.manage("jointoken", "revoke", token.name).returncode == 0
    assert task_status(task.id) == Status.EXECUTOR_TERMINATED
    assert Machine.objects.get(pk=machine.pk).state == Machine.State.LOST
    # The host learns it at its next word with the server: it stops its simulation and exits.
    assert host.proc.wait(timeout=30) == 1, host.output()
    assert "join token" in host.output()
    wait_for(lambda: not processes_of(task.id), 10, message="the simulation to be gone")


def test_a_revoked_machine_stops_and_its_host_takes_another(stack, joined, alice):
    from tasks_app import services

    _, token = joined("workstation-3")
    group = services.create_group(alice, machine_type="n2-standard-2", name="far", provider="hosts")
    services.start_group(group)
    wait_for(lambda: online_machines("far").exists(), 60, message="a machine of the joined host")
    [machine] = online_machines("far")
    hosts.revoke_machine(machine)
    assert Machine.objects.get(pk=machine.pk).state == Machine.State.LOST
    # The host asks again and gets a new machine with a new token.
    wait_for(lambda: online_machines("far").exists(), 60, message="a new machine")
    [again] = online_machines("far")
    assert again.pk != machine.pk and again.token_digest != machine.token_digest
