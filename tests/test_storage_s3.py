"""Inputs, outputs and logs in an S3 bucket, against a real S3 server (SeaweedFS)."""

import hashlib
import io
import zipfile
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from console import objectstore
from tasks_app import services, storage
from tasks_app.bucket import BucketStorage
from tasks_app.models import Task
from tests.test_api import create, upload, zipped

pytestmark = pytest.mark.django_db


def keys(s3_server, env) -> set[str]:
    """What is really in the bucket under the test's prefix, asked of the server itself."""
    prefix = env["SIMDECK_S3_PREFIX"] + "/"
    listing = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix)
    return {item["Key"].removeprefix(prefix) for item in listing.get("Contents", [])}


def test_without_a_bucket_files_stay_in_the_local_folder(tmp_path):
    assert objectstore.bucket_storage({}, tmp_path) is None


def test_the_usual_aws_names_configure_the_bucket_too(tmp_path):
    entry = objectstore.bucket_storage(
        {
            "AWS_STORAGE_BUCKET_NAME": "runs",
            "AWS_ACCESS_KEY_ID": "id",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "AWS_DEFAULT_REGION": "eu-west-3",
        },
        tmp_path,
    )
    options = entry["OPTIONS"]
    assert (options["bucket_name"], options["access_key"], options["region_name"]) == (
        "runs",
        "id",
        "eu-west-3",
    )
    assert options["addressing_style"] is None  # AWS itself: the default addressing


def test_simdecks_own_names_win_over_the_aws_ones(tmp_path):
    env = {
        "SIMDECK_S3_BUCKET": "ours",
        "AWS_STORAGE_BUCKET_NAME": "theirs",
        "SIMDECK_S3_ENDPOINT_URL": "http://s3",
    }
    options = objectstore.bucket_storage(env, tmp_path)["OPTIONS"]
    assert options["bucket_name"] == "ours"
    assert options["addressing_style"] == "path"  # an S3-compatible server of one's own


@pytest.mark.parametrize(
    "setting, value, said",
    [
        ("SIMDECK_S3_ADDRESSING_STYLE", "sideways", "use one of auto, path, virtual"),
        ("SIMDECK_S3_URL_SECONDS", "10", "from 60 to 604800"),
        ("SIMDECK_S3_URL_SECONDS", "soon", "whole seconds"),
    ],
)
def test_a_bad_setting_is_refused_with_what_to_give(tmp_path, setting, value, said):
    with pytest.raises(objectstore.BadSetting, match=said):
        objectstore.bucket_storage({"SIMDECK_S3_BUCKET": "b", setting: value}, tmp_path)


def test_a_machines_logs_and_outputs_are_stored_in_the_bucket(s3_server, s3_env, tmp_path):
    assert isinstance(default_storage, BucketStorage)
    produced = tmp_path / "stdout.txt"
    produced.write_bytes(b"step 1\nstep 2\n")
    name = storage.save_file(storage.log_name("t1", "stdout"), produced)
    assert name == "tasks/t1/logs/stdout.txt"
    assert keys(s3_server, s3_env) == {name}
    produced.write_bytes(b"again\n")
    storage.save_file(name, produced)  # stored again, in place of the first
    with storage.open_file(name) as f:
        assert f.read() == b"again\n"
    assert default_storage.size(name) == 6
    assert produced.exists()  # a bucket copies; only a local folder takes the file itself


def test_an_uploaded_input_goes_to_the_bucket_with_its_checksum(s3_server, s3_env, api, alice):
    services.start_group(services.create_group(alice, machine_type="c2-standard-4", name="lab"))
    task_id = create(api).json()["id"]
    data = zipped({"run.sh": b"echo hi\n"})
    assert upload(api, task_id, data).status_code == 200
    task = Task.objects.get(pk=task_id)
    assert keys(s3_server, s3_env) == {task.input_path}
    body = s3_server.client().get_object(
        Bucket=s3_server.bucket, Key=f"{s3_env['SIMDECK_S3_PREFIX']}/{task.input_path}"
    )
    assert hashlib.sha256(body["Body"].read()).hexdigest() == task.input_sha256


