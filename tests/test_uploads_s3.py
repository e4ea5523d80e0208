"""Big inputs go straight to the bucket in presigned PUTs, multipart beyond a size (SeaweedFS)."""

import hashlib
import os

import httpx
import pytest
from django.core.files.storage import default_storage
from django.core.signals import request_started

import simdeck
from simdeck import api as client_api
from tasks_app import services, storage
from tasks_app.lifecycle import Status
from tasks_app.models import APIKey, Task
from tests.test_api import create, zipped

pytestmark = pytest.mark.django_db


@pytest.fixture
def lab(alice):
    return services.start_group(services.create_group(alice, machine_type="c2-standard-4", name="lab"))


@pytest.fixture
def small_parts(monkeypatch):
    """Multipart from 8 MiB in parts of 5 MiB (the least S3 allows): megabytes to send, not gigabytes."""
    monkeypatch.setattr(storage, "SINGLE_PUT_BYTES", 8 * 1024 * 1024)
    monkeypatch.setattr(storage, "PART_BYTES", 5 * 1024 * 1024)


def object_key(env, name: str) -> str:
    return f"{env['SIMDECK_S3_PREFIX']}/{name}"


@pytest.fixture
def client_of(live_server, alice, monkeypatch, tmp_path, no_broker):
    """alice's ``simdeck`` client, talking to this process's server over HTTP."""
    monkeypatch.setenv("SIMDECK_API_URL", live_server.url)
    monkeypatch.setenv("SIMDECK_API_KEY", APIKey.issue(alice, "client")[1])
    monkeypatch.setenv("SIMDECK_CONFIG", str(tmp_path / "client.json"))
    monkeypatch.chdir(tmp_path)
    client_api.default_client.cache_clear()
    yield client_api.client()
    client_api.default_client.cache_clear()


def big_case(tmp_path, megabytes: int):
    folder = tmp_path / "case"
    folder.mkdir()
    (folder / "mesh.bin").write_bytes(os.urandom(megabytes * 1024 * 1024))
    (folder / "run.sh").write_text("wc -c mesh.bin\n")
    return folder


@pytest.mark.django_db(transaction=True)
def test_the_client_sends_a_big_input_straight_to_the_bucket_in_parts(
    s3_server, s3_env, small_parts, client_of, lab, tmp_path
):
    asked = []

    def note(sender, environ, **kwargs):
        asked.append(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}")

    request_started.connect(note)
    try:
        task = simdeck.simulators.Commands().run(
            input_dir=big_case(tmp_path, 12), commands=["sh run.sh"], on="lab"
        )
    finally:
        request_started.disconnect(note)
    assert f"POST /api/v1/tasks/{task.id}/input/direct/done" in asked
    assert f"PUT /api/v1/tasks/{task.id}/input" not in asked, "no byte of it through the web server"
    stored = Task.objects.get(pk=task.id)
    assert stored.status == Status.SUBMITTED
    assert stored.input_path == storage.input_name(task.id)
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key=object_key(s3_env, stored.input_path))
    assert head["ContentLength"] == stored.input_size
    assert not storage.exists(storage.upload_name(task.id)), "moved to where presigned URLs cannot reach"
    with storage.open_file(stored.input_path) as f:
        assert hashlib.sha256(f.read()).hexdigest() == stored.input_sha256


def test_an_input_below_the_multipart_size_is_one_presigned_put(s3_env, small_parts, api, lab):
    task_id = create(api).json()["id"]
    data = zipped({"run.sh": b"echo hi\n", "mesh.bin": os.urandom(1024 * 1024)})
    plan = api.post(
        f"/api/v1/tasks/{task_id}/input/direct", {"size": len(data)}, content_type="application/json"
    )
    assert plan.json()["upload_id"] is None
    [part] = plan.json()["parts"]
    assert (part["offset"], part["size"]) == (0, len(data))
    assert httpx.put(part["url"], content=data).status_code == 200
    done = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    response = api.post(f"/api/v1/tasks/{task_id}/input/direct/done", done, content_type="application/json")
    assert response.json()["status"] == "submitted"
    with storage.open_file(storage.input_name(task_id)) as f:
        assert f.read() == data


@pytest.mark.django_db(transaction=True)
def test_without_a_bucket_the_client_uploads_a_big_input_through_the_server(client_of, lab, tmp_path):
    task = simdeck.simulators.Commands().run(
        input_dir=big_case(tmp_path, 9), commands=["sh run.sh"], on="lab"
    )
    stored = Task.objects.get(pk=task.id)
    assert stored.status == Status.SUBMITTED
    assert default_storage.size(stored.input_path) == stored.input_size


def test_a_server_without_a_bucket_says_to_use_the_upload_url(api, lab):
    task_id = create(api).json()["id"]
    response = api.post(
        f"/api/v1/tasks/{task_id}/input/direct", {"size": 1000}, content_type="application/json"
    )
    assert response.status_code == 409
    assert response.json()["error"] == "no_direct_upload"
    done = {"size": 1000, "sha256": "0" * 64}
    response = api.post(f"/api/v1/tasks/{task_id}/input/direct/done", done, content_type="application/json")
    assert response.status_code == 409


