"""Submitting many tasks in one request: a parameter sweep over one input, all or none."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tasks_app import broker, services
from tasks_app.lifecycle import Status
from tasks_app.models import Activity, Batch, Quota, Task, TaskEvent
from tests.helpers import zipped
from tests.test_api import upload

pytestmark = pytest.mark.django_db

INPUT = zipped({"run.sh": b"echo hi"})


@pytest.fixture
def published(monkeypatch):
    """How many "a task waits" tokens went to the machines."""
    counts = []
    monkeypatch.setattr(broker, "publish_tokens", lambda group, count: counts.append(count))
    return counts


def sweep(values, **item) -> list[dict]:
    return [{"simulator": "commands", "parameters": {"commands": [f"echo {v}"]}} | item for v in values]


def batch(api, tasks: list[dict], data: bytes | None = INPUT, **overrides):
    body = {"machine_group": "lab", "input_files": ["run.sh"], "tasks": tasks}
    if data is not None:
        body |= {
            "input_archive": base64.b64encode(data).decode(),
            "input_sha256": hashlib.sha256(data).hexdigest(),
        }
    return api.post("/api/v1/tasks/batch", body | overrides, content_type="application/json")


def test_a_batch_creates_and_queues_every_task_in_order(
    api, started_group, published, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = batch(api, sweep([1, 2, 3], metadata={"sweep": "re"}))
    assert response.status_code == 201, response.content
    items = response.json()["tasks"]
    assert [i["status"] for i in items] == ["submitted"] * 3
    assert all(i["upload_url"] is None for i in items)
    tasks = {t.id: t for t in Task.objects.all()}
    assert [tasks[i["id"]].parameters["commands"] for i in items] == [["echo 1"], ["echo 2"], ["echo 3"]]
    task = tasks[items[0]["id"]]
    assert task.metadata == {"sweep": "re"}
    assert task.queued_at is not None and task.input_size == len(INPUT)
    # Each task has its own stored input, its event and its audit line, as when submitted alone.
    assert b"".join(api.get(f"/api/v1/tasks/{task.id}/input").streaming_content) == INPUT
    assert list(task.events.values_list("from_status", "to_status")) == [
        (Status.PENDING_INPUT, Status.SUBMITTED)
    ]
    assert Activity.objects.filter(kind="submitted").count() == 3
    assert published == [3]
    # Queued in the order given.
    queue = list(
        Task.objects.queued_in(started_group.pk).order_by("queued_at", "id").values_list("id", flat=True)
    )
    assert queue == [i["id"] for i in items]


def test_without_an_input_each_task_waits_for_its_own_upload(
    api, started_group, published, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        items = batch(api, sweep([1, 2]), data=None).json()["tasks"]
        assert [i["status"] for i in items] == ["pending-input"] * 2
        assert upload(api, items[1]["id"], INPUT).status_code == 200
    assert Task.objects.get(pk=items[1]["id"]).status == Status.SUBMITTED
    assert published == [1]


def test_a_bad_item_refuses_the_batch_and_names_its_index(api, started_group, published):
    tasks = sweep([1, 2, 3])
    tasks[2]["parameters"] = {"commands": []}
    response = batch(api, tasks)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid"
    assert body["field"] == "tasks.2.commands"
    assert body["message"].startswith("Task 2 of the batch: ")
    assert not Task.objects.exists() and not TaskEvent.objects.exists()
    assert published == []


def test_a_malformed_item_is_refused_with_its_index(api, started_group):
    response = batch(api, [*sweep([1]), {"parameters": {}}])
    assert response.status_code == 400
    assert response.json()["field"] == "tasks.1.simulator"
    assert not Task.objects.exists()


def test_a_project_other_than_the_groups_is_refused(api, started_group, bob):
    services.project_to_use(bob, "secret")
    response = batch(api, sweep([1]) + sweep([2], project="secret"))
    assert response.status_code == 400
    assert response.json()["field"] == "tasks.1.project"
    assert not Task.objects.exists()


def test_a_group_of_another_team_is_not_found(api, bob):
    services.create_group(bob, machine_type="c2-standard-4", name="lab")
    response = batch(api, sweep([1]))
    assert response.status_code == 404
    assert not Task.objects.exists()


def test_a_time_to_live_over_the_quota_refuses_the_batch(api, started_group, alice):
    project = services.project_to_use(alice, None)
    Quota.objects.create(project=project, max_task_ttl_seconds=600)
    response = batch(api, sweep([1]) + sweep([2], time_to_live="15m"))
    assert response.status_code == 403
    body = response.json()
    assert body["error"] == "quota_exceeded"
    assert body["field"] == "tasks.1.time_to_live"
    assert "(300 s over)" in body["message"]
    assert not Task.objects.exists()
    # Within the quota, tasks without a time to live get the quota's.
    assert batch(api, sweep([1])).status_code == 201
    assert Task.objects.get().time_to_live_seconds == 600


def test_a_corrupt_shared_input_is_refused(api, started_group):
    response = batch(api, sweep([1]), input_sha256="0" * 64)
    assert response.status_code == 400
    assert response.json()["field"] == "input_archive"
    assert not Task.objects.exists()


def test_a_batch_to_a_terminated_group_is_refused(api, started_group):
    services.terminate_group(started_group)
    response = batch(api, sweep([1]))
    assert response.status_code == 409
    assert not Task.objects.exists()


def test_an_empty_or_oversized_batch_is_refused(api, started_group):
    assert batch(api, []).json()["field"] == "tasks"
    too_many = sweep(range(services.BATCH_MAX_TASKS + 1))
    response = batch(api, too_many)
    assert response.status_code == 400 and "at most" in response.json()["message"]


class _ThroughTestClient:
    """The Python client's HTTP calls, answered by this process's server through Django's test client."""

    def __init__(self, api):
        self.api = api

    def post(self, path: str, json=None, headers=None, retry=False):
        response = self.api.post(f"/api/v1{path}", json, content_type="application/json", headers=headers)
        assert response.status_code == 201, response.content
        return response.json()


