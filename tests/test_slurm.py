"""Machine groups on a real Slurm cluster: two nodes on this host (tasks_app/testing/slurm.py).

The cluster is started once for the session from the installed Slurm and
munge; where they are missing (or not root), these tests skip and say why.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from django.urls import reverse

import simdeck
from simdeck.errors import SimdeckError
from tasks_app.lifecycle import Status
from tasks_app.models import Activity, Machine, MachineGroup, Task
from tasks_app.testing import slurm as slurm_rig
from tasks_app.testing.stack import free_port
from tests.helpers import ROOT, task_status, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running Slurm of two nodes; its pilots reach nothing of the server but its machine interface."""
    if why := slurm_rig.why_not():
        pytest.skip(f"No Slurm test cluster: {why}.")
    cluster = slurm_rig.SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def slurm(slurm_cluster):
    """The cluster, with no job left over from an earlier test, and none left after this one."""
    yield slurm_cluster
    slurm_cluster.run("scancel", "--user", "root", check=False)
    wait_for(lambda: not slurm_cluster.active_jobs(), 30, message="the test's Slurm jobs to end")


@pytest.fixture
def stack_env(slurm) -> dict[str, str]:
    port = free_port()
    return {
        **slurm.env,
        "SIMDECK_PROVIDERS": "local,slurm",
        # The web server's port, known now so that the pilots can be told where it is.
        "SIMDECK_STACK_PORT": str(port),
        "SIMDECK_MACHINE_URL": f"http://{slurm.host}:{port}",
        "SIMDECK_SLURM_ENV": json.dumps({"SIMDECK_HOME": str(slurm.root / "machines")}),
    }


@pytest.fixture
def slurm_stack(stack, stack_env, slurm, settings, monkeypatch):
    """A running Simdeck whose Slurm provider submits to the test cluster."""
    relay, _ = slurm.relay(stack.url)  # the web server, where the nodes reach it
    stack.spawn(
        "slurm-provider",
        [sys.executable, "manage.py", "runprovider", "--provider", "slurm", "--interval", "0.5"],
    )
    settings.SIMDECK_PROVIDERS = ["local", "slurm"]
    settings.SIMDECK_MACHINE_URL = stack_env["SIMDECK_MACHINE_URL"]
    monkeypatch.setenv("SLURM_CONF", stack_env["SLURM_CONF"])
    yield stack
    relay.kill()
    relay.wait()


def job_of(name: str) -> str:
    return Machine.objects.filter(group__name=name).values_list("job_id", flat=True).first() or ""


def test_the_readme_example_runs_on_a_slurm_group_of_two_nodes(slurm_stack, slurm, client_for, alice_key):
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup(
        "c2-standard-4", num_machines=2, provider="slurm", auto_terminate_minutes=30
    )
    mg.start(timeout=90)
    machines = list(Machine.objects.filter(group__name=mg.name, state=Machine.State.ONLINE))
    # A node has 4 CPUs and a machine asks for 4: one pilot on each node.
    assert sorted(m.hostname for m in machines) == ["m1", "m2"]
    assert {m.job_state for m in machines} == {"RUNNING"}
    job = slurm.run("scontrol", "show", "job", machines[0].job_id).stdout
    assert "NumCPUs=4" in job
    assert "TimeLimit=00:30:00" in job
    assert f"JobName=simdeck-{machines[0].name}" in job
    assert mg.info["provider"] == "slurm"
    # A pilot holds its machine's token and nothing of the server's.
    environ = Path(f"/proc/{machines[0].pid}/environ").read_bytes().split(b"\0")
    names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
    assert "SIMDECK_MACHINE_TOKEN" in names
    assert not names & {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "CELERY_BROKER_URL"}
    assert {m["job_id"] for m in mg.info["machines"]} == {m.job_id for m in machines}

    sim = simdeck.simulators.SplishSplash()
    task = sim.run(input_dir=EXAMPLES / "splishsplash-dambreak", sim_config_filename="config.json", on=mg)
    assert task.wait(polling_period=0.5, silent_mode=True) == "success"
    stored = Task.objects.get(pk=task.id)
    assert stored.sandboxed is True
    assert stored.machine.job_id in {m.job_id for m in machines}
    outputs = Path(task.download_outputs())
    assert len(list((outputs / "output" / "vtk").glob("ParticleData_Fluid_*.vtk"))) > 10

    mg.terminate()
    wait_for(lambda: MachineGroup.objects.get(name=mg.name).state == "terminated", 60, message="termination")
    assert slurm.active_jobs() == []
    assert not Machine.objects.filter(group__name=mg.name, state__in=["online", "provisioning"]).exists()


