"""Real machines fetching inputs from a bucket and storing outputs and logs in it (SeaweedFS)."""

import os
from pathlib import Path

import httpx
import pytest

import simdeck
from tasks_app import storage
from tasks_app.models import Task
from tests.test_storage_s3 import keys

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture
def stack_env(s3_env):
    """Every process of the stack, and the machines it starts, stores in the test's bucket prefix."""
    return s3_env


def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "case"
    folder.mkdir()
    (folder / "mesh.txt").write_text("4 cells\n")
    (folder / "solve.sh").write_text("mkdir -p results; wc -l < mesh.txt > results/count.txt; echo solved\n")
    return folder


def test_a_machine_fetches_its_input_from_the_bucket_and_stores_outputs_and_logs_there(
    s3_server, s3_env, stack, client_for, alice_key, tmp_path
):
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    task = simdeck.simulators.Commands().run(input_dir=inputs(tmp_path), commands=["sh solve.sh"], on=mg)
    assert task.wait(polling_period=0.3, silent_mode=True) == "success", stack.logs()

    stored = keys(s3_server, s3_env)
    assert stored == {
        storage.input_name(task.id),
        storage.output_name(task.id),
        storage.log_name(task.id, "stdout"),
        storage.log_name(task.id, "stderr"),
    }
    assert not (stack.home / "storage" / "tasks").exists(), "nothing of the task went to the local folder"

    # The client is sent to the bucket for the bytes, and unpacks them as from a local server.
    response = httpx.get(
        f"{stack.url}/api/v1/tasks/{task.id}/outputs", headers={"Authorization": f"Bearer {alice_key}"}
    )
    assert response.status_code == 302
    assert response.headers["Location"].startswith(s3_server.endpoint)
    outputs = Path(task.download_outputs())
    assert (outputs / "results" / "count.txt").read_text().strip() == "1"
    assert "solved" in (outputs / "stdout.txt").read_text()
    assert Task.objects.get(pk=task.id).output_files >= 3

    # Storage in the bucket: an upload, a task taking it and the first one's outputs, its outputs kept.
    simdeck.storage.upload(tmp_path / "case" / "mesh.txt", "meshes")
    chained = simdeck.simulators.Commands().run(
        None,
        on=mg,
        commands=["cat results/count.txt mesh.txt > both.txt"],
        remote_assets=[f"{task.id}/outputs/results", "meshes/mesh.txt"],
        storage_dir="kept",
    )
    assert chained.wait(polling_period=0.3, silent_mode=True) == "success", stack.logs()
    project = Task.objects.get(pk=chained.id).project_id
    assert {f"storage/{project}/meshes/mesh.txt", f"storage/{project}/kept/{chained.id}/outputs.zip"} <= keys(
        s3_server, s3_env
    )
    kept = simdeck.storage.download("kept", tmp_path / "kept")  # through presigned URLs
    assert (kept / chained.id / "both.txt").read_text() == "1\n4 cells\n"
    mg.terminate()


def test_a_machine_whose_bucket_refuses_fails_the_task_saying_what_to_fix(
    s3_env, stack, client_for, alice_key, tmp_path
):
    client_for(alice_key)
    stack.restart_provider(SIMDECK_S3_SECRET_KEY="not-the-secret")
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    task = simdeck.simulators.Commands().run(input_dir=inputs(tmp_path), commands=["sh solve.sh"], on=mg)
    # Not the simulation's fault: the task ends as the machine's failure, with the reason.
    assert task.wait(polling_period=0.3, silent_mode=True) == "executor-failed", stack.logs()
    detail = task.get_info()["error_detail"]
    assert "The input could not be fetched from storage" in detail
    assert "refuses the secret key. Check SIMDECK_S3_SECRET_KEY." in detail
    mg.terminate()


def test_a_joined_host_fetches_and_stores_through_presigned_urls_without_the_buckets_keys(
    s3_server, s3_env, stack, client_for, alice_key, tmp_path
):
    """A host with only its join token reads the input from the bucket and puts its outputs there itself."""
    from tasks_app.services import hosts
    from tests.test_joined_hosts import Host

    _, secret = hosts.issue_token("far-ws")
    host = Host(stack.url, secret, tmp_path / "far-ws")
    try:
        client_for(alice_key)
        mg = simdeck.resources.MachineGroup("n2-standard-2", provider="hosts").start(timeout=90)
        # An input too big to come with the claim, and 12 MB of outputs: past the size that
        # goes to the bucket in presigned PUTs.
        case = inputs(tmp_path)
        (case / "field.bin").write_bytes(os.urandom(400_000))
        noise = "head -c 12000000 /dev/urandom > results/noise.bin"
        task = simdeck.simulators.Commands().run(input_dir=case, commands=["sh solve.sh", noise], on=mg)
        assert task.wait(polling_period=0.3, silent_mode=True) == "success", host.output()
    finally:
        host.stop()
    assert storage.output_name(task.id) in keys(s3_server, s3_env)
    # The input was a redirect to the bucket; the outputs went there in parts the server then joined.
    served = (stack.home / "web.log").read_text(errors="replace")
    assert f'GET /api/machine/v1/tasks/{task.id}/input" 302' in served
    assert f'POST /api/machine/v1/tasks/{task.id}/outputs/direct/done" 200' in served
    assert f"PUT /api/machine/v1/tasks/{task.id}/outputs?" not in served
    outputs = Path(task.download_outputs())
    assert (outputs / "results" / "count.txt").read_text().strip() == "1"
    assert (outputs / "results" / "noise.bin").stat().st_size == 12_000_000
    assert Task.objects.get(pk=task.id).output_path == storage.output_name(task.id)