def test_the_python_client_submits_a_sweep_in_one_request(api, started_group, tmp_path, monkeypatch):
    from simdeck import simulators

    monkeypatch.setenv("SIMDECK_URL", "http://simdeck.invalid")
    (tmp_path / "run.sh").write_text("echo hi\n")
    sim = simulators.Commands()
    sim._client = _ThroughTestClient(api)
    tasks = sim.run_many(
        tmp_path,
        [{"commands": [f"sh run.sh {re}"]} for re in (100, 200)],
        on="lab",
        metadata=[{"re": "100"}, {"re": "200"}],
    )
    stored = {t.id: t for t in Task.objects.all()}
    assert [stored[t.id].metadata for t in tasks] == [{"re": "100"}, {"re": "200"}]
    assert {t.status for t in stored.values()} == {Status.SUBMITTED}
    with pytest.raises(ValueError, match="one metadata dict per task"):
        sim.run_many(tmp_path, [{"commands": ["true"]}], on="lab", metadata=[{}, {}])


class _CountingClient(_ThroughTestClient):
    """Records the size of each batch request; refuses the one holding ``refuse_at`` (a sweep index)."""

    def __init__(self, api, refuse_at=None):
        super().__init__(api)
        self.sizes, self.refuse_at = [], refuse_at

    def post(self, path, json=None, headers=None, retry=False):
        from simdeck.errors import InvalidInput

        start = sum(self.sizes)
        self.sizes.append(len(json["tasks"]))
        if self.refuse_at is not None and start <= self.refuse_at < start + len(json["tasks"]):
            index = self.refuse_at - start
            raise InvalidInput(
                f"Task {index} of the batch: no commands.", field=f"tasks.{index}.commands", status=400
            )
        return super().post(path, json, headers, retry)


def test_a_sweep_goes_out_in_growing_requests_so_machines_start_early(
    api, started_group, tmp_path, monkeypatch
):
    from simdeck import simulators

    monkeypatch.setenv("SIMDECK_URL", "http://simdeck.invalid")
    (tmp_path / "run.sh").write_text("echo hi\n")
    sim = simulators.Commands()
    sim._client = _CountingClient(api)
    tasks = sim.run_many(tmp_path, [{"commands": [f"sh run.sh {n}"]} for n in range(170)], on="lab")
    assert sim._client.sizes == [50, 100, 20]
    stored = dict(Task.objects.values_list("id", "parameters"))
    assert [stored[t.id]["commands"] for t in tasks] == [[f"sh run.sh {n}"] for n in range(170)]
    queue = Task.objects.order_by("queued_at", "id").values_list("id", flat=True)
    assert list(queue) == [t.id for t in tasks]
    # The three requests make one batch: its subscribers hear once, when all 170 ended.
    assert Batch.objects.get().size == 170
    assert set(Task.objects.values_list("batch", flat=True)) == {Batch.objects.get().pk}