def test_a_queued_pilot_says_why_and_one_cancelled_from_outside_gives_its_task_to_the_next(
    slurm_stack, slurm, client_for, alice_key, client, alice
):
    client_for(alice_key)
    # Both nodes taken: the group's pilot has to wait for resources.
    blocker = slurm.run("sbatch", "--parsable", "-N2", "--exclusive", "--wrap", "sleep 300").stdout.strip()
    mg = simdeck.resources.MachineGroup("n2-standard-2", provider="slurm", resubmit_on_preemption=True)
    mg.start(wait=False)
    task = simdeck.simulators.Commands().run(
        input_dir=EXAMPLES / "commands-mesh-solve", commands=["sleep 300"], on=mg
    )
    wait_for(
        lambda: Machine.objects.filter(group__name=mg.name, job_state="PENDING", job_reason="Resources"),
        30,
        message="the pilot queued for resources",
    )
    client.force_login(alice)
    page = client.get(reverse("task-detail", args=[task.id])).content.decode()
    job = job_of(mg.name)
    assert f"Its pilot job {job} waits in Slurm&#x27;s queue (Slurm&#x27;s reason: Resources)" in page
    group_page = client.get(reverse("group-detail", args=[mg.name])).content.decode()
    assert f'Slurm job <span class="mono">{job_of(mg.name)}</span>, queued (Resources)' in group_page

    slurm.run("scancel", blocker)
    wait_for(lambda: task_status(task.id) == Status.STARTED, 60, message="the task to start")
    first = Task.objects.get(pk=task.id).machine
    slurm.run("scancel", first.job_id)  # from outside, as an admin or a node failure would

    wait_for(
        lambda: Task.objects.filter(pk=task.id, attempt__gt=1, status=Status.STARTED).exists(),
        90,
        message="the task to start again on a new pilot",
    )
    statuses = list(Task.objects.get(pk=task.id).events.values_list("to_status", flat=True))
    lost = statuses.index(Status.EXECUTOR_TERMINATED)
    assert statuses[lost + 1] == Status.SUBMITTED
    why = Task.objects.get(pk=task.id).events.get(to_status=Status.EXECUTOR_TERMINATED).reason
    assert f"Slurm job {first.job_id}" in why
    assert Status.STARTED in statuses[lost + 2 :]
    wait_for(lambda: Machine.objects.filter(pk=first.pk, state="lost"), 20, message="the machine lost")
    said = Activity.objects.get(machine=first, kind="machine-lost").message
    assert said.startswith(f"The Slurm job {first.job_id} of machine {first.name} ended (CANCELLED")
    again = Task.objects.get(pk=task.id).machine
    assert again.job_id and again.job_id != first.job_id

    mg.terminate()
    wait_for(lambda: MachineGroup.objects.get(name=mg.name).state == "terminated", 60, message="termination")
    assert slurm.active_jobs() == []


def test_a_partition_slurm_does_not_have_is_refused_at_start_and_leaves_no_group(
    slurm_stack, client_for, alice_key
):
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup(
        "n2-standard-2", name="nowhere", provider="slurm", provider_options={"partition": "nope"}
    )
    with pytest.raises(SimdeckError) as refused:
        mg.start()
    assert "Slurm has no partition 'nope'" in str(refused.value)
    assert "Partitions: debug." in str(refused.value)
    assert not MachineGroup.objects.filter(name="nowhere").exists()
    # Too big for any node: Slurm's own words.
    with pytest.raises(SimdeckError, match="Slurm would not run a machine of group big"):
        simdeck.resources.MachineGroup("c2-standard-16", name="big", provider="slurm").start()
    assert not MachineGroup.objects.filter(name="big").exists()


