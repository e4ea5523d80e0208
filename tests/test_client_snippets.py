"""Inductiva's documented snippets, written as its users write them, with only the import changed.

One server and one machine for all of it. What other modules check in detail
is only touched here: the storage and chained tasks in
test_client_storage.py, a rendered sweep with ``run_many`` in
test_templating.py, the command line's tables in test_cli.py.
"""

from __future__ import annotations

import datetime as dt
import json
import zipfile

import pytest

import simdeck as inductiva
from simdeck import simulators
from simdeck.errors import NotFound, SimdeckError
from simdeck.templating import TemplateError
from tasks_app import lifecycle, services
from tasks_app.lifecycle import Status
from tasks_app.models import MachineGroup, Task
from tests.client_fixtures import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def bobs_finished_task(bob) -> Task:
    """A task of another team that ended well: its outputs are not alice's to take."""
    group = services.create_group(bob, machine_type="n2-standard-2", name="bobs")
    task = Task.objects.create(owner=bob, project=group.project, machine_group=group, simulator="commands")
    for status in (Status.SUBMITTED, Status.PREPARING, Status.STARTED, Status.FINALIZING, Status.SUCCESS):
        lifecycle.transition(task, status, reason="finished elsewhere")
    return task


def test_inductiva_snippets_run_with_only_the_import_changed(
    stack, client_for, alice_key, bob, tmp_path, monkeypatch, capsys
):
    client_for(alice_key)
    theirs = bobs_finished_task(bob)
    # A group as Inductiva's docs make one: spot by default, with its TTLs as text and a moment.
    mg = inductiva.resources.MachineGroup(
        "n2-standard-2",
        name="default",
        threads_per_core=2,
        max_idle_time=dt.timedelta(minutes=10),
        auto_terminate_ts=dt.datetime.now() + dt.timedelta(hours=2),
    )
    assert mg.spot is True
    assert inductiva.resources.MPICluster("n2-standard-2", num_machines=1).spot is False
    mg.start()
    assert mg.info["spot"] is True and mg.info["max_idle_time"] == 10
    made = (Task.objects.count(), MachineGroup.objects.count())

    # Arguments this server cannot honour are refused before anything is sent, saying what to do.
    with pytest.raises(ValueError, match=r"zone='europe-west1-b': this server has no zones"):
        inductiva.resources.MachineGroup("n2-standard-2", zone="europe-west1-b")
    with pytest.raises(ValueError, match=r"threads_per_core=1: .*give run\(\) n_vcpus"):
        inductiva.resources.MachineGroup("n2-standard-2", threads_per_core=1)
    with pytest.raises(
        ValueError, match=r"MPICluster with num_machines=2: the 'local' provider runs each task"
    ):
        inductiva.resources.MPICluster("n2-standard-2")
    with pytest.raises(
        ValueError, match="Cannot read 'a while' as a duration for max_idle_time; write it like"
    ):
        inductiva.resources.MachineGroup("n2-standard-2", max_idle_time="a while")
    sim = inductiva.simulators.Commands()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "mesh.txt").write_text("mesh 1\n")
    (inputs / "notes.txt").write_text("notes\n")
    with pytest.raises(FileNotFoundError, match="on_finish_cleanup: tidy.sh is not a file of the input"):
        sim.run(inputs, commands=["ls"], on_finish_cleanup="tidy.sh")
    with pytest.raises(SimdeckError, match=r"on_finish_cleanup\[1\] holds a line break"):
        sim.run(inputs, commands=["ls"], on_finish_cleanup=["rm -f notes.txt", "rm -f a\nrm -f b"])
    with pytest.raises(ValueError, match="Cannot read 'forever' as a duration for time_to_live"):
        sim.run(inputs, commands=["ls"], time_to_live="forever")
    with pytest.raises(NotFound, match=rf"remote_assets\[0\] \('{theirs.id}/outputs'\): no task with id"):
        sim.run(None, commands=["ls"], remote_assets=[f"{theirs.id}/outputs"])
    template = tmp_path / "template"
    template.mkdir()
    (template / "case.txt.jinja").write_text("viscosity {{ nu }}, {{ steps }} steps\n")
    with pytest.raises(TemplateError, match="'steps' is undefined"):
        inductiva.TemplateManager.render_dir(template, tmp_path / "bad", nu=0.1)
    assert not (tmp_path / "bad").exists()
    assert (Task.objects.count(), MachineGroup.objects.count()) == made, "nothing was created"

    # A rendered template runs as any input folder; without on= the server's 'default' group takes it.
    monkeypatch.setattr(simulators, "_told_default_group", False)
    case = inductiva.TemplateManager.render_dir(template, tmp_path / "case", nu=0.1, steps=20)
    capsys.readouterr()
    first = sim.run(
        case,
        commands=["cat case.txt", "cp case.txt result.txt"],
        time_to_live="2 minutes",
        on_finish_cleanup=["rm case.txt"],  # after the simulation, before the outputs are stored
    )
    # A chain: the second task takes the first's outputs, without sending an input of its own.
    second = sim.run(
        None,
        commands=["cat result.txt"],
        remote_assets=[f"{first.id}/outputs/result.txt"],
        resubmit_on_preemption=True,
    )
    told = capsys.readouterr().err
    assert told.count("No machine group given (on=...): tasks run on the server's group 'default'.") == 1
    assert "Machine group:  default (n2-standard-2)" in told

    # The helpers of a task, as Inductiva names them.
    assert second.wait(silent_mode=True) == "success"
    assert first.is_terminal() and not first.is_running() and first.get_status() == "completed"
    assert first.get_simulator_name() == "commands" and first.get_machine_type() == "n2-standard-2"
    assert first.get_storage_path() == first.id and first.get_position_in_queue() is None
    assert first.get_computation_time(cached=True) >= 0
    assert first.get_total_time(cached=True) >= first.get_computation_time(cached=True)
    info = second.get_info()
    assert info.executer.vm_type == "n2-standard-2" and info.time_metrics.total_seconds.value > 0
    assert info.inputs_from == [first.id]
    outputs = {f.name: f.size for f in first.get_output_info().files}
    assert outputs["result.txt"] == len("viscosity 0.1, 20 steps\n") and "case.txt" not in outputs
    assert first.get_info()["on_finish_cleanup"] == ["rm case.txt"]
    assert first.kill(wait_timeout=1, verbosity_level=0) is False  # an ended task stays as it ended
    fetched = first.download_inputs(filenames=["case.txt"])
    assert (fetched / "case.txt").read_text() == "viscosity 0.1, 20 steps\n"
    kept = second.download_outputs(uncompress=False)
    assert zipfile.is_zipfile(kept / "output.zip")
    with zipfile.ZipFile(kept / "output.zip") as zf:
        assert zf.read("stdout.txt").decode().endswith("viscosity 0.1, 20 steps\n")

    # The command line as Inductiva's docs show it, as a user runs it.
    env = {
        "SIMDECK_API_URL": stack.url,
        "SIMDECK_API_KEY": alice_key,
        "SIMDECK_CONFIG": str(tmp_path / "c.json"),
    }
    version = run_cli("--version", env=env)
    assert version.returncode == 0 and version.stdout.startswith("simdeck ")
    listed = run_cli("tasks", "list", "-i", first.id, second.id, "--json", env=env)
    assert sorted(t["id"] for t in json.loads(listed.stdout)) == sorted([first.id, second.id])
    got = run_cli(
        "tasks", "download", first.id, "--filenames", "result.txt", "stdout.txt", "--dir", "picked", env=env
    )
    assert got.returncode == 0, got.stderr
    assert sorted(p.name for p in (tmp_path / "picked").iterdir()) == ["result.txt", "stdout.txt"]
    logs = run_cli("logs", second.id, "--stdout", env=env)
    assert logs.stdout == "viscosity 0.1, 20 steps\n"
    killed = run_cli("tasks", "kill", first.id, second.id, "-y", env=env)
    assert killed.returncode == 0, killed.stderr
    me = json.loads(run_cli("user", "info", "--json", env=env).stdout)
    assert me["username"] == "alice" and me["quotas"]["max_machines"]["in_use"] == 1
    assert run_cli("quotas", "list", env=env).returncode == 0
    # Not found names what was looked up; a project is looked up by its name.
    for args, said in (
        (("tasks", "info", "zzzzzzzzzzzzzzzzzzzzzzzzz"), "No task with id 'zzzzzzzzzzzzzzzzzzzzzzzzz'"),
        (("resources", "info", "lab"), "No machine group named 'lab'"),
        (("projects", "download", "heat"), "No project named 'heat'"),
    ):
        missing = run_cli(*args, env=env)
        assert missing.returncode == 3 and missing.stderr.startswith(
            f"Error: {said}, or it is not yours to see"
        )
        assert "Traceback" not in missing.stderr
    top = run_cli("tasks", "top", first.id, env=env)
    assert top.returncode == 6 and "simdeck tasks download" in top.stderr and "()" not in top.stderr
    mg.terminate()