def test_a_sweep_in_several_requests_joins_one_batch_of_its_size(api, started_group, alice, no_broker):
    first = batch(api, sweep([1, 2]), batch_size=5)
    assert first.status_code == 201, first.content
    made = Batch.objects.get(pk=first.json()["batch"])
    assert made.size == 5 and made.machine_group == started_group
    assert batch(api, sweep([3, 4]), batch=made.pk).json()["batch"] == made.pk
    for overrides, words in [
        ({"batch": made.pk, "tasks": sweep([5, 6])}, "was to hold 5 tasks and has 4"),
        ({"batch": "nosuchbatch"}, "No batch nosuchbatch of yours"),
        ({"batch_size": 1, "tasks": sweep([1, 2])}, "at least the 2 of this request"),
    ]:
        answer = batch(api, **{"tasks": sweep([5])} | overrides)
        assert answer.status_code == 400 and words in answer.json()["message"], answer.json()
        assert answer.json()["field"] in ("batch", "batch_size")
    other = services.start_group(services.create_group(alice, machine_type="c2-standard-4", name="lab2"))
    answer = batch(api, sweep([5]), batch=made.pk, machine_group=other.name)
    assert answer.status_code == 400 and "another machine group" in answer.json()["message"]
    assert Task.objects.filter(batch=made).count() == 4 and Batch.objects.get(pk=made.pk).size == 5
    # A request refused by the server ends the sweep: the batch is what was made before it.
    refused = batch(api, [{"simulator": "commands", "parameters": {}}], batch=made.pk)
    assert refused.status_code == 400
    ended = Batch.objects.get(pk=made.pk)
    assert ended.size == 4 and ended.closed_at is not None, "closed: its subscribers hear when its tasks end"
    again = batch(api, sweep([5]), batch=made.pk)
    assert again.status_code == 400 and "takes no more tasks" in again.json()["message"]
    assert again.json()["field"] == "batch"


def test_the_request_that_fills_a_batch_closes_it(api, started_group, no_broker):
    whole = batch(api, sweep([1, 2]))
    assert Batch.objects.get(pk=whole.json()["batch"]).closed_at is not None, "a sweep of one request"
    first = batch(api, sweep([1, 2]), batch_size=3)
    made = Batch.objects.get(pk=first.json()["batch"])
    assert made.closed_at is None, "one more task to come"
    assert batch(api, sweep([3]), batch=made.pk).status_code == 201
    assert Batch.objects.get(pk=made.pk).closed_at is not None


def test_a_sweep_of_single_tasks_is_a_batch_too(api, started_group, no_broker):
    """A templated sweep sends each task with its own input, one request each."""

    def single(**overrides):
        body = {
            "simulator": "commands",
            "machine_group": "lab",
            "input_files": ["run.sh"],
            "parameters": {"commands": ["sh run.sh"]},
            "input_archive": base64.b64encode(INPUT).decode(),
            "input_sha256": hashlib.sha256(INPUT).hexdigest(),
        }
        return api.post("/api/v1/tasks", body | overrides, content_type="application/json")

    assert single().json()["batch"] is None, "a task alone is no batch"
    first = single(batch_size=3).json()
    made = Batch.objects.get(pk=first["batch"])
    assert made.size == 3
    assert single(batch=made.pk).json()["batch"] == made.pk
    answer = single(batch_size=0)
    assert answer.status_code == 400 and answer.json()["field"] == "batch_size"
    refused = single(batch=made.pk, parameters={})
    assert refused.status_code == 400 and refused.json()["field"] == "commands"
    assert Batch.objects.get(pk=made.pk).size == 2, "the sweep stopped at the refused task"
    assert Task.objects.filter(batch=made).count() == 2
    pair = Batch.objects.get(pk=single(batch_size=2).json()["batch"])
    assert pair.closed_at is None
    assert single(batch=pair.pk).status_code == 201
    assert Batch.objects.get(pk=pair.pk).closed_at is not None, "its last task closed it"
    assert Batch.objects.get(pk=single(batch_size=1).json()["batch"]).closed_at is not None


def test_a_sweep_refused_in_a_later_request_names_the_index_and_the_tasks_created(
    api, started_group, tmp_path, monkeypatch
):
    from simdeck import simulators
    from simdeck.errors import InvalidInput

    monkeypatch.setenv("SIMDECK_URL", "http://simdeck.invalid")
    (tmp_path / "run.sh").write_text("echo hi\n")
    sim = simulators.Commands()
    sim._client = _CountingClient(api, refuse_at=60)
    with pytest.raises(InvalidInput) as refused:
        sim.run_many(tmp_path, [{"commands": ["sh run.sh"]}] * 200, on="lab")
    assert sim._client.sizes == [50, 100]  # nothing sent after the refused request
    assert refused.value.field == "tasks.60.commands"
    assert str(refused.value).startswith("Task 60 of the sweep")
    assert [t.id for t in refused.value.created] == list(
        Task.objects.order_by("queued_at").values_list("id", flat=True)
    )
    assert len(refused.value.created) == 50
