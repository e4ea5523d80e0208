"""Submitting with the input inside the request: one POST creates the task and queues it."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tasks_app import services
from tasks_app.api.tasks import INLINE_INPUT_MAX_BYTES
from tasks_app.lifecycle import Status
from tasks_app.models import Task
from tests.helpers import zipped
from tests.test_api import create, upload

pytestmark = pytest.mark.django_db


def inline(data: bytes, sha: str | None = None) -> dict:
    return {
        "input_archive": base64.b64encode(data).decode(),
        "input_sha256": sha or hashlib.sha256(data).hexdigest(),
    }


def test_a_small_input_inside_the_post_queues_the_task_at_once(api, started_group):
    data = zipped({"run.sh": b"echo hi"})
    response = create(api, **inline(data))
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "submitted"
    assert body["upload_url"] is None
    assert body["input_size"] == len(data)
    task = Task.objects.get(pk=body["id"])
    assert task.input_sha256 == hashlib.sha256(data).hexdigest()
    assert list(task.events.values_list("to_status", flat=True)) == [Status.SUBMITTED]
    # The input is stored and served back as it was sent.
    assert b"".join(api.get(f"/api/v1/tasks/{task.id}/input").streaming_content) == data
    # Nothing is left to upload.
    assert upload(api, task.id, data).status_code == 409


def test_without_an_inline_input_the_task_waits_for_its_upload(api, started_group):
    body = create(api).json()
    assert body["status"] == "pending-input"
    assert body["upload_url"] == f"/api/v1/tasks/{body['id']}/input"


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"input_archive": "not base64!", "input_sha256": "0" * 64}, "input_archive", "base64"),
        ({"input_archive": base64.b64encode(zipped({"run.sh": b"x"})).decode()}, "input_sha256", "SHA-256"),
        (inline(zipped({"run.sh": b"x"}), sha="0" * 64), "input", "checksum"),
        (inline(b"plain text, not a zip"), "input", "not a zip"),
    ],
)
def test_a_bad_inline_input_is_refused_and_leaves_no_task(api, started_group, fields, field, words):
    response = create(api, **fields)
    assert response.status_code == 400, response.content
    assert response.json()["field"] == field
    assert words in response.json()["message"]
    assert not Task.objects.exists()


def test_an_inline_input_over_the_limit_says_to_upload_it(api, started_group):
    data = b"\0" * (INLINE_INPUT_MAX_BYTES + 1)
    response = create(api, **inline(data))
    assert response.status_code == 413
    assert response.json()["field"] == "input_archive"
    assert "upload_url" in response.json()["message"]
    assert not Task.objects.exists()


def test_an_inline_input_to_a_terminated_group_is_refused(api, started_group):
    services.terminate_group(started_group)
    response = create(api, **inline(zipped({"run.sh": b"echo hi"})))
    assert response.status_code == 409
    assert not Task.objects.exists()
