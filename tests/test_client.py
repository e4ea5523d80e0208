"""The Python client against a real server and real machines: every call of a task's life."""

from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path

import pytest

import simdeck
from simdeck.errors import InvalidInput, NotFound, Refused
from tasks_app.models import Machine
from tests.client_fixtures import (
    EXAMPLES,
    UNTIL_STOPPED,
    normalize,
    start_web,
    stop,
    stop_web,
    wait_until_printed,
)
from tests.helpers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_a_task_is_followed_inspected_and_collected_from_python(stack, client_for, alice_key, capsys):
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("n2-standard-2", name="lab", project="heat").start()
    assert (mg.name, mg.status, mg.n_vcpus) == ("lab", "started", 2)
    assert isinstance(mg.id, int)

    sim = simdeck.simulators.Commands()
    inputs = EXAMPLES / "commands-mesh-solve"
    first = sim.run(inputs, on=mg, commands=["python make_mesh.py", UNTIL_STOPPED], project="heat")
    second = sim.run(inputs, on=mg, commands=["sleep 30"], project="heat", metadata={"case": "b"})
    third = sim.run(inputs, on="lab", commands=["python make_mesh.py"], project="heat")
    submitted = capsys.readouterr().err
    assert f"■ Task {third.id} created." in submitted
    assert "Machine group:  lab (n2-standard-2)" in submitted
    assert f"simdeck logs {third.id}" in submitted

    # One machine: the first runs, the others wait in line.
    assert first.wait_for_status("started", polling_period=0.2, timeout=60) == "started"
    assert first.is_running() and not first.is_terminal()
    assert (second.get_position_in_queue(), third.get_position_in_queue()) == (0, 1)
    assert first.get_position_in_queue() is None
    wait_until_printed(stack, first.id, steps=3)

    # Looking inside the machine while it computes.
    names = {f.path for f in first.list_files()}
    assert {"stdout.txt", "stderr.txt", "mesh.csv", "progress.txt", "make_mesh.py"} <= names
    newest = first.last_modified_file()
    assert newest.path in {"stdout.txt", "stderr.txt", "progress.txt"}
    tails = first.tail_files(["stdout.txt", "mesh.csv"], lines=2)
    assert tails["stdout.txt"].splitlines()[-1].startswith("step ")
    assert tails["mesh.csv"].splitlines() == ["39,40,0.975000,1.000000", "40,40,1.000000,1.000000"]
    processes = first.top()["processes"]
    assert any("progress.txt" in p["command"] for p in processes)
    with pytest.raises(Refused, match="not running"):
        second.list_files()

    running = first.get_info()
    assert running.status == "started" and running.timeline[-1].ongoing
    assert running.time_breakdown.computing > 0 and running.time_breakdown.finalizing is None
    assert "(ongoing)" in running.summary and "Tasks ahead" not in running.summary

    # The wait, as a user watches it (not on a terminal: plain lines).
    capsys.readouterr()
    ended = []
    waiter = threading.Thread(target=lambda: ended.append(first.wait(polling_period=0.2)), daemon=True)
    waiter.start()
    time.sleep(1.5)  # long enough to follow a few lines
    stop(stack, first.id)
    waiter.join(timeout=60)
    assert ended == ["success"]
    shown = capsys.readouterr().out
    lines = normalize(shown, first=first.id).splitlines()
    assert lines[0] == "Waiting for task <first> (Ctrl+C stops waiting; the task keeps running)."
    assert lines[1] == "■ In Progress · The simulator is running on the machine."
    assert any(line.startswith("  out│ step ") for line in lines)
    assert any(line.startswith("  err│ warning ") for line in lines)
    assert lines[-4:] == [
        "■ Finalizing · The simulation has finished and its output files are being stored.",
        "■ Success · The simulation finished and its outputs are stored.",
        "  Took <duration>, <duration> of it computing.",
        "  Its stdout.txt and stderr.txt are in simdeck_output/<first>/outputs/",
    ]
    logs = Path("simdeck_output") / first.id / "outputs"
    assert (logs / "stdout.txt").read_text().endswith("finished\n")
    assert (logs / "stderr.txt").read_text().startswith("warning 1\n")

    # The second one is killed while it runs; the third never ran.
    assert second.wait_for_status("started", polling_period=0.2, timeout=60) == "started"
    assert second.kill(wait_timeout=30) is True
    assert second.status == "killed" and second.is_failed()
    assert third.wait(polling_period=0.2, silent_mode=True) == "success"
    assert third.kill(wait_timeout=1, verbosity_level=0) is False  # it ended already: nothing changes
    assert third.status == "success" and third.get_status() == "success"

    # Everything about the finished task.
    info = first.get_info()
    assert info.status == "completed" and info.is_terminal and not info.is_failed
    assert [s.status for s in info.timeline] == [
        "pending-input",
        "submitted",
        "preparing-to-compute",
        "started",
        "finalizing",
        "success",
    ]
    assert info.machine_type == "n2-standard-2" and info.machine.startswith("lab-")
    assert info.project == "heat" and info.owner == "alice"
    assert info["status"] == "success"  # the JSON, by key
    # The same facts by the names of Inductiva's TaskInfo.
    assert (info.task_id, info.storage_path, first.get_storage_path()) == (first.id,) * 3
    assert (info.executer.vm_type, info.executer.vm_name) == ("n2-standard-2", info.machine)
    assert (info.executer.cpu_count_logical, info.executer.memory, info.executer.host_type) == (2, 8, "local")
    assert info.time_metrics.computation_seconds.value == info.computation_time
    assert info.time_metrics.queue_time_seconds.value == info.time_breakdown.in_queue
    assert info.time_metrics.total_seconds.value == info.total_time
    assert info.data_metrics.output_total_files.value == info.output_files == 6
    assert info.data_metrics.output_zipped_size_bytes.value == info.output_archive_size > 0
    assert (info.create_time, info.computation_start_time, info.end_time) == (
        info.created_at,
        info.started_at,
        info.ended_at,
    )
    assert [step["status"] for step in info.status_history] == [s.status for s in info.timeline]
    assert not info.is_running and not info.is_submitted
    assert third.get_info().executer.error_detail == ""
    computing = first.get_computation_time()
    assert computing == pytest.approx(info.time_breakdown.computing) and computing > 0.5
    assert first.get_total_time() >= computing
    # An ended task's figures do not change: asked again from what was fetched, no request.
    first._client = None
    assert first.get_computation_time(cached=True) == computing
    assert (first.get_machine_type(), first.get_simulator_name()) == ("n2-standard-2", "commands")
    first._client = second._client
    summary = normalize(first.summary, first=first.id)
    assert "Task <first>" in summary
    assert "Status  Success" in summary
    assert "Machine group  lab (n2-standard-2), machine lab-" in summary
    assert "Time  <duration> in all: waiting for input <duration>, in queue <duration>" in summary
    assert "Outputs  6 files, <size> (<size> zipped)" in summary

    listing = first.get_output_info()
    assert sorted(f.path for f in listing.files) == [
        "mesh.csv",
        "progress.txt",
        "result.txt",
        "stderr.txt",
        "stdout.txt",
        "stop",
    ]
    assert listing.total_size == sum(f.size for f in listing.files)
    assert "mesh.csv" in str(listing)
    # Inductiva's names for the same facts.
    assert listing.total_size_bytes == listing.total_size and listing.n_files == 6
    assert listing.total_compressed_size_bytes == sum(f.compressed_size for f in listing.files) > 0
    assert [f.name for f in listing.files] == [f.path for f in listing.files]

    only = first.download_outputs(filenames=["result.txt", "mesh.csv"], output_dir="picked")
    assert sorted(p.name for p in only.iterdir()) == ["mesh.csv", "result.txt"]
    assert (only / "result.txt").read_text() == "done\n"
    with pytest.raises(NotFound, match="no output file 'nope.txt'"):
        first.download_outputs(filenames=["nope.txt"], output_dir="picked")
    everything = first.download_outputs("results/first")  # a folder given first, as the seeds do
    assert everything == Path("results/first")
    assert (everything / "result.txt").exists() and not (everything / "output.zip").exists()
    zipped = first.download_outputs(output_dir="zipped", uncompress=False)
    assert sorted(p.name for p in zipped.iterdir()) == ["output.zip"]  # Inductiva's name for it
    with zipfile.ZipFile(zipped / "output.zip") as archive:
        assert sorted(archive.namelist()) == sorted(f.path for f in listing.files)
    inputs_back = first.download_inputs()
    assert inputs_back == Path("simdeck_output") / first.id / "inputs"
    assert (inputs_back / "solve.py").read_bytes() == (inputs / "solve.py").read_bytes()
    one_input = first.download_inputs(filenames=["solve.py"], input_dir="one-input")
    assert sorted(p.name for p in one_input.iterdir()) == ["solve.py"]
    assert (one_input / "solve.py").read_bytes() == (inputs / "solve.py").read_bytes()
    assert sorted(p.name for p in first.download_inputs("zipped-input", uncompress=False).iterdir()) == [
        "input.zip"
    ]
    with pytest.raises(NotFound, match="no input file 'mesh.csv'"):
        first.download_inputs(filenames=["mesh.csv"], input_dir="one-input")

    # Metadata, and finding tasks by it.
    first.set_metadata({"viscosity": "0.01", "run": "1"})
    assert first.update_metadata({"run": "2"}) == {"viscosity": "0.01", "run": "2"}
    assert first.unset_metadata("viscosity") == {"run": "2"}
    assert simdeck.tasks.get(metadata={"run": "2"}) == [first]
    assert simdeck.tasks.get(last_n=10, status="completed") == [third, first]
    assert simdeck.tasks.get(status=["killed", "failed"]) == [second]
    assert simdeck.tasks.get_tasks(last_n=0, project="heat") == [third, second, first]
    assert simdeck.tasks.get_all(project="elsewhere") == []
    assert simdeck.tasks.get(last_n=2) == [third, second]

    # Projects.
    heat = simdeck.projects.Project("heat")
    assert simdeck.projects.get_projects() == [heat]
    # Naming a project that is not there makes it (it is empty); only naming it does not.
    with pytest.raises(NotFound, match="'cooling'"):
        _ = simdeck.projects.Project("cooling", create=False).info
    cooling = simdeck.projects.Project("cooling")
    assert cooling.info["num_tasks"] == 0 and cooling.info["role"] == "maintainer"
    assert simdeck.projects.get_projects() == [cooling, heat]
    assert heat.info["num_tasks"] == 3 and heat.info["succeeded"] == 2 and heat.info["failed"] == 1
    assert heat.wait(silent_mode=True) == {
        first.id: "success",
        second.id: "killed",
        third.id: "success",
    }
    root = heat.download_outputs()
    assert sorted(p.name for p in root.iterdir()) == sorted([first.id, third.id])

    # Removing the stored files frees the space; the logs stay.
    freed = first.remove_remote_files()
    assert freed["freed_bytes"] > 0
    with pytest.raises(NotFound, match="outputs were removed"):
        first.get_output_info()
    assert "removed from the server" in first.summary
    assert "".join(text for _, text in first.stream_logs(("stdout",), follow=False)).endswith("finished\n")

    # Machine groups.
    assert [g.name for g in simdeck.resources.get()] == ["lab"]
    assert simdeck.resources.get_by_name("lab").machine_type == "n2-standard-2"
    assert {"c2-standard-4", "n2-standard-2"} <= {t["name"] for t in simdeck.resources.machine_types()}
    with pytest.raises(NotFound):
        simdeck.resources.get_by_name("nowhere")
    mg.terminate()
    wait_for(lambda: mg.status == "terminated", 40, message="the group to terminate")
    assert not Machine.objects.filter(group__name="lab", state="online").exists()


