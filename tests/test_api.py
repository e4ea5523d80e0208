"""The JSON API: authentication, creating tasks, uploads, and clear errors."""

import hashlib

import pytest

from tasks_app import housekeeping, services
from tasks_app.lifecycle import Status
from tasks_app.models import APIKey, Task, TaskEvent
from tests.helpers import zipped

pytestmark = pytest.mark.django_db


def create(api, **overrides):
    body = {
        "simulator": "commands",
        "machine_group": "lab",
        "input_files": ["run.sh"],
        "parameters": {"commands": ["sh run.sh"]},
    } | overrides
    return api.post("/api/v1/tasks", body, content_type="application/json")


def upload(api, task_id, data: bytes, *, size=None, sha=None):
    return api.put(
        f"/api/v1/tasks/{task_id}/input",
        data,
        content_type="application/zip",
        HTTP_X_CONTENT_SHA256=sha or hashlib.sha256(data).hexdigest(),
        HTTP_X_ARCHIVE_SIZE=str(len(data) if size is None else size),
    )


def test_it_refuses_a_missing_key(client):
    response = client.get("/api/v1/tasks")
    assert response.status_code == 401
    assert response.json()["error"] == "unauthenticated"
    assert "createapikey" in response.json()["message"]


def test_it_refuses_a_wrong_or_revoked_key(client, alice):
    key, secret = APIKey.issue(alice, "old")
    assert client.get("/api/v1/tasks", HTTP_AUTHORIZATION="Bearer sdk_wrong").status_code == 401
    assert client.get("/api/v1/tasks", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200
    APIKey.objects.filter(pk=key.pk).update(revoked_at="2026-01-01T00:00Z")
    assert client.get("/api/v1/tasks", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 401


def test_keys_are_stored_only_as_hashes(alice):
    key, secret = APIKey.issue(alice, "cli")
    assert secret not in (key.digest, key.hint)
    assert key.digest == hashlib.sha256(secret.encode()).hexdigest()


def test_every_run_creates_a_new_task_with_a_25_character_id(api, started_group):
    first, second = create(api).json(), create(api).json()
    assert first["id"] != second["id"]
    for body in (first, second):
        assert len(body["id"]) == 25 and body["id"].isalnum() and body["id"].islower()
        assert body["status"] == "pending-input"
        assert body["upload_url"] == f"/api/v1/tasks/{body['id']}/input"


def test_an_upload_queues_the_task_and_records_the_event(
    api, started_group, django_capture_on_commit_callbacks
):
    task_id = create(api).json()["id"]
    with django_capture_on_commit_callbacks() as callbacks:
        response = upload(api, task_id, zipped({"run.sh": b"echo hi"}))
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "submitted"
    assert body["position_in_queue"] == 0
    assert [e["to_status"] for e in body["events"]] == ["submitted"]
    # The message to the machines and the live status push, both after commit.
    assert len(callbacks) == 2


def test_a_truncated_upload_is_refused_and_the_task_keeps_waiting(api, started_group):
    task_id = create(api).json()["id"]
    data = zipped({"run.sh": b"echo hi"})
    response = upload(api, task_id, data[:-10], size=len(data), sha=hashlib.sha256(data).hexdigest())
    assert response.status_code == 400
    assert response.json()["error"] == "bad_upload"
    assert "cut short" in response.json()["message"]
    assert Task.objects.get(pk=task_id).status == Status.PENDING_INPUT


def test_a_corrupt_upload_is_refused(api, started_group):
    task_id = create(api).json()["id"]
    response = upload(api, task_id, zipped({"run.sh": b"echo hi"}), sha="0" * 64)
    assert response.status_code == 400
    assert "checksum" in response.json()["message"]
    assert Task.objects.get(pk=task_id).status == Status.PENDING_INPUT


def test_a_second_upload_is_refused(api, started_group):
    task_id = create(api).json()["id"]
    data = zipped({"run.sh": b"echo hi"})
    assert upload(api, task_id, data).status_code == 200
    response = upload(api, task_id, data)
    assert response.status_code == 409


@pytest.mark.parametrize(
    "overrides, field, words",
    [
        (
            {"simulator": "fluentx"},
            "simulator",
            "Available simulators: commands, gromacs, lammps, openfoam, quantumespresso, splishsplash",
        ),
        ({"machine_group": "nope"}, None, "No machine group named 'nope'"),
        ({"input_files": []}, "input_files", "empty"),
        ({"parameters": {}}, "commands", "non-empty list"),
        ({"parameters": {"commands": ["ok"], "colour": "red"}}, "colour", "unknown"),
        (
            {"simulator": "splishsplash", "parameters": {"sim_config_filename": "scene.json"}},
            "sim_config_filename",
            "scene.json",
        ),
        ({"time_to_live": "soon"}, "time_to_live", "1h30m"),
        ({"metadata": {"speed": ""}}, "metadata", "non-empty"),
        ({"project": "a/b"}, "project", "the group belongs to project"),
    ],
)
def test_bad_submissions_say_what_is_wrong_and_create_nothing(api, started_group, overrides, field, words):
    response = create(api, **overrides)
    assert 400 <= response.status_code < 500
    body = response.json()
    assert words in body["message"]
    if field:
        assert body["field"] == field
    assert not Task.objects.exists()


def test_an_unknown_machine_type_lists_the_known_ones(api):
    response = api.post(
        "/api/v1/machine-groups", {"machine_type": "z9-huge"}, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["field"] == "machine_type"
    assert "c2-standard-4" in response.json()["message"]


def test_a_terminated_group_refuses_new_tasks(api, started_group, alice):
    services.terminate_group(started_group, actor=alice)
    response = create(api)
    assert response.status_code == 409
    assert "terminated" in response.json()["message"]


def test_terminating_a_group_ends_its_queued_tasks_as_zombies(api, started_group, alice):
    queued = create(api).json()["id"]
    upload(api, queued, zipped({"run.sh": b"echo hi"}))
    waiting = create(api).json()["id"]
    response = api.post("/api/v1/machine-groups/lab/terminate")
    assert response.json()["state"] == "terminating"
    assert Task.objects.get(pk=queued).status == Status.ZOMBIE
    assert Task.objects.get(pk=waiting).status == Status.ZOMBIE
    assert TaskEvent.objects.get(task_id=queued, to_status=Status.ZOMBIE).actor == alice


def test_another_users_task_answers_404(client, bob, api, started_group):
    task_id = create(api).json()["id"]
    _, bob_key = APIKey.issue(bob, "bob")
    response = client.get(f"/api/v1/tasks/{task_id}", HTTP_AUTHORIZATION=f"Bearer {bob_key}")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_listing_filters_by_status_aliases_and_pages_with_a_cursor(api, started_group):
    ids = [create(api).json()["id"] for _ in range(5)]
    page = api.get("/api/v1/tasks", {"limit": 2}).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    seen = [t["id"] for t in page["items"]]
    while page["next_cursor"]:
        page = api.get("/api/v1/tasks", {"limit": 2, "cursor": page["next_cursor"]}).json()
        seen += [t["id"] for t in page["items"]]
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    assert api.get("/api/v1/tasks", {"status": "completed"}).json()["items"] == []
    assert len(api.get("/api/v1/tasks", {"status": "pending-input"}).json()["items"]) == 5
    bad = api.get("/api/v1/tasks", {"status": "finished"})
    assert bad.status_code == 400 and "Known statuses" in bad.json()["message"]


def test_abandoned_uploads_are_cleaned_up_with_an_event(api, started_group):
    task_id = create(api).json()["id"]
    Task.objects.filter(pk=task_id).update(created_at="2020-01-01T00:00Z")
    assert housekeeping.clean_abandoned_uploads(older_than_minutes=60) == 1
    event = TaskEvent.objects.get(task_id=task_id)
    assert event.to_status == Status.KILLED
    assert "No input arrived" in event.reason


def test_the_openapi_document_lists_the_endpoints(client):
    doc = client.get("/api/v1/openapi.json").json()
    assert doc["info"]["title"] == "Simdeck API"
    for path in ("/api/v1/tasks", "/api/v1/tasks/{task_id}/input", "/api/v1/machine-groups"):
        assert path in doc["paths"]


def test_a_request_django_refuses_before_any_view_still_gets_the_apis_error_shape(client):
    """A Host header the server does not answer to: JSON under /api/, Django's page elsewhere."""
    answer = client.get("/api/v1/statuses", HTTP_HOST="H")
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"] == "bad_request" and body["message"] and body["field"] is None
    assert client.get("/overview/", HTTP_HOST="H")["Content-Type"].startswith("text/html")
