"""The API, fuzzed from its own OpenAPI document.

Schemathesis reads ``/api/v1/openapi.json`` and sends every operation
requests it generates from the document, valid and invalid. Every answer
must be documented: no 5xx, a status code the document lists, a body
matching its schema, and every error in the API's one error shape. Path
parameters are mostly swapped for the ids of real objects, so the fuzzing
reaches past the 404s.

It runs twice: through the Django application in this process (its WSGI
handler, the test database, each request undone after it), and against a
live server (daphne, a scheduler and a real machine) as two users: one
maintains a project with a running, an ended and a waiting task, the other
is a member of it with a group of their own. There a stateful run also
follows the document's links from what it creates (a task, a group, a
member) to what can be done with it.
"""

from __future__ import annotations

import base64
import hashlib
import os

import httpx
import pytest
import requests
import schemathesis
from django.core.wsgi import get_wsgi_application
from django.db import transaction
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks

from tasks_app import lifecycle, services, teams
from tasks_app.lifecycle import Status
from tasks_app.models import APIKey, Quota, Task
from tests.helpers import wait_for, zipped

pytestmark = [pytest.mark.faults, pytest.mark.django_db, pytest.mark.timeout(600)]

schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", get_wsgi_application())

# What the generated requests refer to; filled per test by the ``world`` fixture.
REAL: dict[str, list[str]] = {}


def answers_errors_in_one_shape(ctx, response, case) -> None:
    """Every 4xx and 5xx is ``{"error", "message", "field"}``, whatever refused the request."""
    if response.status_code < 400:
        return
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error", "message", "field"}, body
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["message"], str) and body["message"], body
    assert body["field"] is None or isinstance(body["field"], str), body


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    answers_errors_in_one_shape,
]


def flatmap_path_parameters(context, path_parameters):
    # Mostly a real object (the caller's or another user's): otherwise
    # nearly every generated request would stop at "not found".
    names = [name for name in path_parameters or {} if REAL.get(name)]
    if not names:
        return st.just(path_parameters)
    real = st.fixed_dictionaries({name: st.sampled_from(REAL[name]) for name in names})
    return st.one_of(real.map(lambda ids: {**path_parameters, **ids}), st.just(path_parameters))


schema.hook(flatmap_path_parameters)


@pytest.fixture(autouse=True)
def connection_kept_across_requests():
    # Each test runs in a transaction rolled back at its end (much cheaper
    # than emptying the database after each operation's test), so the
    # requests must not close the connection holding it, as Django's own
    # test client arranges too.
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def world(alice, bob):
    """Alice's key, a started and a created group, and tasks in several statuses."""
    key = APIKey.issue(alice, "fuzz")[1]
    started = services.start_group(services.create_group(alice, machine_type="n2-standard-2", name="fuzz"))
    services.create_group(alice, machine_type="n2-standard-2", name="idle")
    theirs = services.create_group(bob, machine_type="n2-standard-2", name="bobs")
    tasks = []
    for _ in range(3):
        tasks.append(
            services.create_task(
                alice,
                simulator="commands",
                parameters={"commands": ["echo hi"]},
                machine_group=started,
                input_files=["run.sh"],
                metadata={"case": "fuzz"},
            )
        )
    archive = zipped({"run.sh": b"echo hi\n"})
    digest = hashlib.sha256(archive).hexdigest()
    services.accept_input(tasks[1], iter([archive]), size=len(archive), sha256=digest)
    services.accept_input(tasks[2], iter([archive]), size=len(archive), sha256=digest)
    tasks[2].refresh_from_db()
    lifecycle.transition(tasks[2], Status.KILLED, reason="fuzz")
    bobs = services.create_task(
        bob,
        simulator="commands",
        parameters={"commands": ["echo hi"]},
        machine_group=theirs,
        input_files=["run.sh"],
    )
    REAL.clear()
    REAL.update(
        task_id=[t.id for t in tasks] + [bobs.id],
        ref=["fuzz", "idle", "bobs", str(started.pk)],
        name=[started.project.name, "bob-default"],
        stream=["stdout", "stderr"],
    )
    yield key
    REAL.clear()


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("SIMDECK_FUZZ_EXAMPLES", "10")),
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_is_documented(case, world):
    # Each request is undone after it, so every example meets the same world
    # and a statement the database refused does not spoil the next ones.
    savepoint = transaction.savepoint()
    try:
        response = case.call(headers={"Authorization": f"Bearer {world}"})
    finally:
        transaction.savepoint_rollback(savepoint)
    case.validate_response(response, checks=CHECKS)