def test_sync_context_kills_the_task_when_the_block_fails_and_wait_survives_a_restart(
    stack, client_for, alice_key, capsys, monkeypatch
):
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    sim = simdeck.simulators.Commands()
    doomed = sim.run(EXAMPLES / "commands-mesh-solve", on=mg, commands=["sleep 60"])
    with pytest.raises(RuntimeError, match="analysis crashed"), doomed.sync_context():
        doomed.wait_for_status("started", polling_period=0.2, timeout=60)
        raise RuntimeError("analysis crashed")
    assert doomed.wait(polling_period=0.3, silent_mode=True) == "killed"

    # On a terminal, wait() keeps the last log lines in a box that goes away at the end.
    on_terminal = sim.run(EXAMPLES / "commands-mesh-solve", on=mg, commands=[UNTIL_STOPPED])
    wait_until_printed(stack, on_terminal.id, steps=2)
    shown = wait_on_a_terminal(on_terminal.id, lambda: stop(stack, on_terminal.id))
    assert "\x1b[" in shown  # colours and cursor moves: a terminal was seen
    assert "last lines of stdout and stderr" in shown
    assert "warning 1" in shown and "Success" in shown
    assert "Its stdout.txt and stderr.txt are in" in shown

    # The web server goes away while a task runs, and comes back on the same port.
    # Fewer retries per request, so that wait() itself sees the outage.
    monkeypatch.setattr(simdeck.api, "DEFAULT_RETRIES", 2)
    simdeck.api.default_client.cache_clear()
    task = simdeck.simulators.Commands().run(
        EXAMPLES / "commands-mesh-solve", on=mg, commands=[UNTIL_STOPPED]
    )
    wait_until_printed(stack, task.id, steps=2)
    capsys.readouterr()
    stop_web(stack)
    stop(stack, task.id)
    finished = []
    waiter = threading.Thread(target=lambda: finished.append(task.wait(polling_period=0.3)), daemon=True)
    waiter.start()
    time.sleep(3)
    start_web(stack)
    waiter.join(timeout=120)
    assert finished == ["success"], stack.logs()
    shown = capsys.readouterr().out
    assert "Lost contact with the server" in shown
    assert "Back in contact with the server." in shown
    assert "■ Success" in shown


