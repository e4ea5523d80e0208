"""The versioned API: its document, its filters and pages, its files, and one shape for every error."""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client
from django.utils import timezone
from openapi_spec_validator import validate

from tasks_app import lifecycle, services, storage
from tasks_app.api.endpoints import api as ninja_api
from tasks_app.lifecycle import Status
from tasks_app.models import APIKey, Task
from tests.helpers import zipped
from tests.test_api import create, upload

pytestmark = pytest.mark.django_db


def queued_task(api, **overrides) -> Task:
    task_id = create(api, **overrides).json()["id"]
    assert upload(api, task_id, zipped({"run.sh": b"echo hi"})).status_code == 200
    return Task.objects.get(pk=task_id)


def move(task: Task, *steps: tuple[Status, dt.datetime]) -> None:
    """Walk a task through statuses at given times, as machines would."""
    for status, at in steps:
        assert lifecycle.transition(task, status, reason="test", at=at)


def finished_task(api, outputs: dict[str, bytes], status: Status = Status.SUCCESS) -> Task:
    """A task that ran and stored ``outputs`` and its logs."""
    task = queued_task(api)
    now = timezone.now()
    move(task, (Status.PREPARING, now), (Status.STARTED, now), (Status.FINALIZING, now), (status, now))
    name = default_storage.save(storage.output_name(task.id), ContentFile(zipped(outputs)))
    for stream in ("stdout", "stderr"):
        if f"{stream}.txt" in outputs:
            default_storage.save(storage.log_name(task.id, stream), ContentFile(outputs[f"{stream}.txt"]))
    size = sum(len(data) for data in outputs.values())
    Task.objects.filter(pk=task.pk).update(output_path=name, output_size=size, output_files=len(outputs))
    return Task.objects.get(pk=task.pk)


# -- the document ----------------------------------------------------------------------


def operations_registered() -> set[tuple[str, str]]:
    """(method, path) of every operation the API serves, read from its routers."""
    found = set()
    for prefix, router in ninja_api._routers:
        for path, view in router.path_operations.items():
            for operation in view.operations:
                if not operation.include_in_schema:
                    continue
                full = "/api/v1/" + "/".join(p.strip("/") for p in (prefix, path) if p.strip("/"))
                full = full.replace("{path:path}", "{path}")
                for method in operation.methods:
                    found.add((method.lower(), full))
    return found