def test_a_nul_character_is_refused_with_a_message_not_a_server_error(client, world):
    # Found by the fuzzing above: PostgreSQL stores no NUL in a text.
    answer = client.get("/api/v1/tasks?owner=al%00ice", headers={"Authorization": f"Bearer {world}"})
    assert answer.status_code == 400, answer.content[:300]
    assert "NUL" in answer.json()["message"]


def test_a_path_no_route_matches_gets_the_api_error_shape_not_a_page(client, world):
    key = {"Authorization": f"Bearer {world}"}
    answer = client.get("/api/v1/tasks/abc/outputs/files/name%0A", headers=key)
    assert answer.status_code == 404
    assert answer["Content-Type"] == "application/json; charset=utf-8"
    assert answer.json()["error"] == "not_found" and "openapi.json" in answer.json()["message"]
    page = client.get("/no-such-page/")
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")


# -- against a live server -----------------------------------------------------------

LIVE_EXAMPLES = int(os.environ.get("SIMDECK_LIVE_FUZZ_EXAMPLES", "10"))
LIVE_SETTINGS = settings(
    max_examples=LIVE_EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    database=None,
)


def steered(label: str) -> dict | None:
    """A body for a creating operation that names what exists, so its links lead somewhere."""
    group = st.sampled_from(["fuzz", "idle", "bobs"])
    task = {"simulator": st.just("commands"), "parameters": st.just({"commands": ["echo hi"]})}
    if label == "POST /api/v1/machine-groups":
        return {"machine_type": st.just("e2-micro"), "project": st.sampled_from([None, "wind", "gust"])}
    if label == "POST /api/v1/tasks":
        return task | {"machine_group": group, "input_files": st.just(["run.sh"])}
    if label == "POST /api/v1/tasks/batch":
        return {
            "machine_group": group,
            "input_files": st.just(["run.sh"]),
            "tasks": st.lists(st.fixed_dictionaries(task), min_size=1, max_size=3),
        }
    if label == "POST /api/v1/projects/{ref}/members":
        return {"username": st.sampled_from(["alice", "bob"]), "role": st.sampled_from(["viewer", "member"])}
    return None


def flatmap_body(context, body):
    # Half the time, a generated body with real names in it: otherwise nearly
    # every creation would be refused and the stateful run would follow no link.
    fields = steered(context.operation.label)
    if not fields or not isinstance(body, dict):
        return st.just(body)
    return st.one_of(st.just(body), st.fixed_dictionaries(fields).map(lambda real: {**body, **real}))


# Request line and headers beyond this are refused by the web server itself
# (Twisted's totalHeadersSize, under daphne) before the application sees them.
HEADERS_LIMIT = 16384


def send(case, key: str):
    """Send ``case`` with ``key``; a request too large for the web server is not the API's to answer."""
    # The document's security scheme makes Schemathesis write keys of its own.
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {key}"}
    try:
        return case.call(timeout=30)
    except requests.ConnectionError as exc:
        sent = exc.request
        size = len(sent.url) + sum(len(name) + len(str(value)) + 4 for name, value in sent.headers.items())
        if size <= HEADERS_LIMIT:
            raise
        reject()


