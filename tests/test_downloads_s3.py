"""Downloads from a bucket are presigned redirects: the bytes come from the S3 server, not from us."""

import hashlib
import io
import os

import httpx
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from simdeck import api as client_api
from simdeck.tasks import Task as ClientTask
from tasks_app import storage
from tasks_app.lifecycle import Status
from tasks_app.models import APIKey, Task
from tests.helpers import zipped
from tests.test_console_pages import HAPPY, make_task, store_input, store_log

pytestmark = pytest.mark.django_db

OUTPUTS = {"result.txt": b"42\n", "frames/0001.vtk": os.urandom(300_000)}


def store_outputs(task, files=OUTPUTS) -> bytes:
    data = zipped(files)
    name = default_storage.save(storage.output_name(task.id), ContentFile(data))
    Task.objects.filter(pk=task.pk).update(output_path=name, output_size=len(data))
    task.refresh_from_db()
    return data


def follow(response, s3_server) -> httpx.Response:
    """Fetch where a download redirects, as a browser would: without our cookies or key."""
    assert response.status_code == 302
    location = response["Location"]
    assert location.startswith(s3_server.endpoint + "/simdeck-tests/t-")
    assert "X-Amz-Signature=" in location
    assert response["Cache-Control"] == "private, no-store"
    return httpx.get(location)


def test_the_api_redirects_an_outputs_download_to_a_presigned_url(s3_server, s3_env, api, alice, group):
    task = make_task(alice, group, to=HAPPY)
    data = store_outputs(task)
    fetched = follow(api.get(f"/api/v1/tasks/{task.id}/outputs"), s3_server)
    assert fetched.status_code == 200
    assert fetched.content == data
    assert fetched.headers["Content-Disposition"] == f'attachment; filename="{task.id}-outputs.zip"'
    assert fetched.headers["Content-Type"] == "application/zip"


def test_the_api_redirects_logs_and_input_downloads_too(s3_server, s3_env, api, alice, group):
    task = make_task(alice, group, to=HAPPY)
    store_input(task, {"run.sh": b"echo hi\n"})
    store_log(task, "stderr", "a warning\n")
    log = follow(api.get(f"/api/v1/tasks/{task.id}/logs/stderr"), s3_server)
    assert (log.content, log.headers["Content-Type"]) == (b"a warning\n", "text/plain")
    given = follow(api.get(f"/api/v1/tasks/{task.id}/input"), s3_server)
    assert hashlib.sha256(given.content).hexdigest() == task.input_sha256


def test_a_presigned_url_is_refused_once_tampered_with(s3_server, s3_env, api, alice, group):
    task = make_task(alice, group, to=HAPPY)
    store_outputs(task)
    location = api.get(f"/api/v1/tasks/{task.id}/outputs")["Location"]
    other = location.replace(storage.output_name(task.id), storage.log_name(task.id, "stdout"))
    assert httpx.get(other).status_code == 403


def test_only_those_who_may_see_the_task_get_a_url(s3_env, client, alice, bob, group):
    task = make_task(alice, group, to=HAPPY)
    store_outputs(task)
    bobs_key = APIKey.issue(bob, "tests")[1]
    response = client.get(f"/api/v1/tasks/{task.id}/outputs", HTTP_AUTHORIZATION=f"Bearer {bobs_key}")
    assert response.status_code == 404
    assert "Location" not in response


def test_the_console_redirects_archive_and_log_downloads(s3_server, s3_env, logged_in, alice, group):
    task = make_task(alice, group, to=HAPPY)
    data = store_outputs(task)
    store_log(task, "stdout", "step 1\nerror here\nstep 2\n")
    archive = follow(logged_in.get(f"/tasks/{task.id}/files/outputs.zip"), s3_server)
    assert archive.content == data
    log = follow(logged_in.get(f"/tasks/{task.id}/logs/stdout.txt"), s3_server)
    assert log.content == b"step 1\nerror here\nstep 2\n"
    # A filtered log is made here, line by line, from a ranged read of the bucket.
    filtered = logged_in.get(f"/tasks/{task.id}/logs/stdout.txt", {"q": "error"})
    assert filtered.status_code == 200
    assert b"".join(filtered.streaming_content) == b"error here\n"


def test_one_file_of_the_outputs_is_unzipped_from_ranged_reads(s3_env, api, alice, group):
    task = make_task(alice, group, to=HAPPY)
    store_outputs(task)
    response = api.get(f"/api/v1/tasks/{task.id}/outputs/files/frames/0001.vtk")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == OUTPUTS["frames/0001.vtk"]
    listing = api.get(f"/api/v1/tasks/{task.id}/outputs/files").json()
    assert {f["path"] for f in listing["files"]} == set(OUTPUTS)


def test_a_task_without_stored_outputs_gets_no_url(s3_env, api, alice, group):
    task = make_task(alice, group, to=[Status.SUBMITTED, Status.PREPARING, Status.STARTED])
    response = api.get(f"/api/v1/tasks/{task.id}/outputs")
    assert response.status_code == 404


@pytest.fixture
def client_of(live_server, alice, monkeypatch, tmp_path):
    """The ``simdeck`` client of alice, talking to this process's server over HTTP."""
    monkeypatch.setenv("SIMDECK_CONFIG", str(tmp_path / "client.json"))
    monkeypatch.chdir(tmp_path)
    return client_api.Client(live_server.url, APIKey.issue(alice, "client")[1], retries=1)


@pytest.mark.django_db(transaction=True)
def test_the_client_follows_the_redirect_with_its_progress_intact(s3_env, client_of, alice, group, tmp_path):
    task = make_task(alice, group, to=HAPPY)
    data = store_outputs(task)
    seen = []
    with open(tmp_path / "got.zip", "wb") as sink:
        size = client_of.download(
            f"/tasks/{task.id}/outputs", sink, lambda done, total: seen.append((done, total))
        )
    assert size == len(data) == seen[-1][0]
    assert {total for _, total in seen} == {len(data)}  # the bucket's Content-Length reached the bar
    assert (tmp_path / "got.zip").read_bytes() == data
    remote = ClientTask(task.id)
    remote._client = client_of
    folder = remote.download_outputs(tmp_path / "unpacked")
    assert (folder / "frames/0001.vtk").read_bytes() == OUTPUTS["frames/0001.vtk"]


def test_a_download_the_bucket_refuses_is_reported_as_the_file_stores(s3_server, s3_env, api, alice, group):
    from simdeck.errors import SimdeckError

    task = make_task(alice, group, to=HAPPY)
    store_outputs(task)
    location = api.get(f"/api/v1/tasks/{task.id}/outputs")["Location"]
    tampered = location.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    with pytest.raises(SimdeckError, match=r"The file store at 127\.0\.0\.1:\d+ refused the download \(403"):
        client_api.fetch_presigned(tampered, io.BytesIO(), None)
