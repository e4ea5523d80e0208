"""A creating request sent again with its Idempotency-Key makes nothing twice."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib

import httpx
import pytest
from django.core.wsgi import get_wsgi_application
from django.db import connection

from tasks_app import services
from tasks_app.models import APIKey, Task
from tests.helpers import zipped

INPUT = zipped({"run.sh": b"echo hi"})


pytestmark = pytest.mark.usefixtures("no_broker")


def body(inline: bool = True, **overrides) -> dict:
    data = {
        "simulator": "commands",
        "machine_group": "lab",
        "input_files": ["run.sh"],
        "parameters": {"commands": ["sh run.sh"]},
    }
    if inline:
        data |= {
            "input_archive": base64.b64encode(INPUT).decode(),
            "input_sha256": hashlib.sha256(INPUT).hexdigest(),
        }
    return data | overrides


def post(api, path: str, payload: dict, key: str | None):
    headers = {"Idempotency-Key": key} if key else {}
    return api.post(f"/api/v1{path}", payload, content_type="application/json", headers=headers)


@pytest.mark.django_db
def test_the_same_request_sent_again_answers_with_the_task_it_made(api, started_group):
    first = post(api, "/tasks", body(), "3f1c-first-try")
    again = post(api, "/tasks", body(), "3f1c-first-try")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert Task.objects.count() == 1
    other = post(api, "/tasks", body(), "3f1c-second-task")
    assert other.json()["id"] != first.json()["id"] and Task.objects.count() == 2
    assert post(api, "/tasks", body(), None).status_code == 201 and Task.objects.count() == 3


@pytest.mark.django_db
def test_a_task_still_waiting_for_its_input_is_answered_with_its_upload_url(api, started_group):
    first = post(api, "/tasks", body(inline=False), "waits-for-input")
    again = post(api, "/tasks", body(inline=False), "waits-for-input")
    assert (
        again.json()["upload_url"]
        == first.json()["upload_url"]
        == f"/api/v1/tasks/{first.json()['id']}/input"
    )


@pytest.mark.django_db
def test_keys_are_per_user_and_a_key_used_for_another_request_is_refused(api, started_group, bob):
    made = post(api, "/tasks", body(), "shared-key-1").json()
    services.start_group(services.create_group(bob, machine_type="c2-standard-4", name="bobs"))
    bobs = api.post(
        "/api/v1/tasks",
        body(machine_group="bobs"),
        content_type="application/json",
        headers={"Idempotency-Key": "shared-key-1", "Authorization": f"Bearer {APIKey.issue(bob, 'b')[1]}"},
    )
    assert bobs.status_code == 201 and bobs.json()["id"] != made["id"]
    services.start_group(services.create_group(api_user(made), machine_type="c2-standard-4", name="lab2"))
    reused = post(api, "/tasks", body(machine_group="lab2"), "shared-key-1")
    assert reused.status_code == 409
    assert reused.json()["field"] == "Idempotency-Key" and made["id"] in reused.json()["message"]


def api_user(created: dict):
    return Task.objects.get(pk=created["id"]).owner


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["short", "has spaces in it", "x" * 81, "semi;colon-key"])
def test_a_malformed_key_is_refused_and_makes_nothing(api, started_group, key):
    answer = post(api, "/tasks", body(), key)
    assert answer.status_code == 400
    assert answer.json()["field"] == "Idempotency-Key" and "8 to 80" in answer.json()["message"]
    assert not Task.objects.exists()


@pytest.mark.django_db
def test_a_batch_sent_again_answers_with_its_tasks_in_order(api, started_group):
    tasks = [{"simulator": "commands", "parameters": {"commands": [f"echo {i}"]}} for i in range(3)]
    payload = {
        k: v
        for k, v in body().items()
        if k in ("machine_group", "input_files", "input_archive", "input_sha256")
    }
    first = post(api, "/tasks/batch", payload | {"tasks": tasks}, "sweep-2026-11-30")
    again = post(api, "/tasks/batch", payload | {"tasks": tasks}, "sweep-2026-11-30")
    assert first.status_code == again.status_code == 201
    assert [t["id"] for t in again.json()["tasks"]] == [t["id"] for t in first.json()["tasks"]]
    assert Task.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_the_same_request_sent_four_times_at_once_makes_one_task(api, started_group, alice_key):
    def send(_):
        try:
            return post(
                api.__class__(HTTP_AUTHORIZATION=f"Bearer {alice_key}"), "/tasks", body(), "all-at-once"
            )
        finally:
            connection.close()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, range(4)))
    assert [a.status_code for a in answers] == [201] * 4
    assert len({a.json()["id"] for a in answers}) == 1
    assert Task.objects.count() == 1


class LosesTheFirstAnswer(httpx.BaseTransport):
    """The server does the work but its answer never arrives, once (a timeout, a restart)."""

    def __init__(self, inner: httpx.BaseTransport):
        self.inner, self.lost = inner, False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if not self.lost and request.method == "POST":
            self.lost = True
            response.read()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


@pytest.fixture
def wsgi_app():
    """Django as a WSGI app in this process, keeping the test's database connection (as the test client)."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield get_wsgi_application()
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.mark.django_db
def test_the_client_sends_a_lost_submission_again_and_gets_one_task(
    started_group, alice_key, tmp_path, monkeypatch, wsgi_app
):
    from simdeck import api as client_api
    from simdeck import simulators

    monkeypatch.setenv("SIMDECK_CONFIG", str(tmp_path / "client.json"))
    client = client_api.Client("http://testserver", alice_key, retries=3)
    monkeypatch.setattr(client_api.time, "sleep", lambda seconds: None)  # no backoff to wait through
    client.http = httpx.Client(
        base_url="http://testserver/api/v1",
        headers=client.http.headers,
        transport=LosesTheFirstAnswer(httpx.WSGITransport(app=wsgi_app)),
    )
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "run.sh").write_text("echo hi\n")
    sim = simulators.Commands()
    sim._client = client
    task = sim.run(tmp_path / "in", commands=["sh run.sh"], on="lab")
    assert list(Task.objects.values_list("id", flat=True)) == [task.id]