def live_world(stack) -> dict[str, str]:
    """Alice maintains project "wind": a started group whose machine runs a task,
    an ended task with outputs, one waiting for its input. Bob is a member of
    "wind" with a killed task there, and a group and a task of his own.
    Returns their API keys by name."""
    from django.contrib.auth import get_user_model

    User = get_user_model()
    alice = User.objects.create_user("alice", password="wonderland-42")
    bob = User.objects.create_user("bob", password="builder-42")
    # Groups the fuzzer makes and starts would each bring up machines on this host.
    for user in (alice, bob):
        Quota.objects.create(user=user, max_machines=1)
    started = services.start_group(
        services.create_group(alice, machine_type="n2-standard-2", name="fuzz", project="wind")
    )
    services.create_group(alice, machine_type="n2-standard-2", name="idle", project="wind")
    teams.add_member(started.project, "bob", "member", actor=alice)
    services.create_group(bob, machine_type="n2-standard-2", name="bobs")
    keys = {"alice": APIKey.issue(alice, "fuzz")[1], "bob": APIKey.issue(bob, "fuzz")[1]}
    archive = zipped({"run.sh": b"echo hi\n"})
    inline = {
        "input_archive": base64.b64encode(archive).decode(),
        "input_sha256": hashlib.sha256(archive).hexdigest(),
    }

    # Through the server, as a client would: inputs go to the server's storage.
    def task(who: str, group: str, command: str, *, upload: bool = True) -> str:
        body = {
            "simulator": "commands",
            "machine_group": group,
            "input_files": ["run.sh"],
            "parameters": {"commands": [command]},
            "metadata": {"case": "fuzz"},
        }
        answer = httpx.post(
            f"{stack.url}/api/v1/tasks",
            json=body | (inline if upload else {}),
            headers={"Authorization": f"Bearer {keys[who]}"},
            timeout=30,
        )
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]

    ended = task("alice", "fuzz", "echo done > result.txt")
    running = task("alice", "fuzz", "sleep 300")
    waiting = task("alice", "fuzz", "echo never", upload=False)
    killed = task("bob", "fuzz", "echo never", upload=False)
    httpx.post(f"{stack.url}/api/v1/tasks/{killed}/kill", headers={"Authorization": f"Bearer {keys['bob']}"})
    bobs = task("bob", "bobs", "echo hi", upload=False)
    wait_for(lambda: Task.objects.get(pk=ended).status == Status.SUCCESS, 60, message="the first task")
    wait_for(lambda: Task.objects.get(pk=running).status == Status.STARTED, 60, message="the second task")
    REAL.clear()
    REAL.update(
        task_id=[ended, running, waiting, killed, bobs],
        ref=["fuzz", "idle", "bobs", str(started.pk), "wind"],
        machine=list(started.machines.values_list("name", flat=True)),
        username=["alice", "bob"],
        path=["result.txt", "stdout.txt"],
        stream=["stdout", "stderr"],
    )
    return keys


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_live_server_answers_every_operation_as_documented(stack):
    try:
        keys = live_world(stack)
        live = schemathesis.openapi.from_url(f"{stack.url}/api/v1/openapi.json")
        live.hook(flatmap_path_parameters)
        live.hook(flatmap_body)
        operations = [result.ok() for result in live.get_all_operations()]
        assert len(operations) > 40
        for operation in operations:
            cases = st.one_of([operation.as_strategy(generation_mode=mode) for mode in GenerationMode])

            @given(case=cases, who=st.sampled_from(sorted(keys)))
            @LIVE_SETTINGS
            def fuzz(case, who):
                case.validate_response(send(case, keys[who]), checks=CHECKS)

            fuzz()

        class Scenario(live.as_state_machine()):
            """Alice follows the links from what she makes to what she can do with it."""

            def call(self, case, **kwargs):
                return send(case, keys["alice"])

            def validate_response(self, response, case, additional_checks=None, **kwargs):
                case.validate_response(response, checks=CHECKS)

        stateful = settings(LIVE_SETTINGS, max_examples=LIVE_EXAMPLES * 3, stateful_step_count=6)
        Scenario.run(settings=settings(stateful, phases=[Phase.generate]))
    except BaseException:
        print(stack.logs())
        raise
    finally:
        REAL.clear()


def test_a_method_a_path_does_not_take_gets_the_api_error_shape(client, world):
    # Found by the fuzzing above: django-ninja answered it in plain text.
    answer = client.delete("/api/v1/whoami", headers={"Authorization": f"Bearer {world}"})
    assert answer.status_code == 405 and answer["Allow"] == "GET"
    assert answer.json() == {
        "error": "method_not_allowed",
        "message": "DELETE is not an operation of /api/v1/whoami. It takes GET; see /api/v1/openapi.json.",
        "field": None,
    }


def test_every_link_of_the_document_leads_to_an_operation_of_it(client):
    document = client.get("/api/v1/openapi.json").json()
    operations = {op["operationId"] for path in document["paths"].values() for op in path.values()}
    links = [
        link
        for path in document["paths"].values()
        for op in path.values()
        for answer in op["responses"].values()
        for link in answer.get("links", {}).values()
    ]
    assert len(links) >= 15
    assert {link["operationId"] for link in links} <= operations