def test_a_direct_upload_that_does_not_match_its_checksum_is_refused_and_removed(s3_server, s3_env, api, lab):
    task_id = create(api).json()["id"]
    meant = zipped({"run.sh": b"echo hi\n"})
    sent = zipped({"run.sh": b"echo ho\n"})
    plan = api.post(
        f"/api/v1/tasks/{task_id}/input/direct", {"size": len(sent)}, content_type="application/json"
    )
    [part] = plan.json()["parts"]
    put = httpx.put(part["url"], content=sent)
    assert put.status_code == 200
    done = {"size": len(sent), "sha256": hashlib.sha256(meant).hexdigest(), "parts": []}
    response = api.post(f"/api/v1/tasks/{task_id}/input/direct/done", done, content_type="application/json")
    assert response.status_code == 400
    assert "checksum does not match" in response.json()["message"]
    assert not storage.exists(storage.upload_name(task_id))
    assert not storage.exists(storage.input_name(task_id))
    assert Task.objects.get(pk=task_id).status == Status.PENDING_INPUT


def test_finishing_without_sending_is_refused_as_cut_short(s3_env, api, lab):
    task_id = create(api).json()["id"]
    api.post(f"/api/v1/tasks/{task_id}/input/direct", {"size": 500}, content_type="application/json")
    done = {"size": 500, "sha256": "0" * 64, "parts": []}
    response = api.post(f"/api/v1/tasks/{task_id}/input/direct/done", done, content_type="application/json")
    assert response.status_code == 400
    assert "0 of 500 bytes arrived" in response.json()["message"]


def test_a_presigned_put_is_for_its_own_key_only(s3_server, s3_env, api, lab):
    task_id = create(api).json()["id"]
    plan = api.post(f"/api/v1/tasks/{task_id}/input/direct", {"size": 10}, content_type="application/json")
    url = plan.json()["parts"][0]["url"].replace("upload/input.zip", "input.zip")
    assert httpx.put(url, content=b"0123456789").status_code == 403


def test_only_the_owner_gets_upload_urls(s3_env, client, bob, api, lab):
    task_id = create(api).json()["id"]
    bobs = APIKey.issue(bob, "tests")[1]
    response = client.post(
        f"/api/v1/tasks/{task_id}/input/direct",
        {"size": 10},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {bobs}",
    )
    assert response.status_code == 404


def test_the_parts_of_a_multipart_upload_are_joined_checked_and_queued(s3_env, small_parts, api, lab):
    task_id = create(api).json()["id"]
    data = zipped({"run.sh": b"echo hi\n", "mesh.bin": os.urandom(12 * 1024 * 1024)})
    plan = api.post(
        f"/api/v1/tasks/{task_id}/input/direct", {"size": len(data)}, content_type="application/json"
    )
    assert plan.status_code == 200
    assert plan.json()["upload_id"]
    parts = plan.json()["parts"]
    assert [(p["offset"], p["size"]) for p in parts] == [
        (0, 5 * 1024 * 1024),
        (5 * 1024 * 1024, 5 * 1024 * 1024),
        (10 * 1024 * 1024, len(data) - 10 * 1024 * 1024),
    ]
    etags = []
    for part in reversed(parts):  # in any order
        put = httpx.put(part["url"], content=data[part["offset"] : part["offset"] + part["size"]])
        assert put.status_code == 200
        etags.append({"number": part["number"], "etag": put.headers["ETag"]})
    done = {"upload_id": plan.json()["upload_id"], "parts": etags, "size": len(data)}
    done["sha256"] = hashlib.sha256(data).hexdigest()
    response = api.post(f"/api/v1/tasks/{task_id}/input/direct/done", done, content_type="application/json")
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "submitted"
    with storage.open_file(storage.input_name(task_id)) as f:
        assert f.read() == data


def test_what_an_abandoned_task_was_sent_is_removed_with_it(s3_server, s3_env, small_parts, api, lab):
    from tasks_app import housekeeping

    halfway, unfinished = create(api).json()["id"], create(api).json()["id"]
    plan = api.post(
        f"/api/v1/tasks/{halfway}/input/direct", {"size": 12 * 1024 * 1024}, content_type="application/json"
    )
    first = plan.json()["parts"][0]
    assert httpx.put(first["url"], content=os.urandom(first["size"])).status_code == 200
    [part] = api.post(
        f"/api/v1/tasks/{unfinished}/input/direct", {"size": 10}, content_type="application/json"
    ).json()["parts"]
    assert httpx.put(part["url"], content=b"0123456789").status_code == 200
    s3 = s3_server.client()

    def pending(task_id):
        key = object_key(s3_env, storage.upload_name(task_id))
        return [
            u
            for u in s3.list_multipart_uploads(Bucket=s3_server.bucket).get("Uploads", [])
            if u["Key"] == key
        ]

    assert pending(halfway) and storage.exists(storage.upload_name(unfinished))
    Task.objects.filter(pk__in=[halfway, unfinished]).update(created_at="2020-01-01T00:00Z")
    assert housekeeping.clean_abandoned_uploads(older_than_minutes=60) == 2
    assert not pending(halfway)
    assert not storage.exists(storage.upload_name(unfinished))
