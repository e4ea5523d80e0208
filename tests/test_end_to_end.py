"""Real simulations through the real client, server and worker processes."""

import re
from pathlib import Path

import pytest

import simdeck
from simdeck.errors import SimdeckError
from tasks_app import broker
from tasks_app.lifecycle import Status
from tasks_app.models import Machine, MachineGroup, Task, TaskEvent
from tests.helpers import ROOT, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EXAMPLES = ROOT / "examples"


def statuses_of(task_id: str) -> list[str]:
    return list(Task.objects.get(pk=task_id).events.values_list("to_status", flat=True))


HAPPY_PATH = [
    Status.SUBMITTED,
    Status.PREPARING,
    Status.STARTED,
    Status.FINALIZING,
    Status.SUCCESS,
]


def test_a_splishsplash_scene_runs_on_a_machine_group_and_its_outputs_come_back(stack, client_for, alice_key):
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("c2-standard-4", num_machines=2)
    mg.start()
    assert MachineGroup.objects.get(name=mg.name).machines.filter(state=Machine.State.ONLINE).count() == 2

    sim = simdeck.simulators.SplishSplash()
    scene = EXAMPLES / "splishsplash-dambreak"
    task = sim.run(input_dir=scene, sim_config_filename="config.json", on=mg)
    again = sim.run(input_dir=scene, sim_config_filename="config.json", on=mg)
    assert re.fullmatch(r"[a-z0-9]{25}", task.id)
    assert again.id != task.id

    status = task.wait(polling_period=0.5)
    assert status == "success"
    assert status == "completed"
    assert task.status == "success"
    assert simdeck.tasks.Task(task.id).status == "completed"  # another handle, same task
    assert statuses_of(task.id) == HAPPY_PATH

    outputs = Path(task.download_outputs())
    assert outputs == Path("simdeck_output") / task.id / "outputs"
    frames = sorted((outputs / "output" / "vtk").glob("ParticleData_Fluid_*.vtk"))
    assert len(frames) > 10
    assert "Number of fluid particles" in (outputs / "stdout.txt").read_text()
    assert not (outputs / "config.json").exists(), "untouched inputs are not outputs"

    info = task.get_info()
    assert info["simulator_version"] == "2.19.0"
    assert info["output_files"] >= len(frames) + 2
    assert info["machine"].startswith(mg.name)

    assert again.wait(polling_period=0.5, silent_mode=True) == "success"
    mg.terminate()
    wait_for(lambda: MachineGroup.objects.get(name=mg.name).state == "terminated", 40, message="termination")
    assert not Machine.objects.filter(group__name=mg.name, state__in=["online", "provisioning"]).exists()


def test_commands_run_in_order_and_their_files_and_logs_are_kept(stack, client_for, alice_key, capsys):
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    task = simdeck.simulators.Commands().run(
        input_dir=EXAMPLES / "commands-mesh-solve",
        commands=["python make_mesh.py", "python solve.py"],
        on=mg,
        metadata={"case": "heat"},
    )
    assert task.wait(polling_period=0.3) == "success"
    printed = capsys.readouterr().out
    assert "In Progress" in printed and "Success" in printed

    outputs = Path(task.download_outputs())
    assert (outputs / "mesh.csv").exists()
    solution = (outputs / "results" / "solution.csv").read_text().splitlines()
    assert len(solution) > 1000
    assert "sweep" in (outputs / "stdout.txt").read_text().lower()
    # wait() already left the logs beside the outputs.
    assert (outputs / "stderr.txt").exists()
    assert task.get_metadata() == {"case": "heat"}

    only = Path(task.download_outputs(filenames=["mesh.csv"], output_dir="just-mesh"))
    assert sorted(p.name for p in only.iterdir()) == ["mesh.csv"]


def test_a_command_that_exits_3_fails_with_its_exit_code_and_stderr(stack, client_for, alice_key):
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    task = simdeck.simulators.Commands().run(
        input_dir=EXAMPLES / "commands-mesh-solve",
        commands=["echo 'mesh is inside out' >&2; exit 3", "echo never"],
        on=mg,
    )
    assert task.wait(polling_period=0.3, silent_mode=True) == "failed"
    info = task.get_info()
    assert info["exit_code"] == 3
    assert "mesh is inside out" in info["error_detail"]
    assert "exited with code 3" in info["error_detail"]
    assert task.is_failed() and task.is_terminal()
    assert statuses_of(task.id)[-2:] == [Status.FINALIZING, Status.FAILED]
    outputs = Path(task.download_outputs())
    assert "never" not in (outputs / "stdout.txt").read_text()


