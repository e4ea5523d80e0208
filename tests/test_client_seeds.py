"""The seeds' examples, run as scripts against a real server with only the import changed.

Each script strings together the seeds' snippets as a user would paste
them, with ``import inductiva`` replaced by ``import simdeck as inductiva``.
What else differs is not the client's to decide: the example archive is
served from this machine (tests run offline), the batch's four scenes are
made here (the seeds do not ship them), and the two handles on one task use
a real id instead of the seeds' sample one.
"""

from __future__ import annotations

import ast
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading

import pytest

from tasks_app.models import Task
from tests.client_fixtures import EXAMPLES

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

FIRST_TASK = """
import simdeck as inductiva

# Instantiate machine group
machine_group = inductiva.resources.MachineGroup("c2-standard-4")
machine_group.start()

# Download example input files
input_dir = inductiva.utils.download_from_url(
    "{url}/"
    "splishsplash-input-example.zip", unzip=True)

# Instantiate the simulator
splishsplash_simulator = inductiva.simulators.SplishSplash()

# Run the SPlisHSPlasH simulation with the required .json config file
task = splishsplash_simulator.run(input_dir="splishsplash-input-example",
                                  sim_config_filename="config.json",
                                  on=machine_group)
print(task.id)

task2 = splishsplash_simulator.run(input_dir="splishsplash-input-example",
                                  sim_config_filename="config.json",
                                  on=machine_group)
print (task2.id)

# Check queue position
position = task2.get_position_in_queue()
if position is not None:
    print(f"Tasks ahead in queue: {{position}}")

# Check current status
print(f"Current status: {{task.status}}")

task1 = inductiva.tasks.Task(task.id)
task2_again = inductiva.tasks.Task(task.id)
print(id(task1) != id(task2_again))
print(task1.id)
print(task2_again.id)

# Block the call until the simulation completes
task.wait()  # <- The remote simulation WILL NOT DIE if the local session is
             #    interrupted while waiting for the wait() call to return

# Block the call until the simulation completes
with task2.sync_context():
    task2.wait()  # <- The remote simulation WILL DIE if the local session is
                  #     interrupted while waiting for the wait() call to return

# Store simulation parameters as metadata
task.set_metadata({{
    "fluid_viscosity": "0.01",
    "particle_radius": "0.025",
    "simulation_time": "5.0",
    "run_number": "2",
}})
metadata = task.get_metadata()
print(metadata)

# Now safe to download results
task.download_outputs()

machine_group.terminate()
"""

PARALLEL_BATCH = """
import simdeck as inductiva

# Initialize resources
machine_group = inductiva.resources.MachineGroup("c2-standard-4")
machine_group.start()
simulator = inductiva.simulators.SplishSplash()

# Submit batch of tasks
tasks = []
configs = ["wind_10ms", "wind_15ms", "wind_20ms", "wind_25ms"]

for config in configs:
    task = simulator.run(
        input_dir=f"scenarios/{config}",
        on=machine_group
    )
    tasks.append(task)
    print(f"✓ Submitted {config}: {task.id}")

print(f"Submitted {len(tasks)} tasks in parallel")

# Process results as they complete
for i, task in enumerate(tasks):
    print(f"⏳ Waiting for task {i+1}/{len(tasks)}...")
    task.wait()

    if task.status == "completed":
        print(f"✅ {configs[i]} completed successfully")
        task.download_outputs(f"results/{configs[i]}")
    else:
        print(f"❌ {configs[i]} failed: {task.status}")

machine_group.terminate()

print(len(inductiva.tasks.get(last_n=10, status="completed")))
print(len(inductiva.tasks.get_all(project="fluid-dynamics")))
print(len(inductiva.tasks.get_tasks(last_n=5, status="started")))
print(tasks[0].get_info()["status"])
print(tasks[0].get_position_in_queue())
"""