def test_the_openapi_document_is_valid_and_lists_every_operation(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    validate(doc)  # raises with the offending part when the document breaks OpenAPI 3.1
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    registered = operations_registered()
    assert len(registered) >= 30
    assert registered == documented
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if op.get("security") == [] or path.endswith("/statuses"):
                continue
            # Every operation behind a key says how it refuses, with the one error shape.
            assert "401" in op["responses"], (method, path)
            assert op["responses"]["401"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"
            }


def test_the_docs_page_works_offline(client):
    page = client.get("/api/v1/docs")
    assert page.status_code == 200
    html = page.content.decode()
    assert "/api/v1/docs/assets/swagger-ui-bundle.js" in html
    assert "/api/v1/openapi.json" in html
    assert "http" not in html.replace("http-equiv", "")  # nothing fetched from elsewhere
    bundle = client.get("/api/v1/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200
    assert client.get("/api/v1/docs/assets/secrets.py").status_code == 404


# -- errors -----------------------------------------------------------------------------------


def assert_error(response, status: int, code: str, field: str | None = None) -> str:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error", "message", "field"}
    assert body["error"] == code and body["field"] == field
    assert body["message"].endswith((".", ")")) or "simdeck" in body["message"]
    return body["message"]


def test_every_error_has_the_same_shape(api, started_group, settings):
    anonymous = Client()
    assert_error(anonymous.get("/api/v1/tasks"), 401, "unauthenticated")
    assert_error(api.get("/api/v1/tasks/" + "a" * 25), 404, "not_found")
    # Paths of actions, read as task ids: no such task, as for any other id.
    assert_error(api.get("/api/v1/tasks/kill"), 404, "not_found")
    assert_error(api.get("/api/v1/tasks/batch"), 404, "not_found")
    assert_error(anonymous.get("/api/v1/tasks/kill"), 401, "unauthenticated")
    message = assert_error(api.get("/api/v1/no-such-thing"), 404, "not_found")
    assert "/api/v1/docs" in message
    # Digits int() refuses, and numbers too long for an id: not found, never a server error.
    for ref in ("%C2%B9", "9" * 30):
        assert_error(api.get(f"/api/v1/projects/{ref}"), 404, "not_found")
        assert_error(api.get(f"/api/v1/machine-groups/{ref}"), 404, "not_found")
    assert_error(anonymous.delete("/api/v1/tasks/x/y/z"), 404, "not_found")
    assert_error(api.get("/api/v1/tasks", {"limit": 0}), 400, "invalid", "limit")
    assert_error(api.get("/api/v1/tasks", {"created_after": "yesterday"}), 400, "invalid", "created_after")
    assert_error(api.get("/api/v1/tasks", {"cursor": "!!"}), 400, "invalid", "cursor")
    assert_error(api.get("/api/v1/tasks", {"metadata": "speed"}), 400, "invalid", "metadata")
    assert_error(api.get("/api/v1/tasks", {"status": "finished"}), 400, "invalid", "status")
    assert_error(api.post("/api/v1/tasks", "{", content_type="application/json"), 400, "invalid")
    task = queued_task(api)
    assert_error(upload(api, task.id, b"again"), 409, "conflict")
    # Sizes: an input archive larger than allowed is refused before it is read,
    # and so is a JSON body larger than Django accepts.
    settings.SIMDECK_MAX_UPLOAD_BYTES = 100
    big = create(api).json()["id"]
    message = assert_error(upload(api, big, b"x" * 101), 413, "too_large", "X-Archive-Size")
    assert "at most 100" in message
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 50
    assert_error(
        api.put(
            f"/api/v1/tasks/{task.id}/metadata",
            {"metadata": {"k": "v" * 100}},
            content_type="application/json",
        ),
        413,
        "too_large",
    )


# -- listing -------------------------------------------------------------------------------------


def test_tasks_are_filtered_by_every_criterion(api, client, started_group, alice, bob, django_user_model):
    wind = services.start_group(
        services.create_group(alice, machine_type="c2-standard-4", name="wind-lab", project="wind")
    )
    a = queued_task(api, machine_group=wind.name, metadata={"speed": "10", "site": "north"})
    b = queued_task(api, machine_group=wind.name, metadata={"speed": "15"})
    c = create(
        api,
        simulator="splishsplash",
        input_files=["scene.json"],
        parameters={"sim_config_filename": "scene.json"},
    )
    c = Task.objects.get(pk=c.json()["id"])
    other = services.start_group(services.create_group(alice, machine_type="n2-standard-2", name="small"))
    d = queued_task(api, machine_group="small")
    lifecycle.transition(d, Status.KILLED, reason="test")
    Task.objects.filter(pk=a.pk).update(created_at=timezone.now() - dt.timedelta(days=3))

    def ids(**params) -> list[str]:
        response = api.get("/api/v1/tasks", params)
        assert response.status_code == 200, response.json()
        return [t["id"] for t in response.json()["items"]]

    assert ids() == [d.id, c.id, b.id, a.id]
    assert ids(status="in-queue") == [b.id, a.id]
    assert ids(status="submitted,killed") == [d.id, b.id, a.id]
    assert ids(status=["pending-input", "killed"]) == [d.id, c.id]
    assert ids(project="wind") == [b.id, a.id]
    assert ids(simulator="SplishSplash") == [c.id]
    assert ids(machine_group=other.name) == [d.id]
    assert ids(metadata="speed=10") == [a.id]
    assert ids(metadata=["speed=10", "site=north"]) == [a.id]
    assert ids(metadata=["speed=10", "site=south"]) == []
    assert ids(created_before=(timezone.now() - dt.timedelta(days=1)).isoformat()) == [a.id]
    assert ids(created_after=(timezone.now() - dt.timedelta(days=1)).date().isoformat()) == [d.id, c.id, b.id]
    assert ids(id=[a.id, c.id]) == [c.id, a.id]
    assert ids(owner="alice", project="wind", status="completed") == []

    # Bob sees none of it; staff sees everyone's and can pick an owner.
    bob_key = APIKey.issue(bob, "bob")[1]
    response = client.get("/api/v1/tasks", HTTP_AUTHORIZATION=f"Bearer {bob_key}")
    assert response.json()["items"] == []
    boss = django_user_model.objects.create_user("boss", is_staff=True)
    boss_key = APIKey.issue(boss, "boss")[1]
    response = client.get("/api/v1/tasks", {"owner": "alice"}, HTTP_AUTHORIZATION=f"Bearer {boss_key}")
    assert len(response.json()["items"]) == 4


def test_pages_neither_repeat_nor_skip_tasks_created_at_the_same_moment(api, started_group):
    made = [create(api).json()["id"] for _ in range(7)]
    Task.objects.update(created_at=timezone.now())  # all at once: the id breaks the tie
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = api.get("/api/v1/tasks", params).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == sorted(made, reverse=True)


# -- one task -----------------------------------------------------------------------------------


def test_a_task_tells_its_timeline_and_where_its_time_went(api, started_group):
    task = queued_task(api)
    t0 = task.created_at
    Task.objects.filter(pk=task.pk).update(created_at=t0)
    at = lambda seconds: t0 + dt.timedelta(seconds=seconds)  # noqa: E731
    TaskEventTimes = [(Status.PREPARING, at(12)), (Status.STARTED, at(14)), (Status.FINALIZING, at(74))]
    task.events.update(at=at(2))  # the upload arrived two seconds after creation
    move(task, *TaskEventTimes, (Status.SUCCESS, at(75)))
    Task.objects.filter(pk=task.pk).update(ended_at=at(75))
    body = api.get(f"/api/v1/tasks/{task.id}").json()
    assert [(s["status"], s["duration_seconds"], s["ongoing"]) for s in body["timeline"]] == [
        ("pending-input", 2.0, False),
        ("submitted", 10.0, False),
        ("preparing-to-compute", 2.0, False),
        ("started", 60.0, False),
        ("finalizing", 1.0, False),
        ("success", None, False),
    ]
    assert body["time_breakdown"] == {
        "waiting_for_input": 2.0,
        "in_queue": 10.0,
        "preparing": 2.0,
        "computing": 60.0,
        "finalizing": 1.0,
    }
    assert body["total_time_seconds"] == 75.0
    assert body["computation_time_seconds"] == 60.0
    assert body["machine_type"] == "c2-standard-4"
    assert body["outputs_available"] is False and body["inputs_available"] is True

    running = queued_task(api)
    move(running, (Status.PREPARING, timezone.now()), (Status.STARTED, timezone.now()))
    body = api.get(f"/api/v1/tasks/{running.id}").json()
    assert body["timeline"][-1]["ongoing"] is True and body["timeline"][-1]["duration_seconds"] >= 0
    assert body["time_breakdown"]["finalizing"] is None


def test_metadata_is_replaced_merged_and_unset(api, started_group):
    task = queued_task(api)
    url = f"/api/v1/tasks/{task.id}/metadata"
    assert api.put(url, {"metadata": {"a": "1", "b": "2"}}, content_type="application/json").json() == {
        "a": "1",
        "b": "2",
    }
    assert api.patch(url, {"metadata": {"b": "3", "c": "4"}}, content_type="application/json").json() == {
        "a": "1",
        "b": "3",
        "c": "4",
    }
    assert api.delete(url + "?key=a&key=zzz").json() == {"b": "3", "c": "4"}
    assert api.get(url).json() == {"b": "3", "c": "4"}
    refused = api.patch(url, {"metadata": {"d": 5}}, content_type="application/json")
    assert "Metadata value of 'd' must be a non-empty string" in assert_error(
        refused, 400, "invalid", "metadata"
    )


def test_outputs_are_listed_fetched_one_by_one_and_removed(api, started_group):
    task = finished_task(
        api, {"out/a.csv": b"1,2\n" * 100, "stdout.txt": b"hello\nworld\n", "stderr.txt": b""}
    )
    listing = api.get(f"/api/v1/tasks/{task.id}/outputs/files").json()
    assert [f["path"] for f in listing["files"]] == ["out/a.csv", "stdout.txt", "stderr.txt"]
    assert listing["total_size"] == 412 and listing["archive_size"] > 0
    one = api.get(f"/api/v1/tasks/{task.id}/outputs/files/out/a.csv")
    assert one.status_code == 200 and b"".join(one.streaming_content) == b"1,2\n" * 100
    assert_error(api.get(f"/api/v1/tasks/{task.id}/outputs/files/out/b.csv"), 404, "not_found", "path")
    whole = api.get(f"/api/v1/tasks/{task.id}/outputs")
    assert zipfile.ZipFile(io.BytesIO(b"".join(whole.streaming_content))).namelist() == [
        "out/a.csv",
        "stdout.txt",
        "stderr.txt",
    ]
    inputs = api.get(f"/api/v1/tasks/{task.id}/input")
    assert zipfile.ZipFile(io.BytesIO(b"".join(inputs.streaming_content))).namelist() == ["run.sh"]

    # Logs in pieces from storage: from an offset, or the last lines.
    logs = api.get(f"/api/v1/tasks/{task.id}/logs", {"stdout_offset": 6, "stream": "stdout"}).json()
    assert logs["live"] is False and logs["stderr"] is None
    assert logs["stdout"] == {"offset": 6, "next_offset": 12, "size": 12, "text": "world\n"}
    tail = api.get(f"/api/v1/tasks/{task.id}/logs", {"tail_lines": 1}).json()
    assert tail["stdout"]["text"] == "world\n" and tail["stderr"]["text"] == ""

    removed = api.delete(f"/api/v1/tasks/{task.id}/outputs").json()
    assert removed["freed_bytes"] > 0 and len(removed["removed"]) == 2
    message = assert_error(api.get(f"/api/v1/tasks/{task.id}/outputs/files"), 404, "no_outputs")
    assert "outputs were removed from the server" in message
    assert "was removed" in assert_error(api.get(f"/api/v1/tasks/{task.id}/input"), 404, "no_inputs")
    # The logs stay.
    assert api.get(f"/api/v1/tasks/{task.id}/logs", {"stream": "stdout"}).json()["stdout"]["size"] == 12

    waiting = queued_task(api)
    message = assert_error(api.get(f"/api/v1/tasks/{waiting.id}/outputs"), 404, "no_outputs")
    assert "outputs are stored when it finishes" in message
    assert "once it has ended" in assert_error(
        api.delete(f"/api/v1/tasks/{waiting.id}/outputs"), 409, "conflict"
    )


def test_each_attempt_keeps_its_logs(api, started_group):
    task = finished_task(api, {"stdout.txt": b"first try\n", "stderr.txt": b""})
    # Resubmitted after a preemption, the second attempt stored logs of its own.
    default_storage.save(storage.log_name(task.id, "stdout", 2), ContentFile(b"second try\n"))
    Task.objects.filter(pk=task.pk).update(attempt=2)

    def stdout(**query) -> bytes:
        return b"".join(api.get(f"/api/v1/tasks/{task.id}/logs/stdout", query).streaming_content)

    assert (stdout(), stdout(attempt=2), stdout(attempt=1)) == (
        b"second try\n",
        b"second try\n",
        b"first try\n",
    )
    message = assert_error(
        api.get(f"/api/v1/tasks/{task.id}/logs/stdout", {"attempt": 3}), 404, "not_found", "attempt"
    )
    assert message == f"Task {task.id} has had 2 attempts; there is no attempt 3."
    assert "attempt 2" in assert_error(api.get(f"/api/v1/tasks/{task.id}/logs/stderr"), 404, "no_logs")


def test_looking_inside_a_task_that_is_not_running_says_where_to_look(api, started_group):
    queued = queued_task(api)
    done = finished_task(api, {"stdout.txt": b"x\n"})
    for what in ("files", "top", "last-modified-file", "tail?path=stdout.txt"):
        message = assert_error(api.get(f"/api/v1/tasks/{queued.id}/machine/{what}"), 409, "not_running")
        assert message.endswith("Try again once it is In Progress.")
        message = assert_error(api.get(f"/api/v1/tasks/{done.id}/machine/{what}"), 409, "not_running")
        assert message.endswith(f"Its files are in its outputs: simdeck tasks download {done.id}")
    assert_error(api.get(f"/api/v1/tasks/{queued.id}/machine/tail"), 400, "invalid", "path")


def test_kill_many_by_id_or_all(api, started_group, alice):
    for project in ("a", "b"):
        services.start_group(
            services.create_group(alice, machine_type="c2-standard-4", name=f"lab-{project}", project=project)
        )
    first, second, third = (queued_task(api, machine_group=f"lab-{p}") for p in ("a", "a", "b"))
    answer = api.post("/api/v1/tasks/kill", {"ids": [first.id]}, content_type="application/json").json()
    assert answer == [
        {
            "id": first.id,
            "status": "killed",
            "changed": True,
            "message": f"Task {first.id} was killed before it ran.",
        }
    ]
    answer = api.post(
        "/api/v1/tasks/kill", {"all": True, "project": "a"}, content_type="application/json"
    ).json()
    assert [(r["id"], r["changed"]) for r in answer] == [(second.id, True)]
    assert Task.objects.get(pk=third.id).status == Status.SUBMITTED
    assert_error(api.post("/api/v1/tasks/kill", {}, content_type="application/json"), 400, "invalid", "ids")


def test_projects_count_the_tasks_you_may_see(api, started_group, client, alice, bob):
    services.start_group(
        services.create_group(alice, machine_type="c2-standard-4", name="wind-lab", project="wind")
    )
    queued_task(api, machine_group="wind-lab")
    done = finished_task(api, {"stdout.txt": b""})
    Task.objects.filter(pk=done.pk).update(project=services.project_to_use(done.owner, "wind"))
    projects = api.get("/api/v1/projects").json()
    assert [(p["name"], p["num_tasks"], p["active"], p["succeeded"], p["failed"]) for p in projects] == [
        ("alice-default", 0, 0, 0, 0),
        ("wind", 2, 1, 1, 0),
    ]
    assert api.get("/api/v1/projects/wind").json()["num_tasks"] == 2
    bob_key = APIKey.issue(bob, "bob")[1]
    assert client.get("/api/v1/projects", HTTP_AUTHORIZATION=f"Bearer {bob_key}").json() == []
    assert client.get("/api/v1/projects/wind", HTTP_AUTHORIZATION=f"Bearer {bob_key}").status_code == 404


def test_statuses_say_which_spellings_they_accept(client):
    statuses = {s["value"]: s for s in client.get("/api/v1/statuses").json()}
    assert statuses["success"]["aliases"] == ["completed"]
    assert statuses["executor-failed"]["aliases"] == ["executer-failed"]
    assert statuses["killed"]["failure"] is True and statuses["success"]["failure"] is False
    assert json.dumps(statuses)  # plain JSON all the way