@pytest.mark.django_db
def test_the_console_form_makes_slurm_groups_and_shows_slurms_refusal(
    logged_in, slurm, settings, monkeypatch
):
    settings.SIMDECK_PROVIDERS = ["local", "slurm"]
    settings.SIMDECK_MACHINE_URL = ""
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    form = {"machine_type": "n2-standard-2", "num_machines": 1, "data_disk_gb": 10, "provider": "slurm"}
    # Pilots that could not reach the server are never submitted.
    unreachable = logged_in.post(reverse("group-list"), {**form, "name": "lost", "start": "on"})
    assert unreachable.status_code == 422
    assert "SIMDECK_MACHINE_URL" in unreachable.content.decode()
    settings.SIMDECK_MACHINE_URL = f"http://{slurm.host}:8000"
    form = {"machine_type": "n2-standard-2", "num_machines": 1, "data_disk_gb": 10, "provider": "slurm"}
    refused = logged_in.post(
        reverse("group-list"), {**form, "name": "wrong", "partition": "nope", "start": "on"}
    )
    assert refused.status_code == 422
    assert "Slurm has no partition &#x27;nope&#x27;" in refused.content.decode()
    assert not MachineGroup.objects.filter(name="wrong").exists()
    made = logged_in.post(
        reverse("group-list"), {**form, "name": "right", "partition": "debug", "qos": "normal"}
    )
    assert made.status_code == 302
    group = MachineGroup.objects.get(name="right")
    assert (group.provider, group.provider_options) == ("slurm", {"partition": "debug", "qos": "normal"})
    page = logged_in.get(reverse("group-detail", args=["right"])).content.decode()
    assert 'slurm, partition <span class="mono">debug</span>, qos <span class="mono">normal</span>' in page


# -- without a cluster ---------------------------------------------------------


@pytest.mark.django_db
def test_a_provider_this_server_is_not_configured_for_is_refused_at_start(api, settings):
    settings.SIMDECK_PROVIDERS = ["local"]
    body = {"machine_type": "n2-standard-2", "name": "elsewhere", "provider": "slurm", "start": True}
    reply = api.post("/api/v1/machine-groups", body, content_type="application/json")
    assert reply.status_code == 409
    assert "not configured for" in reply.json()["message"]
    assert "SIMDECK_PROVIDERS" in reply.json()["message"]
    assert not MachineGroup.objects.filter(name="elsewhere").exists()


@pytest.mark.django_db
def test_a_server_without_slurm_commands_refuses_slurm_groups_at_start(api, settings, tmp_path):
    settings.SIMDECK_PROVIDERS = ["local", "slurm"]
    settings.SIMDECK_SLURM_BIN = str(tmp_path)  # a folder without sbatch
    body = {"machine_type": "n2-standard-2", "name": "nocluster", "provider": "slurm", "start": True}
    reply = api.post("/api/v1/machine-groups", body, content_type="application/json")
    assert reply.status_code == 409
    error = reply.json()
    assert error["error"] == "provider_unavailable"
    assert f"Slurm's sbatch command is not installed on this server (not in {tmp_path})" in error["message"]
    assert not MachineGroup.objects.filter(name="nocluster").exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "provider, options, says",
    [
        ("cloud", {}, "Unknown provider 'cloud'"),
        ("local", {"partition": "debug"}, "The local provider takes no option 'partition'"),
        ("slurm", {"nodes": "4"}, "it takes partition, account, qos"),
        ("slurm", {"partition": "--wrap=rm"}, "must be a name of letters"),
    ],
)
def test_bad_provider_settings_are_refused_before_anything_is_created(api, provider, options, says):
    body = {"machine_type": "n2-standard-2", "name": "bad", "provider": provider, "provider_options": options}
    reply = api.post("/api/v1/machine-groups", body, content_type="application/json")
    assert reply.status_code == 400
    assert says in reply.json()["message"]
    assert not MachineGroup.objects.filter(name="bad").exists()