def test_a_task_over_in_a_moment_records_every_step_and_a_longer_one_shows_it_runs(
    stack, client_for, alice_key
):
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    sim = simdeck.simulators.Commands()
    quick = sim.run(input_dir=EXAMPLES / "commands-mesh-solve", commands=["true"], on=mg)
    assert quick.wait(polling_period=0.2, silent_mode=True) == "success"
    assert statuses_of(quick.id) == HAPPY_PATH
    done = Task.objects.get(pk=quick.id)
    assert done.preparing_at <= done.started_at <= done.finalizing_at <= done.ended_at
    assert done.simulator_version and done.output_path

    slow = sim.run(input_dir=EXAMPLES / "commands-mesh-solve", commands=["sleep 5"], on=mg)
    # Started is written while the command runs, not only with its ending.
    wait_for(lambda: Task.objects.get(pk=slow.id).status == Status.STARTED, 4.5, message="started, running")
    assert Task.objects.get(pk=slow.id).ended_at is None
    assert slow.wait(polling_period=0.2, silent_mode=True) == "success"
    assert statuses_of(slow.id) == HAPPY_PATH


def test_a_terminated_group_takes_no_new_tasks(stack, client_for, alice_key):
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("n2-standard-2")
    mg.start(wait=False)
    mg.terminate()
    with pytest.raises(SimdeckError, match="terminated"):
        simdeck.simulators.Commands().run(
            input_dir=EXAMPLES / "commands-mesh-solve", commands=["true"], on=mg
        )
    assert not Task.objects.exists()


def test_a_second_delivery_of_a_queue_message_does_not_run_a_task_again(stack, client_for, alice_key):
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    task = simdeck.simulators.Commands().run(
        input_dir=EXAMPLES / "commands-mesh-solve", commands=["sleep 2", "echo ran"], on=mg
    )
    group = MachineGroup.objects.get(name=mg.name)
    # The broker hands the message out again, as after a visibility timeout.
    broker.publish_tokens(group, 1)
    assert task.wait(polling_period=0.3, silent_mode=True) == "success"
    broker.publish_tokens(group, 1)
    logs = stack.home / "logs" / "machines"
    wait_for(
        lambda: sum(p.read_text().count("token dropped") for p in logs.glob("*.log")) == 2,
        timeout=20,
        message="both extra deliveries to be dropped",
    )
    assert TaskEvent.objects.filter(task_id=task.id, to_status=Status.PREPARING).count() == 1
    assert Task.objects.get(pk=task.id).attempt == 1
    assert Path(task.download_outputs()).joinpath("stdout.txt").read_text() == "ran\n"


def test_a_machine_takes_its_groups_tokens_one_at_a_time_until_none_is_left(group, settings):
    """A machine going on from task to task takes each token off the broker itself, as Celery would."""
    import secrets

    settings.SIMDECK_QUEUE_PREFIX = f"test-tokens-{secrets.token_hex(4)}"
    broker.publish_tokens(group, 3)
    assert [broker.take_token(group) for _ in range(4)] == [True, True, True, False]


def test_a_batch_of_tokens_is_celery_messages_each_with_an_id_of_its_own(group, settings):
    """The tokens of a sweep are built once and copied; each copy must still be a message of its own."""
    import secrets

    from console.celery import app

    settings.SIMDECK_QUEUE_PREFIX = f"test-tokens-{secrets.token_hex(4)}"
    broker.publish_tokens(group, 3)
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        messages = [channel.basic_get(group.queue_name, no_ack=True) for _ in range(4)]
    assert messages[3] is None
    ids = set()
    for message in messages[:3]:
        args, kwargs, _embed = message.decode()
        assert (message.headers["task"], args, kwargs) == ("simdeck.run_next", [group.pk], {})
        assert message.headers["id"] == message.headers["root_id"] == message.properties["correlation_id"]
        ids.add(message.headers["id"])
    assert len(ids) == 3


def test_a_machine_without_the_simulator_ends_the_task_with_a_runtime_error(stack, client_for, alice_key):
    stack.restart_provider(SIMDECK_SPLASH_BIN="/opt/nowhere/splash")
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    task = simdeck.simulators.SplishSplash().run(
        input_dir=EXAMPLES / "splishsplash-dambreak", sim_config_filename="config.json", on=mg
    )
    assert task.wait(polling_period=0.3, silent_mode=True) == "executor-failed"
    info = task.get_info()
    assert info["status_label"] == "Runtime Error"
    assert "/opt/nowhere/splash" in info["error_detail"]
    assert "not available on machine" in info["error_detail"]


def test_bad_input_is_caught_before_anything_is_created(stack, client_for, alice_key, tmp_path):
    client_for(alice_key)
    sim = simdeck.simulators.SplishSplash()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sim.run(input_dir=tmp_path / "missing", sim_config_filename="config.json", on="default")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is empty"):
        sim.run(input_dir=tmp_path / "empty", sim_config_filename="config.json", on="default")
    with pytest.raises(FileNotFoundError, match="scene.json"):
        sim.run(input_dir=EXAMPLES / "splishsplash-dambreak", sim_config_filename="scene.json", on="default")
    with pytest.raises(SimdeckError, match="Available: "):
        simdeck.resources.MachineGroup("z9-enormous").start()
    client_for("sdk_not-a-key")
    with pytest.raises(simdeck.errors.AuthenticationFailed, match="API key"):
        simdeck.tasks.get()
    assert not Task.objects.exists()