def test_client_side_checks_name_the_culprit_before_anything_is_sent(monkeypatch):
    monkeypatch.setenv("SIMDECK_URL", "http://127.0.0.1:9")  # nothing may be sent anyway
    simdeck.api.default_client.cache_clear()
    task = simdeck.tasks.Task("a" * 25)
    with pytest.raises(TypeError, match=r"Metadata value of 'run' is a int \(2\); values must be strings"):
        task.set_metadata({"run": 2})
    with pytest.raises(TypeError, match=r"Metadata key 3 is a int; keys must be strings"):
        task.update_metadata({3: "x"})
    with pytest.raises(ValueError, match=r"Metadata key ' ' is empty"):
        task.set_metadata({" ": "x"})
    with pytest.raises(ValueError, match=r"Metadata value of 'speed' is empty"):
        task.set_metadata({"speed": ""})
    with pytest.raises(TypeError, match=r"not a list"):
        task.set_metadata(["speed"])
    with pytest.raises(NotFound, match="not a task id"):
        simdeck.tasks.Task("../machine-groups")
    with pytest.raises(ValueError, match="not a task id"):
        simdeck.tasks.Task("ABC")
    with pytest.raises(ValueError, match="min_machines"):
        simdeck.resources.ElasticMachineGroup("c2-standard-4", min_machines=3, max_machines=2)
    with pytest.raises(ValueError, match="not a project name"):
        simdeck.projects.Project("a/b")
    status = simdeck.tasks.TaskStatus("success")
    assert status == "completed" and status == "SUCCESS" and status != "failed"
    assert simdeck.tasks.TaskStatus("executor-failed") == "executer-failed"
    assert {status} == {simdeck.tasks.TaskStatus("completed")}
    with pytest.raises(simdeck.errors.ServerUnreachable, match="Cannot reach the Simdeck server"):
        simdeck.api.Client(retries=1).get("/whoami")
    simdeck.api.default_client.cache_clear()


