"""The API, fuzzed from its own OpenAPI document.

Schemathesis reads ``/api/v1/openapi.json`` and sends every operation
requests it generates from the document, valid and invalid, through the
real Django application in this process (its WSGI handler, the test
database). Every answer must be documented: no 500, a status code the
document lists, a body matching its schema. Path parameters are mostly
swapped for the ids of real objects, so the fuzzing reaches past the 404s.
"""

from __future__ import annotations

import io
import os
import zipfile

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from django.db import transaction
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from schemathesis import checks

from tasks_app import lifecycle, services
from tasks_app.lifecycle import Status
from tasks_app.models import APIKey

pytestmark = [pytest.mark.faults, pytest.mark.django_db, pytest.mark.timeout(600)]

schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", get_wsgi_application())

# What the generated requests refer to; filled per test by the ``world`` fixture.
REAL: dict[str, list[str]] = {}

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    # Mostly a real object (the caller's or another user's): otherwise
    # nearly every generated request would stop at "not found".
    names = [name for name in path_parameters or {} if REAL.get(name)]
    if not names:
        return st.just(path_parameters)
    real = st.fixed_dictionaries({name: st.sampled_from(REAL[name]) for name in names})
    return st.one_of(real.map(lambda ids: {**path_parameters, **ids}), st.just(path_parameters))


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


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
    archive = _zip({"run.sh": b"echo hi\n"})
    import hashlib

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


def test_a_method_a_path_does_not_take_gets_the_api_error_shape(client, world):
    # Found by the fuzzing above: django-ninja answered it in plain text.
    answer = client.delete("/api/v1/whoami", headers={"Authorization": f"Bearer {world}"})
    assert answer.status_code == 405 and answer["Allow"] == "GET"
    assert answer.json() == {
        "error": "method_not_allowed",
        "message": "DELETE is not an operation of /api/v1/whoami. It takes GET; see /api/v1/openapi.json.",
        "field": None,
    }