def test_a_stored_archive_reads_as_a_seekable_file(s3_env):
    members = {f"frames/{i:03}.bin": bytes([i]) * (50_000 + i) for i in range(40)}
    data = zipped(members)
    name = default_storage.save(storage.output_name("t2"), ContentFile(data))
    with storage.open_file(name) as f, zipfile.ZipFile(f) as zf:
        assert zf.read("frames/039.bin") == members["frames/039.bin"]
        assert zf.read("frames/000.bin") == members["frames/000.bin"]
        assert len(zf.infolist()) == 40
    empty = default_storage.save("tasks/t2/logs/stderr.txt", ContentFile(b""))
    with storage.open_file(empty) as f:
        assert f.read() == b""
    with storage.open_file(name) as f:
        f.seek(-10, io.SEEK_END)
        assert f.read() == data[-10:]
        f.seek(1000)
        assert f.read(5) == data[1000:1005]
        assert f.read() == data[1005:]


def test_files_stored_in_the_folder_before_the_bucket_are_still_read(s3_env, settings):
    folder = Path(settings.STORAGES["default"]["OPTIONS"]["local_folder"])
    old = folder / storage.log_name("old", "stderr")
    old.parent.mkdir(parents=True)
    old.write_bytes(b"from before\n")
    name = storage.log_name("old", "stderr")
    assert storage.exists(name)
    assert default_storage.size(name) == 12
    with storage.open_file(name) as f:
        assert f.read() == b"from before\n"
    assert storage.download_url(name, "old-stderr.txt") is None  # served by us, as before
    default_storage.delete(name)
    assert not old.exists() and not storage.exists(name)


def refusing(settings, s3_server, **changes):
    env = s3_server.env(s3_server.bucket) | changes
    settings.STORAGES = {**settings.STORAGES, "default": objectstore.bucket_storage(env, "/nonexistent")}


@pytest.mark.parametrize(
    "changes, said",
    [
        ({"SIMDECK_S3_BUCKET": "no-such-bucket"}, "bucket 'no-such-bucket' at http://127.0.0.1:"),
        ({"SIMDECK_S3_BUCKET": "no-such-bucket"}, "does not exist. Create it, or set SIMDECK_S3_BUCKET"),
        ({"SIMDECK_S3_SECRET_KEY": "wrong"}, "refuses the secret key. Check SIMDECK_S3_SECRET_KEY."),
        ({"SIMDECK_S3_ACCESS_KEY": "stranger"}, "does not know the access key. Check SIMDECK_S3_ACCESS_KEY."),
        ({"SIMDECK_S3_ENDPOINT_URL": "http://127.0.0.1:9"}, "Cannot reach the bucket"),
    ],
)
def test_a_bucket_that_refuses_is_reported_with_what_to_change(settings, s3_server, changes, said):
    refusing(settings, s3_server, **changes)
    with pytest.raises(storage.StorageUnavailable) as refused:
        storage.check()
    assert said in str(refused.value)


def test_a_working_bucket_passes_the_check(s3_server, s3_env):
    assert storage.check() == f"in bucket 'simdeck-tests' at {s3_server.endpoint}"


def test_an_upload_to_a_refusing_bucket_answers_503_with_the_reason(settings, s3_server, api, alice):
    services.start_group(services.create_group(alice, machine_type="c2-standard-4", name="lab"))
    task_id = create(api).json()["id"]
    refusing(settings, s3_server, SIMDECK_S3_BUCKET="gone")
    response = upload(api, task_id, zipped({"run.sh": b"echo hi\n"}))
    assert response.status_code == 503
    assert response.json()["error"] == "storage_unavailable"
    assert "The bucket 'gone'" in response.json()["message"]
    assert "does not exist" in response.json()["message"]
    assert Task.objects.get(pk=task_id).status == "pending-input"


def test_starting_up_says_where_files_go_or_what_the_bucket_refuses(settings, s3_server, s3_env):
    from tasks_app.management.commands.up import storage_status

    assert storage_status() == f"Files: stored in bucket 'simdeck-tests' at {s3_server.endpoint}."
    refusing(settings, s3_server, SIMDECK_S3_SECRET_KEY="wrong")
    said = storage_status()
    assert said.startswith("FILE STORAGE REFUSES, so no task can be submitted or store outputs: The bucket")
    assert said.endswith("refuses the secret key. Check SIMDECK_S3_SECRET_KEY.")