def test_invalid_input_from_the_server_is_a_value_error_too():
    assert issubclass(InvalidInput, ValueError)
    assert issubclass(simdeck.errors.InvalidTaskId, NotFound)


def test_download_from_url_fetches_and_unpacks_an_archive(tmp_path, monkeypatch):
    import http.server
    import shutil
    import threading
    from functools import partial

    served = tmp_path / "served"
    shutil.make_archive(str(served / "scene-example"), "zip", EXAMPLES, "splishsplash-dambreak")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.chdir(tmp_path)
    try:
        url = f"http://127.0.0.1:{server.server_port}/scene-example.zip"
        folder = simdeck.utils.download_from_url(url, unzip=True)
        assert folder == "splishsplash-dambreak"
        assert Path(folder, "config.json").exists()
        assert not Path("scene-example.zip").exists()
        kept = simdeck.utils.download_from_url(url, unzip=False, output_dir="raw")
        assert kept == "raw/scene-example.zip" and Path(kept).stat().st_size > 100
        with pytest.raises(simdeck.SimdeckError, match="404"):
            simdeck.utils.download_from_url(f"http://127.0.0.1:{server.server_port}/nothing.zip")
    finally:
        server.shutdown()


def wait_on_a_terminal(task_id: str, then) -> str:
    """Run ``Task(task_id).wait()`` in a child process whose stdout is a terminal; call ``then``
    once it has shown something, and return all it printed."""
    import os
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    script = f"import simdeck; simdeck.tasks.Task({task_id!r}).wait(polling_period=0.2)"
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=follower,
        stderr=follower,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "40"},
    )
    os.close(follower)
    shown = b""
    called = False
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
        if not called and b"last lines" in shown:
            then()
            called = True
    child.wait(timeout=60)
    os.close(leader)
    assert child.returncode == 0, shown.decode(errors="replace")[-2000:]
    return shown.decode(errors="replace")