@pytest.fixture
def served_examples(tmp_path):
    """The SPlisHSPlasH example as the archive the seeds download, on a local web server."""
    folder = tmp_path / "served"
    staging = tmp_path / "staging" / "splishsplash-input-example"
    shutil.copytree(EXAMPLES / "splishsplash-dambreak", staging)
    # The dam break cut to 1.2 simulated seconds: thirteen frames, a few seconds to compute.
    scene = json.loads((staging / "config.json").read_text())
    scene["Configuration"]["stopAt"] = 1.2
    (staging / "config.json").write_text(json.dumps(scene, indent=1))
    shutil.make_archive(str(folder / "splishsplash-input-example"), "zip", staging.parent)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def run_script(source: str, cwd, stack, key: str) -> subprocess.CompletedProcess:
    script = cwd / "example.py"
    script.write_text(source)
    env = {
        **os.environ,
        "SIMDECK_URL": stack.url,
        "SIMDECK_API_KEY": key,
        "SIMDECK_CONFIG": str(cwd / "none.json"),
    }
    return subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def make_scenarios(root) -> None:
    """Four scenes that differ in viscosity, each short enough for a test."""
    scene = json.loads((EXAMPLES / "splishsplash-dambreak" / "config.json").read_text())
    scene["Configuration"]["stopAt"] = 0.5
    for i, name in enumerate(["wind_10ms", "wind_15ms", "wind_20ms", "wind_25ms"]):
        folder = root / "scenarios" / name
        shutil.copytree(EXAMPLES / "splishsplash-dambreak", folder)
        scene["Materials"][0]["Standard viscosity"]["viscosity"] = 0.01 * (i + 1)
        (folder / "config.json").write_text(json.dumps(scene, indent=1))


def test_the_seeds_examples_run_unchanged_but_for_the_import(stack, alice_key, served_examples, tmp_path):
    work = tmp_path / "first"
    work.mkdir()
    first = run_script(FIRST_TASK.format(url=served_examples), work, stack, alice_key)
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout.splitlines()
    task_id, task2_id = out[0], out[1]
    assert re.fullmatch(r"[a-z0-9]{25}", task_id) and re.fullmatch(r"[a-z0-9]{25}", task2_id)
    assert task_id != task2_id
    # The first task may or may not have left the queue for the machine yet.
    assert out[2] in ("Tasks ahead in queue: 0", "Tasks ahead in queue: 1")
    assert out[3] in (
        "Current status: submitted",
        "Current status: preparing-to-compute",
        "Current status: started",
    )
    assert out[4:7] == ["True", task_id, task_id]
    assert "■ Success · The simulation finished and its outputs are stored." in first.stdout
    printed_metadata = next(line for line in out if line.startswith("{"))
    assert ast.literal_eval(printed_metadata) == {
        "fluid_viscosity": "0.01",
        "particle_radius": "0.025",
        "simulation_time": "5.0",
        "run_number": "2",
    }
    assert Task.objects.get(pk=task_id).status == "success"
    assert Task.objects.get(pk=task2_id).status == "success"
    frames = list((work / "simdeck_output" / task_id / "outputs" / "output" / "vtk").glob("*.vtk"))
    assert len(frames) > 10
    assert "Machine group c2-standard-4-" in first.stderr and "is terminating." in first.stderr

    work = tmp_path / "batch"
    work.mkdir()
    make_scenarios(work)
    batch = run_script(PARALLEL_BATCH, work, stack, alice_key)
    assert batch.returncode == 0, batch.stderr[-3000:]
    printed = batch.stdout
    for name in ["wind_10ms", "wind_15ms", "wind_20ms", "wind_25ms"]:
        assert f"✅ {name} completed successfully" in printed
        assert list((work / "results" / name / "output" / "vtk").glob("*.vtk"))
    assert "Submitted 4 tasks in parallel" in printed
    assert printed.count("⏳ Waiting for task") == 4
    tail = printed.splitlines()[-5:]
    assert tail == ["6", "0", "0", "success", "None"]
