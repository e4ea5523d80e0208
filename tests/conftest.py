"""Shared fixtures: people, API keys, and a running Simdeck for end-to-end tests.

The running stack is real: daphne serving the ASGI app, the local provider
spawning Celery worker processes as machines, all pointed at the test
database and the configured (or embedded) Redis.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from django.conf import settings
from django.db import connection

from tasks_app.models import APIKey, MachineGroup
from tests.helpers import ROOT


def pytest_sessionfinish(session, exitstatus):
    """Stop embedded servers this test run used; configured ones are not ours."""
    from console import embedded

    connection.close()
    if not os.environ.get("REDIS_URL"):
        embedded.stop_redis(settings.SIMDECK_HOME)
    if not os.environ.get("DATABASE_URL"):
        embedded.stop_postgres(settings.SIMDECK_HOME)


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="wonderland-42")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password="builder-42")


@pytest.fixture
def alice_key(alice) -> str:
    return APIKey.issue(alice, "tests")[1]


def database_url() -> str:
    """The URL of the database the tests use, for processes we start."""
    d = connection.settings_dict
    user = quote(d.get("USER") or "", safe="")
    password = quote(d.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    port = f":{d['PORT']}" if d.get("PORT") else ""
    # A unix-socket host (the embedded server) travels as ?host=, which
    # django-environ hands to psycopg unchanged.
    socket_dir = d.get("OPTIONS", {}).get("host") or (
        d.get("HOST") if (d.get("HOST") or "").startswith("/") else ""
    )
    if socket_dir:
        return f"postgres://{auth}/{d['NAME']}?host={quote(socket_dir)}"
    return f"postgres://{auth}{d.get('HOST') or ''}{port}/{d['NAME']}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """A running Simdeck: web server and local provider as real processes."""

    def __init__(self, home: Path):
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(
            os.environ,
            DATABASE_URL=database_url(),
            REDIS_URL=settings.REDIS_URL,
            SIMDECK_HOME=str(home),
            SECRET_KEY=settings.SECRET_KEY,
            CONN_MAX_AGE="0",
            SIMDECK_KILL_GRACE_SECONDS="3",
            SIMDECK_HEARTBEAT_SECONDS="1",
            SIMDECK_HOUSEKEEPING_SECONDS="1",
            SIMDECK_MACHINE_LOST_SECONDS="6",
            SIMDECK_QUEUE_PREFIX=f"test{self.port}",
        )
        self.procs: list[subprocess.Popen] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.home / f"{name}.log", "ab")
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env | (env or {}),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stopped as a group, with whatever it forked
        )
        log.close()
        self.procs.append(proc)
        return proc

    def start_provider(self, **env: str) -> None:
        argv = [sys.executable, "manage.py", "runprovider", "--interval", "0.5"]
        self.provider = self.spawn("provider", argv, env)

    def restart_provider(self, **env: str) -> None:
        """A new provider whose machines get ``env`` added to their environment."""
        _signal_group(self.provider, signal.SIGTERM)
        self.provider.wait(timeout=60)
        self.procs.remove(self.provider)
        self.start_provider(**env)

    def start(self) -> Stack:
        py = sys.executable
        self.spawn(
            "web", [py, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "console.asgi:application"]
        )
        self.start_provider()
        self.spawn(
            "scheduler",
            [py, "-m", "celery", "-A", "console", "worker", "--beat", "--queues", f"test{self.port}.control"]
            + ["--concurrency", "1", "--hostname", f"scheduler-{self.port}@%h", "--without-gossip"]
            + ["--without-mingle", "--loglevel", "INFO"],
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/api/v1/statuses", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"The web server did not come up; see {self.home / 'web.log'}")

    def manage(self, *args: str) -> subprocess.CompletedProcess:
        """Run a management command against the stack, as an operator would."""
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True
        )

    def logs(self) -> str:
        return "\n".join(
            f"== {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.home.glob("*.log")
        )

    def stop(self) -> None:
        # Terminate the groups first so the provider stops its machines.
        for group in MachineGroup.objects.exclude(state=MachineGroup.State.TERMINATED):
            from tasks_app import services

            services.terminate_group(group, reason="Test finished.")
        deadline = time.monotonic() + 40
        while (
            MachineGroup.objects.exclude(state=MachineGroup.State.TERMINATED).exists()
            and time.monotonic() < deadline
        ):
            time.sleep(0.3)
        for proc in reversed(self.procs):
            _signal_group(proc, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # e.g. Celery's embedded beat


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def stack(transactional_db, tmp_path, monkeypatch):
    home = tmp_path / "simdeck-home"
    home.mkdir()
    monkeypatch.setattr(settings, "SIMDECK_HOME", home)
    s = Stack(home)
    # What this process sends to the machines must reach the stack's queues.
    monkeypatch.setattr(settings, "SIMDECK_QUEUE_PREFIX", f"test{s.port}")
    s.start()
    yield s
    s.stop()


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


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # Real hashing costs a quarter second per user; tests make many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
